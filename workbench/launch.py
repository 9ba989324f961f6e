"""Start runs in their own process and watch them through their run directory.

A run never lives inside a notebook kernel or a Streamlit script: it is a child process
(`python -m workbench.worker RUN`) in its own session, so closing a browser tab or restarting a
kernel does not stop it. Everything about it is read back from the run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .errors import RunError
from .rundir import ACTIVE, RunDir, new_run_dir, pid_alive


class RunHandle:
    """A run started by `launch()` or found on disk: status, metrics, stop, wait."""

    def __init__(self, run: RunDir, process: subprocess.Popen | None = None):
        self.run, self.process = run, process

    def __repr__(self) -> str:
        return f"RunHandle({str(self.run.path)!r}, state={self.status().get('state')!r})"

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else self.run.status().get("pid")

    def status(self) -> dict[str, Any]:
        if self.process is not None:
            self.process.poll()  # reap, so a finished child is not mistaken for a live one
        return self.run.status()

    def metrics(self) -> pd.DataFrame:
        return self.run.metrics()

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.status().get("state") in ACTIVE and pid_alive(self.pid)

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the run ends (or `timeout` seconds pass); return its status."""
        end = None if timeout is None else time.time() + timeout
        while self.is_running():
            if end is not None and time.time() > end:
                raise TimeoutError(f"run {self.run.name} still running after {timeout}s")
            time.sleep(poll)
        return self.status()

    def stop(self, wait: bool = True, timeout: float = 120) -> dict[str, Any]:
        """Ask the run to checkpoint and stop (a STOP file plus SIGTERM); optionally wait for it."""
        self.run.request_stop()
        pid = self.pid
        if pid and self.is_running():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.wait(timeout) if wait else self.status()


def _spawn(run: RunDir, resume: bool, trust_remote_code: bool, allow_pickle: bool) -> RunHandle:
    # The grants travel on the command line, from the caller: the worker never takes them from the run's files.
    cmd = ([sys.executable, "-m", "workbench.worker", str(run.path)] + (["--resume"] if resume else [])
           + (["--trust-remote-code"] if trust_remote_code else []) + (["--allow-pickle"] if allow_pickle else []))
    log = open(run.log_file, "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    # start_new_session: the run survives its parent (a Streamlit server, a kernel) and Ctrl+C there.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, close_fds=True)
    log.close()
    run.update_status(pid=proc.pid)
    return RunHandle(run, proc)


def launch(config: RunConfig) -> RunHandle:
    """Validate `config`, create its run directory and start training in a separate process."""
    from .models import check_model_source
    config.check()
    check_model_source(config.model)  # a wrong model path is an error here, not a failed run
    # The caller's own config: its model settings are the user's choice, so they are the grants.
    return _spawn(new_run_dir(config), resume=False, trust_remote_code=config.model.trust_remote_code,
                  allow_pickle=config.model.allow_pickle)


def resume(run: str | Path | RunDir, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> RunHandle:
    """Continue a stopped or failed run from its last complete checkpoint, in a separate process.

    The run's config.yaml cannot turn on remote code or pickle loading; `trust_remote_code` /
    `allow_pickle` can. A config that asks for more is refused here, before any process starts.
    """
    r = run if isinstance(run, RunDir) else RunDir(run)
    r.require()
    r.config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    st = r.require_idle("stop it before resuming.")
    if st.get("state") == "completed":
        raise RunError(f"run {r.name} has already completed; start a new run to train further.")
    if r.stop_file.exists():
        r.stop_file.unlink()
    r.update_status(state="queued", error=None)
    return _spawn(r, resume=True, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def attach(run: str | Path) -> RunHandle:
    """A handle on an existing run directory (e.g. after reopening the dashboard)."""
    return RunHandle(RunDir(run).require())
