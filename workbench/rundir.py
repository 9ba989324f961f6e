"""The run directory: the only record of a run, and the only thing front ends read.

    RUN/
      config.yaml          resolved RunConfig
      labels.json          class names in id order (the model's id2label)
      data_report.json     the data report
      status.json          state, step/total, ETA, pid, error
      metrics.jsonl        one JSON row per log/eval event
      eval.json            test-split metrics before and after fine-tuning
      predictions.jsonl    per-example test predictions after (predictions_before.jsonl: before)
      checkpoints/         trainer checkpoints (resumable)
      model/               final model (save_pretrained, safetensors) or LoRA adapter; model/merged/
      train.log            stdout/stderr of the run's process
      STOP                 present when a stop was requested
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .errors import RunError
from .paths import runs_root

STATES = ("queued", "running", "stopping", "stopped", "completed", "failed")
ACTIVE = ("queued", "running", "stopping")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write-then-rename so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as None (the reader shows a gap and the status says why)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunDir:
    """Read and write one run directory."""

    def __init__(self, path: "str | Path | RunDir"):
        self.path = Path(path.path if isinstance(path, RunDir) else path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # paths
    config_file = property(lambda self: self.path / "config.yaml")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    labels_file = property(lambda self: self.path / "labels.json")
    report_file = property(lambda self: self.path / "data_report.json")
    eval_file = property(lambda self: self.path / "eval.json")
    predictions_file = property(lambda self: self.path / "predictions.jsonl")
    predictions_before_file = property(lambda self: self.path / "predictions_before.jsonl")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    log_file = property(lambda self: self.path / "train.log")
    stop_file = property(lambda self: self.path / "STOP")

    def exists(self) -> bool:
        return self.config_file.exists()

    def require(self) -> "RunDir":
        if not self.exists():
            raise RunError(f"{self.path} is not a run directory (no config.yaml). Fix: give a folder under "
                           f"{runs_root()} (list them with `workbench runs`).")
        return self

    # config, labels
    def config(self) -> RunConfig:
        return RunConfig.from_yaml(self.require().config_file)

    def labels(self) -> list[str]:
        return json.loads(self.labels_file.read_text()) if self.labels_file.exists() else []

    # status
    def status(self) -> dict[str, Any]:
        """The status, corrected when the process died without saying so (killed, machine rebooted)."""
        try:
            st = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "unknown"}
        if st.get("state") in ("running", "stopping") and st.get("pid") and not pid_alive(st["pid"]):
            st["state"] = "failed"
            st["error"] = st.get("error") or (f"the training process (pid {st['pid']}) ended without finishing; "
                                              f"resume it with `workbench resume {self.path}`.")
        return st

    def update_status(self, **fields: Any) -> dict[str, Any]:
        try:
            st = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            st = {}
        st.update(fields)
        st["updated"] = time.time()
        write_json_atomic(self.status_file, clean_floats(st))
        return st

    # metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean_floats(row), default=_json_default) + "\n")
            f.flush()

    def metrics(self) -> pd.DataFrame:
        """All metric rows (a torn last line from a live writer is skipped)."""
        rows = []
        if self.metrics_file.exists():
            for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return pd.DataFrame(rows)

    # results
    def evaluation(self) -> dict[str, Any]:
        return json.loads(self.eval_file.read_text()) if self.eval_file.exists() else {}

    def predictions(self, which: str = "after") -> pd.DataFrame:
        f = self.predictions_file if which == "after" else self.predictions_before_file
        if not f.exists():
            raise RunError(f"{self.path} has no {f.name} yet: the run has not finished its evaluation "
                           f"(state: {self.status().get('state')}).")
        return pd.read_json(f, lines=True)

    def data_report(self) -> dict[str, Any]:
        return json.loads(self.report_file.read_text()) if self.report_file.exists() else {}

    def require_idle(self, then: str) -> dict[str, Any]:
        """The status, or a `RunError` when the run's process is still alive (`then` says what to do)."""
        st = self.status()
        if st.get("state") in ACTIVE and pid_alive(st.get("pid")):
            raise RunError(f"run {self.name} is still {st['state']} (pid {st['pid']}); {then}")
        return st

    # stop / checkpoints
    def request_stop(self) -> None:
        self.stop_file.touch()
        st = self.status()
        if st.get("state") in ("queued", "running"):
            self.update_status(state="stopping")

    @property
    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder without trainer_state.json is partial)."""
        if not self.checkpoints_dir.exists():
            return []
        found = [p for p in self.checkpoints_dir.glob("checkpoint-*")
                 if p.is_dir() and (p / "trainer_state.json").exists() and re.fullmatch(r"checkpoint-\d+", p.name)]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        c = self.checkpoints()
        return c[-1] if c else None

    def summary(self) -> dict[str, Any]:
        """One row for run listings: name, state, model, data, key metrics."""
        st = self.status()
        from .tasks import TASKS

        try:
            cfg = self.config()
            model, data, method, task = cfg.model.name_or_path, cfg.data.source, cfg.peft.method, cfg.task
        except Exception:
            model = data = method = task = "?"
        ev = self.evaluation()
        before, after = ev.get("before", {}), ev.get("after", {})
        # The task's headline metric (`<name>_before`, `<name>`) and its other metrics after fine-tuning.
        t = TASKS.get(task) or TASKS["text-classification"]
        scores = {m: after.get(m) for m in t.directions if m != "loss"}
        return {"run": self.name, "state": st.get("state"), "task": task, "model": model, "data": data,
                "method": method, "step": st.get("step"), "total_steps": st.get("total_steps"),
                "headline": t.headline, f"{t.headline}_before": before.get(t.headline), **scores,
                "created": st.get("created"), "path": str(self.path)}


def new_run_dir(cfg: RunConfig) -> RunDir:
    """Create a fresh run directory for `cfg` (name from the config, or model-data-time)."""
    root = Path(cfg.output_dir).expanduser() if cfg.output_dir else runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = cfg.name or "-".join([_slug(Path(cfg.model.name_or_path).name), _slug(Path(cfg.data.source).stem),
                                 datetime.now().strftime("%Y%m%d-%H%M%S")])
    path, n = root / base, 2
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            if cfg.name and not any(path.iterdir()):
                break
            if cfg.name and RunDir(path).exists():
                raise RunError(f"A run named {cfg.name!r} already exists at {path}. Fix: choose another name, "
                               f"resume it with `workbench resume {path}`, or delete it.") from None
            path, n = root / f"{base}-{n}", n + 1
    run = RunDir(path)
    cfg = RunConfig.from_dict({**cfg.to_dict(), "name": path.name})
    cfg.to_yaml(run.config_file)
    run.update_status(state="queued", created=time.time(), step=0, total_steps=None)
    return run


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:40] or "run"


def list_runs(root: str | Path | None = None) -> list[RunDir]:
    root = Path(root) if root else runs_root()
    if not root.exists():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.status().get("created") or 0, reverse=True)
