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
import shlex
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig
from .errors import RunError
from .paths import runs_root

try:  # POSIX; elsewhere status writers are serialised within one process only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

STATES = ("queued", "running", "stopping", "stopped", "completed", "failed")
ACTIVE = ("queued", "running", "stopping")
FINISHED = ("stopped", "completed", "failed")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write-then-rename so a reader never sees half a file (a temp name unique per writer)."""
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_THREAD_LOCK = threading.Lock()


@contextmanager
def _locked(lock_file: Path):
    """Hold an exclusive lock on `lock_file`: one read-modify-write of status.json at a time, across the
    worker, `stop`, `launch` and any thread of theirs (flock locks are per open file, so threads exclude
    each other too; the thread lock covers systems without fcntl)."""
    with _THREAD_LOCK if fcntl is None else nullcontext():
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


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
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # status.json may come from anyone
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
    def config(self, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> RunConfig:
        """The run's config, safe to load its model from: config.yaml is untrusted input, so it cannot turn
        on remote code or pickle loading; only these grants can (`workbench.untrusted`)."""
        from .untrusted import model_config_from_run

        cfg = RunConfig.from_yaml(self.require().config_file)
        cfg.model = model_config_from_run(cfg.model, self.config_file, trust_remote_code=trust_remote_code,
                                          allow_pickle=allow_pickle)
        return cfg

    def _read_json(self, file: Path, kind: type, what: str, default: Any) -> Any:
        """A JSON file of this run, or `default` when it is absent; a `RunError` naming the file and what is
        wrong when it is damaged (empty, cut short, or not the `kind` of value expected)."""
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return default
        except (OSError, UnicodeDecodeError) as e:
            raise RunError(f"{file} cannot be read ({e}).") from None
        try:
            obj = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise RunError(f"{file} is damaged: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
                           f"It should hold {what}.") from None
        if obj is None:
            raise RunError(f"{file} is damaged: it is empty. It should hold {what}.")
        if not isinstance(obj, kind):
            raise RunError(f"{file} is damaged: it holds a JSON {type(obj).__name__}, not {what}.")
        return obj

    def labels(self) -> list[str]:
        """The class names in id order ([] when labels.json is absent); a `RunError` when it is damaged."""
        what = 'a list of class names in id order, e.g. ["neg", "pos"]'
        labels = self._read_json(self.labels_file, list, what, [])
        bad = [x for x in labels if not isinstance(x, str) or not x]
        if bad:
            raise RunError(f"{self.labels_file} is damaged: {bad[0]!r} is not a class name. It should hold {what}.")
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise RunError(f"{self.labels_file} is damaged: {dup} appear more than once. It should hold {what}.")
        return labels

    def model_labels(self, num_labels: int) -> list[str]:
        """labels.json checked against a model with `num_labels` outputs ([] when the file is absent)."""
        labels = self.labels()
        if labels and len(labels) != num_labels:
            raise RunError(f"{self.labels_file} lists {len(labels)} classes but the model in {self.model_dir} has "
                           f"{num_labels} outputs: the file does not belong to this model. Fix: restore it from the "
                           f"run's model/workbench_model.json (its \"labels\"), or delete it.")
        return labels

    # status
    def status(self) -> dict[str, Any]:
        """The status, corrected when the process died without saying so (killed, machine rebooted)."""
        try:
            st = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {"state": "unknown"}
        if not isinstance(st, dict):
            return {"state": "unknown"}
        if st.get("state") in ("running", "stopping") and st.get("pid") and not pid_alive(st["pid"]):
            st["state"] = "failed"
            st["error"] = st.get("error") or (f"the training process (pid {st['pid']}) ended without finishing; "
                                              f"resume it with `workbench resume {shlex.quote(str(self.path))}`.")
        return st

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json under the run's lock; a finished state is never turned back into
        "stopping" (a stop that races the end of a run must not leave it "stopping" with a dead pid)."""
        with _locked(self.path / ".status.lock"):
            try:
                st = json.loads(self.status_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                st = {}
            if not isinstance(st, dict):
                st = {}
            if fields.get("state") == "stopping" and st.get("state") not in ("queued", "running"):
                fields = {k: v for k, v in fields.items() if k != "state"}
            st.update(fields)
            st["updated"] = time.time()
            write_json_atomic(self.status_file, clean_floats(st))
        return st

    # metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean_floats(row), default=_json_default) + "\n")
            f.flush()

    def drop_metrics_after(self, step: int) -> None:
        """Remove the rows logged after `step` (before a resume from that step logs them again); events stay."""
        if not self.metrics_file.exists():
            return
        kept = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of the process that died
            s = row.get("step") if isinstance(row, dict) else None
            if not isinstance(s, (int, float)) or s <= step or row.get("kind") == "event":
                kept.append(line + "\n")
        fd, tmp = tempfile.mkstemp(prefix=".metrics.jsonl.", suffix=".tmp", dir=self.path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.metrics_file)

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
        """Test metrics before/after fine-tuning ({} before there are any); a `RunError` when eval.json is damaged."""
        what = 'test metrics, e.g. {"before": {"accuracy": ...}, "after": {"accuracy": ...}}'
        ev = self._read_json(self.eval_file, dict, what, {})
        for when, m in ev.items():
            if not isinstance(m, dict):
                raise RunError(f"{self.eval_file} is damaged: {when!r} holds a JSON {type(m).__name__}, not {what}.")
        return ev

    def predictions(self, which: str = "after") -> pd.DataFrame:
        f = self.predictions_file if which == "after" else self.predictions_before_file
        if not f.exists():
            raise RunError(f"{self.path} has no {f.name} yet: the run has not finished its evaluation "
                           f"(state: {self.status().get('state')}).")
        # As written: no guessing of types from values, or an id "007" and a label "1" come back as numbers.
        return pd.read_json(f, lines=True, dtype=False)

    def data_report(self) -> dict[str, Any]:
        return self._read_json(self.report_file, dict, "the data report (a JSON object)", {})

    def require_idle(self, then: str) -> dict[str, Any]:
        """The status, or a `RunError` when the run's process is still alive (`then` says what to do)."""
        st = self.status()
        if st.get("state") in ACTIVE and pid_alive(st.get("pid")):
            raise RunError(f"run {self.name} is still {st['state']} (pid {st['pid']}); {then}")
        return st

    # stop / checkpoints
    def request_stop(self) -> None:
        self.stop_file.touch()
        self.update_status(state="stopping")  # only a queued or running run becomes "stopping" (checked under the lock)

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
        """One row for run listings: name, state, model, data, key metrics, and `problems`: what is damaged
        in this run directory (a damaged file blanks its own fields only, never the whole listing)."""
        problems: list[str] = []
        st = self.status()
        from .tasks import TASKS

        if st.get("state") == "unknown" and self.status_file.exists():
            problems.append(f"{self.status_file.name} is damaged (not a JSON object)")
        try:
            cfg = RunConfig.from_yaml(self.config_file)  # names to show; nothing is loaded from it
            model, data, method, task = cfg.model.name_or_path, cfg.data.source, cfg.peft.method, cfg.task
        except Exception as e:  # noqa: BLE001 - any damage in config.yaml is shown, not raised
            model = data = method = task = "?"
            problems.append(f"config.yaml cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        try:
            ev = self.evaluation()
        except RunError as e:
            ev = {}
            problems.append(str(e).replace(str(self.path) + os.sep, ""))
        before, after = ev.get("before", {}), ev.get("after", {})
        # The task's headline metric (`<name>_before`, `<name>`) and its other metrics after fine-tuning.
        t = TASKS.get(task) or TASKS["text-classification"]
        # "loss" is left out unless it is the headline (a causal LM's held-out loss).
        scores = {m: after.get(m) for m in t.directions if m != "loss" or m == t.headline}
        row = {"run": self.name, "state": st.get("state"), "task": task, "model": model, "data": data,
               "method": method, "step": st.get("step"), "total_steps": st.get("total_steps"),
               "headline": t.headline, f"{t.headline}_baseline": (ev.get("baseline") or {}).get(t.headline),
               f"{t.headline}_before": before.get(t.headline), **scores, "created": st.get("created")}
        for k in ["step", "total_steps", f"{t.headline}_baseline", f"{t.headline}_before", *scores, "created"]:
            v = row[k]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                row[k] = None
                where = "status.json" if k in ("step", "total_steps", "created") else "eval.json"
                problems.append(f"{where} is damaged: {k} is {v!r}, not a number")
        from .baseline import baseline_warning  # "after" not above the majority-class score, or None
        row["baseline_warning"] = baseline_warning({"baseline": {**ev.get("baseline", {}), t.headline: row[
            f"{t.headline}_baseline"]}, "after": {t.headline: row.get(t.headline)}}, t.headline)
        return {**row, "path": str(self.path), "problems": problems}


def new_run_dir(cfg: RunConfig) -> RunDir:
    """Create a fresh run directory for `cfg` (name from the config, or model-data-time).

    The claim is atomic: a folder belongs to the run whose config.yaml appeared in it first (a hard link
    of a complete file, which fails if the name exists), so two launches at the same instant can never
    train into one directory. An explicit name that is taken is an error naming the existing run; an
    automatic name gets a `-2`, `-3`, ... suffix instead.
    """
    root = Path(cfg.output_dir).expanduser() if cfg.output_dir else runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = cfg.name or "-".join([_slug(Path(cfg.model.name_or_path).name), _slug(Path(cfg.data.source).stem),
                                 datetime.now().strftime("%Y%m%d-%H%M%S")])
    path, n = root / base, 2
    while True:
        if _claim(path, RunConfig.from_dict({**cfg.to_dict(), "name": path.name})):
            break
        if cfg.name and RunDir(path).exists():
            raise RunError(f"A run named {cfg.name!r} already exists at {path}. Fix: choose another name, "
                           f"resume it with `workbench resume {shlex.quote(str(path))}`, or delete it.") from None
        path, n = root / f"{base}-{n}", n + 1  # an automatic name, or a folder that is not a run
    run = RunDir(path)
    run.update_status(state="queued", created=time.time(), step=0, total_steps=None)
    return run


def _claim(path: Path, cfg: RunConfig) -> bool:
    """Make `path` a run directory holding `cfg`, unless a run (or another non-empty folder) is there."""
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir() or any(p.name != "config.yaml" and not p.name.startswith(".config.yaml.")
                                    for p in path.iterdir()):
            return False  # a run, or someone's folder: never written into
    fd, tmp = tempfile.mkstemp(prefix=".config.yaml.", suffix=".tmp", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
        try:
            os.link(tmp, path / "config.yaml")  # atomic, and fails when config.yaml exists: the claim
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: O_EXCL creation is the claim
            try:
                cfd = os.open(path / "config.yaml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(cfd, "w", encoding="utf-8") as f:
                f.write(cfg.to_yaml())
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:40] or "run"


def list_runs(root: str | Path | None = None) -> list[RunDir]:
    root = Path(root) if root else runs_root()
    if not root.exists():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "config.yaml").exists()]

    def created(r: RunDir) -> float:
        c = r.status().get("created")
        return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) else 0.0
    return sorted(runs, key=created, reverse=True)
