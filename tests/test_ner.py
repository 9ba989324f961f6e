"""Token classification (NER): reading tagged files, sub-word label alignment, seqeval scores, typed
entity errors, and a tiny BERT and Llama trained end to end through the task registry (CLI included)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import FILLER, NEG, POS

from workbench.errors import DataError
from workbench.tasks.token_classification import TASK, entity_slices
from workbench.tasks.token_classification.encode import align_labels, encode_words, spaced
from workbench.tasks.token_classification.formats import entity_spans, read_tagged
from workbench.tasks.token_classification.scoring import compare_entities, entity_scores, error_counts, token_scores


# --- reading files as a new user writes them -----------------------------------------------------
def test_conll_stray_i_tag_is_read_as_a_start_and_named_by_line():
    d = read_tagged(b"John B-PER\nSmith I-PER\nin O\nParis I-LOC\n\n", "x.txt")
    assert d.frame["tags"][0] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert any("line 4" in r and "I-" in r for r in d.repairs)
    assert d.invalid == [{"line": 4, "why": "I- without B-"}]
    assert not d.problems


def test_lower_case_tags_and_type_spellings_are_unified():
    d = read_tagged(b"john b-per\nsmith i-per\n\nAnn B-PER\n\n", "x.txt")
    assert d.frame["tags"].tolist() == [["B-PER", "I-PER"], ["B-PER"]]
    assert any("lower case" in r and "lines 1, 2" in r for r in d.repairs)
    assert any("'per' -> 'PER'" in r for r in d.repairs)


def test_a_file_mixing_bio_and_bmes_is_normalised_and_said():
    text = "北 B-LOC\n京 E-LOC\n很 O\n\nNew B-LOC\nYork I-LOC\n\n上 B-ORG\n海 M-ORG\n队 E-ORG\n\n"
    d = read_tagged(text.encode(), "m")
    assert d.scheme == "BIO+BMES"
    assert d.frame["tags"].tolist() == [["B-LOC", "I-LOC", "O"], ["B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "I-ORG"]]
    assert any("mixes BIO" in r for r in d.repairs)
    assert d.frame["text"][0] == "北京很"  # Chinese characters join without spaces


def test_empty_sentences_and_unknown_tags():
    d = read_tagged(b"\n\n\nA O\nB WHATEVER\n\n\n\nC B-X\n\n", "x.txt")
    assert len(d.frame) == 2  # runs of blank lines are not sentences
    assert d.problems and "WHATEVER" in d.problems[0] and "line 5" in d.problems[0]
    d = read_tagged(b'{"tokens": [], "tags": []}\n{"tokens": ["a"], "tags": ["B-X"]}\n', "x.jsonl")
    assert len(d.frame) == 1 and any("empty sentence" in r and "line 1" in r for r in d.repairs)


def test_spans_that_cut_through_a_word_split_the_word_and_say_so():
    rec = {"text": "Barack Obama visited Berlinale", "entities": [{"start": 0, "end": 12, "label": "PER"},
                                                                 {"start": 21, "end": 27, "label": "LOC"}]}
    d = read_tagged(json.dumps(rec).encode(), "x.jsonl")
    assert d.frame["tokens"][0] == ["Barack", "Obama", "visited", "Berlin", "ale"]
    assert d.frame["tags"][0] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    assert any("inside a word" in r and "line 1" in r for r in d.repairs)


def test_bad_spans_and_lines_are_messages_not_tracebacks():
    bad = json.dumps({"text": "abc", "entities": [{"start": 2, "end": 9, "label": "X"}]}).encode()
    assert "outside the text" in read_tagged(bad, "x.jsonl").problems[0]
    d = read_tagged(b"word-without-tag\nok O\n\n", "x.txt")
    assert "line 1" in d.problems[0] and "without a tag" in d.problems[0]
    with pytest.raises(DataError, match="binary"):
        read_tagged(b"\x00\x01\x02" * 50, "x.txt")
    with pytest.raises(DataError, match="line 2"):
        read_tagged(b'{"tokens": ["a"], "tags": ["O"]}\n{broken\n', "x.jsonl")


# --- labels on the first sub-word only ------------------------------------------------------------
def _wordpiece():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##believ", "##able", "film", "paris", "in"]
    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def test_a_word_in_three_pieces_gets_exactly_one_label():
    tok = _wordpiece()
    l2i = {"O": 0, "B-MISC": 1, "I-MISC": 2}
    cols = encode_words([["unbelievable", "film"]], [["B-MISC", "O"]], tok, l2i, max_length=32)
    pieces = tok.convert_ids_to_tokens(cols["input_ids"][0])
    assert pieces == ["[CLS]", "un", "##believ", "##able", "film", "[SEP]"]
    assert cols["labels"][0] == [-100, 1, -100, -100, 0, -100]
    assert sum(x != -100 for x in cols["labels"][0]) == 2  # one per word, not one per piece
    assert align_labels([None, 0, 0, 0, 1, None], [1, 0]) == [-100, 1, -100, -100, 0, -100]


def _byte_level_bpe():
    """A small byte-level BPE (like SmolLM2's) that knows few Chinese characters, so most become byte pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["the cat sat on the mat"] * 20 + ["北京"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")


def test_a_decoder_reads_each_word_at_its_last_piece(tiny_llama, tiny_bert):
    """A decoder sees only the left context: at the first byte piece of a Chinese character it has not read
    the character yet, so its tag goes on the word's last piece; an encoder keeps the first."""
    from transformers import AutoModelForTokenClassification

    from workbench.tasks.token_classification.encode import reading_piece, word_positions

    assert align_labels([None, 0, 0, 0, 1, None], [1, 0], "last") == [-100, -100, -100, 1, 0, -100]
    assert word_positions([0, 0, 1, 1, 1, None], "last") == {0: 1, 1: 4}
    assert reading_piece(AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=3)) == "last"
    assert reading_piece(AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=3)) == "first"
    assert reading_piece(None) == "first"

    tok = _byte_level_bpe()
    chars, l2i = list("王小明在北京"), {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    tags = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    cols = encode_words([chars], [tags], tok, l2i, max_length=64, piece="last")
    wids = tok(spaced(chars), is_split_into_words=True).word_ids()
    labelled = [i for i, y in enumerate(cols["labels"][0]) if y != -100]
    assert len(wids) > len(chars) + 3  # characters split into byte pieces
    assert len(labelled) == len(chars)  # one per character however many byte pieces it has
    assert labelled == [max(i for i, w in enumerate(wids) if w == k) for k in range(len(chars))]
    assert [cols["labels"][0][i] for i in labelled] == [l2i[t] for t in tags]


def test_words_keep_their_spaces_for_byte_level_tokenizers():
    assert spaced(["New", "York", "北", "京", "is"]) == ["New", " York", " 北", "京", " is"]


# --- scores against values worked out by hand -----------------------------------------------------
def test_entity_scores_token_scores_and_error_types_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "O", "O"]]
    pred = [["B-PER", "O", "O", "B-ORG", "O", "O", "O", "B-LOC"]]
    # gold: PER(0-2), LOC(3), ORG(5); pred: PER(0), ORG(3), LOC(7): no entity is exactly right.
    s = entity_scores(gold, pred)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    kinds = sorted(r["kind"] for r in compare_entities(gold[0], pred[0]))
    assert kinds == ["missed", "spurious", "wrong boundary", "wrong type"]
    assert error_counts(gold, pred)["wrong type"] == 1
    # 4 of 8 tokens right (the O tokens and the first PER word) although no entity was found.
    t = token_scores(gold, pred, ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"])
    assert t["token_accuracy"] == pytest.approx(4 / 8)
    half = entity_scores([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    assert (half["precision"], half["recall"], half["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    # strict mode refuses an entity that starts with I-; the default (conlleval) accepts it.
    assert entity_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])["f1"] == 1.0
    assert entity_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], mode="strict")["f1"] == 0.0
    assert entity_spans(["I-X", "I-X", "O", "B-Y", "I-Z"]) == [("X", 0, 2), ("Y", 3, 4), ("Z", 4, 5)]


# --- end to end on tiny models ---------------------------------------------------------------------
def _toy_conll(path: Path, n: int, seed: int = 0) -> Path:
    """Sentences of filler words with single-word entities: praise words are GOOD, the others BAD."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(3, 9))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(POS + NEG))
        lines += [f"{w}\t{'B-GOOD' if w in POS else 'B-BAD' if w in NEG else 'O'}" for w in words] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind,method", [("bert", "full"), ("llama", "full")])
def test_tiny_tagger_trains_evaluates_predicts_and_explains_errors(kind, method, tiny_bert, tiny_llama, tmp_path,
                                                                    capsys):
    from workbench.cli import main
    from workbench.config import RunConfig
    from workbench.rundir import RunDir, new_run_dir
    from workbench.training import run_training

    data = _toy_conll(tmp_path / "toy.conll", 240)
    cfg = RunConfig.from_dict({
        "task": "token-classification", "output_dir": str(tmp_path / "runs"), "name": f"ner-{kind}",
        "model": {"name_or_path": str(tiny_bert if kind == "bert" else tiny_llama)},
        "data": {"source": str(data), "max_length": 32},
        "training": {"num_train_epochs": 6 if kind == "bert" else 8, "learning_rate": 5e-3,
                     "per_device_train_batch_size": 16, "metric_for_best_model": "f1", "logging_steps": 5,
                     "save_strategy": "no"},
        "peft": {"method": method, "freeze_embeddings": False, "lora": {"r": 8, "lora_alpha": 16}}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    ev = RunDir(run.path).evaluation()
    assert ev["after"]["f1"] > ev["before"]["f1"] + 0.3, ev
    assert ev["after"]["f1"] > 0.6
    assert set(ev["after"]["per_type"]) == {"GOOD", "BAD"}
    assert sum(ev["after"]["errors"].values()) > 0
    assert json.loads(run.labels_file.read_text()) == ["O", "B-BAD", "I-BAD", "B-GOOD", "I-GOOD"]
    rep = json.loads(run.report_file.read_text())
    assert rep["details"]["scheme"] == "BIO" and set(rep["class_balance"]["train"]) == {"GOOD", "BAD"}
    val = run.metrics().dropna(subset=["eval_f1"]) if "eval_f1" in run.metrics() else pd.DataFrame()
    assert len(val), "validation entity F1 is logged"

    pred = run.predictions("after")
    for col in ("row", "gold", "predicted", "loss", "correct", "gold_tags", "pred_tags", "errors"):
        assert col in pred
    assert set(entity_slices(pred)["slice"]) == {"entity type", "entity length", "sentence length"}

    assert main(["predict", str(run.path), "the movie was superb and quite dull"]) == 0
    out = capsys.readouterr().out
    assert "GOOD: superb [14:20]" in out and "BAD: dull" in out
    assert main(["errors", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "entity errors by type" in out and "slices" in out
    assert main(["eval", str(run.path)]) == 0
    assert "f1" in capsys.readouterr().out


def test_lora_keeps_the_token_head_trainable(tiny_llama):
    from workbench.config import ModelConfig, PeftConfig
    from workbench.models import apply_lora

    labels = ["O", "B-X", "I-X"]
    model = apply_lora(TASK.load_model(ModelConfig(name_or_path=str(tiny_llama)), labels), PeftConfig(method="lora"),
                       task_type=TASK.peft_task_type)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert type(model.base_model.model).__name__ == "LlamaForTokenClassification"


def test_the_task_is_found_by_name_and_refuses_text_data(tmp_path):
    from workbench.config import DataConfig
    from workbench.tasks import get_task

    assert get_task("token-classification") is TASK
    with pytest.raises(DataError, match="not tagged sentences"):
        TASK.prepare(DataConfig(source="rotten_tomatoes"), 42)
    f = tmp_path / "all_o.txt"
    f.write_text("a O\nb O\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no entity tags"):
        TASK.prepare(DataConfig(source=str(f)), 42)
