"""The folders the deploy stage reads and writes: a run it starts from, or a model folder it wrote earlier.

Every folder written here holds `workbench_export.json` (MANIFEST): `kind` (export, onnx, bf16,
int8-dynamic, onnx-int8, pruned), the source run, task, labels, max_length, the reference profile and, for a
compressed folder, what was done. It is read as untrusted input (a folder gets shared): only known kinds and
registered tasks are accepted, and nothing in it can turn on remote code or pickle loading.

A folder is written into a temporary sibling and renamed into place at the end, so a failure half way never
leaves a half-written export behind, and an existing folder is replaced only with `overwrite` and only when it
is one this stage wrote (it holds the manifest) or empty.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelError, RunError
from ..rundir import ACTIVE, RunDir, pid_alive, write_json_atomic

MANIFEST = "workbench_export.json"
KINDS = ("export", "onnx", "bf16", "int8-dynamic", "onnx-int8", "pruned")
QUANTISED = ("bf16", "int8-dynamic", "onnx-int8")  # refused as the source of another quantisation or a pruning
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".onnx_data")


@dataclass
class Source:
    """What a deploy operation starts from: a finished run, or a folder this stage wrote."""

    path: Path
    kind: str                      # "run" or one of KINDS
    task: str
    labels: list[str]
    max_length: int
    run: RunDir | None             # the run whose test split re-scores it (None: not found)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.name if self.run is not None else self.path.name


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """`folder/workbench_export.json`, checked: a `ModelError` naming what is wrong when it is missing or damaged."""
    f = Path(folder) / MANIFEST
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder} has no {MANIFEST}: it was not written by `workbench export`, `quantize` or "
                         f"`prune`. Fix: give a run directory, or a folder those commands wrote.") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise ModelError(f"{f} cannot be read ({type(e).__name__}); the folder is damaged. Fix: export the run "
                         f"again.") from None
    from ..tasks import TASKS

    problems = []
    if not isinstance(meta, dict):
        meta, problems = {}, ["it is not a JSON object"]
    if not isinstance(meta.get("kind"), str) or meta["kind"] not in KINDS:
        problems.append(f"kind is {meta.get('kind')!r}, not one of {', '.join(KINDS)}")
    if not isinstance(meta.get("task"), str) or meta["task"] not in TASKS:  # a list is unhashable: no dict lookup
        problems.append(f"task is {meta.get('task')!r}, not a registered task")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        problems.append("labels is not a list of class names")
    ml = meta.get("max_length")
    if not isinstance(ml, int) or isinstance(ml, bool) or ml <= 0:
        problems.append(f"max_length is {ml!r}, not a positive whole number")
    if problems:
        raise ModelError(f"{f} is damaged: {'; '.join(problems)}. Fix: export the run again.")
    return meta


def require_finished(run: RunDir, doing: str) -> None:
    """A `RunError` unless `run` has a final model: still training or queued, or stopped/failed before saving one."""
    st = run.status()
    state = st.get("state", "unknown")
    if state in ACTIVE and (state == "queued" or pid_alive(st.get("pid"))):
        raise RunError(f"run {run.name} is still {state}" + (f" (pid {st['pid']})" if st.get("pid") else "") +
                       f": it has no final model to {doing} yet. Fix: wait for it to complete (`workbench status "
                       f"{run.path}`), then run this again.")
    has_model = (run.model_dir / "config.json").is_file() or (run.model_dir / "adapter_config.json").is_file()
    if not has_model:
        why = f" ({st['error']})" if st.get("error") else ""
        fix = ("resume it to finish training (`workbench resume " + str(run.path) + "`), then run this again"
               if state in ("stopped", "failed") else "give a completed run (`workbench runs` lists them)")
        raise RunError(f"run {run.name} is {state}{why} and saved no final model, so there is nothing to {doing}. "
                       f"Fix: {fix}.")


def open_source(source: str | Path | RunDir, doing: str) -> Source:
    """A finished run directory, or a folder written by this stage; anything else is refused with what it is."""
    from ..models import is_run_dir

    p = Path(source.path if isinstance(source, RunDir) else source).expanduser()
    if is_run_dir(p):
        run = RunDir(p)
        require_finished(run, doing)
        cfg = run.config()
        labels = run.labels()
        return Source(p, "run", cfg.task, labels, cfg.data.max_length, run)
    if p.is_dir() and (p / MANIFEST).is_file():
        meta = read_manifest(p)
        src = meta.get("source_run")
        run = RunDir(src) if isinstance(src, str) and is_run_dir(Path(src)) else None
        return Source(p, meta["kind"], meta["task"], list(meta["labels"]), int(meta["max_length"]), run, meta)
    if not p.exists():
        raise RunError(f"{p} does not exist. Fix: give a run directory (`workbench runs` lists them) or a folder "
                       f"written by `workbench export`.")
    what = "a file" if p.is_file() else ("a model folder not written by the workbench" if (p / "config.json").is_file()
                                         else "a folder that is not a run (no config.yaml and status.json)")
    raise RunError(f"{p} is {what}: there is nothing to {doing}. Fix: give a run directory (`workbench runs` lists "
                   f"them) or a folder written by `workbench export`, `quantize` or `prune`.")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (safetensors, ONNX), not its subfolders."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def size_mb(folder: Path) -> float:
    """Size on disk of a model folder's weights in MB (10^6 bytes)."""
    return sum(f.stat().st_size for f in weight_files(folder)) / 1e6


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}


@contextmanager
def writing(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `out` to write into, renamed to `out` when the block ends without error."""
    out = Path(out).expanduser()
    if out.exists():
        if not overwrite:
            raise RunError(f"{out} already exists. Fix: pass --overwrite (overwrite=True) to replace it, or choose "
                           f"another folder with --out.")
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
            raise RunError(f"{out} exists and was not written by the workbench's deploy commands (no {MANIFEST}); "
                           f"it is not replaced, even with --overwrite. Fix: choose another folder with --out.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _shareable(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _shareable(folder: Path) -> None:
    """Ordinary permissions (the umask's) instead of the temporary files' owner-only ones: the folder is for sharing."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_manifest(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(folder / MANIFEST, meta)
