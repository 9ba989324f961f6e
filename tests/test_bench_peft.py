"""benchmarks/bench_peft.py --quick keeps working: every method trains, the rows compare the same data and budget,
and the ensemble is scored against its members (no timing assertions here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_peft_quick_prints_the_table_and_writes_its_json(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    out_file = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_peft.py"), "--quick", "--only", "minilm",
                        "--json", str(out_file)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "minilm on rotten_tomatoes: 64 train / 32 test" in p.stdout
    assert "Ensemble of 3 full MiniLM runs" in p.stdout
    res = json.loads(out_file.read_text())
    rows = res["tables"]["minilm"]
    methods = ("full", "lora", "dora", "adalora", "ia3", "prefix", "prompt")
    assert set(methods) | {"hf-lora", "full+fgm", "full+augment"} <= set(rows)
    total = rows["full"]["total"]
    for m in methods:
        r = rows[m]
        assert 0 <= r["accuracy"] <= 1 and r["s_per_epoch"] > 0 and r["peak_mb"] > 0
        assert r["train_rows"] == rows["full"]["train_rows"]  # the same training examples for every method
        if m != "full":  # each method trains a small share of the (frozen) model
            assert r["trainable"] < 0.05 * r["total"] and r["total"] >= total
    # the same number of trainable weights for LoRA written by hand with peft + Trainer
    assert rows["hf-lora"]["trainable"] == rows["lora"]["trainable"]
    # DoRA adds magnitude vectors to LoRA; FGM changes nothing about what trains; augmentation adds examples
    assert rows["dora"]["trainable"] > rows["lora"]["trainable"]
    assert rows["full+fgm"]["trainable"] == rows["full"]["trainable"]
    assert rows["full+augment"]["train_rows"] > rows["full"]["train_rows"]
    ens = res["ensemble"]
    assert len(ens["members"]) == 3 and ens["best_member"] == max(ens["members"])
