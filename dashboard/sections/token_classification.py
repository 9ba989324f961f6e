"""Token classification's page sections: the Data page's view of a tagged file (no column mapping: the
format says where words and tags are) with the NER data report, the Train page's data choice, and the
Evaluate page's entity-level report, error types, token confusion, slices and an example picker with
gold and predicted entities highlighted per type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir
from workbench.figures.data import class_balance_figure
from workbench.figures.ner import (ERROR_TYPES, entity_colors, entity_slices_figure, entity_type_figure,
                                   error_types_figure, highlight_text, sentence_view, token_confusion_figure)

from .. import widgets

TASK = "token-classification"
FORMATS = ("CoNLL (.txt/.conll: a word, whitespace, its tag on each line; a blank line between sentences) or "
           "JSON/JSONL (`tokens` + `tags` lists, or `text` + `entities` [{start, end, label}]); tags in BIO, "
           "BIOES or BMES, read as BIO")
VIEWS = ("Sentences with errors", "All sentences")
SCORE = st.column_config.NumberColumn(format="%.3f")


def claims(source: str) -> bool:
    """A file of tagged sentences (CoNLL lines or JSON tokens/tags or spans), not a table."""
    from workbench.tasks.token_classification.formats import looks_tagged

    return looks_tagged(source)


# --- Data page -------------------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner="Reading the sentences...")
def _sentences(source: str, stamp: float) -> tuple[pd.DataFrame, str]:
    from workbench.tasks.token_classification import load_tagged

    data = load_tagged(source)
    f = data.frame
    return pd.DataFrame({"line": f["line"], "text": f["text"], "tags": f["tags"].map(" ".join),
                         "words": f["tokens"].map(len)}).head(200), data.format


def data_view(source: str) -> None:
    """Preview of the sentences and the NER data report: scheme, entities per type, sentence lengths,
    invalid sequences with line numbers and the repairs made."""
    stamp = widgets.file_stamp(source)
    try:
        preview, fmt = _sentences(source, stamp)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    st.subheader(f"Preview: {Path(source).name}")
    st.caption(f"Tagged sentences ({fmt}), the first {len(preview)} shown; `line` is where each sentence starts "
               f"in the file. No column mapping: the format says where the words and tags are.")
    st.dataframe(preview, hide_index=True, height=240)
    model = st.session_state.get("train_model") or "minilm"
    tok_dir = local_model_dir(model)
    report, _ = widgets.data_report(source, stamp, (None, None, None),
                                    int(st.session_state.get("t.data.max_length", 256)),
                                    str(tok_dir) if tok_dir else None, TASK)
    _show_report(report, tok_dir is not None, model)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "task": TASK, "text_column": None,
                                           "label_column": None, "text_pair_column": None}
        types = sorted((report.get("class_balance") or {}).get("train", {}))
        st.success(f"Ready: {report['rows_used']:,} sentences, entity types {', '.join(types)}. The Train page "
                   f"(task {TASK}) uses this data.", icon=":material/check_circle:")


def _show_report(r: dict, tokenized: bool, model: str) -> None:
    st.subheader("Data report")
    for p in r["problems"]:
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:  # the reader's repairs (stray I- tags, lower-case tags, BMES, ...) with line numbers
        st.warning(w, icon=":material/warning:")
    d = r.get("details") or {}
    m = st.columns(5)
    m[0].metric("Sentences read", f"{r['rows_read']:,}")
    m[1].metric("Sentences used", f"{r['rows_used']:,}")
    m[2].metric("Entity types", len((r.get("class_balance") or {}).get("train", {})) or "-")
    m[3].metric("Tag scheme", d.get("scheme") or "-", help="As found in the file; always read as BIO.")
    m[4].metric("Entities per sentence", d.get("entities_per_sentence", "-"))
    words = d.get("sentence_words") or {}
    if words:
        st.caption(f"Sentence length in words: mean {words.get('mean')}, median {words.get('p50')}, "
                   f"95th percentile {words.get('p95')}, longest {words.get('max')}.")
    if r["split_sizes"]:
        st.caption("Splits: " + ", ".join(f"{k} {v:,}" for k, v in r["split_sizes"].items())
                   + f"; duplicates in train {r.get('duplicates', 0)}, test sentences also in train "
                   f"{(r.get('leakage') or {}).get('test', 0)}.")
    if d.get("invalid"):
        st.markdown(f"**Invalid tag sequences** ({len(d['invalid'])}, repaired as the warnings say)")
        st.dataframe(pd.DataFrame(d["invalid"]), hide_index=True, key="ner_invalid")
    if r["problems"]:
        return
    a, b = st.columns(2)
    a.plotly_chart(class_balance_figure(r, title="Entities per type"), key="fig_entity_balance")
    widgets.token_length_panel(b, r, tokenized, model)


# --- Train page ------------------------------------------------------------------------------------
def train_data(task: str) -> dict[str, Any]:
    """Tagged files and the task's built-in data sets; nothing to map."""
    from . import pick_source

    st.subheader("Data")
    source = pick_source(task, f"No data for {task} yet: upload a file on the Data page.")
    if source is None:
        return {"data.source": ""}
    st.caption(f"Tagged sentences: {FORMATS}. No columns to map; check a file on the Data page first.")
    return {"data.source": source, "data.text_column": None, "data.label_column": None,
            "data.text_pair_column": None}


# --- Evaluate page ---------------------------------------------------------------------------------
def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Entity-level report before -> after, error types, token confusion, slices, examples, try it."""
    after, before = ev.get("after"), ev.get("before")
    main = after or before
    tiles = [("f1", "Entity F1"), ("precision", "Entity precision"), ("recall", "Entity recall"),
             ("f1_strict", "Entity F1 (strict)")]
    for col, (key, name) in zip(st.columns(4), tiles):
        value = main.get(key)
        delta = value - before[key] if after and before and value is not None and before.get(key) is not None \
            else None
        col.metric(name, f"{value:.3f}" if value is not None else "-",
                   delta=f"{delta:+.3f} vs before" if delta is not None else None)
    st.caption(f"Test split: {main.get('n')} sentences. An entity counts only when its type and all its words match "
               f"(seqeval; strict also needs a valid BIO sequence). Token accuracy "
               f"{main.get('token_accuracy', 0):.3f} looks better because most words are `O`; on entity words "
               f"it is {main.get('entity_token_accuracy', 0):.3f}. 'Before' is the pretrained model with a fresh, "
               f"untrained tagging head.")
    types = sorted({lab[2:] for lab in main.get("labels") or [] if lab != "O"} | set(main.get("per_type") or {}))
    colors = entity_colors(types)
    tabs = st.tabs(["Entities", "Error types", "Token confusion", "Slices", "Examples", "Try it"])
    with tabs[0]:
        _entities(ev)
    with tabs[1]:
        st.plotly_chart(error_types_figure(ev), key="fig_ner_errors")
        st.dataframe(_error_counts(ev), hide_index=True, key="ner_error_counts")
    with tabs[2]:
        normalize = st.toggle("Normalise rows (share of each gold tag)", value=True, key="ner_cm_norm")
        st.plotly_chart(token_confusion_figure(main, normalize=normalize), key="fig_ner_confusion")
    try:
        pred = run.predictions("after" if after else "before")
        missing = [c for c in ("row", "tokens", "gold_entities", "pred_entities", "errors", "error_types")
                   if c not in pred]
        if missing:
            raise WorkbenchError(f"{run.predictions_file.name} lacks the column(s) {missing} a tagger's predictions "
                                 f"have: was it written by another task?")
    except Exception as e:  # RunError, a torn file while the run writes it, or a foreign file
        for t in tabs[3:5]:
            t.info(str(e))
        pred = None
    if pred is not None:
        with tabs[3]:
            _slices(pred)
        with tabs[4]:
            _examples(pred, colors)
    with tabs[5]:
        _try_it(run, colors)


OVERALL = (("f1", "entity F1"), ("precision", "entity precision"), ("recall", "entity recall"),
           ("f1_strict", "entity F1, strict mode"), ("f1_macro", "entity F1, macro over types"),
           ("token_accuracy", "token accuracy"), ("entity_token_accuracy", "token accuracy on entity words"),
           ("sentence_accuracy", "sentences without an entity error"))


def _entities(ev: dict[str, Any]) -> None:
    stages = [s for s in ("before", "after") if ev.get(s)]
    rows = []
    for key, name in OVERALL:
        row: dict[str, Any] = {"score": name, **{s: ev[s].get(key) for s in stages}}
        if len(stages) == 2 and row["before"] is not None and row["after"] is not None:
            row["change"] = row["after"] - row["before"]
        rows.append(row)
    st.markdown("**Overall** (entity scores are micro averages over entities)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="ner_overall",
                 column_config={c: SCORE for c in ("before", "after", "change")})
    c = st.columns([2, 1])
    metric = c[0].radio("Score per type", ["f1", "precision", "recall"], horizontal=True, key="ner_metric")
    strict = c[1].toggle("Strict mode", key="ner_strict")
    st.plotly_chart(entity_type_figure(ev, metric=metric, strict=strict), key="fig_ner_types")
    st.dataframe(_per_type_table(ev, strict), hide_index=True, key="ner_per_type",
                 column_config={c: SCORE for c in ("precision before", "precision", "recall before", "recall",
                                                    "f1 before", "f1")})


def _per_type_table(ev: dict[str, Any], strict: bool) -> pd.DataFrame:
    key = "per_type_strict" if strict else "per_type"
    after, before = ev.get("after") or {}, ev.get("before") or {}
    types = list(dict.fromkeys(list(after.get(key) or {}) + list(before.get(key) or {})))
    rows = []
    for t in types:
        a, b = (after.get(key) or {}).get(t, {}), (before.get(key) or {}).get(t, {})
        row: dict[str, Any] = {"type": t, "gold entities": (a or b).get("support")}
        for m in ("precision", "recall", "f1"):
            if before and after:
                row[f"{m} before"] = b.get(m)
            row[m] = (a or b).get(m)
        rows.append(row)
    return pd.DataFrame(rows)


def _error_counts(ev: dict[str, Any]) -> pd.DataFrame:
    stages = [s for s in ("before", "after") if (ev.get(s) or {}).get("errors")]
    return pd.DataFrame({"error": ["correct", *ERROR_TYPES],
                         **{s: [int(ev[s]["errors"].get(k, 0) or 0) for k in ("correct", *ERROR_TYPES)]
                            for s in stages}})


def _slices(pred: pd.DataFrame) -> None:
    from workbench.tasks.token_classification import entity_slices

    with widgets.shown_errors():
        slices = entity_slices(pred)
        metric = st.radio("Score", ["f1", "recall", "precision"], horizontal=True, key="ner_slice_metric")
        st.plotly_chart(entity_slices_figure(slices, metric=metric), key="fig_ner_slices")
        st.dataframe(slices, hide_index=True, key="ner_slices",
                     column_config={c: SCORE for c in ("recall", "precision", "f1")})


def _examples(pred: pd.DataFrame, colors: dict[str, str]) -> None:
    c = st.columns([1, 2])
    view = c[0].radio("Show", VIEWS, key="ner_ex_view")
    kinds = c[1].multiselect("Error types (any of)", list(ERROR_TYPES), key="ner_ex_kinds",
                             help="Only sentences with at least one entity error of these types.")
    keep = pd.Series(True, index=pred.index)
    if view == VIEWS[0]:
        keep &= pred["errors"].map(lambda e: bool(e))
    if kinds:
        keep &= pred["error_types"].map(lambda ts: bool(set(ts or []) & set(kinds)))
    shown = pred[keep]
    st.caption(f"{len(shown)} of {len(pred)} test sentences")
    if not len(shown):
        st.success("No sentence matches: no entity errors of these types.", icon=":material/check_circle:")
        return
    by_row = {int(r): i for i, r in zip(shown.index, shown["row"])}
    if st.session_state.get("ner_ex_row") not in by_row:
        st.session_state.pop("ner_ex_row", None)
    row = st.selectbox("Sentence (row in the file)", list(by_row), key="ner_ex_row",
                       format_func=lambda r: _label(pred.loc[by_row[r]]))
    r = pred.loc[by_row[row]]
    st.html(sentence_view(list(r["tokens"]), r["gold_entities"], r["pred_entities"], colors))
    errors = _typed_errors(r["errors"])
    if len(errors):
        st.markdown(f"**{len(errors)} entity error(s)**")
        st.dataframe(errors, hide_index=True, key="ner_ex_errors")
    else:
        st.success("Every entity in this sentence was found with the right type and boundaries.",
                   icon=":material/check_circle:")


def _label(r: pd.Series) -> str:
    text = str(r.get("text", ""))
    n = len(r["errors"] or [])
    return f"row {r['row']} · {n} error{'s' if n != 1 else ''} · {text[:70]}{'…' if len(text) > 70 else ''}"


def _typed_errors(errors: Any) -> pd.DataFrame:
    def show(e: Any) -> str | None:
        return f"{e.get('type')}: {e.get('text')}" if isinstance(e, dict) else None

    rows = [{"error": e.get("kind"), "gold": show(e.get("gold")), "predicted": show(e.get("predicted"))}
            for e in errors or [] if isinstance(e, dict)]
    return pd.DataFrame(rows, columns=["error", "gold", "predicted"])


def _try_it(run: Any, colors: dict[str, str]) -> None:
    if not run.model_dir.exists():
        st.info(f"{run.name} has no final model yet ({run.status().get('state')}).")
        return
    text = st.text_area("Type a sentence to tag", key="ner_try_text", placeholder="Ada Lovelace lived in London")
    if st.button("Find entities", key="ner_try_go", icon=":material/bolt:") and text.strip():
        with widgets.shown_errors():
            out = widgets.predictor(str(run.path), widgets.model_stamp(run)).predict([text])
            ents = list(out.iloc[0]["entities"])
            st.html(highlight_text(text, ents, colors))
            if ents:
                st.dataframe(pd.DataFrame(ents), hide_index=True, key="ner_try_entities")
            else:
                st.info("No entities found in this text.")
