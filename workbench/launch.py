"""Start runs in their own process and watch them through their run directory.

A run never lives inside a notebook kernel or a Streamlit script: it is a child process
(`python -m workbench.worker RUN`) in its own session, so closing a browser tab or restarting a
kernel does not stop it. Everything about it is read back from the run directory.

Interrupting `RunHandle.wait()` (Ctrl+C, a notebook's stop button) is the exception: a person who
interrupts the cell that waits for a run means to stop that run, so the run checkpoints and stops.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .errors import RunError, WorkbenchError
from .rundir import ACTIVE, RunDir, new_run_dir, pid_alive

INTERRUPT_GRACE = 20.0  # seconds wait() gives an interrupted run to checkpoint and exit before it returns


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

    def wait(self, timeout: float | None = None, poll: float = 0.5, progress: bool = True) -> dict[str, Any]:
        """Block until the run ends (or `timeout` seconds pass); return its status.

        With `progress`, a bar of step / total_steps with the ETA and the last training loss (tqdm.auto: a
        widget in Jupyter, text in a terminal), after a line for each phase before and after training.

        Interrupting the wait (Ctrl+C, or a notebook's interrupt) stops the run: it saves a checkpoint and
        exits, a line says so and how to resume, and the KeyboardInterrupt is raised again, so that a
        "Run All" does not go on to the cells that need the finished run.
        """
        end = None if timeout is None else time.monotonic() + timeout
        bar = _Progress(self.run) if progress else None
        try:
            while self.is_running():
                if bar is not None:
                    bar.show(self.status())
                if end is not None and time.monotonic() > end:
                    raise TimeoutError(f"run {self.run.name} still running after {timeout}s")
                time.sleep(poll)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
                bar = None
            if self.is_running():
                self._stop_after_interrupt()
            raise
        finally:
            if bar is not None:
                bar.close(self.status())
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
        return self.wait(timeout, progress=False) if wait else self.status()

    def _stop_after_interrupt(self, grace: float = INTERRUPT_GRACE) -> None:
        """Stop the run whose wait was interrupted, wait up to `grace` seconds for it, and say what happened."""
        name, path = self.run.name, str(self.run.path)
        print(f"interrupted: stopping run {name} (it saves a checkpoint first) ...", flush=True)
        try:
            self.stop(wait=False)
            end = time.monotonic() + grace
            while self.is_running() and time.monotonic() < end:
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second interrupt: stop waiting; the run still stops on its own
            pass
        try:
            st = self.status()
        except WorkbenchError:
            st = {}
        hint = f"resume with workbench.launch.resume({path!r}) or `workbench resume {shlex.quote(path)}`"
        state = st.get("state")
        if self.is_running():
            print(f"interrupted: run {name} is stopping: it saves a checkpoint at the end of the current training "
                  f"step, then exits (follow it with workbench.launch.attach({path!r}).wait()); {hint}.", flush=True)
        elif state == "stopped":
            ckpt = f"checkpoint kept: {st['checkpoint']}" if st.get("checkpoint") else "checkpoint kept"
            print(f"interrupted: run {name} stopped at step {st.get('step')} ({ckpt}); {hint}.", flush=True)
        elif state == "completed":
            print(f"interrupted: run {name} had already finished training and completed.", flush=True)
        else:
            why = f": {st['error']}" if st.get("error") else ""
            print(f"interrupted: run {name} ended {state or 'without a status'}{why} (see {self.run.log_file}).",
                  flush=True)


class _Progress:
    """The bar wait() draws from status.json and metrics.jsonl (the files the CLI and the dashboard read)."""

    def __init__(self, run: RunDir):
        self.run, self.bar, self.phase, self.loss_step = run, None, None, None

    def _say(self, text: str) -> None:
        from tqdm.auto import tqdm
        tqdm.write(text) if self.bar is not None else print(text, flush=True)

    def show(self, st: dict[str, Any]) -> None:
        phase, total, step = st.get("phase"), st.get("total_steps"), int(st.get("step") or 0)
        if phase != self.phase and phase not in (None, "training"):
            self._say(f"... {phase}")
        self.phase = phase
        if self.bar is None and total and phase == "training":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=min(step, total), desc=self.run.name, unit="step",
                            dynamic_ncols=True)
        if self.bar is None:
            return
        if total and total != self.bar.total:
            self.bar.total = total
        if step != self.loss_step:  # metrics.jsonl grows by a row per logged step: read it only when it moved
            self.loss_step = step
            try:
                m = self.run.metrics()
            except WorkbenchError:
                m = None
            if m is not None and len(m) and "loss" in m:
                loss = m["loss"].dropna()
                if len(loss):
                    self.bar.set_postfix(loss=f"{loss.iloc[-1]:.4f}", refresh=False)
        if step > self.bar.n:  # only then: an unchanged bar redrawn every poll would fill a log file
            self.bar.update(step - self.bar.n)  # update(), not n=: tqdm's rate and ETA follow the increments

    def close(self, st: dict[str, Any] | None = None) -> None:
        if st is not None:
            self.loss_step = None  # the last loss may have been logged after the last step was seen
            self.show(st)
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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


# Runs this process started (launch, resume), to say so when another starts beside one still running.
_STARTED: list[RunHandle] = []


def _started(handle: RunHandle) -> RunHandle:
    """Remember `handle`; warn when a run started earlier from this process is still running.

    The usual way to get there is re-running a notebook cell that launched a run: the first run is still
    training in its own process, the variable that held its handle now holds the new one, and the two
    share the CPU cores. It is not refused (two runs at once can be meant, on a big machine), but said,
    with the command that stops the old one.
    """
    def running(h: RunHandle) -> bool:
        try:
            return h.is_running()
        except WorkbenchError:  # its run directory was damaged or removed: nothing to say about it
            return False

    _STARTED[:] = [h for h in _STARTED if running(h)]
    for old in _STARTED:
        path = str(old.path)
        try:
            st = old.run.status()
        except WorkbenchError:
            st = {}
        where = f"step {st.get('step')}/{st.get('total_steps')}" if st.get("total_steps") else st.get("phase")
        warnings.warn(
            f"run {old.run.name} (started from this process, pid {old.pid}{f', {where}' if where else ''}) is still "
            f"running, and run {handle.run.name} now shares the machine with it, so both go slower. If the new "
            f"run replaces it, stop it (it keeps a checkpoint): workbench.launch.attach({path!r}).stop() here, or "
            f"`workbench stop {shlex.quote(path)}` in a terminal.", UserWarning, stacklevel=3)
    _STARTED.append(handle)
    return handle


def launch(config: RunConfig) -> RunHandle:
    """Validate `config`, create its run directory and start training in a separate process.

    Warns when a run started earlier from this process (e.g. by the same notebook cell) is still running.
    """
    from .models import check_model_source
    config.check()
    if config.distributed.nnodes > 1 and not config.name:
        raise RunError("several machines write one run directory: give the run a name every machine uses "
                       "(RunConfig.name), then start the other machines with `workbench train CONFIG --name NAME "
                       "--node-rank R`.")
    check_model_source(config.model)  # a wrong model path is an error here, not a failed run
    # The caller's own config: its model settings are the user's choice, so they are the grants.
    return _started(_spawn(new_run_dir(config), resume=False, trust_remote_code=config.model.trust_remote_code,
                           allow_pickle=config.model.allow_pickle))


def resume(run: str | Path | RunDir, *, trust_remote_code: bool = False, allow_pickle: bool = False,
           nproc: int | None = None) -> RunHandle:
    """Continue a stopped or failed run from its last complete checkpoint, in a separate process.

    The run's config.yaml cannot turn on remote code or pickle loading; `trust_remote_code` /
    `allow_pickle` can. A config that asks for more is refused here, before any process starts.
    `nproc`: resume on this many processes per machine (DDP and FSDP; `distributed.change_process_count`).
    """
    r = run if isinstance(run, RunDir) else RunDir(run)
    r.require()
    cfg = r.config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    st = r.require_idle("stop it before resuming.")
    if st.get("state") == "completed":
        raise RunError(f"run {r.name} has already completed; start a new run to train further.")
    if nproc is not None and nproc != cfg.distributed.nproc_per_node:
        from .distributed import change_process_count
        change_process_count(r, cfg, nproc)
    if r.stop_file.exists():
        r.stop_file.unlink()
    r.update_status(state="queued", error=None)
    return _started(_spawn(r, resume=True, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle))


def attach(run: str | Path) -> RunHandle:
    """A handle on an existing run directory (e.g. after reopening the dashboard)."""
    return RunHandle(RunDir(run).require())
