"""Entry point of a run's own process: `python -m workbench.worker RUN_DIR [--resume]`.

A run whose `distributed` section asks for several processes is started the same way: this process then runs
`torchrun` and watches it (`distributed.supervise`), and each process torchrun starts runs this module again with
`--rank-process`, which trains.
"""

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
    ap.add_argument("--rank-process", action="store_true", help="one of the processes torchrun started: train")
    ap.add_argument("--node-rank", type=int, default=0, help="this machine's rank when distributed.nnodes > 1")
    a = ap.parse_args(argv)
    if a.rank_process:
        _die_with_launcher()
    try:
        run = RunDir(a.run_dir).require()
        cfg = run.config(trust_remote_code=a.trust_remote_code, allow_pickle=a.allow_pickle)
        if cfg.distributed.world_size > 1 and not a.rank_process:
            from .distributed import supervise
            return supervise(cfg, run, node_rank=a.node_rank, resume=a.resume,
                             trust_remote_code=a.trust_remote_code, allow_pickle=a.allow_pickle, log=sys.stdout)
        with stop_signals():
            run_training(cfg, run, resume=a.resume, progress=False)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _die_with_launcher() -> None:
    """A rank ends when its launcher does (torchrun starts each rank in a session of its own, so a launcher killed
    outright would leave it running): Linux's parent-death signal; elsewhere nothing."""
    if sys.platform != "linux":
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
