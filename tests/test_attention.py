"""Attention maps, rollout, base-vs-tuned differences and the figures, on tiny in-memory models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.attention import (attention_difference, attention_maps, attention_rollout, head_average,
                                 load_for_attention, readable_tokens, readout_attention, select, top_tokens)
from workbench.errors import ModelError, WorkbenchError
from workbench.figures.attention import (attention_difference_heatmap, attention_heatmap, readout_bar,
                                         rollout_heatmap, saliency_figure, write_figures_html)
from workbench.saliency import token_saliency

TEXT = "the movie was really good and the acting superb"


@pytest.fixture(scope="module")
def bert(tiny_bert):
    return load_for_attention(tiny_bert)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load_for_attention(tiny_llama)


def test_shapes_rows_and_tokens(bert, llama):
    rb = attention_maps(*bert, TEXT)
    assert rb.tokens == ["[CLS]"] + TEXT.split() + ["[SEP]"]
    assert rb.attentions.shape == (2, 4, 11, 11) and rb.attentions.dtype == np.float32
    rl = attention_maps(*llama, TEXT)
    assert rl.tokens == ["<s>"] + TEXT.split()
    # Grouped-query attention (2 KV heads) still gives one map per query head (4).
    assert rl.attentions.shape == (2, 4, 10, 10)
    for r in (rb, rl):
        np.testing.assert_allclose(r.attentions.sum(-1), 1.0, atol=1e-5)
        assert not r.truncated and r.notice == "" and r.window == (0, len(r.tokens))
        assert r.probs is not None and r.probs.shape == (2,) and r.predicted in r.labels


def test_causal_mask_and_readout(bert, llama):
    rb, rl = attention_maps(*bert, TEXT), attention_maps(*llama, TEXT)
    def upper(r):
        return r.attentions[..., np.triu(np.ones(r.attentions.shape[-2:], dtype=bool), k=1)]
    assert np.all(upper(rl) == 0)  # a decoder never looks ahead
    assert np.all(upper(rb) > 0)  # an encoder does
    assert rb.readout_index == 0 and rb.tokens[0] == "[CLS]"
    assert rl.readout_index == len(rl.tokens) - 1 and rl.tokens[-1] == "superb"
    ro = readout_attention(rl)
    assert ro.shape == (2, 4, 10)
    np.testing.assert_allclose(ro, rl.attentions[:, :, -1, :])
    assert ro[..., :-1].sum() > 0  # the last token sees everything before it


def test_rollout_against_hand_computation():
    att = np.zeros((2, 2, 2, 2), dtype=np.float32)
    att[0, 0] = [[1, 0], [0.5, 0.5]]
    att[0, 1] = [[0, 1], [0.5, 0.5]]  # layer 0 head mean: all 0.5
    att[1, :] = [[1, 0], [1, 0]]  # layer 1: everyone reads token 0
    # Layer 0 with residual: ([[.5,.5],[.5,.5]] + I) / 2 = [[.75,.25],[.25,.75]]
    # Layer 1 with residual: ([[1,0],[1,0]] + I) / rowsum = [[1,0],[.5,.5]]
    # Rollout = L1 @ L0 = [[.75,.25],[.5,.5]]  (the other order would give [[.625,.375],[.5,.5]])
    np.testing.assert_allclose(attention_rollout(att), [[0.75, 0.25], [0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(attention_rollout(att, add_residual=False), [[0.5, 0.5], [0.5, 0.5]], atol=1e-6)
    assert head_average(att).shape == (2, 2, 2)
    np.testing.assert_allclose(head_average(att, layer=-1), [[1, 0], [1, 0]])


def test_rollout_rows_sum_to_one(bert):
    r = attention_maps(*bert, TEXT)
    np.testing.assert_allclose(attention_rollout(r.attentions).sum(-1), 1.0, atol=1e-5)


def test_truncation_and_window(bert, llama):
    long = " ".join(["good"] * 300)
    r = attention_maps(*bert, long, max_tokens=16)
    assert r.truncated and "302" in r.notice and "max_tokens=16" in r.notice
    assert len(r.tokens) == 16 and r.tokens[0] == "[CLS]" and r.tokens[-1] == "[SEP]" and r.window == (0, 15)
    w = attention_maps(*bert, long, window=(100, 110))
    assert w.truncated and w.window == (100, 110) and len(w.tokens) == 12 and "100–109" in w.notice
    rl = attention_maps(*llama, long, max_tokens=20)
    assert rl.truncated and len(rl.tokens) == 20 and rl.readout_index == 19
    with pytest.raises(WorkbenchError, match="outside this input"):
        attention_maps(*bert, "good film", window=(0, 50))


def _fake_run(tmp_path, base_folder, labels=("neg", "pos"), lora=False):
    """A run directory whose fine-tuned model is its base with a new head (weights otherwise equal;
    with `lora`, a freshly initialised adapter, which is the identity)."""
    from workbench.config import LoraSettings, ModelConfig, PeftConfig, RunConfig
    from workbench.models import apply_lora, load_classifier, load_tokenizer

    cfg = ModelConfig(name_or_path=str(base_folder))
    tok = load_tokenizer(str(base_folder), cfg)
    model = load_classifier(cfg, list(labels), tokenizer=tok)
    if lora:
        model = apply_lora(model, PeftConfig(lora=LoraSettings(r=4)))
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    RunConfig().to_yaml(run / "config.yaml")
    model.save_pretrained(run / "model", safe_serialization=True)
    tok.save_pretrained(run / "model")
    (run / "model" / "workbench_model.json").write_text(json.dumps(
        {"labels": list(labels), "task": "text-classification", "method": "lora" if lora else "full",
         "model": cfg.__dict__}))
    return run


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_base_vs_tuned_same_weights_is_zero(tmp_path, tiny_llama, lora):
    run = _fake_run(tmp_path, tiny_llama, lora=lora)
    tuned, base = load_for_attention(run), load_for_attention(run, base=True)
    assert tuned[0] is not base[0]
    assert (type(tuned[0]).__name__ == "PeftModelForSequenceClassification") == lora
    assert load_for_attention(run)[0] is tuned[0]  # cached: changing layer/head never reloads
    assert base[0].config.id2label == {0: "neg", 1: "pos"}
    rt, rb = attention_maps(*tuned, TEXT), attention_maps(*base, TEXT)
    for layer, head in [(None, None), (0, None), (-1, 3)]:
        d = attention_difference(rb, rt, layer, head)
        assert d.shape == (10, 10)
        np.testing.assert_allclose(d, 0.0, atol=1e-6)
    other = attention_maps(*tuned, "the film was bad")
    with pytest.raises(WorkbenchError, match="different tokens"):
        attention_difference(rb, other)


def test_needs_eager_and_valid_indices(tiny_bert, bert):
    from transformers import AutoModelForSequenceClassification
    sdpa = AutoModelForSequenceClassification.from_pretrained(tiny_bert, attn_implementation="sdpa")
    with pytest.raises(ModelError, match="eager"):
        attention_maps(sdpa, bert[1], TEXT)
    r = attention_maps(*bert, TEXT)
    with pytest.raises(WorkbenchError, match="layer 5 does not exist"):
        select(r.attentions, layer=5)
    assert select(r.attentions, layer=-1, head=2).shape == (11, 11)


def test_peft_model_attention(tiny_llama):
    from workbench.config import ModelConfig, PeftConfig
    from workbench.models import apply_lora, load_classifier, load_tokenizer

    cfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(str(tiny_llama), cfg)
    model = apply_lora(load_classifier(cfg, ["a", "b"], attn_implementation="eager", tokenizer=tok), PeftConfig())
    r = attention_maps(model.eval(), tok, TEXT)
    assert r.attentions.shape == (2, 4, 10, 10) and r.readout_index == 9


def test_readable_tokens_strip_markers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "un": 1, "##believ": 2, "##able": 3}, unk_token="[UNK]"))
    wp_tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    assert readable_tokens(wp_tok, [1, 2, 3, 0]) == ["un", "believ", "able", "[UNK]"]
    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab.update({"Ġfilm": len(vocab)})
    bl = Tokenizer(models.BPE(vocab, merges=[]))
    bl.decoder = decoders.ByteLevel()
    bl_tok = PreTrainedTokenizerFast(tokenizer_object=bl)
    assert readable_tokens(bl_tok, [vocab["Ġfilm"], vocab["Ġ"], vocab["Ċ"]]) == ["film", "␣", "⏎"]


def test_top_tokens_skips_specials():
    w = np.array([0.5, 0.1, 0.3, 0.1])
    assert top_tokens(w, ["[CLS]", "a", "b", "[SEP]"], 2, [True, False, False, True]) == [(2, "b", 0.3), (1, "a", 0.1)]


def test_figures_build_with_content(tmp_path, bert, llama):
    r = attention_maps(*llama, TEXT)
    fig = attention_heatmap(r, layer=-1, head=1)
    hm = fig.data[0]
    assert np.asarray(hm.z).shape == (10, 10) and np.allclose(hm.z, r.attentions[1, 1])
    assert list(fig.layout.xaxis.ticktext) == ["&lt;s&gt;"] + TEXT.split()  # escaped: '<s>' is a plotly tag
    assert "from" in hm.hovertemplate and "to" in hm.hovertemplate and "layer 1" in fig.layout.title.text
    assert hm.customdata[2][5][0].startswith("2:") and hm.customdata[2][5][1].startswith("5:")
    avg = attention_heatmap(r, 0)
    assert "head average" in avg.layout.title.text and np.allclose(avg.data[0].z, r.attentions[0].mean(0))

    long = attention_maps(*bert, " ".join(["good"] * 50), max_tokens=12)
    assert long.notice in attention_heatmap(long, 0).layout.title.subtitle.text.replace("&lt;", "<")

    roll = rollout_heatmap(r)
    np.testing.assert_allclose(roll.data[0].z, attention_rollout(r.attentions), atol=1e-6)

    diff = np.random.default_rng(0).normal(size=(10, 10))
    dfig = attention_difference_heatmap(diff, r.tokens)
    assert dfig.data[0].zmid == 0 and dfig.data[0].zmin == -dfig.data[0].zmax == -np.abs(diff).max()

    bar = readout_bar(r, layer=0)
    np.testing.assert_allclose(bar.data[0].y, r.attentions[0, :, -1, :].mean(0))
    assert "position 9" in bar.layout.title.text

    sal = token_saliency(*bert, TEXT, method="ig", n_steps=8)
    sfig = saliency_figure(sal, per_row=4)
    cells = np.asarray(sfig.data[0].text)
    assert cells.shape == (3, 4) and list(cells.ravel()[:11]) == sal.tokens
    assert sfig.data[0].zmid == 0 and "Integrated gradients" in sfig.layout.title.text
    assert "completeness gap" in sfig.layout.title.subtitle.text

    out = write_figures_html([fig, sfig], tmp_path / "a.html", title="t")
    page = out.read_text()
    assert page.count("Plotly.newPlot") == 2 and "plotly.js" in page.lower()


def test_cli_writes_html_and_prints_top_tokens(tmp_path, tiny_llama, capsys):
    from workbench.cli import main

    run = _fake_run(tmp_path, tiny_llama)
    out = tmp_path / "att.html"
    rc = main(["attention", str(run), TEXT, "--layer", "1", "--head", "2", "--diff", "--saliency", "ig",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and out.exists() and out.read_text().count("Plotly.newPlot") == 5
    assert "top tokens attended from superb" in printed and "completeness gap" in printed
    assert main(["attention", str(run), TEXT, "--layer", "7", "--out", str(out)]) == 2  # a clear error, no traceback
    assert "layer 7 does not exist" in capsys.readouterr().err
