"""Where the workbench keeps things on disk.

`WORKBENCH_HOME` (default `~/.cache/workbench`) holds the cache of built-in models and data sets
and uploaded files; `WORKBENCH_RUNS` (default `./runs`) holds run directories.
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
    """Default parent folder of run directories. Set `WORKBENCH_RUNS` to move it."""
    return Path(os.environ.get("WORKBENCH_RUNS", "runs")).expanduser()
