"""benchmarks/bench_sft.py --quick keeps working and compares like with like (no timing assertions here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_sft_quick_prints_the_table_and_writes_its_json(tmp_path):
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp_path / "runs"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench_sft.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sft.py"), "--quick", "--json", str(out_file)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("settings: smollm2-135m + LoRA r 16, alpha 32", "LoRA SFT: smollm2-135m, hsk_zh_en 32 train / 8 test",
                 "(b) TRL SFTTrainer", "(b+) TRL + length-grouped batches", "(b=) (b+) on the workbench's labels",
                 "(c) workbench default",
                 "(c-) workbench, cpu_speedups off", "base model (no training)", "What the workbench does differently",
                 "length-grouped batches", "training.cpu_speedups", "Generation, 8 test prompts",
                 "(c) / (b) tokens/s", "held-out loss (c) vs (b), %", "answers identical"):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "the encodings differ" not in out
    assert any(ln.startswith(("PASS: tokens/s", "FAIL: tokens/s")) for ln in out.splitlines()), out

    res = json.loads(out_file.read_text())
    assert res["quick"] is True and res["settings"]["train"] == 32 and res["settings"]["lora"]["r"] == 16
    assert set(res["training"]) == {"b", "b+", "b=", "c", "c-"}, list(res["training"])
    for key in ("b", "b+", "b=", "c", "c-"):
        row = res["training"][key]
        assert row["wall_s"] > 0 and row["tokens_per_s"] > 0 and row["steps"] == 4, (key, row)
        assert math.isfinite(row["loss"]) and 0 < row["loss"] < 20, (key, row)
        assert row["answer_tokens"] == res["training"]["b"]["answer_tokens"] > 0  # one scorer, the same test rows
    # TRL and the workbench train on the same tokens: identical ids, no prompt token labelled by TRL, and every
    # token the workbench labels labelled by TRL too (TRL's only extra: the newline after <|im_end|>).
    lc = res["label_check"]
    assert lc["rows"] == lc["trl_rows"] == lc["same_input_ids"] == 32, lc
    assert lc["prompt_tokens_labelled_by_trl"] == 0, lc
    assert lc["labelled_both"] == lc["labelled_workbench"] > 0, lc
    assert lc["batch"]["labelled_same_token"] == lc["batch"]["labelled_workbench"] > 0, lc
    assert res["lora_init_identical"] is True  # both trainers' adapters start from the same weights
    gen = res["generation"]
    assert gen["prompts"] == 8 and gen["plain_tokens"] > 0 and gen["workbench_tokens"] > 0, gen
    assert {c["name"] for c in res["checks"]} >= {"(c) / (b) tokens/s", "held-out loss (c) vs (b), %"}
