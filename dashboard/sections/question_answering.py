"""Extractive question answering's page sections (`question-answering`): the Data page's preview of questions,
contexts and answers (the gold span highlighted) with the QA data report (offsets repaired, windows, answer
lengths), the Train page's data choice with the window settings (doc_stride, max_answer_length,
null_threshold), and the Evaluate page's exact match and F1 before -> after, errors by type, slices, an example
browser with the gold and predicted spans highlighted in the context, and a try-it box."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import streamlit as st

from workbench.config import DataConfig, field_help
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir

from .. import widgets
from .files import head_columns

TASK = "question-answering"
FORMATS = ("SQuAD JSON (`data` → `paragraphs` → `qas`, unanswerable questions allowed), or JSONL/CSV/Parquet rows "
           "with `question`, `context`, `answer` and its character offset `answer_start`")
QUESTION_COLUMNS = {"question", "query"}
CONTEXT_COLUMNS = {"context", "passage", "paragraph", "document"}
ANSWER_COLUMNS = {"answer", "answers", "answer_text", "answer_start"}
COLORS = {"gold": "#a5d6a7", "predicted": "#ffcc80", "both": "#80cbc4"}  # green, orange, teal where they agree
TITLES = {"gold": "gold answer", "predicted": "predicted answer", "both": "gold and predicted"}
SHOWN_CHARS = 600  # context shown either side of the answers in a long context
SCORE = st.column_config.NumberColumn(format="%.3f")
VIEWS = ("Wrong answers", "All questions")


# --- which files are QA data ------------------------------------------------------------------------
def claims(source: str) -> bool:
    """A SQuAD JSON file (`paragraphs` with `qas`) or a table with a question column and a context column
    (`text` counts as the context only next to an answer column). Reads only the file's start; never raises."""
    cols = head_columns(source)
    if Path(source).suffix.lower() in (".json", ".jsonl") and \
            ({"paragraphs", "qas"} <= cols or {"qas", "context"} <= cols):
        return True
    has_context = bool(cols & CONTEXT_COLUMNS) or ("text" in cols and bool(cols & ANSWER_COLUMNS))
    return bool(cols & QUESTION_COLUMNS) and has_context


# --- the highlighted context ----------------------------------------------------------------------
def context_html(context: str, gold: Sequence[tuple[int, int]] = (), predicted: tuple[int, int] | None = None, *,
                 clip: bool = True) -> str:
    """The context as HTML with the gold answers and the predicted answer marked (`highlight`): green gold,
    orange predicted, teal where both agree; every character escaped. A long context is clipped to
    SHOWN_CHARS either side of the answers."""
    from workbench.tasks.question_answering import highlight

    spans = [(int(a), int(b), "gold") for a, b in gold if 0 <= int(a) < int(b)]
    if predicted is not None and 0 <= int(predicted[0]) < int(predicted[1]):
        spans.append((int(predicted[0]), int(predicted[1]), "predicted"))
    lo, hi = 0, len(context)
    if clip and len(context) > 4 * SHOWN_CHARS and spans:
        lo = max(0, min(a for a, _, _ in spans) - SHOWN_CHARS)
        hi = min(len(context), max(b for _, b, _ in spans) + SHOWN_CHARS)
    shifted = [(a - lo, b - lo, name) for a, b, name in spans]
    out = []
    for piece, mark in highlight(context[lo:hi], shifted):
        text = html.escape(piece)
        if mark is None:
            out.append(text)
        else:
            out.append(f'<mark style="background:{COLORS[mark]};padding:0 2px;border-radius:3px" '
                       f'title="{TITLES[mark]}">{text}</mark>')
    before = f"… ({lo:,} characters) " if lo else ""
    after = f" … ({len(context) - hi:,} more characters)" if hi < len(context) else ""
    return (f'<div style="line-height:1.7;white-space:pre-wrap">{html.escape(before)}{"".join(out)}'
            f"{html.escape(after)}</div>")


def legend_html() -> str:
    return " ".join(f'<mark style="background:{COLORS[k]};padding:0 4px;border-radius:3px">{TITLES[k]}</mark>'
                    for k in ("gold", "predicted", "both"))


def _gold_spans(golds: Any) -> list[tuple[int, int]]:
    out = []
    for g in golds if isinstance(golds, (list, tuple)) else []:
        if isinstance(g, dict) and isinstance(g.get("text"), str):
            try:
                start = int(g.get("answer_start"))
            except (TypeError, ValueError):
                continue
            out.append((start, start + len(g["text"])))
    return out


# --- Data page -------------------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner="Reading the questions...")
def _questions(source: str, stamp: float) -> tuple[pd.DataFrame, str, int]:
    from workbench.tasks.question_answering import read_qa

    data = read_qa(source)
    f = data.frame.head(200)
    return (pd.DataFrame({"line": f["line"], "question": f["question"], "answer": f["answer"],
                          "answer_start": f["answer_start"], "context": f["context"],
                          "answers": [json.dumps(list(a), ensure_ascii=False) for a in f["answers"]]}),
            data.format, len(data.frame))


@st.cache_data(max_entries=16, show_spinner="Checking the data...")
def _report(source: str, stamp: float, max_length: int, doc_stride: int, max_answer_length: int,
            tokenizer_dir: str | None) -> dict[str, Any]:
    """The QA data report for these window settings (the task's own preparation)."""
    from workbench.data.report import DataReport
    from workbench.tasks import get_task

    cfg = DataConfig(source=source, max_length=max_length, doc_stride=doc_stride, max_answer_length=max_answer_length)
    tok = widgets.tokenizer(tokenizer_dir) if tokenizer_dir else None
    try:
        return get_task(TASK).prepare(cfg, 42, tok, raise_on_problems=False).report.to_dict()
    except WorkbenchError as e:  # a file its reader cannot read at all: the message is the report
        return DataReport(source=source, problems=[str(e)]).to_dict()


def _settings() -> tuple[int, int, int]:
    s = st.session_state
    return (int(s.get("t.data.max_length") or 256), int(s.get("t.data.doc_stride") or 128),
            int(s.get("t.data.max_answer_length") or 30))


def data_view(source: str) -> None:
    """Questions, contexts and answers (the first one's gold span marked), then the data report: offsets
    repaired, contexts longer than a window and how many windows they take, answer lengths, duplicates."""
    stamp = widgets.file_stamp(source)
    try:
        preview, fmt, n = _questions(source, stamp)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    st.subheader(f"Preview: {Path(source).name}")
    st.caption(f"{n:,} questions ({fmt}); the first {len(preview)} shown. `line` is where each question is in the "
               f"file (its number in a SQuAD file). No column mapping: question, context and answer are found by "
               f"name.")
    st.dataframe(preview.drop(columns="answers"), hide_index=True, height=240, key="qa_preview",
                 column_config={"context": st.column_config.TextColumn(width="large")})
    if len(preview):
        first = preview.iloc[0]
        st.html(f"<p><b>Row {html.escape(str(first['line']))}:</b> {html.escape(str(first['question']))}</p>"
                + context_html(str(first["context"]), _gold_spans(json.loads(first["answers"]))) + legend_html())
    max_length, doc_stride, max_answer_length = _settings()
    model = st.session_state.get("train_model") or "minilm"
    tok_dir = local_model_dir(model)
    report = _report(source, stamp, max_length, doc_stride, max_answer_length, str(tok_dir) if tok_dir else None)
    _show_report(report, tok_dir is not None, model, max_length, doc_stride)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "task": TASK, "text_column": None,
                                           "label_column": None, "text_pair_column": None}
        st.success(f"Ready: {report['rows_used']:,} questions about {report['details'].get('contexts', '?')} "
                   f"contexts. The Train page (task {TASK}) uses this data.", icon=":material/check_circle:")


def _show_report(r: dict[str, Any], tokenized: bool, model: str, max_length: int, doc_stride: int) -> None:
    st.subheader("Data report")
    for p in r["problems"]:
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:  # offsets repaired (with the row), contexts read in windows, long answers
        st.warning(w, icon=":material/warning:")
    if r["problems"]:
        return
    d = r.get("details") or {}
    balance = r.get("class_balance") or {}
    unanswerable = sum(int(v.get("unanswerable", 0)) for v in balance.values())
    m = st.columns(5)
    m[0].metric("Questions read", f"{r['rows_read']:,}")
    m[1].metric("Questions used", f"{r['rows_used']:,}")
    m[2].metric("Contexts (train)", f"{d.get('contexts', 0):,}")
    m[3].metric("Questions per context", d.get("questions_per_context", "-"))
    m[4].metric("Unanswerable", f"{unanswerable:,}", help="SQuAD 2.0-style questions with no answer in the context: "
                "a model trained with them may answer nothing.")
    chars = d.get("context_chars") or {}
    lines = [f"Context length in characters: median {chars.get('p50', '?')}, longest {chars.get('max', '?')}."]
    win = d.get("windows_per_question")
    if win:
        lines.append(f"Windows of {max_length} tokens (question included) overlapping by {doc_stride}: "
                     f"{win['mean']} per question on average, up to {win['max']}.")
    elif tokenized:
        lines.append(f"Every question and its context fit in one window of {max_length} tokens.")
    ans = d.get("answer_tokens")
    if ans:
        lines.append(f"Answer length in tokens: median {ans['p50']}, longest {ans['max']} (max_answer_length "
                     f"{d.get('max_answer_length')}).")
    if r["split_sizes"]:
        lines.append("Splits (whole contexts held out): " + ", ".join(f"{k} {v:,}" for k, v in r["split_sizes"].items())
                     + f"; repeated questions in train {r.get('duplicates', 0)}, test questions about a training "
                     f"context {(r.get('leakage') or {}).get('test', 0)}.")
    for line in lines:
        st.caption(line)
    types = d.get("question_types") or {}
    a, b = st.columns(2)
    if types:
        a.markdown("**Question types (train)**")
        a.dataframe(pd.DataFrame({"question type": list(types), "questions": list(types.values())}),
                    hide_index=True, key="qa_types")
    widgets.token_length_panel(b, r, tokenized, model)


# --- Train page ------------------------------------------------------------------------------------
def train_defaults(model: str) -> dict[str, Any]:
    """LoRA for a decoder (SmolLM2: its byte-level BPE reads Chinese, and a 135M model learns span heads with
    ~0.5% of its weights trained, as NER's smollm2 config does), full fine-tuning for an encoder (MiniLM);
    a doc_stride of 64 that fits every preset's window (at most half of data.max_length)."""
    return {"peft.method": "lora" if _is_decoder(model) else "full", "data.doc_stride": 64}


def _is_decoder(model: str) -> bool:
    from workbench.assets import BUILTIN_MODELS
    from workbench.estimate import model_summary

    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model].architecture in ("llama", "gpt2", "qwen2")
    kind = (model_summary(model) or {}).get("model_type", "")
    return kind in ("llama", "gpt2", "qwen2", "mistral", "gemma", "phi3", "qwen3", "smollm3")


def train_data(task: str) -> dict[str, Any]:
    """QA files and the built-in `duie_qa`; the window settings (data.max_length is with the hyper-parameters)."""
    from workbench.assets import BUILTIN_DATASETS

    from . import pick_source

    st.subheader("Data")
    source = pick_source(task, "No question-answering data yet: upload a SQuAD JSON file or a table with "
                         "question, context and answer columns on the Data page.")
    if source is None:
        return {"data.source": ""}
    st.caption(BUILTIN_DATASETS[source].description if source in BUILTIN_DATASETS else
               f"Questions about contexts: {FORMATS}. Check a file on the Data page first.")
    help_ = field_help()
    c = st.columns(3)
    stride = c[0].number_input("doc stride", min_value=0, step=16, key="t.data.doc_stride",
                               help=help_["data.doc_stride"], persist_state="session")
    longest = c[1].number_input("max answer length", min_value=1, step=5, key="t.data.max_answer_length",
                                help=help_["data.max_answer_length"], persist_state="session")
    null = c[2].number_input("null threshold", step=0.5, format="%.2f", key="t.data.null_threshold",
                             help=help_["data.null_threshold"], persist_state="session")
    window = int(st.session_state.get("t.data.max_length") or 0)
    st.caption(f"A context longer than one window (data.max_length = {window} tokens with the question, under "
               f"Hyper-parameters) is read in windows overlapping by doc_stride tokens; at most half the window.")
    return {"data.source": source, "data.text_column": None, "data.label_column": None,
            "data.text_pair_column": None, "data.doc_stride": int(stride), "data.max_answer_length": int(longest),
            "data.null_threshold": float(null)}


# --- Evaluate page ---------------------------------------------------------------------------------
TILES = (("exact_match", "Exact match"), ("f1", "F1"), ("has_answer_f1", "F1 (answerable)"),
         ("no_answer_accuracy", "No-answer accuracy"))


def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Exact match and F1 before -> after, errors by type, slices, examples with the spans in context, try it."""
    after, before = ev.get("after") or {}, ev.get("before") or {}
    main = after or before
    shown = [t for t in TILES if t[0] in ("exact_match", "f1") or main.get(t[0]) is not None]
    for col, (key, name) in zip(st.columns(len(shown)), shown):
        value, old = main.get(key), before.get(key)
        delta = value - old if after and isinstance(value, (int, float)) and isinstance(old, (int, float)) else None
        col.metric(name, f"{value:.3f}" if isinstance(value, (int, float)) else "-",
                   delta=f"{delta:+.3f} vs before" if delta is not None else None)
    st.caption(f"Test split: {main.get('n')} questions ({main.get('answerable', '?')} answerable). Exact match and F1 "
               f"compare the predicted answer with the best-matching gold answer after SQuAD's normalisation "
               f"(lower case, no punctuation or articles); Chinese is scored by character, as CMRC 2018 does. "
               f"'Before' is the pretrained model with a fresh, untrained span head.")
    tabs = st.tabs(["Errors by type", "Slices", "Examples", "Try it"])
    with tabs[0]:
        st.dataframe(_error_counts(ev), hide_index=True, key="qa_error_counts")
        st.caption("no answer given: the model answered nothing; wrong place: no overlap with a gold answer; "
                   "too long / too short: it holds / lies inside the gold answer; overlapping: partly both.")
    try:
        pred = run.predictions("after" if ev.get("after") else "before")
        missing = [c for c in ("row", "question", "context", "gold_answers", "pred_start", "pred_end", "f1",
                               "error_type") if c not in pred]
        if missing:
            raise WorkbenchError(f"{run.predictions_file.name} lacks the column(s) {missing} a QA run's predictions "
                                 f"have: was it written by another task?")
    except Exception as e:  # RunError, a torn file while the run writes it, or a foreign file
        for t in tabs[1:3]:
            t.info(str(e))
        pred = None
    if pred is not None:
        with tabs[1]:
            _slices(pred)
        with tabs[2]:
            _examples(pred)
    with tabs[3]:
        _try_it(run)


def _error_counts(ev: dict[str, Any]) -> pd.DataFrame:
    from workbench.tasks.question_answering import ERROR_TYPES

    stages = [s for s in ("before", "after") if (ev.get(s) or {}).get("errors") is not None]
    out: dict[str, Any] = {"error": ["correct", *ERROR_TYPES]}
    for s in stages:
        counts = {k: int(v or 0) for k, v in ev[s]["errors"].items()}
        wrong = sum(counts.get(k, 0) for k in ERROR_TYPES)
        out[s] = [int(ev[s].get("n", 0)) - wrong] + [counts.get(k, 0) for k in ERROR_TYPES]
    return pd.DataFrame(out)


def _slices(pred: pd.DataFrame) -> None:
    from workbench.tasks.question_answering import slices

    with widgets.shown_errors():
        st.caption("Exact match and F1 by the question's interrogative, the context's length in characters and "
                   "(for duie_qa) the relation asked about.")
        st.dataframe(slices(pred), hide_index=True, key="qa_slices",
                     column_config={c: SCORE for c in ("exact_match", "f1")})


def _examples(pred: pd.DataFrame) -> None:
    from workbench.tasks.question_answering import ERROR_TYPES

    c = st.columns([1, 2])
    view = c[0].radio("Show", VIEWS, key="qa_ex_view")
    kinds = c[1].multiselect("Error types (any of)", list(ERROR_TYPES), key="qa_ex_kinds")
    keep = pd.Series(True, index=pred.index)
    if view == VIEWS[0]:
        keep &= ~pred["correct"].astype(bool)
    if kinds:
        keep &= pred["error_type"].isin(kinds)
    shown = pred[keep].sort_values(["f1", "loss"] if "loss" in pred else ["f1"],
                                   ascending=[True, False] if "loss" in pred else [True])
    st.caption(f"{len(shown)} of {len(pred)} test questions (lowest F1 first)")
    if not len(shown):
        st.success("No question matches: every answer of these kinds is right.", icon=":material/check_circle:")
        return
    by_row = {int(r): i for i, r in zip(shown.index, shown["row"])}
    if st.session_state.get("qa_ex_row") not in by_row:
        st.session_state.pop("qa_ex_row", None)
    row = st.selectbox("Question (row in the file)", list(by_row), key="qa_ex_row",
                       format_func=lambda r: _label(pred.loc[by_row[r]]))
    r = pred.loc[by_row[row]]
    st.html(f"<p><b>Question:</b> {html.escape(str(r['question']))}</p>")
    m = st.columns(4)
    m[0].metric("Exact match (this question)", f"{float(r['exact_match']):.0f}")
    m[1].metric("F1 (this question)", f"{float(r['f1']):.2f}")
    m[2].metric("Error", str(r["error_type"]))
    m[3].metric("Windows read", int(r.get("windows", 1) or 1))
    st.html(context_html(str(r["context"]), _gold_spans(r["gold_answers"]), (int(r["pred_start"]), int(r["pred_end"])))
            + legend_html())
    st.dataframe(pd.DataFrame([{"gold": r["gold"], "predicted": r["predicted"],
                                "predicted characters": f"{int(r['pred_start'])}:{int(r['pred_end'])}"
                                if int(r["pred_start"]) >= 0 else "-"}]), hide_index=True, key="qa_ex_answers")


def _label(r: pd.Series) -> str:
    q = str(r.get("question", ""))
    return f"row {r['row']} · {r['error_type']} · F1 {float(r['f1']):.2f} · {q[:70]}{'…' if len(q) > 70 else ''}"


def _try_it(run: Any) -> None:
    if not run.model_dir.exists():
        st.info(f"{run.name} has no final model yet ({run.status().get('state')}).")
        return
    question = st.text_input("Question", key="qa_try_question", placeholder="Who wrote it?")
    context = st.text_area("Context (the text holding the answer)", key="qa_try_context", height=140)
    if st.button("Find the answer", key="qa_try_go", icon=":material/bolt:") and question.strip() and context.strip():
        with widgets.shown_errors():
            out = widgets.predictor(str(run.path), widgets.model_stamp(run)).predict([question], contexts=[context])
            r = out.iloc[0]
            start, end = int(r["start"]), int(r["end"])
            if start < 0:
                st.info("The model gives no answer: nothing in this context beat its no-answer score.")
            else:
                st.html(f"<p><b>Answer:</b> {html.escape(str(r['predicted']))} (characters {start}:{end}, "
                        f"score {float(r['score']):.2f})</p>")
            st.html(context_html(context, (), (start, end) if start >= 0 else None, clip=False))
