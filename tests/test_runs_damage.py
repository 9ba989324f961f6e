"""Run directories under races and damage (issue 12, items 1, 2, 6, 7): two launches with one name,
a stop racing completion, damaged eval.json / labels.json, damaged checkpoints on resume."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.errors import RunError
from workbench.rundir import RunDir, new_run_dir


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "d.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


def cfg_for(model, data, out, name=None, **training) -> RunConfig:
    t = {"max_steps": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
         "save_strategy": "steps", "save_steps": 4, "save_total_limit": 3, "eval_strategy": "no", "bf16": False,
         **training}
    return RunConfig.from_dict({"name": name, "output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "evaluate_before": False})


def _race(n: int, fn) -> list:
    """Call `fn(i)` from `n` threads released at once; return each result or the exception it raised."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the race's losers are part of the result
            out[i] = e
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# --- 1: two launches with the same name ---------------------------------------------------------
def test_i12_1_launch_race_one_winner(tmp_path, monkeypatch):
    import workbench.launch as launch_mod
    # Only the claim of the run directory races here; no training process is started.
    monkeypatch.setattr(launch_mod, "_spawn", lambda run, resume: launch_mod.RunHandle(run))
    for round_ in range(15):
        cfg = RunConfig.from_dict({"name": f"same-{round_}", "output_dir": str(tmp_path),
                                   "model": {"name_or_path": "minilm"}, "data": {"source": "rotten_tomatoes"}})
        out = _race(8, lambda i: launch_mod.launch(cfg))
        won = [h for h in out if isinstance(h, launch_mod.RunHandle)]
        lost = [e for e in out if not isinstance(e, launch_mod.RunHandle)]
        assert len(won) == 1, f"round {round_}: {len(won)} launches claimed one run directory"
        assert all(isinstance(e, RunError) and "already exists" in str(e) and f"same-{round_}" in str(e)
                   for e in lost), lost
        assert won[0].path == tmp_path / f"same-{round_}" and won[0].run.config().name == f"same-{round_}"
    # An existing empty folder with the run's name is still taken over by one launch, the others refused.
    (tmp_path / "empty").mkdir()
    cfg = RunConfig.from_dict({"name": "empty", "output_dir": str(tmp_path), "model": {"name_or_path": "minilm"},
                               "data": {"source": "rotten_tomatoes"}})
    out = _race(8, lambda i: launch_mod.launch(cfg))
    assert sum(isinstance(h, launch_mod.RunHandle) for h in out) == 1
    # Auto-generated names never collide: each launch gets its own folder (a -2, -3 ... suffix).
    auto = RunConfig.from_dict({"output_dir": str(tmp_path / "auto"), "model": {"name_or_path": "minilm"},
                                "data": {"source": "rotten_tomatoes"}})
    out = _race(8, lambda i: launch_mod.launch(auto))
    assert all(isinstance(h, launch_mod.RunHandle) for h in out), out
    paths = {h.path for h in out}
    assert len(paths) == 8
    assert {RunDir(p).config().name for p in paths} == {p.name for p in paths}


# --- 2: status.json writers racing ---------------------------------------------------------------
def _fresh_run(tmp_path: Path, name: str) -> RunDir:
    cfg = RunConfig.from_dict({"name": name, "output_dir": str(tmp_path), "model": {"name_or_path": "minilm"},
                               "data": {"source": "rotten_tomatoes"}})
    return new_run_dir(cfg)


def test_i12_2_status_race_stop_vs_complete(tmp_path):
    import os
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # the worker's pid once it has exited: a "stopping" run with it reads as failed
    for i in range(40):
        run = _fresh_run(tmp_path, f"r{i}")
        run.update_status(state="running", pid=os.getpid(), step=7, total_steps=8)
        # One thread is the worker finishing, the other a `workbench stop` arriving at that moment.
        out = _race(2, lambda k: run.update_status(state="completed", phase=None, step=8, pid=dead.pid) if k == 0
                    else run.request_stop())
        assert not [e for e in out if isinstance(e, Exception)], out
        raw = json.loads(run.status_file.read_text())
        assert raw["state"] == "completed", f"round {i}: a stop overwrote the completed state with {raw['state']!r}"
        assert run.status()["state"] == "completed" and raw["step"] == 8
    # A stop after the end never turns a finished run back into "stopping".
    for final in ("completed", "failed", "stopped"):
        run.update_status(state=final)
        run.request_stop()
        run.update_status(state="stopping")
        assert json.loads(run.status_file.read_text())["state"] == final
    # Many writers of different fields at once (the worker's progress, launch's pid, a stop): none is lost.
    run = _fresh_run(tmp_path, "many")
    _race(8, lambda k: [run.update_status(**{f"k{k}_{j}": j}) for j in range(15)])
    st = json.loads(run.status_file.read_text())
    assert sum(key.startswith("k") for key in st) == 8 * 15, "concurrent status updates were lost"
    assert not list(run.path.glob(".*.tmp"))
