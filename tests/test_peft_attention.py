"""Attention of prompt- and prefix-tuned runs (peft's virtual tokens): a tiny BERT and a tiny Llama classifier of
each, and a prefix-tuned BERT tagger. Prompt tuning: the soft prompt is shown as special tokens [P1]..[Pn] and
every map stays square; prefix tuning: the maps are over the text, renormalised, and the prefix's share is kept.
Before the fix the maps were longer than the token list (prompt) or not square (prefix), and the CLI crashed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_cases import config_for, data_for, model_for

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TEXT = "a wonderful film with a great cast"
N_VIRTUAL = {"prompt": 4, "prefix": 5}
CASES = [("bert", "prompt"), ("bert", "prefix"), ("llama", "prefix"), ("llama", "prompt")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    work = tmp_path_factory.mktemp("peft-attention")
    out = {}
    for task, kind, method in [("text-classification", k, m) for k, m in CASES] + \
            [("token-classification", "bert", "prefix")]:
        model = model_for(task, kind, work / f"model-{kind}")
        cfg = config_for(task, model, data_for(task, work / f"data-{task}"), work / "runs", method,
                         **{method: {"num_virtual_tokens": N_VIRTUAL[method]}})
        cfg = cfg.override({"training.max_steps": 2})
        if kind == "llama" and method == "prompt":  # peft's soft prompt on a decoder classifier needs it
            cfg = cfg.override({"model.pooling": "mean"})
        out[(task if task != "text-classification" else "", kind, method)] = \
            run_training(cfg, new_run_dir(cfg), progress=False).path
    return out


def _load(run):
    from workbench.attention import load_for_attention

    return load_for_attention(run)


def _raw_attentions(model, tok, enc) -> np.ndarray:
    with torch.inference_mode():
        out = model(**enc.tensors(), output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).float().numpy()


@pytest.mark.parametrize("kind,method", CASES)
def test_maps_rollout_and_top_tokens_line_up_with_the_tokens(runs, kind, method):
    import workbench.attention as att
    from workbench.attention import (attention_maps, attention_rollout, encode_text, readout_attention, select,
                                     top_tokens)

    model, tok = _load(runs[("", kind, method)])
    n = N_VIRTUAL[method]
    res = attention_maps(model, tok, TEXT)
    text = encode_text(tok, TEXT)
    seq = len(res.tokens)
    layers, heads = res.n_layers, res.n_heads
    assert res.attentions.shape == (layers, heads, seq, seq) and len(res.special) == seq
    np.testing.assert_allclose(res.attentions.sum(-1), 1.0, atol=1e-5)  # every row, so rollout is valid
    assert att.virtual_tokens(model) == (method, n)  # read from the adapter's peft config
    assert res.virtual == method and res.n_virtual == n and res.virtual_share.shape == (layers, heads, seq)
    raw = _raw_attentions(model, tok, text)
    if method == "prompt":  # the soft prompt is part of the sequence: shown, special, before the text
        assert seq == n + len(text.tokens) and res.tokens[:n] == [f"[P{i}]" for i in range(1, n + 1)]
        assert res.tokens[n:] == text.tokens and all(res.special[:n]) and res.special[n:] == text.special
        np.testing.assert_allclose(res.virtual_share, res.attentions[..., :n].sum(-1), atol=1e-6)
        # an encoder's head reads position 0, now the first soft-prompt position; a decoder's the last token
        assert res.readout_index == (0 if kind == "bert" else seq - 1)
        np.testing.assert_allclose(res.attentions, raw, atol=1e-6)
    else:  # the prefix has keys but no queries: the maps are over the text, renormalised
        assert res.tokens == text.tokens and raw.shape[-2:] == (seq, n + seq)
        np.testing.assert_allclose(res.virtual_share, raw[..., :n].sum(-1), atol=1e-6)
        np.testing.assert_allclose(res.attentions * (1 - res.virtual_share[..., None]), raw[..., n:], atol=1e-5)
        assert res.readout_index == (0 if kind == "bert" else seq - 1)
    text_rows = res.virtual_share[..., n:] if method == "prompt" else res.virtual_share  # a soft-prompt row of a
    assert ((text_rows > 0) & (text_rows < 1)).all()  # decoder sees only the prompt: 1 there
    roll = attention_rollout(res.attentions)
    assert roll.shape == (seq, seq)
    np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-4)
    for weights in (select(readout_attention(res), -1, None), roll[res.readout_index]):
        top = top_tokens(weights, res.tokens, 5, res.special)
        assert len(top) == 5 and all(res.tokens[i] == t and not res.special[i] for i, t, _ in top)


@pytest.mark.parametrize("kind,method", CASES)
def test_cli_prints_the_virtual_share_with_diff_and_saliency(runs, kind, method, tmp_path, capsys):
    from workbench.cli import main

    run = runs[("", kind, method)]
    out = tmp_path / "att.html"
    rc = main(["attention", str(run), TEXT, "--diff", "--saliency", "grad", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and out.read_text().count("Plotly.newPlot") == 5, printed
    from workbench.attention import attention_maps, virtual_note

    n = N_VIRTUAL[method]
    what = f"{n} soft-prompt positions [P1]–[P{n}]" if method == "prompt" else f"{n} trained key/value positions"
    assert what in printed and "of its attention to them" in printed
    res = attention_maps(*_load(run), TEXT)
    share = float(res.virtual_share[-1].mean(0)[res.readout_index])  # the CLI's default: last layer, head average
    assert f"pays {share:.1%} of its attention" in printed
    assert virtual_note(res, -1, None) in printed
    assert "readout attention most increased by fine-tuning:" in printed and "saliency (grad)" in printed
    if method == "prompt":
        assert "which the base model has not got, gained" in printed


def test_difference_with_the_base_model_over_the_soft_prompt(runs):
    import workbench.attention as att
    from workbench.attention import attention_difference, attention_maps, load_for_attention

    run = runs[("", "bert", "prompt")]
    tuned = attention_maps(*load_for_attention(run), TEXT)
    base = attention_maps(*load_for_attention(run, base=True), TEXT)
    n = tuned.n_virtual
    assert base.virtual == "" and len(base.tokens) + n == len(tuned.tokens)
    diff = attention_difference(base, tuned, -1, None)
    assert diff.shape == (len(tuned.tokens),) * 2
    assert np.isnan(diff[:n]).all() and not np.isnan(diff[n:]).any()  # no soft-prompt queries in the base model
    t, b = tuned.attentions[-1].mean(0), base.attentions[-1].mean(0)
    np.testing.assert_allclose(diff[n:, :n], t[n:, :n], atol=1e-6)  # the base model paid them nothing
    np.testing.assert_allclose(diff[n:, n:], t[n:, n:] - b, atol=1e-6)
    moved = att.readout_difference(base, tuned, -1, None)  # [P1]'s row (the tuned readout) minus [CLS]'s
    np.testing.assert_allclose(moved, np.concatenate([t[0, :n], t[0, n:] - b[0]]), atol=1e-6)


def test_figures_and_a_prefix_tuned_tagger(runs):
    from workbench.attention import attention_maps, attention_rollout, load_for_attention
    from workbench.figures.attention import attention_heatmap, readout_bar, rollout_heatmap

    res = attention_maps(*load_for_attention(runs[("", "llama", "prefix")]), TEXT)
    assert "prefix (5 keys, not shown) takes" in readout_bar(res, -1).layout.title.subtitle.text
    assert attention_heatmap(res, 0, 1).data[0].z.shape == (len(res.tokens),) * 2
    rollout_heatmap(res)
    tagger = attention_maps(*load_for_attention(runs[("token-classification", "bert", "prefix")]), TEXT, word=2)
    seq = len(tagger.tokens)
    assert tagger.readout == "word" and tagger.readout_word == 2 and tagger.virtual == "prefix"
    assert tagger.attentions.shape[-2:] == (seq, seq) and tagger.token_probs.shape[0] == seq
    np.testing.assert_allclose(tagger.attentions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(attention_rollout(tagger.attentions).sum(-1), 1.0, atol=1e-4)


def test_dashboard_attention_page_captions_the_soft_prompt_share(runs, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    run = runs[("", "bert", "prompt")]
    monkeypatch.setenv("WORKBENCH_RUNS", str(run.parent))
    at = AppTest.from_string("from dashboard import attention\nattention.page()", default_timeout=120).run()
    at.selectbox(key="att_run").set_value(run.name)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    captions = " ".join(c.value for c in at.caption)
    assert "4 soft-prompt positions [P1]–[P4]" in captions and "of its attention to them" in captions
    assert at.get("plotly_chart")
