"""benchmarks/bench_memory_plan.py --quick keeps working and prints its table (no timing or memory targets here:
a tiny model's state is below the noise of a process's resident memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_memory_plan_quick_prints_the_table_and_writes_its_json(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory_plan.py"), "--quick", "--json",
                        str(out_file)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    assert "(quick: no target)" in out and "parameters:" in out
    assert "strategy" in out and "estimate MB" in out and "measured MB per rank" in out and "measured/estimate" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("one process"))
    assert row.rstrip().endswith("(quick)"), row
    res = json.loads(out_file.read_text())
    assert res["quick"] is True and [r["strategy"] for r in res["rows"]] == ["one process"]
    r = res["rows"][0]
    assert r["processes"] == 1 and r["estimate_mb"] > 0 and len(r["measured_mb"]) == 1 and r["measured_mb"][0] > 0
    assert r["ratio"][0] == round(r["measured_mb"][0] / r["estimate_mb"], 3) or abs(
        r["ratio"][0] - r["measured_mb"][0] / r["estimate_mb"]) < 0.01
    assert {"weights", "gradients", "optimizer", "activations"} <= set(r["parts_mb"])
