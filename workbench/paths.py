"""Where the workbench keeps things on disk.

`WORKBENCH_HOME` (default `~/.cache/workbench`) holds the cache of built-in models and data sets
and uploaded files; `WORKBENCH_RUNS` (default `./runs`) holds run directories.

One rule for where runs live, the same for every front end: `$WORKBENCH_RUNS` if set, else `runs/` in
the current directory. The CLI, `launch()` and the notebooks call `runs_root()` in their own process;
`workbench app` resolves it where it is started and hands the absolute folder to the dashboard (whose
process runs elsewhere), so the Runs page shows the runs the CLI would list from that directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The workbench cache: built-in assets and uploads. Set `WORKBENCH_HOME` to move it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    root = os.environ.get("WORKBENCH_HOME") or cache / "workbench"
    return Path(root).expanduser()


def assets_dir() -> Path:
    return home() / "assets"


def uploads_dir() -> Path:
    return home() / "data"


def runs_root() -> Path:
    """Default parent folder of run directories: `$WORKBENCH_RUNS`, else `./runs` (may be relative)."""
    return Path(os.environ.get("WORKBENCH_RUNS") or "runs").expanduser()
