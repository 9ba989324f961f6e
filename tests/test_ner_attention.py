"""Attention and saliency of a token classifier (NER) at a chosen word: the readout row, IG completeness
for that word's tag logit, the CLI and the dashboard's word picker; on a tiny BERT tagger trained here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.attention import (attention_maps, attention_rollout, load_for_attention, readout_attention,
                                 with_readout)
from workbench.errors import WorkbenchError
from workbench.saliency import token_saliency

TEXT = "the movie was superb and quite dull"  # words 3 (superb, GOOD) and 6 (dull, BAD) are entities
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tiny_bert):
    """A tiny BERT tagger trained on `_toy_conll` (praise words GOOD, the others BAD), in its own runs root."""
    from test_ner import _toy_conll

    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("ner-att")
    data = _toy_conll(root / "toy.conll", 240)
    cfg = RunConfig.from_dict({
        "task": "token-classification", "output_dir": str(root / "runs"), "name": "ner-bert",
        "model": {"name_or_path": str(tiny_bert)}, "data": {"source": str(data), "max_length": 32},
        "training": {"num_train_epochs": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "metric_for_best_model": "f1", "logging_steps": 5, "save_strategy": "no"},
        "peft": {"freeze_embeddings": False}})
    return run_training(cfg, new_run_dir(cfg), progress=False)


@pytest.fixture(scope="module")
def tagger(ner_run):
    return load_for_attention(ner_run.path)


def _wordpiece_tagger():
    """An untrained BERT tagger whose tokenizer cuts `unbelievable` into three pieces (in memory)."""
    from test_ner import _wordpiece
    from transformers import BertConfig, BertForTokenClassification

    tok = _wordpiece()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     id2label={0: "O", 1: "B-MISC", 2: "I-MISC"}, attn_implementation="eager")
    return BertForTokenClassification(cfg).eval(), tok


def test_the_readout_is_the_chosen_words_first_sub_word():
    model, tok = _wordpiece_tagger()
    r = attention_maps(model, tok, "unbelievable film in paris")
    assert r.readout == "word" and r.words == ["unbelievable", "film", "in", "paris"]
    assert r.tokens == ["[CLS]", "un", "believ", "able", "film", "in", "paris", "[SEP]"]
    assert r.word_positions == [1, 4, 5, 6]  # the first piece of each word
    with torch.no_grad():
        logits = model(**tok("unbelievable film in paris", return_tensors="pt")).logits[0]
    for w, pos in [(0, 1), (1, 4), (3, 6)]:
        c = with_readout(r, word=w)
        assert (c.readout_index, c.readout_word) == (pos, w)
        np.testing.assert_allclose(readout_attention(c), r.attentions[:, :, pos, :])
        np.testing.assert_allclose(c.probs, torch.softmax(logits[pos], -1).numpy(), atol=1e-5)
        assert c.predicted == r.labels[int(logits[pos].argmax())]
    np.testing.assert_allclose(attention_rollout(r.attentions)[with_readout(r, word=1).readout_index],
                               attention_rollout(r.attentions)[4])
    # A token position inside a word reads that sub-word and names its word.
    assert (with_readout(r, position=2).readout_index, with_readout(r, position=2).readout_word) == (2, 0)
    assert r.word_tags == [r.labels[int(logits[p].argmax())] for p in (1, 4, 5, 6)]
    with pytest.raises(WorkbenchError, match="word 4 does not exist: the text has 4 words"):
        with_readout(r, word=4)
    cut = attention_maps(model, tok, "unbelievable film in paris", max_tokens=4)  # [CLS] un believ [SEP]
    assert cut.word_positions == [1, None, None, None]
    with pytest.raises(WorkbenchError, match="cut it off"):
        with_readout(cut, word=2)
    with pytest.raises(WorkbenchError, match="single text"):
        attention_maps(model, tok, "film", "paris")


def test_a_text_classifier_keeps_its_readout_and_refuses_a_word(tiny_bert):
    model, tok = load_for_attention(tiny_bert)
    r = attention_maps(model, tok, TEXT)
    assert r.readout == "sequence" and r.readout_index == 0 and r.words == [] and r.probs.shape == (2,)
    assert with_readout(r) is r
    for call in (lambda: attention_maps(model, tok, TEXT, word=1), lambda: with_readout(r, word=1),
                 lambda: token_saliency(model, tok, TEXT, word=1, method="grad")):
        with pytest.raises(WorkbenchError, match="one class per text"):
            call()


def test_default_readout_is_the_first_entity_word(tagger):
    r = attention_maps(*tagger, TEXT)
    assert r.word_tags == ["O", "O", "O", "B-GOOD", "O", "O", "B-BAD"]  # the tagger learned the toy task
    assert (r.readout_word, r.readout_index, r.predicted) == (3, 4, "B-GOOD")
    dull = with_readout(r, word=6)
    assert dull.predicted == "B-BAD" and dull.tokens[dull.readout_index] == "dull"
    no_entity = attention_maps(*tagger, "the movie was quite long")  # `long` is unknown: no entity
    assert set(no_entity.word_tags) == {"O"} and no_entity.readout_word == 0


@pytest.mark.parametrize("word", [3, 6, 1])
def test_integrated_gradients_explain_the_chosen_words_logit(tagger, word):
    model, tok = tagger
    s = token_saliency(model, tok, TEXT, method="ig", n_steps=48, word=word)
    pos = word + 1  # one token per word here, after [CLS]
    assert (s.readout_index, s.readout_word) == (pos, word)
    # Completeness, against the tagged logit at THIS position computed independently (pad baseline).
    enc = tok(TEXT, return_tensors="pt")
    ids = enc["input_ids"]
    special = torch.tensor(tok.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)).bool()
    base_ids = torch.where(special, ids, torch.full_like(ids, tok.pad_token_id))
    with torch.no_grad():
        f_x = model(**enc).logits[0, pos]
        f_b = model(**{**enc, "input_ids": base_ids}).logits[0, pos]
    assert s.predicted == int(f_x.argmax()) == s.target
    delta = float(f_x[s.target] - f_b[s.target])
    assert s.delta == pytest.approx(delta, abs=1e-4)
    assert float(s.scores.sum()) == pytest.approx(delta, abs=max(1e-3, 0.01 * abs(delta)))
    assert s.relative_gap < 0.01
    # Another tag of the same word is explained on request.
    other = token_saliency(model, tok, TEXT, method="grad", word=word, target="B-BAD")
    assert other.target_label == "B-BAD" and other.readout_index == pos


def test_cli_names_the_word_and_its_tag(ner_run, tiny_bert, tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "att.html"
    assert main(["attention", str(ner_run.path), TEXT, "--saliency", "ig", "--diff", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "explaining word 3 'superb' (token position 4): model tags it B-GOOD" in printed
    assert "3:superb/B-GOOD" in printed and "6:dull/B-BAD" in printed
    assert "top tokens attended from superb (position 4)" in printed
    assert "saliency (ig) for tag B-GOOD of word 3 'superb' (completeness gap" in printed
    assert out.read_text().count("Plotly.newPlot") == 5
    assert main(["attention", str(ner_run.path), TEXT, "--token", "6", "--out", str(out)]) == 0
    assert "explaining word 6 'dull' (token position 7): model tags it B-BAD" in capsys.readouterr().out
    assert main(["attention", str(ner_run.path), TEXT, "--token", "7", "--out", str(out)]) == 2
    assert "word 7 does not exist: the text has 7 words" in capsys.readouterr().err
    assert main(["attention", str(tiny_bert), TEXT, "--token", "1", "--out", str(out)]) == 2
    assert "one class per text" in capsys.readouterr().err


def test_dashboard_shows_tags_and_a_word_picker(ner_run):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(ner_run.path.parent)
    try:
        at = AppTest.from_string("from dashboard import attention\nattention.page()", default_timeout=120).run()
        at.selectbox(key="att_run").set_value(ner_run.name)
        at.text_area(key="att_text").input(TEXT)
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
        tags = next(d.value for d in at.dataframe if "predicted tag" in d.value.index)
        assert tags.loc["word"].tolist() == TEXT.split() and tags.loc["predicted tag", "3"] == "B-GOOD"
        picker = next(b for b in at.button_group if str(b.key).startswith("att_word_"))
        assert picker.value == 3 and "superb · B-GOOD" in picker.options
        assert any("Word 3 **superb** is tagged **B-GOOD**" in m.value for m in at.markdown)
        assert len(at.get("plotly_chart")) == 2  # heatmap + readout bar
        picker.set_value(6)
        at.run()
        assert any("Word 6 **dull** is tagged **B-BAD**" in m.value for m in at.markdown)
        assert "dull (position 7)" in at.get("plotly_chart")[1].proto.spec
        at.session_state["att_tab"] = "Saliency"
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
        assert any("tag word 6 ('dull') as B-BAD" in c.value for c in at.caption)
        assert len(at.get("plotly_chart")) == 1
        at.session_state["att_tab"] = "Attention map"
        at.radio(key="att_text_kind").set_value("From the error table")  # a tagger's table: sentences
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.selectbox(key="att_example").value is not None and at.button_group
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_RUNS", None)
        else:
            os.environ["WORKBENCH_RUNS"] = old


def test_tagger_windows_end_between_words_and_show_their_words():
    from workbench.attention import model_task, token_windows

    model, tok = _wordpiece_tagger()
    text = "film unbelievable film in paris"  # [CLS] film un believ able film in paris [SEP]
    task = model_task(model)
    windows = token_windows(tok, text, max_tokens=5, task=task)
    assert windows == [(0, 2), (2, 5), (5, 9)]  # not (1, 4): that would cut "unbelievable" after "believ"
    assert token_windows(tok, text, max_tokens=5)[:2] == [(0, 4), (4, 7)]  # a text classifier's plain cut
    r = attention_maps(model, tok, text, max_tokens=5, window=windows[1], word=1)
    assert r.tokens == ["[CLS]", "un", "believ", "able", "[SEP]"] and r.shown_words == [1]
    assert (r.readout_index, r.readout_word, r.n_tokens) == (1, 1, 9)
    assert attention_maps(model, tok, text, max_tokens=5, window=windows[2]).shown_words == [2, 3, 4]
    with pytest.raises(WorkbenchError, match="window"):
        attention_maps(model, tok, text, max_tokens=5, window=windows[1], word=0)


def test_cli_token_picks_the_window_that_holds_the_word(ner_run, tmp_path, capsys):
    from workbench.cli import main

    text = " ".join([TEXT] * 3)  # 21 words; word 17 is the third "superb"
    out = tmp_path / "att.html"
    assert main(["attention", str(ner_run.path), text, "--max-tokens", "8", "--token", "17", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "explaining word 17 'superb'" in printed
    assert "model tag for this window (tokens 13–18 of 23): B-GOOD" in printed  # 6 words a window
    assert "tag of word 17 in the whole text, as normal prediction sees it" in printed
    assert "tags of the words in this window: " in printed and "17:superb/" in printed and " 0:the/" not in printed
    assert main(["attention", str(ner_run.path), text, "--max-tokens", "8", "--token", "17", "--window", "0",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "word 17 is in window" in err and "not in window 0" in err
