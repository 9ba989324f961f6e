"""Entry point of a run's own process: `python -m workbench.worker RUN_DIR [--resume]`."""

from __future__ import annotations

import argparse
import sys

from .errors import WorkbenchError
from .rundir import RunDir
from .training import run_training, stop_signals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.worker")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--trust-remote-code", action="store_true", help="granted by the launcher, never by the run")
    ap.add_argument("--allow-pickle", action="store_true", help="granted by the launcher, never by the run")
    a = ap.parse_args(argv)
    run = RunDir(a.run_dir).require()
    try:
        with stop_signals():
            cfg = run.config(trust_remote_code=a.trust_remote_code, allow_pickle=a.allow_pickle)
            run_training(cfg, run, resume=a.resume, progress=False)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
