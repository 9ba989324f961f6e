"""Experiment tracking (`training.report_to`): TensorBoard event files in the run directory that TensorBoard reads
back, none with report_to [], clear messages for unknown or uninstalled trackers, `workbench tensorboard`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, make_sentiment_frame
from workbench.config import RunConfig
from workbench.errors import WorkbenchError
from workbench.rundir import RunDir, new_run_dir
from workbench.tracking import choose_port, event_files, logdir_for, prepare
from workbench.training import run_training


def _cfg(model: Path, data: Path, out: Path, **training) -> RunConfig:
    t = {"num_train_epochs": 1, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 2,
         "bf16": False, "save_strategy": "no", "eval_strategy": "epoch", **training}
    return RunConfig.from_dict({"output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "evaluate_before": False})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("track-data") / "sentiment.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def tb_run(tiny_bert, data, tmp_path_factory) -> RunDir:
    cfg = _cfg(tiny_bert, data, tmp_path_factory.mktemp("runs"))  # report_to: the default, tensorboard
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    return run


def test_a_run_writes_event_files_tensorboard_reads_back_with_the_train_loss(tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert RunConfig().training.report_to == ["tensorboard"]
    files = event_files(tb_run.path)
    assert files and all(f.parent == tb_run.path / "tensorboard" for f in files)
    acc = EventAccumulator(str(tb_run.path / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    logged = [r for r in map(json.loads, tb_run.metrics_file.read_text().splitlines()) if r.get("kind") == "train"]
    assert [e.step for e in loss] == [r["step"] for r in logged]
    assert [round(e.value, 4) for e in loss] == [round(r["loss"], 4) for r in logged]
    assert "eval/accuracy" in acc.Tags()["scalars"]
    assert tb_run.status()["report_to"] == ["tensorboard"]


def test_report_to_empty_writes_no_event_files(tiny_bert, data, tmp_path):
    cfg = _cfg(tiny_bert, data, tmp_path, report_to=[], max_steps=2)
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    assert not event_files(tmp_path) and not (run.path / "tensorboard").exists()


def test_unknown_and_uninstalled_trackers_are_named_with_the_fix(monkeypatch):
    problems = RunConfig().override({"training.report_to": ["tensorbord"]}).validate()
    assert any("'tensorbord' is not a tracker" in p and "did you mean 'tensorboard'" in p for p in problems)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlflow", "wandb")
                        else real(name, *a))
    problems = RunConfig().override({"training.report_to": ["tensorboard", "mlflow", "wandb"]}).validate()
    assert any("'mlflow', which is not installed" in p and "pip install mlflow" in p for p in problems)
    assert any("'wandb', which is not installed" in p and "pip install wandb" in p for p in problems)
    assert not any("tensorboard" in p for p in problems)


def test_only_the_main_process_reports_and_wandb_stays_offline_unless_set_up(tmp_path, monkeypatch):
    assert prepare(["tensorboard"], tmp_path / "r", main=False) == []
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert prepare(["tensorboard", "wandb"], tmp_path / "r", main=True) == ["tensorboard", "wandb"]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path / "r")
    monkeypatch.setattr("workbench.tracking._WANDB_SET", [])
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice stands
    prepare(["wandb"], tmp_path / "r2", main=True)
    assert os.environ["WANDB_MODE"] == "online"


def test_tensorboard_folder_messages(tb_run, tmp_path):
    assert logdir_for(tb_run.path) == tb_run.path / "tensorboard"
    assert logdir_for(tb_run.path.parent) == tb_run.path.parent
    with pytest.raises(WorkbenchError, match="no TensorBoard event files"):
        logdir_for(tmp_path)
    with pytest.raises(WorkbenchError, match="not a folder"):
        logdir_for(tmp_path / "missing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(WorkbenchError, match=f"port {s.getsockname()[1]} on 127.0.0.1 is taken"):
            choose_port(s.getsockname()[1])


def test_workbench_tensorboard_serves_the_run_on_localhost(tb_run, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "tensorboard", str(tb_run.path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        assert url in line and str(tb_run.path / "tensorboard") in line
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(url + "data/runs", timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, "tensorboard exited"
                time.sleep(0.3)
        assert body == ["."]  # the run's event files, served
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    out = subprocess.run([sys.executable, "-m", "workbench", "tensorboard", str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 2 and "no TensorBoard event files" in out.stderr


def test_mlflow_stores_beside_the_runs_unless_told_otherwise():
    from workbench.tracking import local_mlflow_uri

    assert local_mlflow_uri(Path("/x/runs"), "3.17.2") == "sqlite:////x/runs/mlflow.db"  # MLflow 3: no folder store
    assert local_mlflow_uri(Path("/x/runs"), "2.22.0") == "file:///x/runs/mlruns"


def test_an_mlflow_run_lands_in_the_runs_folder(tiny_bert, data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")  # not a dependency: checked where it is installed
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tiny_bert, data, tmp_path / "runs", report_to=["mlflow"], max_steps=2, logging_steps=1,
               eval_strategy="no")
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert mlflow.get_tracking_uri().startswith("sqlite:///" + str(tmp_path / "runs"))
    found = mlflow.search_runs(search_all_experiments=True)
    assert list(found["tags.mlflow.runName"]) == [run.name] and found["metrics.loss"].notna().all()
