"""Relation extraction's page sections: the Data page's view of a relation file (each sentence with its subject
and object highlighted, no column mapping) and the relation data report; the Train page's data choice with
`data.negative_ratio` (DuIE files) and the decoder's pooling; the Evaluate page's micro F1 over the positive
relations, per-relation table, confusion matrix, errors by kind, examples and a try-it box for a marked sentence.

The task's own code does the work (`workbench.tasks.relation_extraction`: reading, the report, scores, errors;
`workbench.predict.Predictor` for the try-it box); this module arranges it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.config import DataConfig, field_help
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir
from workbench.figures.data import class_balance_figure
from workbench.figures.evaluation import confusion_matrix_figure, per_class_figure
from workbench.figures.relations import marked_sentence_html, relation_legend

from .. import widgets
from .files import head_columns

TASK = "relation-extraction"
NO_RELATION = "no_relation"  # workbench.tasks.relation_extraction.NO_RELATION (torch-free import here)
ERROR_KINDS = ("missed relation", "spurious relation", "wrong relation")
FORMATS = ("a table (CSV/TSV/JSON/JSONL/Parquet) with `text`, `subject`, `object`, `relation` (optional "
           "`subject_start`/`object_start` offsets and `subject_type`/`object_type`), or DuIE JSONL lines "
           "(`text` + `spo_list`)")
EXAMPLE = "the <S>movie</S> was <O>good</O>"
SCORE = st.column_config.NumberColumn(format="%.3f")


# --- which files are relations ---------------------------------------------------------------------
def claims(source: str) -> bool:
    """A relation table (`subject`, `object` and `relation`/`predicate`/`label` columns) or DuIE lines
    (`spo_list`). Reads only the file's start; the reader then reports what is wrong with the rows."""
    cols = head_columns(source)
    return "spo_list" in cols or ({"subject", "object"} <= cols and bool({"relation", "predicate", "label"} & cols))


def is_duie(source: str) -> bool:
    """Whether `data.negative_ratio` applies: DuIE sentences (`spo_list`), whose pairs without a triple become
    `no_relation`. A flat table (the built-in `duie_re` too) keeps its rows as given."""
    return "spo_list" in head_columns(source)


# --- Data page -------------------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner="Reading the relations...")
def _pairs(source: str, stamp: float, negative_ratio: float) -> dict[str, Any]:
    """The format read and the first examples with their entities marked (what the model reads)."""
    from workbench.tasks.relation_extraction import read_relations
    from workbench.tasks.relation_extraction.encode import mark

    data, _ = read_relations(source, DataConfig(source=source, negative_ratio=negative_ratio), 42)
    f = data.frame.head(200)
    marked = [mark(r.sentence, (r.subject_start, r.subject_start + len(r.subject)),
                   (r.object_start, r.object_start + len(r.object)), r.subject_type, r.object_type)
              for r in f.itertuples()]
    preview = pd.DataFrame({"line": f["line"].to_numpy() if len(f) else [], "relation": f["label_name"].to_numpy()
                            if len(f) else [], "marked sentence": marked,
                            "subject type": f["subject_type"].to_numpy() if len(f) else [],
                            "object type": f["object_type"].to_numpy() if len(f) else []})
    return {"format": data.format, "pairs": len(data.frame), "row_kind": data.row_kind, "preview": preview}


@st.cache_data(max_entries=16, show_spinner="Checking the data...")
def _report(source: str, stamp: float, max_length: int, negative_ratio: float,
            tokenizer_dir: str | None) -> dict[str, Any]:
    """The task's data report as a dict (its problems name the rows). The task adds the entity markers to the
    tokenizer it is given: a copy, so the cached tokenizer other pages use stays as it was."""
    from workbench.data.report import DataReport
    from workbench.tasks import get_task

    tok = copy.deepcopy(widgets.tokenizer(tokenizer_dir)) if tokenizer_dir else None
    cfg = DataConfig(source=source, max_length=max_length, negative_ratio=negative_ratio)
    try:
        return get_task(TASK).prepare(cfg, 42, tok, raise_on_problems=False).report.to_dict()
    except WorkbenchError as e:  # a file the reader cannot read at all: the message is the report
        return DataReport(source=source, problems=[str(e)]).to_dict()


def _ratio() -> float:
    return float(st.session_state.get("t.data.negative_ratio") or DataConfig().negative_ratio)


def data_view(source: str) -> None:
    """The first sentences with both entities highlighted, then the report: relation counts, the share of
    `no_relation`, entity types, sentences read in a window, and the rows that cannot be used."""
    stamp = widgets.file_stamp(source)
    ratio = _ratio()
    try:
        pairs = _pairs(source, stamp, ratio)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    st.subheader(f"Preview: {Path(source).name}")
    duie = pairs["format"] == "duie"
    st.caption((f"DuIE sentences: one example per (subject, object) pair, pairs without a triple becoming "
                f"`{NO_RELATION}` (data.negative_ratio={ratio:g} x the pairs with one; set it on the Train page)."
                if duie else "A relation table: one example per row.")
               + f" {pairs['pairs']:,} examples, the first {len(pairs['preview'])} shown; `line` is the "
               f"{pairs['row_kind']} in the file. No column mapping: the columns are named by the format.")
    preview = pairs["preview"]
    if len(preview):
        st.html("".join(marked_sentence_html(t, rel) for t, rel in
                        zip(preview["marked sentence"].head(5), preview["relation"].head(5))) + relation_legend())
        st.dataframe(preview, hide_index=True, height=240, key="re_preview")
    model = st.session_state.get("train_model") or "minilm"
    tok_dir = local_model_dir(model)
    report = _report(source, stamp, int(st.session_state.get("t.data.max_length", 256)), ratio,
                     str(tok_dir) if tok_dir else None)
    _show_report(report, tok_dir is not None, model)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "task": TASK, "text_column": None,
                                           "label_column": None, "text_pair_column": None}
        rels = [lab for lab in report["labels"] if lab != NO_RELATION]
        st.success(f"Ready: {report['rows_used']:,} pairs, {len(rels)} relations ({', '.join(rels[:8])}"
                   f"{', ...' if len(rels) > 8 else ''}). The Train page (task {TASK}) uses this data.",
                   icon=":material/check_circle:")


def _show_report(r: dict[str, Any], tokenized: bool, model: str) -> None:
    st.subheader("Data report")
    for p in r["problems"]:  # each names its row/line and the fix
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:
        st.warning(w, icon=":material/warning:")
    d = r.get("details") or {}
    share = (d.get("no_relation_share") or {}).get("train")
    m = st.columns(5)
    m[0].metric(f"{r.get('row_kind', 'row').capitalize()}s read", f"{r['rows_read']:,}")
    m[1].metric("Pairs used", f"{r['rows_used']:,}")
    m[2].metric("Relations", len([lab for lab in r["labels"] if lab != NO_RELATION]) or "-",
                help=f"Without `{NO_RELATION}`.")
    m[3].metric(f"{NO_RELATION} share (train)", f"{share:.0%}" if share is not None else "-",
                help="Pairs of entities with no relation between them. Micro F1 does not count them as found "
                     "relations, so a model answering only no_relation scores 0.")
    m[4].metric("Sentences", f"{sum((d.get('sentences') or {}).values()):,}" if d.get("sentences") else "-")
    if d.get("format") == "duie":
        st.caption(f"DuIE: {d.get('positive_pairs', 0):,} pairs with a triple; {d.get('negatives', 0):,} of the "
                   f"{d.get('candidate_negatives', 0):,} pairs without one kept as `{NO_RELATION}` "
                   f"(data.negative_ratio={d.get('negative_ratio')}).")
    if r["split_sizes"]:
        st.caption("Splits (by sentence): " + ", ".join(f"{k} {v:,}" for k, v in r["split_sizes"].items())
                   + f"; repeated pairs in train {r.get('duplicates', 0)}, test pairs from train sentences "
                   f"{(r.get('leakage') or {}).get('test', 0)}.")
    if r["problems"]:
        return
    a, b = st.columns(2)
    a.plotly_chart(class_balance_figure(r, title="Pairs per relation"), key="fig_relation_balance")
    widgets.token_length_panel(b, r, tokenized, model)
    a, b = st.columns(2)
    with a:
        st.markdown("**Relations per split**")
        st.dataframe(pd.DataFrame(r["class_balance"]).rename_axis("relation"), key="re_counts")
    with b:
        st.markdown("**Entity types** (training pairs)")
        st.dataframe(pd.DataFrame(d.get("entity_types") or {}).fillna(0).astype(int).rename_axis("type"),
                     key="re_types")
    if d.get("windowed") is not None:
        t = r.get("token_lengths") or {}
        st.markdown(f"**Long sentences** (over data.max_length={t.get('max_length')} tokens, markers included)")
        st.caption("A window of tokens around the two entities is kept (the middle cut when they are far apart), "
                   "so no marker is lost; an entity pair that does not fit even alone loses a marker.")
        st.dataframe(pd.DataFrame({"window kept": d["windowed"], "marker lost": d.get("markers_lost") or {}})
                     .rename_axis("split"), key="re_windows")


# --- Train page ------------------------------------------------------------------------------------
def train_defaults(model: str) -> dict[str, Any]:
    """LoRA for a decoder (SmolLM2: the markers' embedding rows are trained with the adapter); a full
    fine-tune for an encoder such as MiniLM, small enough to train whole."""
    from workbench.estimate import load_model_config
    from workbench.models import is_decoder

    conf = load_model_config(model) if model else None
    if conf is None:
        return {}
    return {"peft.method": "lora" if is_decoder(conf) else "full"}


def train_data(task: str) -> dict[str, Any]:
    """Relation files and the built-in `duie_re`; `data.negative_ratio` for DuIE files; the pooling of a decoder."""
    from workbench.assets import BUILTIN_DATASETS

    from . import pick_source
    from .classification import _pooling

    st.subheader("Data")
    source = pick_source(task, f"No relation data yet: upload a file on the Data page ({FORMATS}).")
    if source is None:
        return {"data.source": ""}
    if source in BUILTIN_DATASETS:
        st.caption(BUILTIN_DATASETS[source].description)
    st.caption(f"Relations: {FORMATS}. No columns to map. Sentences longer than data.max_length (Hyper-parameters "
               f"below) keep a window of that many tokens around the two entities.")
    duie = is_duie(source)
    if "t.data.negative_ratio" not in st.session_state:
        st.session_state["t.data.negative_ratio"] = DataConfig().negative_ratio
    ratio = st.number_input(f"{NO_RELATION} pairs per relation pair (negative_ratio)", min_value=0.0, step=0.5,
                            key="t.data.negative_ratio", disabled=not duie, persist_state="session",
                            help=field_help()["data.negative_ratio"])
    st.caption(f"DuIE sentences: up to {ratio:g} `{NO_RELATION}` example(s) per pair with a relation, drawn from "
               f"the sentence's other entity pairs." if duie else
               f"Only for DuIE files (`text` + `spo_list`); this is a table, whose `{NO_RELATION}` rows are used "
               f"as given.")
    return {"data.source": source, "data.text_column": None, "data.label_column": None,
            "data.text_pair_column": None, "data.negative_ratio": float(ratio), **_pooling(source)}


# --- Evaluate page ---------------------------------------------------------------------------------
TILES = (("f1", "Micro F1 (relations)"), ("precision", "Precision"), ("recall", "Recall"),
         ("f1_macro", "Macro F1"), ("accuracy", "Accuracy (all pairs)"))


def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Scores before -> after, per relation, confusion matrix, errors by kind, examples, try it."""
    after, before = ev.get("after"), ev.get("before")
    main = after or before
    for col, (key, name) in zip(st.columns(len(TILES)), TILES):
        value = main.get(key)
        delta = value - before[key] if after and before and value is not None and before.get(key) is not None \
            else None
        col.metric(name, f"{value:.3f}" if value is not None else "-",
                   delta=f"{delta:+.3f} vs before" if delta is not None else None)
    st.caption(f"Test split: {main.get('n')} entity pairs, {main.get('no_relation_share', 0):.0%} of them "
               f"`{NO_RELATION}`. Micro F1, precision and recall count the positive relations only (the TACRED / "
               f"DuIE convention): answering `{NO_RELATION}` finds nothing, and a wrong relation is both a false "
               f"positive and a miss. Macro F1 averages the relations; accuracy counts every pair. 'Before' is the "
               f"pretrained model with a fresh, untrained head.")
    _baseline(ev)
    tabs = st.tabs(["Per relation", "Confusion matrix", "Errors", "Examples", "Try it"])
    with tabs[0]:
        table = per_relation_table(ev)
        st.dataframe(table, hide_index=True, key="re_per_relation",
                     column_config={c: SCORE for c in table.columns if c not in ("relation", "support")})
        st.plotly_chart(per_class_figure({"per_class": main.get("per_relation") or {}, "labels": main.get("labels")},
                                         title="Per-relation scores"), key="fig_re_per_relation")
    with tabs[1]:
        normalize = st.toggle("Normalise rows (share of each gold relation)", value=False, key="re_cm_norm")
        st.plotly_chart(confusion_matrix_figure(main, normalize=normalize, title="Gold relation vs predicted"),
                        key="fig_re_confusion")
    try:
        pred = run.predictions("after" if after else "before")
        missing = [c for c in ("row", "gold", "predicted", "text", "loss") if c not in pred]
        if missing:
            raise WorkbenchError(f"{run.predictions_file.name} lacks the column(s) {missing} a relation run's "
                                 f"predictions have: was it written by another task?")
    except Exception as e:  # RunError, a torn file while the run writes it, or a foreign file
        for t in tabs[2:4]:
            t.info(str(e))
        pred = None
    if pred is not None:
        with tabs[2]:
            _errors(ev, pred)
        with tabs[3]:
            _examples(pred)
    with tabs[4]:
        _try_it(run)


def per_relation_table(ev: dict[str, Any]) -> pd.DataFrame:
    """One row per relation of the test split: support, precision, recall and F1 after (and before)."""
    after, before = ev.get("after") or {}, ev.get("before") or {}
    main = after or before
    per, old = main.get("per_relation") or {}, (before.get("per_relation") or {}) if after else {}
    rows = []
    for rel, s in per.items():
        row: dict[str, Any] = {"relation": rel, "support": s.get("support")}
        for k in ("precision", "recall", "f1"):
            if old:
                row[f"{k} before"] = (old.get(rel) or {}).get(k)
            row[k] = s.get(k)
        rows.append(row)
    cols = ["relation", "support"] + [c for k in ("precision", "recall", "f1")
                                      for c in ([f"{k} before"] if old else []) + [k]]
    return pd.DataFrame(rows, columns=cols).sort_values(["support", "relation"], ascending=[False, True],
                                                        ignore_index=True)


def _baseline(ev: dict[str, Any]) -> None:
    b = ev.get("baseline") or {}
    if isinstance(b.get("f1"), (int, float)):
        st.caption(f"Score to beat: always answering {b.get('label')!r} (the most frequent training relation) gives "
                   f"micro F1 {b['f1']:.3f}, accuracy {b.get('accuracy', 0):.3f}.")
    from workbench.baseline import baseline_warning

    warn = baseline_warning(ev, "f1")
    if warn:
        st.warning(warn, icon=":material/warning:")


def _errors(ev: dict[str, Any], pred: pd.DataFrame) -> None:
    from workbench.tasks import get_task

    stages = [s for s in ("before", "after") if ev.get(s)]
    counts = pd.DataFrame({"error": list(ERROR_KINDS),
                           **{s: [int((ev[s].get("errors") or {}).get(k, 0)) for k in ERROR_KINDS] for s in stages}})
    st.caption(f"missed: a relation answered `{NO_RELATION}`; spurious: a relation given to a pair without one; "
               f"wrong: a relation given another relation's name.")
    st.dataframe(counts, hide_index=True, key="re_error_counts")
    report = get_task(TASK).error_report(pred)
    st.markdown("**Most confused (gold → predicted)**")
    st.dataframe(report["most confused (gold -> predicted)"], hide_index=True, key="re_confused")


def _examples(pred: pd.DataFrame) -> None:
    kinds = st.multiselect("Errors of kind", list(ERROR_KINDS), default=list(ERROR_KINDS), key="re_ex_kinds",
                           help="Empty: every test pair, right ones included.")
    error = pred["error"] if "error" in pred else pd.Series([""] * len(pred), index=pred.index)
    shown = pred[error.isin(kinds)] if kinds else pred
    shown = shown.assign(error=error).sort_values("loss", ascending=False)
    st.caption(f"{len(shown)} of {len(pred)} test pairs, highest loss first; `text` is the sentence as the model "
               f"read it (markers in place; a window of a long sentence).")
    cols = [c for c in ("row", "error", "gold", "predicted", "confidence", "text") if c in shown]
    st.dataframe(shown[cols], hide_index=True, key="re_examples",
                 column_config={"confidence": st.column_config.NumberColumn(format="%.2f")})
    if not len(shown):
        return
    by_row = {int(r): i for i, r in zip(shown.index[:200], shown["row"][:200])}
    if st.session_state.get("re_ex_row") not in by_row:
        st.session_state.pop("re_ex_row", None)
    row = st.selectbox("Pair (row)", list(by_row), key="re_ex_row",
                       format_func=lambda r: f"row {r} · gold {pred.loc[by_row[r], 'gold']} → "
                                             f"{pred.loc[by_row[r], 'predicted']}")
    r = pred.loc[by_row[row]]
    st.html(marked_sentence_html(str(r["text"]), legend=True))
    probs = _top(r, 3)
    st.text(f"gold {r['gold']}, predicted {r['predicted']} · "  # names from the data: plain text, no markdown
            + ", ".join(f"{lab} {p:.2f}" for lab, p in probs))


def _top(row: pd.Series, k: int) -> list[tuple[str, float]]:
    probs = [(c[2:], float(row[c])) for c in row.index if str(c).startswith("p_")]
    return sorted(probs, key=lambda x: -x[1])[:k]


def _try_it(run: Any) -> None:
    if not run.model_dir.exists():
        st.info(f"{run.name} has no final model yet ({run.status().get('state')}).")
        return
    st.caption("Mark the subject with `<S>…</S>` and the object with `<O>…</O>`; types are optional "
               "(`<S:人物>…</S:人物>`), from those the model was trained with.")
    text = st.text_area("A sentence with its two entities marked", key="re_try_text", placeholder=EXAMPLE)
    if not (st.button("Find the relation", key="re_try_go", icon=":material/bolt:") and text.strip()):
        return
    with widgets.shown_errors():
        p = widgets.predictor(str(run.path), widgets.model_stamp(run))
        if not re.search(r"</?[SO](:[^<>\s]+)?>", text):
            raise WorkbenchError(_no_markers(p.tokenizer))
        row = p.predict([text]).iloc[0]
        st.success(f"**{row['predicted']}** (p = {row['confidence']:.2f}) between **{row['subject']}** and "
                   f"**{row['object']}**")
        st.html(marked_sentence_html(text, str(row["predicted"]), legend=True))
        if row.get("note"):
            st.info(str(row["note"]))
        probs = pd.DataFrame(_top(row, 10), columns=["relation", "probability"])
        st.dataframe(probs, hide_index=True, key="re_try_probs",
                     column_config={"probability": st.column_config.ProgressColumn(format="%.3f", min_value=0,
                                                                                   max_value=1)})


def _no_markers(tokenizer: Any) -> str:
    """Why a sentence without markers cannot be answered, with the model's own marker types as the example."""
    from workbench.tasks.relation_extraction.encode import marker_types

    types = marker_types(tokenizer)
    typed = (f" This model was trained with typed markers: subjects "
             f"{', '.join(f'<S:{t}>' for t in types['S'])}; objects {', '.join(f'<O:{t}>' for t in types['O'])}."
             if types["S"] or types["O"] else "")
    return (f"No entity markers in this sentence: a relation model classifies a pair of entities, so it needs to "
            f"be told which two. Put <S>…</S> around the subject and <O>…</O> around the object, e.g. "
            f"{EXAMPLE!r}.{typed}")
