"""benchmarks/bench_qa.py --quick keeps working and compares like with like (no timing assertions here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_benchmark_questions_are_answerable_at_their_offsets_and_contexts_need_windows():
    import bench_qa

    abstracts = [" ".join(f"Sentence {i} of abstract {k} describes Parsing{k}x{i} models here." for i in range(30))
                 for k in range(8)]
    rows = bench_qa.make_examples(abstracts, 9, seed=0)
    assert len(rows) == 18 and {r["kind"] for r in rows} == {"short", "abstract", "long"}
    for r in rows:
        assert r["context"][r["answer_start"]:r["answer_start"] + len(r["answer"])] == r["answer"]
        assert "what" in r["question"] and r["question"].endswith("?")
    assert max(len(r["context"]) for r in rows if r["kind"] == "long") > 3 * len(abstracts[0])


@pytest.mark.slow
def test_bench_qa_quick_prints_the_table_and_writes_its_json(tmp_path):
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench_qa.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_qa.py"), "--quick", "--json", str(out_file)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("torch threads 1 on both sides", "Extractive QA prediction: minilm, 24 questions on",
                 "(p32) pipeline, batch_size 32 (transformers 4.57", "(p1)  pipeline, batch_size 1",
                 "(w)   workbench Predictor, batch 32, fp32", "answers identical, pipeline32",
                 "like for like (fp32): workbench", "the workbench's default on this CPU"):
        assert line in out, f"missing {line!r} in:\n{out}"
    res = json.loads(out_file.read_text())
    assert res["quick"] is True and res["questions"] == 24 and res["threads"] == 1
    assert res["multi_window"] > 0 and res["windows"] > res["questions"]  # long contexts were read in windows
    assert set(res["seconds"]) == {"pipeline32", "pipeline1", "workbench", "workbench-bf16"}
    assert all(s > 0 for s in res["seconds"].values())
    # the same settings give the same answers wherever one window decides (the several-window rule differs)
    ident = res["identical"]
    assert ident["pipeline32"] == ident["pipeline1"] >= res["questions"] - res["multi_window"], ident
