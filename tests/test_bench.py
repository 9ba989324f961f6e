"""benchmarks/bench.py --quick keeps working (it checks no targets: no timing assertions here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_prints_the_whole_table(tmp_path):
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--ablation"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("(a) seed: pad to 128, fp32, HF Trainer", "(b) careful HF Trainer", "(c) workbench default",
                 "What each speed-up of (c) buys", "Prediction, 100 texts: pipeline", "Attention map, 128 tokens",
                 "(c) / (b) tokens/s", "predict / pipeline", "attention minilm ms"):
        assert line in out, f"missing {line!r} in:\n{out}"
    for name in ("freeze", "dropout", "attention"):
        assert any(row.startswith(name) for row in out.splitlines()), name
    # every training row measured something
    rows = [r for r in out.splitlines() if r.startswith(("(a) seed", "(b) careful", "(c) workbench"))]
    assert len(rows) == 3 and all(float(r.split()[-5]) > 0 for r in rows), rows
