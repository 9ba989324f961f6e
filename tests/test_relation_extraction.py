"""Relation extraction: entity markers, DuIE expansion, bad rows, TACRED-style scores, tiny runs end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FILLER, NEG, POS

from workbench.config import DataConfig
from workbench.errors import DataError
from workbench.tasks.relation_extraction import (NO_RELATION, TASK, fit_window, mark, marker_ids, parse_marked,
                                                 read_pairs, relation_scores)
from workbench.tasks.relation_extraction.encode import add_markers, marker_tokens
from workbench.tasks.relation_extraction.scoring import score_table


def _tok(folder: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


def _byte_level_bpe():
    """A small byte-level BPE (like SmolLM2's) that knows few Chinese characters: most become byte pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["the cat sat on the mat"] * 20 + ["北京"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")


# --- markers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "llama", "bpe"])
def test_each_marker_is_one_token_in_its_place(kind, tiny_bert, tiny_llama):
    tok = {"bert": lambda: _tok(tiny_bert), "llama": lambda: _tok(tiny_llama), "bpe": _byte_level_bpe}[kind]()
    before = len(tok)
    add_markers(tok, marker_tokens(["PER", "人物"], ["LOC"]))
    assert len(tok) == before + 4 + 4 + 2  # untyped pair x2, typed S x2 types, typed O x1 type
    sentence = "the movie was good" if kind != "bpe" else "李柏光从北京大学毕业"
    s, o = ((4, 9), (14, 18)) if kind != "bpe" else ((0, 3), (4, 8))
    text = mark(sentence, s, o, "人物" if kind == "bpe" else "PER", "LOC")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    marks = [p for p in pieces if p.startswith(("<S", "</S", "<O", "</O"))]
    typed = "人物" if kind == "bpe" else "PER"
    assert marks == [f"<S:{typed}>", f"</S:{typed}>", "<O:LOC>", "</O:LOC>"]
    # in place: the pieces between each pair of markers spell exactly the entity
    for left, right, (a, b) in ((f"<S:{typed}>", f"</S:{typed}>", s), ("<O:LOC>", "</O:LOC>", o)):
        i, j = pieces.index(left), pieces.index(right)
        assert tok.decode(ids[i + 1:j]).strip() == sentence[a:b]
    assert set(marker_ids(tok)) >= set(ids[k] for k, p in enumerate(pieces) if p in marks)


def test_markers_survive_truncation_as_a_window_around_the_entities(tiny_bert):
    tok = _tok(tiny_bert)
    add_markers(tok, marker_tokens([], []))
    words = ["movie"] * 40 + ["good"] + ["plot"] * 30 + ["bad"] + ["film"] * 40
    sentence = " ".join(words)
    s0 = sentence.index("good")
    o0 = sentence.index("bad")
    text = mark(sentence, (s0, s0 + 4), (o0, o0 + 3))

    def check(max_length: int, status: str) -> list[str]:
        out, st = fit_window(text, tok, max_length)
        assert st == status
        enc = tok(out)["input_ids"]
        pieces = tok.convert_ids_to_tokens(enc)
        assert len(enc) <= max_length
        assert [p for p in pieces if p in ("<S>", "</S>", "<O>", "</O>")] == ["<S>", "</S>", "<O>", "</O>"]
        assert pieces[pieces.index("<S>") + 1] == "good" and pieces[pieces.index("<O>") + 1] == "bad"
        return pieces

    whole = tok(text)["input_ids"]
    assert len(whole) > 100
    # plain truncation at 48 would end inside the plot words: the object and its markers gone
    assert "<O>" not in tok.convert_ids_to_tokens(tok(text, truncation=True, max_length=48)["input_ids"])
    near = check(48, "window")           # the 36 tokens between them fit: one window, context on both sides
    assert "…" not in "".join(near) and near.count("movie") > 0 and near.count("film") > 0
    far = check(16, "window")            # they do not: both entities kept, the middle cut
    assert far.count("plot") < 30
    _, st = fit_window(text, tok, 5)   # not even the markers fit
    assert st == "lost"
    assert fit_window(text, tok, 512) == (text, "whole")


def test_marked_sentences_for_predict_are_parsed_or_refused_with_the_reason():
    plain, spans = parse_marked("<S:人物>李柏光</S:人物>从<O>北京大学</O>毕业")
    assert plain == "李柏光从北京大学毕业" and spans == {"S": (0, 3, "人物"), "O": (4, 8, "")}
    plain, spans = parse_marked("<O>《<S>红楼梦</S>》</O>")  # nested is fine
    assert spans["S"][:2] == (1, 4) and spans["O"][:2] == (0, 5)
    for bad, why in (("李柏光从北京大学毕业", "expected one <S>"), ("<S>李柏光</S>从<O>北京大学毕业", "0 closing"),
                     ("<S>a<O>b</S>c</O>", "out of order"), ("<S></S><O>b</O>", "nothing between"),
                     ("<S:x>a</S:y><O>b</O>", "same type"), ("<S><O>北京</O></S>是首都", "same words")):
        assert why in parse_marked(bad)


# --- data ----------------------------------------------------------------------------------------
def _duie_lines() -> list[dict]:
    return [
        {"text": "李柏光从北京大学毕业，生于广东", "spo_list": [
            {"subject": "李柏光", "predicate": "毕业院校", "object": "北京大学", "subject_type": "人物",
             "object_type": "学校"},
            {"subject": "李柏光", "predicate": "出生地", "object": "广东", "subject_type": "人物",
             "object_type": "地点"}]},
        {"text": "《红楼梦》的作者是曹雪芹", "spo_list": [
            {"subject": "红楼梦", "predicate": "作者", "object": "曹雪芹", "subject_type": "图书作品",
             "object_type": "人物"}]},
    ]


def test_duie_sentences_become_pairs_with_a_seeded_share_of_no_relation():
    df = pd.DataFrame(_duie_lines(), index=pd.Index([1, 2], name="line"))
    full = read_pairs(df, negative_ratio=100.0, seed=1)
    assert not full.problems and full.format == "duie"
    f = full.frame
    pos = f[f.label_name != NO_RELATION]
    assert sorted(zip(pos.subject, pos.object, pos.label_name)) == [
        ("李柏光", "北京大学", "毕业院校"), ("李柏光", "广东", "出生地"), ("红楼梦", "曹雪芹", "作者")]
    # every other ordered pair of a sentence's entities: 3 entities -> 6 ordered pairs - 2 with a triple = 4;
    # then 2 - 1 = 1
    neg = f[f.label_name == NO_RELATION]
    assert len(neg) == 5 and ("北京大学", "李柏光") in set(zip(neg.subject, neg.object))
    assert ("北京大学", "广东") in set(zip(neg.subject, neg.object))
    assert set(neg.subject_type) >= {"学校", "地点"}  # each entity keeps the type its triple gave it
    assert f.index.is_unique and list(f.line.unique()) == [1, 2]
    for ratio, n in ((0.0, 0), (0.34, 1), (1.0, 3), (1.5, 4)):
        got = read_pairs(df, negative_ratio=ratio, seed=7).frame
        assert (got.label_name == NO_RELATION).sum() == n, ratio
        again = read_pairs(df, negative_ratio=ratio, seed=7).frame
        pd.testing.assert_frame_equal(got, again)  # seeded
    samples = {tuple(read_pairs(df, negative_ratio=1.0, seed=s).frame.query("label_name == @NO_RELATION")
                     .subject) for s in range(8)}
    assert len(samples) > 1  # ... but a sample, not always the same pairs


def test_a_duie_file_prepares_with_the_configured_ratio_split_by_sentence(tmp_path):
    """A DuIE JSONL file through the task's prepare: pairs, negatives at data.negative_ratio, split by sentence."""
    p = tmp_path / "duie.jsonl"
    lines = _duie_lines() * 10
    lines = [dict(line, text=line["text"] + "。" * i) for i, line in enumerate(lines)]  # 20 distinct sentences
    p.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    prep = TASK.prepare(DataConfig(source=str(p), negative_ratio=0.5, test_size=0.2, validation_size=0.1), 42)
    allp = pd.concat([prep.train, prep.validation, prep.test])
    assert (allp.label_name == NO_RELATION).sum() == 15  # 30 positive pairs x 0.5
    assert prep.labels[0] == NO_RELATION and set(prep.labels) == {NO_RELATION, "毕业院校", "出生地", "作者"}
    assert not set(prep.train.sentence) & set(prep.test.sentence)  # no sentence in two splits
    assert prep.report.leakage == {"validation": 0, "test": 0}
    assert allp.text.str.contains("<S:人物>李柏光</S:人物>从<O:学校>北京大学</O:学校>", regex=False).any()
    assert prep.report.details["negatives"] == 15 and prep.report.details["format"] == "duie"


def _csv(tmp_path: Path, rows: list[dict], name: str = "bad.csv") -> Path:
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


GOOD = {"text": "the movie was good", "subject": "movie", "object": "good", "relation": "praised"}


@pytest.mark.parametrize("bad,expect", [
    ({"object": "awful"}, ["line 4", "'awful' does not occur", "Fix:"]),
    ({"subject_start": 7}, ["line 4", "subject_start=7 does not point at the subject 'movie'", "is at 4", "Fix:"]),
    ({"subject_start": -1}, ["line 4", "subject_start=-1", "Fix:"]),
    ({"relation": ""}, ["line 4", "empty relation", "Fix:"]),
    ({"object": "movie", "object_start": 4, "subject_start": 4}, ["line 4", "same span", "Fix:"]),
    ({"object": "movie was", "subject": "was good"}, ["line 4", "overlap", "Fix:"]),
])
def test_bad_rows_are_messages_naming_the_row(tmp_path, bad, expect):
    rows = [dict(GOOD, subject_start=4, object_start=14), dict(GOOD, relation=NO_RELATION, subject_start=4,
                                                               object_start=14)]
    rows.append(dict(GOOD, subject_start=None, object_start=None) | bad)
    with pytest.raises(DataError) as e:
        TASK.prepare(DataConfig(source=str(_csv(tmp_path, rows))), 42)
    for s in expect:
        assert s in str(e.value), (s, str(e.value))
    prep = TASK.prepare(DataConfig(source=str(_csv(tmp_path, rows))), 42, raise_on_problems=False)
    assert prep.report.problems  # collected in the report, as the dashboard shows them


def test_missing_columns_and_a_duie_entity_not_in_its_sentence(tmp_path):
    p = _csv(tmp_path, [{"text": "a b", "label": "x"}] * 3)
    with pytest.raises(DataError, match=r"missing column\(s\) \['subject', 'object'\].*Fix:"):
        TASK.prepare(DataConfig(source=str(p)), 42)
    j = tmp_path / "duie.jsonl"
    lines = _duie_lines()
    lines[1]["spo_list"][0]["object"] = "高鹗"
    j.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2, triple 1: the object '高鹗' does not occur"):
        TASK.prepare(DataConfig(source=str(j)), 42)
    with pytest.raises(DataError, match="not relations"):
        TASK.prepare(DataConfig(source="rotten_tomatoes"), 42)


def test_an_entity_found_twice_is_marked_at_its_first_occurrence_and_reported(tmp_path):
    rows = [dict(GOOD, text="the movie was good and the movie was long")] * 4 + \
        [dict(GOOD, relation=NO_RELATION, subject_start=4, object_start=14)] * 4
    prep = TASK.prepare(DataConfig(source=str(_csv(tmp_path, rows)), test_size=0, validation_size=0), 42)
    assert prep.report.details["ambiguous_entities"] == 4
    assert any("more than once" in w and "first occurrence" in w for w in prep.report.warnings)
    assert prep.train.text.iloc[0].startswith("the <S>movie</S> was <O>good</O>")
    assert prep.report.duplicates == 6  # two distinct examples, each repeated


# --- scores --------------------------------------------------------------------------------------
def test_micro_f1_counts_positive_relations_only_against_a_hand_count():
    labels = [NO_RELATION, "A", "B"]
    gold = ["A", "A", "B", NO_RELATION, NO_RELATION, "B"]
    pred = ["A", NO_RELATION, "A", "B", NO_RELATION, NO_RELATION]
    # by hand: 1 right positive (row 0); 3 predicted positives (0, 2, 3); 4 gold positives (0, 1, 2, 5)
    p, r = 1 / 3, 1 / 4
    m = score_table(gold, pred, labels)
    assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))  # 2/7
    assert m["accuracy"] == pytest.approx(2 / 6)  # no_relation counted here only (row 4)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.0) / 2)  # A: P 1/2 R 1/2; B: never right
    assert m["errors"] == {"missed relation": 2, "spurious relation": 1, "wrong relation": 1}
    assert m["per_relation"]["A"]["support"] == 2 and m["confusion_matrix"][2] == [1, 1, 0]
    ids = relation_scores([1, 1, 2, 0, 0, 2], [1, 0, 1, 2, 0, 0], [0, 1, 2], names=labels)  # the validation path
    assert ids["f1"] == pytest.approx(2 / 7)


# --- end to end ----------------------------------------------------------------------------------
def _toy_relations(path: Path, n: int, seed: int = 0) -> Path:
    """Sentences of filler words with a subject and an object word: praise words are `praised`, blame words
    `blamed`, and a filler subject has no relation."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(FILLER, rng.randint(4, 9))
        kind = i % 3
        subj = rng.choice(POS if kind == 0 else NEG if kind == 1 else FILLER)
        words.insert(rng.randint(0, 1), subj)
        obj = words[-1]
        rows.append({"text": " ".join(words), "subject": subj, "object": obj,
                     "relation": ["praised", "blamed", NO_RELATION][kind], "source": rng.choice(["web", "mail"])})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cfg(tmp_path: Path, model: Path, method: str, name: str) -> "RunConfig":  # noqa: F821
    from workbench.config import RunConfig
    return RunConfig.from_dict({
        "task": "relation-extraction", "output_dir": str(tmp_path / "runs"), "name": name,
        "model": {"name_or_path": str(model)},
        "data": {"source": str(_toy_relations(tmp_path / "toy.csv", 90)), "max_length": 24},
        "training": {"max_steps": 3, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "no", "eval_strategy": "no", "metric_for_best_model": None, "bf16": False},
        "peft": {"method": method, "lora": {"r": 4, "lora_alpha": 8}}})


def test_tiny_relation_run_end_to_end(tiny_bert, tmp_path, capsys):
    from transformers import AutoTokenizer

    from workbench.cli import main
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = _cfg(tmp_path, tiny_bert, "full", "re-bert")
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    tok = AutoTokenizer.from_pretrained(run.model_dir)  # the saved tokenizer carries the markers
    assert {"<S>", "</S>", "<O>", "</O>"} <= set(tok.get_added_vocab())
    assert len(tok("<S>movie</S> <O>good</O>", add_special_tokens=False)["input_ids"]) == 6
    pred = run.predictions("after")
    for col in ("row", "gold", "predicted", "loss", "correct", "text", "sentence", "subject", "object",
                "p_no_relation", "p_praised", "window", "error"):
        assert col in pred, col
    assert pred["text"].str.contains("<S>").all() and pred["row"].is_unique
    ev = run.evaluation()
    gold, got = pred["gold"].tolist(), pred["predicted"].tolist()
    pos = {"praised", "blamed"}
    tp = sum(g == p and g in pos for g, p in zip(gold, got))
    prec, rec = tp / max(1, sum(p in pos for p in got)), tp / max(1, sum(g in pos for g in gold))
    assert ev["after"]["f1"] == pytest.approx(2 * prec * rec / (prec + rec) if tp else 0.0)
    assert ev["after"]["accuracy"] == pytest.approx(np.mean(np.array(gold) == np.array(got)))
    assert set(ev["after"]["per_relation"]) == {NO_RELATION, "blamed", "praised"} and "before" in ev
    assert ev["baseline"]["f1"] == 0.0 or ev["baseline"]["label"] != NO_RELATION
    rep = json.loads(run.report_file.read_text())
    assert rep["details"]["no_relation_share"]["train"] == pytest.approx(1 / 3, abs=0.1)

    assert main(["predict", str(run.path), "the <S>movie</S> was <O>good</O>"]) == 0
    out = capsys.readouterr().out
    assert out.split("\t")[0] in {"praised", "blamed", NO_RELATION} and "p_" not in out
    assert main(["predict", str(run.path), "the movie was good"]) != 0
    assert "expected one <S>" in capsys.readouterr().err
    assert main(["errors", str(run.path)]) == 0
    assert "errors by kind" in capsys.readouterr().out
    assert main(["eval", str(run.path)]) == 0  # re-scored from the stored predictions: the same numbers
    assert f"f1 {ev['after']['f1']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("pooling", ["auto", "mean"])
def test_lora_run_trains_and_reloads_the_marker_embeddings(tiny_llama, tmp_path, pooling):
    import torch

    from workbench.models import load_trained
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = _cfg(tmp_path, tiny_llama, "lora", f"re-lora-{pooling}").override({"peft.merge_adapter": True,
                                                                            "model.pooling": pooling})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    adapter = json.loads((run.model_dir / "adapter_config.json").read_text())
    from safetensors import safe_open
    with safe_open(run.model_dir / "adapter_model.safetensors", "pt") as f:
        saved = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert any("trainable_tokens_delta" in k for k in saved)  # the marker rows, not the whole table
    assert not any(k.endswith("embed_tokens.weight") for k in saved)
    model, tok = load_trained(run.model_dir)
    ids = marker_ids(tok)
    assert adapter["trainable_token_indices"] and sorted(adapter["trainable_token_indices"]) == ids
    emb = model.get_input_embeddings()
    rows = torch.nn.functional.embedding(torch.tensor(ids), emb.get_merged_weights(emb.active_adapters)
                                         if hasattr(emb, "get_merged_weights") else emb.weight)
    from workbench.tasks.relation_extraction import TASK as task
    base = task.load_model(cfg.model, json.loads(run.labels_file.read_text()), tokenizer=tok)
    assert not torch.allclose(rows, base.get_input_embeddings().weight[ids])  # trained, not the fresh rows
    frame = task.frame_from_predictions(run.predictions("after"), json.loads(run.labels_file.read_text()))
    again = task.predict(model, tok, frame, json.loads(run.labels_file.read_text()), max_length=24)
    before = run.predictions("after")
    assert again["predicted"].tolist() == before["predicted"].tolist()
    np.testing.assert_allclose(again["loss"].to_numpy(), before["loss"].to_numpy(), rtol=1e-4, atol=1e-5)
    merged, mtok = load_trained(run.model_dir / "merged")  # the merged export: a plain transformers folder
    assert marker_ids(mtok) == ids and merged.get_input_embeddings().weight.shape[0] == len(mtok)
    same = task.predict(merged, mtok, frame, json.loads(run.labels_file.read_text()), max_length=24)
    np.testing.assert_allclose(same["loss"].to_numpy(), before["loss"].to_numpy(), rtol=1e-4, atol=1e-5)
