"""Training runs on tiny models: loss goes down, the run directory is complete, stop/resume,
the CLI and Python give the same run, LoRA saves a standard adapter, several processes work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.launch import launch, resume
from workbench.rundir import RunDir, new_run_dir
from workbench.training import run_training

RUN_FILES = {"config.yaml", "labels.json", "data_report.json", "status.json", "metrics.jsonl", "eval.json",
             "predictions.jsonl", "predictions_before.jsonl", "checkpoints", "model"}


def tiny_config(model: Path, data: Path, out: Path, **training) -> RunConfig:
    t = {"num_train_epochs": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 5,
         "save_total_limit": 1, **training}
    # Tiny models start from random embeddings: they must train them to learn anything.
    return RunConfig.from_dict({"output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "peft": {"freeze_embeddings": False}})


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "sentiment.csv"
    make_sentiment_frame(200).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def bert_run(tiny_bert, data_csv, tmp_path_factory) -> RunDir:
    cfg = tiny_config(tiny_bert, data_csv, tmp_path_factory.mktemp("runs"))
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    return run


def test_short_run_lowers_loss_and_writes_the_run_directory(bert_run):
    assert RUN_FILES <= {p.name for p in bert_run.path.iterdir()}
    st = bert_run.status()
    assert st["state"] == "completed" and st["step"] == st["total_steps"] == 72  # ceil(140 / 16) x 8 epochs
    m = bert_run.metrics()
    train = m[m["kind"] == "train"]
    assert train["loss"].iloc[-3:].mean() < 0.5 * train["loss"].iloc[:3].mean()
    assert (train["tokens_per_second"] > 0).all() and train["learning_rate"].notna().all()
    assert set(m["kind"]) >= {"train", "eval", "summary"}
    ev = bert_run.evaluation()
    assert ev["after"]["accuracy"] > 0.9 and ev["after"]["accuracy"] > ev["before"]["accuracy"] + 0.2
    pred = bert_run.predictions()
    assert len(pred) == 40 and {"text", "gold", "predicted", "p_neg", "p_pos", "loss", "correct", "source"} <= set(pred)
    assert ((pred["p_neg"] + pred["p_pos"] - 1).abs() < 1e-5).all()
    assert bert_run.labels() == ["neg", "pos"]
    model_files = {p.name for p in bert_run.model_dir.iterdir()}
    assert "model.safetensors" in model_files and not any(f.endswith(".bin") for f in model_files)
    cfgjson = json.loads((bert_run.model_dir / "config.json").read_text())
    assert cfgjson["id2label"] == {"0": "neg", "1": "pos"}


def test_predictor_and_evaluate_run_agree_with_stored_predictions(bert_run):
    from workbench.evaluate import evaluate_run
    from workbench.predict import Predictor
    stored = bert_run.predictions()
    p = Predictor.from_run(bert_run)
    out = p.predict(stored["text"].tolist())
    assert (out["predicted"].values == stored["predicted"].values).mean() > 0.97  # bf16 may flip near-ties
    again = evaluate_run(bert_run)["metrics"]
    assert abs(again["accuracy"] - bert_run.evaluation()["after"]["accuracy"]) < 0.03


def test_same_seed_twice_gives_identical_curves(tiny_bert, data_csv, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(tiny_bert, data_csv, tmp_path, num_train_epochs=2, bf16=False)
        cfg.name = name
        run = new_run_dir(cfg)
        run_training(cfg, run, progress=False)
        runs.append(run.metrics().query("kind == 'train'")["loss"].tolist())
    assert runs[0] == runs[1]


def test_lora_on_llama_saves_a_standard_adapter(tiny_llama, data_csv, tmp_path):
    cfg = tiny_config(tiny_llama, data_csv, tmp_path, learning_rate=5e-3, num_train_epochs=5)
    cfg.peft.method, cfg.peft.merge_adapter = "lora", True
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    st = run.status()
    assert st["state"] == "completed" and st["parameters"]["trainable"] < st["parameters"]["total"] / 2
    files = {p.name for p in run.model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "merged"} <= files
    assert json.loads((run.model_dir / "adapter_config.json").read_text())["target_modules"]
    # the adapter loads back through peft onto its base, and the merged model loads on its own
    from transformers import AutoModelForSequenceClassification
    from workbench.models import load_trained
    model, _ = load_trained(run.model_dir)
    assert type(model).__name__.startswith("Peft")
    merged = AutoModelForSequenceClassification.from_pretrained(run.model_dir / "merged")
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    m = run.metrics().query("kind == 'train'")["loss"]
    assert m.iloc[-2:].mean() < m.iloc[:2].mean()


def _wait_for(pred, timeout=120, poll=0.2):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(poll)
    return False


def test_launch_stop_then_resume_continues_from_the_saved_step(tiny_bert, data_csv, tmp_path):
    cfg = tiny_config(tiny_bert, data_csv, tmp_path, max_steps=400, per_device_train_batch_size=4,
                      save_strategy="steps", save_steps=10_000, eval_strategy="no")
    h = launch(cfg)
    assert _wait_for(lambda: (h.status().get("step") or 0) >= 10), h.run.log_file.read_text()[-2000:]
    st = h.stop(wait=True, timeout=120)
    assert st["state"] == "stopped", st
    stopped_at = st["step"]
    ckpt = h.run.latest_checkpoint()
    assert ckpt is not None and ckpt.name == f"checkpoint-{stopped_at}"
    assert 10 <= stopped_at < 400
    h2 = resume(h.run)
    st2 = h2.wait(timeout=180)
    assert st2["state"] == "completed", h.run.log_file.read_text()[-2000:]
    steps = h.run.metrics().query("kind == 'train'")["step"].tolist()
    assert steps == sorted(steps) and steps[-1] == 400  # continued, not restarted
    state = json.loads((h.run.latest_checkpoint() / "trainer_state.json").read_text()) \
        if h.run.latest_checkpoint() else {"global_step": 400}
    assert state["global_step"] == 400


def test_a_killed_run_reads_as_failed_and_can_resume(tiny_bert, data_csv, tmp_path):
    cfg = tiny_config(tiny_bert, data_csv, tmp_path, max_steps=300, per_device_train_batch_size=4,
                      save_strategy="steps", save_steps=20, eval_strategy="no")
    h = launch(cfg)
    assert _wait_for(lambda: h.run.latest_checkpoint() is not None and (h.status().get("step") or 0) > 25)
    os.kill(h.pid, 9)
    h.process.wait()
    st = h.run.status()
    assert st["state"] == "failed" and "ended without finishing" in st["error"]
    st2 = resume(h.run).wait(timeout=180)
    assert st2["state"] == "completed"


def test_cli_and_python_produce_the_same_run_directory(tiny_bert, data_csv, tmp_path):
    from workbench.cli import main
    cfg = tiny_config(tiny_bert, data_csv, tmp_path, num_train_epochs=2)
    cfg_path = tmp_path / "c.yaml"
    cfg.to_yaml(cfg_path)
    assert main(["train", str(cfg_path), "--name", "from-cli"]) == 0
    cfg.name = "from-python"
    h = launch(cfg)
    assert h.wait(timeout=180)["state"] == "completed"
    a, b = RunDir(tmp_path / "from-cli"), RunDir(tmp_path / "from-python")

    def listing(r):  # TensorBoard names its event files by time, host and process id
        return sorted(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", str(p.relative_to(r.path)))
                      for p in r.path.rglob("*") if p.name != "train.log")
    assert listing(a) == listing(b)
    ca, cb = a.config().to_dict(), b.config().to_dict()
    ca.pop("name"), cb.pop("name")
    assert ca == cb
    la = a.metrics().query("kind == 'train'")["loss"].tolist()
    lb = b.metrics().query("kind == 'train'")["loss"].tolist()
    assert la == pytest.approx(lb, rel=1e-6)
    assert a.evaluation()["after"] == b.evaluation()["after"]


def test_two_process_run_with_torchrun(tiny_bert, data_csv, tmp_path):
    cfg = tiny_config(tiny_bert, data_csv, tmp_path, num_train_epochs=2, per_device_train_batch_size=8)
    cfg.name = "ddp"
    cfg_path = tmp_path / "c.yaml"
    cfg.to_yaml(cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", "-m", "workbench", "train", str(cfg_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and (p / "config.yaml").exists()]
    assert [p.name for p in runs] == ["ddp"]  # one run directory, not one per process
    r = RunDir(runs[0])
    st = r.status()
    assert st["state"] == "completed" and st["world_size"] == 2
    # 140 train rows, 8 per device x 2 devices -> 9 steps/epoch -> 18 steps
    assert st["total_steps"] == 18
    assert r.evaluation()["after"]["n"] == 40
