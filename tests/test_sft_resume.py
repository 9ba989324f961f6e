"""Stop and resume of a causal-lm-sft run (LoRA on tiny Llama): it continues from its checkpoint, and ends where
the same run without a stop ends."""

from __future__ import annotations

import pytest

from test_sft import _chat_file
from workbench.config import RunConfig
from workbench.rundir import new_run_dir
from workbench.trainer import RunDirCallback
from workbench.training import run_training

STOP_AT, STEPS = 6, 14


def _cfg(model, data, out, name: str) -> RunConfig:
    return RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(out), "name": name, "model": {"name_or_path": str(model)},
        "data": {"source": str(data), "max_length": 64, "max_eval_samples": 12},
        "training": {"max_steps": STEPS, "learning_rate": 5e-3, "per_device_train_batch_size": 8,
                     "logging_steps": 1, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 10_000},
        "peft": {"method": "lora", "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}}})


def test_a_stopped_sft_run_resumes_and_ends_like_an_uninterrupted_one(tiny_llama, tmp_path, monkeypatch):
    data = _chat_file(tmp_path / "chat.jsonl", 120)
    straight = run_training(c := _cfg(tiny_llama, data, tmp_path, "straight"), new_run_dir(c), progress=False)

    # A stop asked for after step STOP_AT (as `workbench stop` does: the STOP file), at no particular time.
    real = RunDirCallback.on_step_end

    def stop_at(self, args, state, control, **kw):
        if state.global_step == STOP_AT:
            self.run.request_stop()
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(RunDirCallback, "on_step_end", stop_at)
    cfg = _cfg(tiny_llama, data, tmp_path, "stopped")
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    st = run.status()
    assert st["state"] == "stopped" and st["step"] == STOP_AT
    ckpt = run.latest_checkpoint()
    assert ckpt is not None and ckpt.name == f"checkpoint-{STOP_AT}"
    assert (ckpt / "adapter_model.safetensors").exists()  # the LoRA adapter, not a whole model
    assert "before" in run.evaluation() and "after" not in run.evaluation()

    monkeypatch.setattr(RunDirCallback, "on_step_end", real)
    run_training(cfg, run, resume=True, progress=False)
    assert run.status()["state"] == "completed" and run.status()["step"] == STEPS
    steps = run.metrics().query("kind == 'train'")["step"].tolist()
    assert steps == list(range(1, STEPS + 1))  # continued from STOP_AT + 1, not restarted
    # the same data order, adapter and optimizer state: the same losses after the stop and the same end
    a = run.metrics().query("kind == 'train'").set_index("step")["loss"]
    b = straight.metrics().query("kind == 'train'").set_index("step")["loss"]
    assert a.loc[STOP_AT + 1:].tolist() == pytest.approx(b.loc[STOP_AT + 1:].tolist(), rel=1e-4)
    ev, ref = run.evaluation(), straight.evaluation()
    assert ev["after"]["loss"] == pytest.approx(ref["after"]["loss"], rel=1e-4)
    assert ev["before"]["loss"] == pytest.approx(ref["before"]["loss"])
    assert (run.predictions()["predicted"] == straight.predictions()["predicted"]).all()
