"""benchmarks/bench_pretrain.py --quick keeps working and compares like with like (no timing assertions here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_pretrain_quick_prints_the_table_and_writes_its_json(tmp_path):
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pretrain.py"), "--quick", "--json",
                        str(out_file)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for line in ("settings: minilm masked LM (full), aclsum_papers 120 train / 20 test paragraphs",
                 "base model (no training)", "(a) transformers run_mlm.py recipe", "(b) workbench masked-lm",
                 "(b) / (a) tokens/s:", "held-out perplexity (b) vs (a):"):
        assert line in p.stdout, f"missing {line!r} in:\n{p.stdout}"
    res = json.loads(out_file.read_text())
    assert res["quick"] is True and set(res["training"]) == {"a", "b"}
    a, b = res["training"]["a"], res["training"]["b"]
    assert a["precision"] == b["precision"]  # the same arithmetic for both
    # the same held-out tokens scored for every model (same paragraphs, same hidden positions)
    assert a["heldout"]["tokens"] == b["heldout"]["tokens"] == res["base"]["tokens"] > 0
    # both trained: far below the untrained head's perplexity
    assert a["heldout"]["perplexity"] < res["base"]["perplexity"] / 2
    assert b["heldout"]["perplexity"] < res["base"]["perplexity"] / 2
