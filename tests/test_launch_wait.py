"""`RunHandle.wait()` in a notebook (issue 13, item 13): interrupting the wait stops the run (a kernel
interrupt is a SIGINT to the kernel; the run's own process, in its own session, never sees it), the
wait draws a progress bar that reaches the total, and a second launch beside a running one says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
import warnings

import pytest
import tqdm.auto

import workbench.launch as launch_mod
from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.launch import RunHandle, launch
from workbench.rundir import new_run_dir


def _cfg(model, data, out, name, **training):
    return RunConfig.from_dict({
        "name": name, "output_dir": str(out), "evaluate_before": False,
        "model": {"name_or_path": str(model)}, "data": {"source": str(data)},
        "training": {"max_steps": 1500, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "no", "eval_strategy": "no", "bf16": False, **training}})


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "d.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar wait() makes (tqdm.auto is what it draws with), kept for inspection after close."""
    made = []

    class Recorded(tqdm.auto.tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    return made


def test_interrupting_wait_stops_the_run_and_says_how_to_resume(tiny_bert, data, tmp_path, capsys):
    h = launch(_cfg(tiny_bert, data, tmp_path / "runs", "interrupted"))
    waiting = threading.Event()

    def interrupt_once_training():  # what Jupyter's interrupt does: SIGINT to the kernel process
        deadline = time.time() + 300
        while waiting.is_set() and time.time() < deadline:
            if (h.run.status().get("step") or 0) >= 2:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    # A Jupyter kernel turns SIGINT into KeyboardInterrupt; a shell's background job (CI) starts with it ignored.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    waiting.set()
    t = threading.Thread(target=interrupt_once_training, daemon=True)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):  # re-raised: a "Run All" must not go on
            h.wait()
        waiting.clear()
        assert h.run.status()["state"] in ("stopping", "stopped")
        assert h.process.wait(timeout=120) == 0  # the worker exits by itself
        st = h.run.status()
        assert st["state"] == "stopped" and 2 <= st["step"] < 1500, st
        assert st["checkpoint"] and (h.run.checkpoints_dir / st["checkpoint"]).is_dir()
        out = capsys.readouterr().out
        assert f"interrupted: run interrupted stopped at step {st['step']}" in out, out
        assert "resume" in out and str(h.path) in out
    finally:
        signal.signal(signal.SIGINT, before)
        waiting.clear()
        if h.process.poll() is None:
            h.process.kill()
            h.process.wait()


def test_wait_draws_a_bar_that_reaches_the_total_with_the_loss(tmp_path, tiny_bert, data, monkeypatch, bars):
    # A stand-in worker: each of wait()'s sleeps moves it one step; the handle watches this process's pid.
    run = new_run_dir(_cfg(tiny_bert, data, tmp_path / "runs", "bar"))
    run.update_status(state="running", pid=os.getpid(), phase="loading the model and data")
    total, step = 10, [0]

    def sleep(_):
        if step[0] == total:
            run.update_status(state="completed", phase=None, step=total)
            return
        step[0] += 1
        run.append_metrics({"kind": "train", "step": step[0], "loss": 1.0 / step[0]})
        run.update_status(phase="training", step=step[0], total_steps=total)

    monkeypatch.setattr(launch_mod, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    st = RunHandle(run).wait()
    assert st["state"] == "completed"
    assert len(bars) == 1
    bar = bars[0]
    assert bar.total == total and bar.n == total
    assert bar.postfix == f"loss={1.0 / total:.4f}"


def test_a_second_launch_beside_a_running_one_says_so(tiny_bert, data, tmp_path, monkeypatch):
    # The runs' processes are stand-ins that only sleep: this is about the handles, not training.
    procs = []

    def spawn(run, resume, **grants):
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        run.update_status(pid=procs[-1].pid)
        return RunHandle(run, procs[-1])

    monkeypatch.setattr(launch_mod, "_spawn", spawn)
    monkeypatch.setattr(launch_mod, "_STARTED", [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the first launch says nothing
            first = launch(_cfg(tiny_bert, data, tmp_path, "first"))
        with pytest.warns(UserWarning, match=r"run first \(started from this process.*is still running") as rec:
            launch(_cfg(tiny_bert, data, tmp_path, "second"))
        msg = str(rec[0].message)
        assert "run second" in msg and f"workbench stop {first.path}" in msg and ".stop()" in msg
        assert rec[0].filename == __file__  # points at the caller's line (the notebook cell), not the package

        for p in procs:
            p.kill()
            p.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is running any more: nothing to say
            launch(_cfg(tiny_bert, data, tmp_path, "third"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_stop_signal_ends_with_its_run_and_handlers_come_back():
    """CLI training in-process (a notebook, a test session) must not carry one run's Ctrl+C into the next run."""
    from workbench.trainer import SIGNALLED
    from workbench.training import stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_signals():
        assert not SIGNALLED["stop"]
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not SIGNALLED["stop"] and time.time() < deadline:
            time.sleep(0.01)
        assert SIGNALLED["stop"]  # asked to stop gracefully, not killed
    assert not SIGNALLED["stop"]
    assert signal.getsignal(signal.SIGTERM) is before
