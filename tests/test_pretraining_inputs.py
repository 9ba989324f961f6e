"""Continued pre-training's corpus input as a new user meets it, through the CLI: an empty folder, binary files
among the .txt files, a file without blank lines, a corpus shorter than one block, subfolders, a GBK file, a
JSONL/CSV text column, document_split line vs paragraph, an English model on Chinese text. Each problem is one
message naming what was wrong and the fix (exit code 2), never a traceback. Tiny models (tests/conftest.py)."""

from __future__ import annotations

import json
import random

import pytest

from conftest import FILLER, NEG, POS
from workbench.cli import main

WORDS = FILLER + POS + NEG  # the tiny tokenizers' whole vocabulary: no unknown tokens in these corpora


def _para(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _paragraphs(n: int, seed: int = 0, lines: int = 1) -> str:
    rng = random.Random(seed)
    return "\n\n".join("\n".join(_para(rng, 12) for _ in range(lines)) for _ in range(n)) + "\n"


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def _train(capsys, tmp_path, model, source, task="causal-lm", data="") -> tuple[int, str, str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: {task}\nmodel: {{name_or_path: {model}}}\ndata: {{source: {source}, max_length: 32{data}}}\n"
                   f"training: {{max_steps: 3, per_device_train_batch_size: 8, save_strategy: 'no', "
                   f"logging_steps: 1}}\noutput_dir: {tmp_path / 'runs'}\n")
    return _run(capsys, "train", cfg)


def test_an_empty_folder_says_so_in_report_and_train(capsys, tmp_path, tiny_llama):
    empty = tmp_path / "corpus"
    empty.mkdir()
    code, out, err = _run(capsys, "report", empty, "--model", tiny_llama)
    assert code == 2 and "holds no text files" in err and "it is empty" in err and "Fix: put the corpus" in err
    code, out, err = _train(capsys, tmp_path, tiny_llama, empty)
    assert code == 2 and "it is empty" in err
    status = json.loads(next((tmp_path / "runs").iterdir()).joinpath("status.json").read_text())
    assert status["state"] == "failed" and "it is empty" in status["error"]


def test_binary_files_among_the_txt_files_are_skipped_by_name(capsys, tmp_path, tiny_llama):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "notes.txt").write_text(_paragraphs(40))
    (d / "scan.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    (d / "dump.txt").write_bytes(bytes(range(256)) * 8)
    code, out, err = _run(capsys, "report", d, "--model", tiny_llama, "--set", "data.document_split=paragraph")
    assert code == 0, out + err
    assert "skipped 2 file(s) that are not text" in out and "scan.txt: it looks like a PNG image" in out
    assert "dump.txt: it holds a NUL byte at byte 0" in out and "The other 1 file(s) were read" in out
    assert "40 documents read" in out  # notes.txt's paragraphs, nothing from the binaries


def test_a_folder_of_only_binary_files_is_a_problem(capsys, tmp_path, tiny_llama):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "report.txt").write_bytes(b"%PDF-1.7\n" + bytes(300))
    code, out, err = _run(capsys, "report", d, "--model", tiny_llama)
    assert code == 2
    assert "PROBLEM" in out and "its only file is not text (report.txt: it looks like a PDF document)" in out
    assert "Fix: give plain text files" in out and "export documents (PDF, Word) as plain text" in out


def test_one_file_in_a_folder_names_document_split_when_nothing_can_be_held_out(capsys, tmp_path, tiny_llama):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "book.txt").write_text(_paragraphs(60))
    code, out, err = _run(capsys, "report", d, "--model", tiny_llama)
    assert code == 0 and "1 documents read" in out, out + err
    assert "the corpus is 1 document(s), too few to hold any out" in out
    assert "Fix: each file is one document here: data.document_split: paragraph" in out


def test_a_corpus_shorter_than_one_block_stops_the_run(capsys, tmp_path, tiny_llama, tiny_bert):
    f = tmp_path / "short.txt"
    f.write_text("the movie was good")
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama)
    assert code == 2
    assert "PROBLEM: the training text is 4 tokens, shorter than one block of data.max_length=128" in out
    assert "Fix: give more text (at least 128 tokens" in out
    code, out, err = _train(capsys, tmp_path, tiny_bert, f, task="masked-lm")
    assert code == 2 and "shorter than one block of data.max_length=32" in err
    assert not list((tmp_path / "runs").rglob("*.safetensors"))  # stopped before training


def test_subfolders_are_read_and_hidden_files_left_out(capsys, tmp_path, tiny_bert):
    d = tmp_path / "corpus"
    rng = random.Random(1)
    for i in range(12):
        sub = d / f"part{i % 3}" / ("deeper" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i}.txt").write_text(_para(rng, 60))
    (d / "part0" / ".draft.txt").write_text("hidden")
    (d / "part0" / "README.pdf").write_bytes(b"%PDF")  # not a text file name: not read at all
    code, out, err = _run(capsys, "report", d, "--model", tiny_bert)
    assert code == 0, out + err
    assert "read as a corpus for masked-lm" in out  # a BERT model: its own objective
    assert "12 documents read" in out and "skipped" not in out


def test_a_gbk_file_names_the_encoding_and_works_with_data_encoding(capsys, tmp_path, tiny_llama):
    f = tmp_path / "news.txt"
    text = _paragraphs(40).replace("movie", "电影")
    f.write_bytes(text.encode("gbk"))
    first = next(i for i, line in enumerate(text.split("\n"), 1) if "电影" in line)
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama)
    assert code == 2 and "news.txt: not valid utf-8 text (byte 0x" in err and f"on line {first})" in err, err
    assert "Fix: it decodes as gbk: set data.encoding: gbk" in err
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama, "--set", "data.encoding=gbk")
    assert code == 0 and "40 documents read" in out, out + err
    code, out, err = _train(capsys, tmp_path, tiny_llama, f, data=", encoding: gbk")
    assert code == 0 and "perplexity after fine-tuning" in out, out + err


def test_utf16_files_and_unknown_encodings_are_refused_with_the_fix(capsys, tmp_path, tiny_llama):
    f = tmp_path / "notepad.txt"
    f.write_bytes(_paragraphs(5).encode("utf-16"))  # with its byte-order mark, as Windows Notepad writes
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama)
    assert code == 2 and "UTF-16 text" in err and "Fix: save it as UTF-8" in err
    g = tmp_path / "plain.txt"
    g.write_text(_paragraphs(5))
    code, out, err = _run(capsys, "report", g, "--model", tiny_llama, "--set", "data.encoding=gbkk")
    assert code == 2 and "data.encoding 'gbkk' is not an encoding Python knows" in err


def test_jsonl_text_column_is_guessed_and_shown(capsys, tmp_path, tiny_bert):
    f = tmp_path / "docs.jsonl"
    rng = random.Random(2)
    f.write_text("".join(json.dumps({"id": i, "text": _para(rng)}) + "\n" for i in range(50)))
    code, out, err = _run(capsys, "report", f, "--model", tiny_bert, "--task", "masked-lm")
    assert code == 0 and "50 documents read" in out and "columns: text='text' (guessed)" in out


def test_csv_text_column_is_named_by_data_text_column(capsys, tmp_path, tiny_bert):
    import pandas as pd

    rng = random.Random(3)
    f = tmp_path / "papers.csv"
    pd.DataFrame({"id": range(50), "title": [_para(rng, 3) for _ in range(50)],
                  "full_text": [_para(rng, 80) for _ in range(50)]}).to_csv(f, index=False)
    code, out, err = _run(capsys, "report", f, "--model", tiny_bert, "--task", "masked-lm")
    assert code == 0 and "columns: text='title' (guessed)" in out  # a common name wins: the report shows it
    code, out, err = _run(capsys, "report", f, "--model", tiny_bert, "--task", "masked-lm",
                          "--text-column", "full_text")
    assert code == 0 and "columns: text='full_text'" in out and "(guessed)" not in out
    code, out, err = _run(capsys, "report", f, "--model", tiny_bert, "--task", "masked-lm", "--text-column", "body")
    assert code == 2 and "no text column 'body' among id, title, full_text" in err and "data.text_column" in err


def test_document_split_line_and_paragraph(capsys, tmp_path, tiny_llama):
    f = tmp_path / "corpus.txt"
    f.write_text(_paragraphs(30, lines=3))
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama)
    assert code == 0 and "30 documents read" in out  # a single file: a document per paragraph by default
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama, "--set", "data.document_split=line")
    assert code == 0 and "90 documents read" in out


def test_a_file_without_blank_lines_is_cut_into_pieces_not_held_whole(capsys, tmp_path, tiny_llama):
    from workbench.config import DataConfig
    from workbench.tasks.pretraining.corpus import MAX_DOC_BYTES, doc_texts, read_corpus

    f = tmp_path / "lines.txt"
    rng = random.Random(4)
    with open(f, "w") as fh:
        while fh.tell() < 2.5 * MAX_DOC_BYTES:
            fh.write(_para(rng, 20) + "\n")
    code, out, err = _run(capsys, "report", f, "--model", tiny_llama)
    assert code == 0 and "1 document(s) longer than 128 KB were cut into 3 pieces" in out, out
    assert "data.document_split: line" in out  # what such a file usually means
    # one line longer than a document, and Chinese without spaces: cut between characters, nothing lost
    g = tmp_path / "one_line.txt"
    g.write_text("中文没有空格。" * (MAX_DOC_BYTES // 10), encoding="utf-8")
    for path in (f, g):
        corpus = read_corpus(str(path), DataConfig(source=str(path)))
        texts = list(doc_texts(corpus.frame))
        assert len(texts) >= 2 and max(len(t.encode()) for t in texts) <= MAX_DOC_BYTES + 200
        assert "".join("".join(texts).split()) == "".join(path.read_text(encoding="utf-8").split())
        assert corpus.frame["chars"].tolist() == [len(t) for t in texts]


def test_an_english_model_on_chinese_text_stops_before_training_and_names_a_model(capsys, tmp_path, tiny_bert):
    f = tmp_path / "zh.txt"
    f.write_text("\n\n".join("今天的新闻报道了经济发展和科技进步的情况。" * 3 for _ in range(40)))
    code, out, err = _train(capsys, tmp_path, tiny_bert, f, task="masked-lm")
    assert code == 2 and "of the tokens are [UNK]" in err and "'smollm2-135m'" in err
    assert "Pre-training on it would teach the model to predict [UNK]" in err
    assert "smollm2-135m is a decoder (llama): with it, set task: causal-lm" in err


def test_a_txt_file_given_to_a_classification_run_points_at_the_corpus_tasks(capsys, tmp_path, tiny_bert):
    f = tmp_path / "notes.txt"
    f.write_text(_paragraphs(30))
    code, out, err = _run(capsys, "report", f, "--model", tiny_bert, "--task", "text-classification")
    assert code == 2 and "set task: masked-lm" in out and "causal-lm" in out


@pytest.mark.slow
def test_minilm_on_msra_text_is_mostly_unknown_and_names_the_builtin_that_fits(capsys):
    code, out, err = _run(capsys, "report", "msra_text", "--model", "minilm")
    assert code == 2 and "read as a corpus for masked-lm" in out
    problem = next(line for line in out.splitlines() if line.startswith("  PROBLEM:"))
    share = float(problem.split("PROBLEM: ")[1].split("%")[0])
    assert share > 50, problem  # measured 62%
    assert "of the tokens are [UNK] for minilm" in problem and "'smollm2-135m'" in problem
    assert "set task: causal-lm" in problem
