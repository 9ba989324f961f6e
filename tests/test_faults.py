"""Training faults: NaN halting, out of memory, partial checkpoints, stop/resume equivalence,
keep-best rotation, pickle payloads in checkpoints. Faults are injected by patching the trainer."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.errors import TrainingHalted, WorkbenchError
from workbench.rundir import RunDir, new_run_dir
from workbench.trainer import WorkbenchTrainer
from workbench.training import run_training


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "d.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


def cfg_for(model, data, out, name=None, **training) -> RunConfig:
    t = {"max_steps": 24, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
         "save_strategy": "steps", "save_steps": 4, "save_total_limit": 3, "eval_strategy": "no", "bf16": False,
         **training}
    return RunConfig.from_dict({"name": name, "output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "evaluate_before": False})


def train(cfg, resume_run=None):
    run = resume_run or new_run_dir(cfg)
    run_training(cfg, run, resume=resume_run is not None, progress=False)
    return run


def test_nan_loss_halts_at_its_step_and_keeps_the_last_good_checkpoint(tiny_bert, data_csv, tmp_path, monkeypatch):
    orig = WorkbenchTrainer.compute_loss

    def nan_at_7(self, model, inputs, *a, **k):
        loss = orig(self, model, inputs, *a, **k)
        if self.state.global_step + 1 == 7:
            loss = loss * float("nan")
        return loss
    monkeypatch.setattr(WorkbenchTrainer, "compute_loss", nan_at_7)
    cfg = cfg_for(tiny_bert, data_csv, tmp_path)
    run = new_run_dir(cfg)
    with pytest.raises(TrainingHalted, match="at step 7"):
        run_training(cfg, run, progress=False)
    st = run.status()
    assert st["state"] == "failed" and "step 7" in st["error"] and "learning_rate" in st["error"]
    m = run.metrics()
    assert m[m["step"] == 7]["nan"].iloc[-1] is True or bool(m[m["step"] == 7]["nan"].iloc[-1])
    assert m.query("kind == 'train' and step < 7")["loss"].notna().all()  # NaN never hidden behind old values
    assert run.latest_checkpoint().name == "checkpoint-4"
    from workbench.figures.training import loss_figure
    marks = [t for t in loss_figure(run).data if t.name == "halted: NaN loss"]
    assert len(marks) == 1 and list(marks[0].x) == [7]  # the curve shows where it broke


def test_training_oom_halves_batch_doubles_accumulation_and_resume_reuses_it(tiny_bert, data_csv, tmp_path,
                                                                             monkeypatch):
    seen: list[int] = []
    orig = WorkbenchTrainer.training_step

    def oom_above_4(self, model, inputs, *a, **k):
        if inputs["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append(inputs["input_ids"].shape[0])
        return orig(self, model, inputs, *a, **k)
    monkeypatch.setattr(WorkbenchTrainer, "training_step", oom_above_4)
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, max_steps=10, save_steps=5)
    run = train(cfg)
    st = run.status()
    assert st["state"] == "completed"
    assert st["batch_override"] == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert set(seen) <= {4, 2, 1} and len(seen) == 20  # 10 steps x 2 micro-batches
    events = run.metrics().query("kind == 'event'")
    assert events["event"].tolist() == ["oom"]
    # resume a stopped run: the smaller batch is reused without a new OOM
    seen.clear()
    run.update_status(state="stopped")
    cfg2 = cfg.override({"training.max_steps": 14})
    run.config_file.write_text(cfg2.to_yaml())
    train(cfg2, resume_run=run)
    assert seen and set(seen) <= {4, 2, 1}
    assert run.metrics().query("kind == 'event'").shape[0] == 1


def test_training_oom_at_batch_one_is_a_clear_error(tiny_bert, data_csv, tmp_path, monkeypatch):
    def always_oom(self, model, inputs, *a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000000000 bytes.")
    monkeypatch.setattr(WorkbenchTrainer, "training_step", always_oom)
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, per_device_train_batch_size=2)
    run = new_run_dir(cfg)
    with pytest.raises(TrainingHalted, match="even at batch size 1"):
        run_training(cfg, run, progress=False)
    assert "max_length" in run.status()["error"]


def test_eval_oom_shrinks_only_the_eval_batch(tiny_bert, data_csv, tmp_path, monkeypatch):
    orig = WorkbenchTrainer.prediction_step

    def oom_above_8(self, model, inputs, *a, **k):
        if inputs["input_ids"].shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return orig(self, model, inputs, *a, **k)
    monkeypatch.setattr(WorkbenchTrainer, "prediction_step", oom_above_8)
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, max_steps=8, eval_strategy="steps", eval_steps=4,
                  per_device_eval_batch_size=32)
    run = train(cfg)
    st = run.status()
    assert st["state"] == "completed" and st["eval_batch_size"] == 8 and "batch_override" not in st
    assert run.metrics().query("kind == 'eval'").shape[0] == 2


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tiny_bert, data_csv, tmp_path, monkeypatch):
    orig = WorkbenchTrainer._save_rng_state

    def disk_full_on_second(self, output_dir):
        if self.state.global_step == 8:
            Path(output_dir, "half-written.bin").write_bytes(b"\0" * 10)
            raise OSError(28, "No space left on device")
        return orig(self, output_dir)
    monkeypatch.setattr(WorkbenchTrainer, "_save_rng_state", disk_full_on_second)
    cfg = cfg_for(tiny_bert, data_csv, tmp_path)
    run = new_run_dir(cfg)
    with pytest.raises(OSError):
        run_training(cfg, run, progress=False)
    names = sorted(p.name for p in run.checkpoints_dir.iterdir())
    assert "checkpoint-4" in names and "checkpoint-8" not in names  # the partial one stays in .staging
    assert run.latest_checkpoint().name == "checkpoint-4"
    assert (run.checkpoints_dir / "checkpoint-4" / "model.safetensors").exists()
    assert "No space left" in run.status()["error"]
    monkeypatch.setattr(WorkbenchTrainer, "_save_rng_state", orig)
    train(cfg, resume_run=run)  # resumes from checkpoint-4 and finishes
    assert run.status()["state"] == "completed" and run.status()["step"] == 24


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(run.model_dir / "model.safetensors")


def test_stop_and_resume_match_an_uninterrupted_run(tiny_bert, data_csv, tmp_path, monkeypatch):
    ref = train(cfg_for(tiny_bert, data_csv, tmp_path, name="straight"))
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, name="stopped")
    run = new_run_dir(cfg)
    from workbench import trainer as trainer_mod
    orig = trainer_mod.RunDirCallback.on_step_end

    def stop_at_10(self, args, state, control, **kw):
        if state.global_step == 10:
            self.run.request_stop()
        return orig(self, args, state, control, **kw)
    monkeypatch.setattr(trainer_mod.RunDirCallback, "on_step_end", stop_at_10)
    run_training(cfg, run, progress=False)
    assert run.status()["state"] == "stopped" and run.latest_checkpoint().name == "checkpoint-10"
    monkeypatch.setattr(trainer_mod.RunDirCallback, "on_step_end", orig)
    train(cfg, resume_run=run)
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    la = ref.metrics().query("kind == 'train'").set_index("step")
    lb = run.metrics().query("kind == 'train'").drop_duplicates("step", keep="last").set_index("step")
    assert la["learning_rate"].tolist() == pytest.approx(lb["learning_rate"].tolist())
    assert la["loss"].tolist() == pytest.approx(lb["loss"].tolist(), abs=1e-5)


def test_keep_best_survives_rotation(tiny_bert, data_csv, tmp_path, monkeypatch):
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])
    from workbench.tasks import get_task
    monkeypatch.setattr(get_task("text-classification"), "compute_metrics", lambda p: {"accuracy": next(scores)})
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, max_steps=16, eval_strategy="steps", eval_steps=4, save_steps=4,
                  save_total_limit=2, load_best_model_at_end=True)
    run = train(cfg)
    names = [p.name for p in run.checkpoints()]
    assert names == ["checkpoint-4", "checkpoint-16"]  # 8 and 12 rotated out; the best (4) kept
    state = json.loads((run.checkpoints_dir / "checkpoint-16" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith("checkpoints/checkpoint-4")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['WB_MARKER']}",))


def test_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tiny_bert, data_csv, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    monkeypatch.setenv("WB_MARKER", str(marker))
    cfg = cfg_for(tiny_bert, data_csv, tmp_path, max_steps=8)
    run = train(cfg)
    run.update_status(state="stopped")
    run.config_file.write_text(cfg.override({"training.max_steps": 12}).to_yaml())
    ckpt = run.latest_checkpoint()
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt"):
        with open(ckpt / name, "wb") as f:
            pickle.dump(_Payload(), f)
    with pytest.raises(WorkbenchError, match="refused"):
        train(cfg.override({"training.max_steps": 12}), resume_run=run)
    assert not marker.exists()


def test_pickle_weights_are_not_executed_even_when_allowed(tiny_bert, tmp_path, monkeypatch):
    import shutil
    from workbench.config import ModelConfig
    from workbench.models import load_classifier
    marker = tmp_path / "PWNED"
    monkeypatch.setenv("WB_MARKER", str(marker))
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_bert / "config.json", folder)
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(WorkbenchError):
        load_classifier(ModelConfig(str(folder)), ["a", "b"])
    with pytest.raises(WorkbenchError):
        load_classifier(ModelConfig(str(folder), allow_pickle=True), ["a", "b"])
    assert not marker.exists()
