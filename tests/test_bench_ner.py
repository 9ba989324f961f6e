"""benchmarks/bench_ner.py --quick keeps working (it checks no targets: no timing assertions here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_ner_quick_prints_the_whole_table(tmp_path):
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ner.py"), "--quick"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("NER training: MiniLM, wnut_ner 120 train / 40 test", "(b) HF token-classification recipe",
                 "(b+) (b) + group_by_length", "(c) workbench default", "(c) with freeze_embeddings false",
                 "Prediction, 40 texts: pipeline(aggregation_strategy='simple')", "load average at the end",
                 "(c) / (b) tokens/s", "entity F1 (c) - (b), points", "predict / pipeline"):
        assert line in out, f"missing {line!r} in:\n{out}"
    # every training row measured something, on the same number of real tokens (same encoding of the same split)
    rows = [r for r in out.splitlines() if r.startswith(("(b) HF", "(b+)", "(c) workbench", "(c) with"))]
    assert len(rows) == 4 and all(float(r.split()[-5]) > 0 for r in rows), rows
    assert "the encodings differ" not in out
