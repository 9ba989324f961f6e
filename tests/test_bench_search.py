"""benchmarks/bench_search.py --quick keeps working: a 3-trial MiniLM search killed after its first trial and
resumed loses no trial, runs no parameters twice, and compares best.yaml with the default config (no timing
or accuracy assertions: 48 training rows teach MiniLM little)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_search_quick_kills_resumes_and_loses_no_trial(tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--quick", "--json",
                        str(out_file), "--keep", str(tmp_path / "work")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for line in ("killed: SIGKILL to `workbench search`'s process group", "resumed: the same command again",
                 "trials by state:", "best: trial", "default (full, lr 5e-05, b16)", "best vs default on the held-out"):
        assert line in p.stdout, f"missing {line!r} in:\n{p.stdout}"
    res = json.loads(out_file.read_text())
    kill, au = res["kill"], res["audit"]
    assert res["quick"] is True and kill["done"] >= 1 and kill["exit"] == -9  # killed once, after a finished trial
    assert kill["state_after_kill"] == "running"  # the kill left a trial mid-way
    assert au["complete_or_pruned"] == 3 and au["states"].get("running", 0) == 0  # every trial settled, none lost
    assert au["numbers_contiguous"] and au["one_folder_per_launched_trial"]
    assert all(r["retry"] for r in au["repeated_params"])  # parameters run twice only when a dead trial was retried
    killed = au["trials"][kill["trial"]]
    assert killed["state"] in ("complete", "pruned") or au["killed_trial_retried"]  # settled or queued again
    assert res["best"]["value"] == max(r["value"] for r in au["trials"] if r["state"] == "complete")
    both = res["compare"]
    assert set(both) == {"default", "best"}
    assert both["default"]["heldout"]["n"] == both["best"]["heldout"]["n"] == res["heldout_rows"] == 64
    assert both["default"]["test_n"] == both["best"]["test_n"] == 24  # the same test rows for both
