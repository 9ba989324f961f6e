"""benchmarks/bench_deploy.py --quick --only minilm keeps working: every variant measured, the load test run with and
without batching, the checks printed (no timing assertions: the numbers are the benchmark's to report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_deploy_quick_prints_the_tables_and_writes_its_json(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench_deploy.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_deploy.py"), "--quick", "--only", "minilm",
                        "--json", str(out_file)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("minilm on rotten_tomatoes", "fp32 (export)", "int8 dynamic (torch)", "ONNX + int8",
                 "magnitude-pruned 50%", "--max-batch 16 (batching)", "--max-batch 1 (none)"):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert any(ln.startswith(("PASS: minilm: int8", "FAIL: minilm: int8")) for ln in out.splitlines()), out
    res = json.loads(out_file.read_text())
    rows = res["models"]["minilm"]["rows"]
    assert set(rows) == {"fp32", "bf16", "int8-dynamic", "onnx", "onnx-int8", "pruned-30", "pruned-50"}
    for name, r in rows.items():
        assert r["size_mb"] > 0 and r["latency_ms_p50"] > 0 and r["throughput"] > 0, (name, r)
        assert r["metric"] == "accuracy" and 0 <= r["score"] <= 1 and r["agreement"] is not None, (name, r)
    assert rows["fp32"]["agreement"] == 1.0  # the export answers exactly like the run
    assert rows["onnx-int8"]["size_mb"] < rows["fp32"]["size_mb"] / 2  # int8 weights: a quarter of the bytes
    assert rows["bf16"]["size_mb"] == pytest.approx(rows["fp32"]["size_mb"] / 2, rel=0.05)
    lt = res["load_test"]
    assert lt["batched"]["ok"] == lt["unbatched"]["ok"] == lt["clients"] * lt["requests_per_client"]
    assert lt["batched"]["errors"] == lt["unbatched"]["errors"] == 0
