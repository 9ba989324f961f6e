"""benchmarks/bench_corpus.py --quick keeps working and measures what it says (no timing assertions here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_generated_corpus_has_the_size_and_shape_asked_for(tmp_path):
    import bench_corpus

    para, lines = tmp_path / "p.txt", tmp_path / "l.txt"
    size = bench_corpus.write_corpus(para, 0.2)
    assert 200_000 <= size < 202_000
    text = para.read_text()
    assert text.count("\n\n") > 100 and text[0].isupper()
    bench_corpus.write_corpus(lines, 0.2, blank_lines=False)
    assert "\n\n" not in lines.read_text() and lines.read_text().count("\n") > 100
    tok = bench_corpus.tiny_tokenizer()
    ids = tok(text[:5000], add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.convert_tokens_to_ids("</s>") == tok.eos_token_id


@pytest.mark.slow
def test_bench_corpus_quick_prints_the_table_and_writes_its_json(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file = tmp_path / "bench_corpus.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_corpus.py"), "--quick", "--json",
                        str(out_file)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for line in ("Corpus memory: causal-lm prepare + encode, max_length 256, tokenizer tiny",
                 "generated corpus_1mb.txt: 1.0 MB (paragraphs)", "generated corpus_4mb.txt: 4.0 MB (paragraphs)",
                 "generated corpus_1mb_lines.txt: 1.0 MB (no blank lines)", "peak resident memory in MB",
                 "file MB shape          | read_text  added | prepare  added | prep+encode  added |",
                 "from 1 MB to 4 MB of paragraphs (3 MB,", "bytes per added document",
                 "prepare+encode of 4 MB:", "1 MB without blank lines (one paragraph, cut into 8 pieces"):
        assert line in out, f"missing {line!r} in:\n{out}"
    res = json.loads(out_file.read_text())
    rows = res["rows"]
    assert res["quick"] is True and [(r["file_mb"], r["shape"]) for r in rows] == [
        (1.0, "paragraphs"), (4.0, "paragraphs"), (1.0, "no blank lines")]
    for r in rows:
        for case in ("baseline", "prepare", "encode"):
            assert r[case]["peak_mb"] >= r[case]["floor_mb"] > 0
        assert abs(r["baseline"]["characters"] - r["file_mb"] * 1e6) <= 50_000  # ASCII: a character a byte
        assert r["encode"]["blocks"] > 0 and not r["encode"]["problems"]
        assert r["encode"]["documents"] == r["prepare"]["documents"]
    big = rows[1]
    # holding 4 MB of text as a string costs at least the text (a floor, not a timing)
    assert big["baseline"]["peak_mb"] - big["baseline"]["floor_mb"] >= 0.9 * big["file_mb"]
    assert rows[2]["encode"]["documents"] == 8  # 1 MB without a blank line: pieces of about 128 KB
    assert any("cut into 8 pieces" in w for w in rows[2]["encode"]["warnings"])
    assert rows[0]["encode"]["documents"] > 1000  # paragraphs: a document each
