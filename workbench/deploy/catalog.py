"""What a run has been turned into: its deploy folders and their size / speed / score, as one table.

A run's deploy folders are the ones `export_run`, `quantize` and `prune` write by default: `<run>/export/` (with
`export/onnx/`) and `<run>/compressed/*/`, each recognised by its `workbench_export.json`. A folder that has been
measured holds `compression.json` (`compress.measure`); its numbers are read from there, never recomputed here.
Both files sit in folders that get shared, so they are read as untrusted input: numbers only, anything else left out.

The dashboard's Deploy page and the notebooks show `comparison_table(run)` (and `figures.deploy.compression_figure`
of it); `deploy_problem(run)` says why a run cannot be exported, quantised or pruned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import WorkbenchError
from ..rundir import RunDir
from .compress import RESULT
from .folder import MANIFEST, require_finished, size_mb

COLUMNS = ["folder", "kind", "size_mb", "latency_ms_p50", "throughput", "metric", "score", "score_change",
           "agreement", "measured", "path"]


def deploy_problem(run: str | Path | RunDir) -> str | None:
    """Why `run` cannot be exported, quantised or pruned (still training, failed without a model, prefix/prompt
    tuned, mean-pooled decoder classifier), as the message those operations would refuse it with; None when it can."""
    from .export import export_problem

    r = run if isinstance(run, RunDir) else RunDir(run)
    try:
        require_finished(r, "export")
        problem = export_problem(r.config())
    except WorkbenchError as e:
        return str(e)
    return f"run {r.name} cannot be exported as a plain transformers model: {problem}" if problem else None


def deploy_folders(run: str | Path | RunDir) -> list[Path]:
    """The run's export folder, its ONNX subfolder and its compressed folders, each holding a manifest (in that
    order; compressed folders by name). Temporary folders of an operation in progress (`.name.tmp`) are skipped."""
    root = Path(run.path if isinstance(run, RunDir) else run)
    found = [p for p in (root / "export", root / "export" / "onnx") if (p / MANIFEST).is_file()]
    comp = root / "compressed"
    if comp.is_dir():
        found += sorted(p for p in comp.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and (p / MANIFEST).is_file())
    return found


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        x = float(x)  # OverflowError: an integer beyond a float (10**400)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _read_json(f: Path) -> dict[str, Any]:
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        # ValueError: bad JSON, or an integer of thousands of digits; RecursionError: '[' nested 100000 deep
        return {}
    return obj if isinstance(obj, dict) else {}


def folder_row(folder: Path, root: Path) -> dict[str, Any]:
    """One table row for a deploy folder: its kind from the manifest, its numbers from `compression.json` (None
    until it is measured; the size is read from disk either way)."""
    meta, result = _read_json(folder / MANIFEST), _read_json(folder / RESULT)
    kind = meta.get("kind") if isinstance(meta.get("kind"), str) else "?"
    comp = result.get("compression") if isinstance(result.get("compression"), dict) else \
        meta.get("compression") if isinstance(meta.get("compression"), dict) else {}
    if kind == "pruned" and isinstance(comp.get("method"), str):
        kind = f"{comp['method']} {_number(comp.get('sparsity')) or 0:.0%}"
    score, own = _number(result.get("score")), _number(result.get("source_score"))
    metric = result.get("metric") if isinstance(result.get("metric"), str) else None
    return {"folder": str(folder.relative_to(root)), "kind": kind, "size_mb": round(size_mb(folder), 3),
            "latency_ms_p50": _number(result.get("latency_ms_p50")), "throughput": _number(result.get("throughput")),
            "metric": metric, "score": score,
            "score_change": score - own if score is not None and own is not None else None,
            "agreement": _number(result.get("agreement")), "measured": bool(result), "path": str(folder)}


def original_row(run: RunDir) -> dict[str, Any]:
    """The run itself (fp32): its weights' size and its own test score (eval.json "after"); not timed here."""
    from ..tasks import get_task

    folder = run.model_dir / "merged" if (run.model_dir / "merged" / "config.json").is_file() else run.model_dir
    size = round(size_mb(folder), 3) if (folder / "config.json").is_file() else None  # an adapter alone: no size
    metric = score = None
    try:
        metric = get_task(run.config().task).headline
        score = _number((run.evaluation().get("after") or {}).get(metric))
    except WorkbenchError:
        pass
    return {"folder": "(the run)", "kind": "run (fp32)", "size_mb": size, "latency_ms_p50": None, "throughput": None,
            "metric": metric, "score": score, "score_change": 0.0 if score is not None else None, "agreement": 1.0,
            "measured": False, "path": str(run.path)}


def comparison_table(run: str | Path | RunDir, original: bool = True) -> pd.DataFrame:
    """One row per deploy folder of `run` (and first, with `original`, the run itself): folder, kind, size_mb,
    latency_ms_p50, throughput, metric, score, score_change (score minus the run's own), agreement (share of test
    predictions equal to the run's), measured (it has a compression.json), path."""
    r = run if isinstance(run, RunDir) else RunDir(run)
    rows = ([original_row(r)] if original and r.model_dir.is_dir() else [])
    rows += [folder_row(f, r.path) for f in deploy_folders(r)]
    return pd.DataFrame(rows, columns=COLUMNS)


__all__ = ["COLUMNS", "comparison_table", "deploy_folders", "deploy_problem", "folder_row", "original_row"]
