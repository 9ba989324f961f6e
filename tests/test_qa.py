"""Extractive question answering: windows, post-processing, SQuAD scoring, the data checks, end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FILLER, NEG, POS, _tokenizer
from workbench.config import DataConfig, RunConfig
from workbench.errors import DataError
from workbench.tasks import get_task
from workbench.tasks.question_answering import TASK, best_answer, error_kind, highlight, question_type
from workbench.tasks.question_answering.encode import Answer, make_windows, span_positions, training_labels
from workbench.tasks.question_answering.scoring import answer_tokens, best_over, exact_match, f1, normalize_answer


def _toy_rows(n: int, seed: int = 0, words: tuple[int, int] = (4, 12)) -> list[dict]:
    """Contexts of filler words with one praise and one insult word; "good" asks for the praise, "bad" the insult."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ws = rng.sample(FILLER * 8, rng.randint(*words))
        p, q = rng.choice(POS), rng.choice(NEG)
        ws.insert(rng.randint(0, len(ws)), p)
        ws.insert(rng.randint(0, len(ws)), q)
        ctx = " ".join(ws)
        question, answer = ("good", p) if i % 2 else ("bad", q)
        start = ws.index(answer)
        rows.append({"context": ctx, "question": question, "answer": answer,
                     "answer_start": len(" ".join(ws[:start])) + (1 if start else 0)})
    return rows


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


# --- windows -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("max_length, stride", [(16, 4), (24, 8), (40, 12)])
def test_every_answer_is_whole_in_at_least_one_window(kind, max_length, stride):
    tok = _tokenizer(kind)
    rows = _toy_rows(60, seed=max_length, words=(10, 60))
    frame = pd.DataFrame(rows)
    win = make_windows(tok, frame["question"].tolist(), frame["context"].tolist(), max_length, stride)
    assert max(len(x) for x in win.columns["input_ids"]) <= max_length
    assert len(win) > len(frame)  # long contexts were split
    s, e = training_labels(win, frame["answer_start"].tolist(), frame["answer"].tolist())
    found = {ex: False for ex in range(len(frame))}
    for w, ex in enumerate(win.example):
        if s[w] != win.null_index[w]:
            a, b = win.offsets[w][s[w]][0], win.offsets[w][e[w]][1]
            assert frame["context"][ex][a:b] == frame["answer"][ex]
            found[ex] = True
        else:
            assert e[w] == win.null_index[w]
    assert all(found.values())


def test_windows_overlap_by_the_stride_and_cover_the_context():
    tok = _tokenizer("bert")
    ctx = " ".join(FILLER * 3)  # 60 words
    win = make_windows(tok, ["good"], [ctx], 20, 5)
    spans = [[o for o in offs if o is not None] for offs in win.offsets]
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(ctx)
    for a, b in zip(spans, spans[1:]):
        shared = [o for o in b if o in a]
        assert len(shared) == 5


def test_span_positions_of_byte_pieces_start_at_the_characters_last_piece():
    # two pieces for character 0, two for character 1, one for character 2
    offsets = [None, (0, 1), (0, 1), (1, 2), (1, 2), (2, 3), None]
    assert span_positions(offsets, 1, 3) == (4, 5)
    assert span_positions(offsets, 0, 1) == (2, 2)
    assert span_positions(offsets, 2, 4) is None  # runs past the window


# --- post-processing, worked out by hand ------------------------------------------------------------
def _w(start, end, offsets, null=0):
    return (np.array(start, float), np.array(end, float), offsets, null)


CTX = "abc def ghi jkl"
OFFS = [None, (0, 3), (4, 7), (8, 11), (12, 15)]


def test_best_span_is_the_highest_start_plus_end_with_end_not_before_start():
    a = best_answer(CTX, [_w([0, 1, 5, 0, 0], [0, 6, 0, 2, 0], OFFS)])
    # start 2 (5) + end 1 (6) is invalid (end before start); best valid: start 2 + end 3 = 7 > start 1 + end 1 = 7?
    # start 1 + end 1 = 1 + 6 = 7, start 2 + end 3 = 5 + 2 = 7: ties keep the first found (highest start first).
    assert (a.text, a.score) == ("def ghi", 7.0)
    b = best_answer(CTX, [_w([0, 1, 5, 0, 0], [0, 9, 0, 2, 0], OFFS)])
    assert (b.text, b.start, b.end, b.score) == ("abc", 0, 3, 10.0)


def test_max_answer_length_and_the_question_tokens_are_respected():
    a = best_answer(CTX, [_w([0, 9, 0, 0, 0], [0, 0, 0, 0, 9], OFFS)], max_answer_length=2)
    assert a.text != "abc def ghi jkl" and len(a.text.split()) <= 2
    # the highest logits sit on a question token (offset None): never part of an answer
    b = best_answer(CTX, [_w([9, 0, 1, 0, 0], [9, 0, 1, 0, 0], [None, None, (4, 7), (8, 11), (12, 15)])])
    assert b.text == "def"


def test_a_span_across_a_window_edge_is_never_predicted():
    # window 1 holds "abc def", window 2 "def ghi": the best start is in window 1, the best end in window 2
    w1 = _w([0, 9, 0], [0, 0, 1], [None, (0, 3), (4, 7)])
    w2 = _w([0, 0, 1], [0, 0, 9], [None, (4, 7), (8, 11)])
    a = best_answer(CTX, [w1, w2])
    assert a.text in ("abc def", "def ghi")  # each inside one window; never "abc def ghi"
    assert (a.text, a.score) == ("abc def", 10.0)


def test_the_null_answer_wins_only_when_allowed_and_by_more_than_the_threshold():
    w = _w([6, 2, 0, 0, 0], [6, 3, 0, 0, 0], OFFS)  # null 12, best span "abc" 5
    assert best_answer(CTX, [w]).text == "abc"  # trained without unanswerable questions: always a span
    assert best_answer(CTX, [w], allow_null=True).text == ""
    assert best_answer(CTX, [w], allow_null=True, null_threshold=8.0).text == "abc"
    # the null score is the lowest over the windows
    w2 = _w([0, 2, 0, 0, 0], [0, 3, 0, 0, 0], OFFS)
    a = best_answer(CTX, [w, w2], allow_null=True)
    assert a.text == "abc" and a.null_score == 0.0


def test_errors_are_typed_from_character_spans():
    gold = [{"text": "def ghi", "answer_start": 4}]
    assert error_kind(Answer("abc", 0, 3, 1, 0, 0), gold, False) == "wrong place"
    assert error_kind(Answer("def ghi jkl", 4, 15, 1, 0, 0), gold, False) == "too long"
    assert error_kind(Answer("def", 4, 7, 1, 0, 0), gold, False) == "too short"
    assert error_kind(Answer("ghi jkl", 8, 15, 1, 0, 0), gold, False) == "overlapping"
    assert error_kind(Answer("", -1, -1, 1, 0, -1), gold, False) == "no answer given"
    assert error_kind(Answer("abc", 0, 3, 1, 0, 0), [], False) == "answered the unanswerable"
    parts = highlight(CTX, [(4, 11, "gold"), (8, 15, "predicted")])
    assert parts == [("abc ", None), ("def ", "gold"), ("ghi", "both"), (" jkl", "predicted")]


# --- scoring -------------------------------------------------------------------------------------
def test_squad_normalisation_and_f1_as_published():
    # SQuAD v1.1 evaluate-v1.1.py: lower case, no punctuation, no articles, single spaces
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("Denver Broncos", "the Denver Broncos.") == 1.0
    assert f1("Denver Broncos", "the Denver Broncos.") == 1.0
    # "the cat sat" vs "a cat": prediction tokens [cat, sat], gold [cat] -> P 1/2, R 1, F1 2/3
    assert f1("the cat sat", "a cat") == pytest.approx(2 / 3)
    assert f1("", "") == 1.0 and f1("x", "") == 0.0 and f1("", "x") == 0.0
    assert best_over(["Broncos", "Denver Broncos"], "Denver Broncos") == (1.0, 1.0)
    assert best_over([], "") == (1.0, 1.0)  # an unanswerable question answered with nothing


def test_chinese_is_scored_by_character_as_cmrc_does():
    assert answer_tokens("北京大学，2008年") == ["北", "京", "大", "学", "2008", "年"]
    # gold 7 characters, prediction 4 of them: P 1, R 4/7 -> F1 8/11
    assert f1("北京大学", "北京大学法律系") == pytest.approx(8 / 11)
    assert exact_match("北京大学。", "北京大学") == 1.0


def test_question_types_for_slices():
    assert question_type("Who wrote it?") == "who"
    assert question_type("李柏光毕业于哪所学校？") == "哪 (which)"
    assert question_type("三生三世的主演有谁？") == "谁 (who)"


# --- data ----------------------------------------------------------------------------------------
def _squad(path: Path, paragraphs: list[dict]) -> Path:
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return path


def test_squad_json_is_read_with_unanswerable_questions(tmp_path):
    f = _squad(tmp_path / "s.json", [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "q1", "question": "What is the capital of France?",
             "answers": [{"text": "Paris", "answer_start": 0}]},
            {"id": "q2", "question": "What is the capital of Spain?", "answers": [], "is_impossible": True}]}])
    data = TASK.prepare(DataConfig(source=str(f), validation_size=0, test_size=0), 0, raise_on_problems=False)
    assert not data.report.problems
    assert data.labels == ["span", "no answer"]
    tr = data.train.set_index("id")
    assert tr.loc["q1", "answer"] == "Paris" and tr.loc["q2", "answer"] == "" and tr.loc["q2", "answer_start"] == -1


def test_an_offset_that_is_off_is_repaired_when_the_answer_occurs_once(tmp_path):
    rows = _toy_rows(40)
    rows[3]["answer_start"] += 2
    f = _jsonl(tmp_path / "qa.jsonl", rows)
    prep = TASK.prepare(DataConfig(source=str(f)), 0)
    assert any("moved" in w and "line 4" in w for w in prep.report.warnings)
    every = pd.concat([prep.train, prep.validation, prep.test])
    r = every.loc[4]
    assert r["context"][r["answer_start"]:r["answer_start"] + len(r["answer"])] == r["answer"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(answer="zzz"), "does not occur in its context"),
    (lambda r: r.update(answer_start=-3), "answer_start is negative"),
    (lambda r: r.update(question="  "), "the question is empty"),
    (lambda r: r.update(context=""), "the context is empty"),
    (lambda r: r.update(context="bad film bad", answer="bad", answer_start=4), "occurs several times"),
])
def test_bad_rows_are_named_not_a_traceback(tmp_path, change, message):
    rows = _toy_rows(30)
    change(rows[6])
    f = _jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(DataError, match=message) as e:
        TASK.prepare(DataConfig(source=str(f)), 0)
    assert "line 7" in str(e.value)


def test_a_file_without_the_columns_says_what_is_needed(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("text,label\nhello,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="no question / answer column"):
        TASK.prepare(DataConfig(source=str(f)), 0)


def test_a_50000_character_context_is_read_in_windows(tmp_path):
    rows = _toy_rows(40)
    long = " ".join(random.Random(1).choices(FILLER, k=10_000))[:50_000]
    rows[0] = {"context": long + " superb", "question": "good", "answer": "superb", "answer_start": len(long) + 1}
    f = _jsonl(tmp_path / "qa.jsonl", rows)
    cfg = DataConfig(source=str(f), max_length=64, doc_stride=16, validation_size=0, test_size=0)
    prep = TASK.prepare(cfg, 0, tokenizer=_tokenizer("bert"))
    assert any("windows" in w and "nothing is cut" in w for w in prep.report.warnings)
    ds = TASK.encode(prep.train, _tokenizer("bert"), 64)
    assert len(ds) > 200 and max(ds["length"]) <= 64


def test_doc_stride_over_half_the_window_is_refused():
    cfg = RunConfig.from_dict({"task": "question-answering", "data": {"max_length": 64, "doc_stride": 40}})
    assert any("doc_stride" in p for p in cfg.validate())


# --- end to end ----------------------------------------------------------------------------------
def test_a_causal_lm_checkpoint_keeps_its_weights_under_the_qa_head(tmp_path):
    # SmolLM2 is saved as LlamaForCausalLM (keys `model.*`); LlamaForQuestionAnswering keeps its body under
    # `transformer`, so without a key mapping transformers 5 initialised the whole body at random.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.config import ModelConfig
    tok = _tokenizer("llama")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    qa = TASK.load_model(ModelConfig(name_or_path=str(tmp_path / "lm")), ["span"], tokenizer=tok)
    body = qa.transformer.state_dict()
    for name, weight in lm.model.state_dict().items():
        assert torch.equal(body[name], weight), f"{name} was not loaded from the checkpoint"


def test_tiny_llama_reads_answers_end_to_end(tiny_llama, tmp_path, capsys):
    from workbench.cli import main
    from workbench.rundir import RunDir, new_run_dir
    from workbench.training import run_training

    f = _jsonl(tmp_path / "toy.jsonl", _toy_rows(300, words=(6, 30)))
    cfg = RunConfig.from_dict({
        "task": "question-answering", "output_dir": str(tmp_path / "runs"), "name": "qa-llama",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(f), "max_length": 32, "doc_stride": 8},
        "training": {"num_train_epochs": 25, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"},
        "peft": {"method": "full", "freeze_embeddings": False}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    ev = RunDir(run.path).evaluation()
    assert ev["after"]["f1"] > ev["before"]["f1"] + 0.3 and ev["after"]["f1"] > 0.8, ev
    assert "eval_span_f1" in run.metrics()
    pred = run.predictions("after")
    for col in ("row", "gold", "predicted", "loss", "correct", "exact_match", "f1", "error_type", "pred_start",
                "windows", "question_type", "context_length"):
        assert col in pred
    assert (pred["windows"] > 1).any()  # some contexts needed two windows
    assert get_task("question-answering") is TASK

    assert main(["predict", str(run.path), "good", "bad", "--context", "the movie was superb and quite dull"]) == 0
    out = capsys.readouterr().out
    assert "superb\t[14:20]\tgood" in out and "dull\t[31:35]\tbad" in out
    assert main(["predict", str(run.path), "good"]) != 0
    assert "needs a context" in capsys.readouterr().err
    assert main(["errors", str(run.path)]) == 0
    assert "errors by type" in capsys.readouterr().out
    assert main(["eval", str(run.path)]) == 0
    assert "exact_match" in capsys.readouterr().out
    # re-scoring on a new file: the run's labels are its answer kinds (["span"]), the head has 2 outputs
    new = _jsonl(tmp_path / "new.jsonl", _toy_rows(20, seed=7))
    assert main(["eval", str(run.path), "--data", str(new)]) == 0, capsys.readouterr().err
    assert "exact_match" in capsys.readouterr().out


def test_the_qa_head_gets_its_own_learning_rate():
    from workbench.trainer import is_head_parameter

    assert is_head_parameter("base_model.model.qa_outputs.modules_to_save.default.weight")
    assert not is_head_parameter("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    cfg = RunConfig.from_dict({"task": "question-answering", "data": {"max_length": 128, "doc_stride": 32},
                               "training": {"head_learning_rate": 1e-3}})
    assert cfg.validate() == []


def test_review_fixes_cmrc_lcs_empty_references_and_spaces():
    # CMRC 2018's F1 counts the longest common run of characters: the right characters in the wrong order
    assert f1("大学北京", "北京大学") == pytest.approx(0.5)
    assert f1("张三和丰", "张三丰") == pytest.approx(4 / 7)
    # SQuAD v2.0 drops references that normalise to nothing: "The" is no reference at all
    assert best_over(["The", "the band"], "") == (0.0, 0.0)
    # byte-level BPE puts a word's leading space into its token: the answer starts at the word
    a = best_answer("go to Paris now", [_w([0, 0, 9, 0], [0, 0, 9, 0], [None, (0, 5), (5, 11), (11, 15)])])
    assert (a.text, a.start, a.end) == ("Paris", 6, 11)


@pytest.mark.parametrize("value", ["inf", "nan", 1e400])
def test_a_non_finite_answer_start_is_named(tmp_path, value):
    rows = _toy_rows(30)
    rows[2]["answer_start"] = value
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows).replace("Infinity", '"inf"'), encoding="utf-8")
    with pytest.raises(DataError, match="not a whole number") as e:
        TASK.prepare(DataConfig(source=str(f)), 0)
    assert "line 3" in str(e.value)


def test_split_names_are_read_like_the_other_tasks(tmp_path):
    rows = _toy_rows(60)
    for i, r in enumerate(rows):
        r["split"] = ["train", "dev", "Test"][i % 3]
    prep = TASK.prepare(DataConfig(source=str(_jsonl(tmp_path / "a.jsonl", rows))), 0)
    assert (len(prep.train), len(prep.validation), len(prep.test)) == (20, 20, 20)
    rows[5]["split"] = "holdout"
    with pytest.raises(DataError, match="holdout"):
        TASK.prepare(DataConfig(source=str(_jsonl(tmp_path / "b.jsonl", rows))), 0)


def test_stored_predictions_come_back_as_written(tmp_path):
    from workbench.rundir import RunDir

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"row": 1, "id": "007", "gold": "1", "predicted": "2", "loss": 0.5, "correct": False}]
    (run / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    pred = RunDir(run).predictions("after")
    assert pred.loc[0, "id"] == "007" and pred.loc[0, "gold"] == "1" and int(pred.loc[0, "row"]) == 1
