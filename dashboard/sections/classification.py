"""Text classification's page sections: the Data page's table view with its column mapping and report,
the Train page's data choice, and the Evaluate page (scores, confusion matrix, errors, compare, try it).

Moved here unchanged from the pages when the pages started looking sections up by task
(`dashboard.sections`); this is also the fallback for any hook a task's own section lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from workbench.config import field_help
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir
from workbench.figures.data import class_balance_figure
from workbench.figures.evaluation import METRIC_NAMES, before_after_figure, per_class_figure
from workbench.tasks import TASKS

from .. import errors_table, widgets

NONE = "(none)"


# --- Data page -------------------------------------------------------------------------------------
def data_view(source: str) -> None:
    """Preview of the table, the text/label column mapping and the data report."""
    try:
        table = widgets.table(source, widgets.file_stamp(source))
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    df = table.df
    st.subheader(f"Preview: {table.source}")
    st.caption(f"{len(df):,} {table.row_kind}s × {len(df.columns)} columns ({table.format}); the index is the "
               f"{table.row_kind} number in the file.")
    st.dataframe(df.head(200), height=240)

    st.subheader("Columns")
    from workbench.data import guess_columns  # scikit-learn comes with it: not needed for the first paint

    guess = guess_columns(df)
    cols = [str(c) for c in df.columns]
    c1, c2, c3 = st.columns(3)
    text = c1.selectbox("Text column", cols, index=_index(cols, guess["text"]), key=f"map_text_{source}")
    label = c2.selectbox("Label column", cols, index=_index(cols, guess["label"], 1), key=f"map_label_{source}")
    pair = c3.selectbox("Second text (pairs, optional)", [NONE] + cols,
                        index=_index([NONE] + cols, guess["text_pair"]), key=f"map_pair_{source}")
    max_length = st.session_state.get("t.data.max_length", 256)
    model = st.session_state.get("train_model") or "minilm"
    tok_dir = local_model_dir(model)
    report, _ = widgets.data_report(source, widgets.file_stamp(source), (text, label, None if pair == NONE else pair),
                                    int(max_length), str(tok_dir) if tok_dir else None, model=model)
    _show_report(report, tok_dir is not None, model)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "text_column": text, "label_column": label,
                                           "text_pair_column": None if pair == NONE else pair}
        st.success(f"Ready: {report['rows_used']:,} rows, labels {', '.join(report['labels'])}. "
                   f"The Train page (left) uses this table and these columns.", icon=":material/check_circle:")


def _index(options: list[str], value: str | None, fallback: int = 0) -> int:
    if value is not None and str(value) in options:
        return options.index(str(value))
    return min(fallback, len(options) - 1)


def _show_report(r: dict, tokenized: bool, model: str) -> None:
    st.subheader("Data report")
    for p in r["problems"]:
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:
        st.warning(w, icon=":material/warning:")
    m = st.columns(5)
    m[0].metric("Rows read", f"{r['rows_read']:,}")
    m[1].metric("Rows used", f"{r['rows_used']:,}")
    m[2].metric("Classes", len(r["labels"]) or "-")
    m[3].metric("Duplicates in train", r["duplicates"])
    m[4].metric("Leaked into test", r.get("leakage", {}).get("test", 0))
    u = r.get("unknown_tokens") or {}
    if u.get("unknown"):
        lost = f", {u['chars_lost_share']:.0%} of the characters lost" if u.get("chars_lost_share") is not None else ""
        st.caption(f"Unknown tokens for {model}: {u['share']:.1%} of the tokens are {u['token']}{lost}.")
    if r["split_sizes"]:
        st.caption("Splits: " + ", ".join(f"{k} {v:,}" for k, v in r["split_sizes"].items()))
    for reason, rows in r["dropped"].items():
        shown = ", ".join(map(str, rows[:20])) + (" ..." if len(rows) > 20 else "")
        st.caption(f"Dropped {len(rows)} row(s), {reason}: {r['row_kind']}s {shown}")
    if r["problems"]:
        return
    a, b = st.columns(2)
    a.plotly_chart(class_balance_figure(r), key="fig_balance")
    widgets.token_length_panel(b, r, tokenized, model)


# --- Train page ------------------------------------------------------------------------------------
def train_data(task: str) -> dict[str, Any]:
    """The Train page's data section: the table chosen on the Data page, its columns mapped there."""
    from . import data_sources

    st.subheader("Data")
    choice = st.session_state.get("data_choice") or {}
    if choice.get("task", task) != task:  # the Data page last checked another task's data
        choice = {}
    options = data_sources(task)
    if choice.get("source") and choice["source"] not in options:
        options.insert(0, choice["source"])
    if not options:
        st.info(f"No data for {task} yet: upload a file on the Data page.", icon=":material/upload_file:")
        return {"data.source": ""}
    if st.session_state.get("train_source") not in options:
        st.session_state["train_source"] = choice.get("source") or options[0]
    source = st.selectbox("Data set", options, key="train_source", format_func=lambda s: Path(s).name,
                          help=field_help()["data.source"])
    cols = choice if choice.get("source") == source else {}
    st.caption("Columns: " + (f"text `{cols['text_column']}`, label `{cols['label_column']}` (from the Data page)"
                              if cols else "guessed from the column names (set them on the Data page)"))
    columns = {f"data.{k}": cols.get(k) for k in ("text_column", "label_column", "text_pair_column")}
    return {"data.source": source, **columns, **(_pooling(source) if task == "text-classification" else {})}


def _pooling(source: str) -> dict[str, Any]:
    """For a decoder (Llama, SmolLM2): which vector the head reads, the last token's or the mean of all
    tokens'. Mean is preselected for a built-in in a language other than English (measured: SmolLM2 + LoRA on
    `chinese_reviews` 0.553 with the last token, 0.703 with the mean; README)."""
    from workbench.assets import BUILTIN_DATASETS
    from workbench.estimate import load_model_config
    from workbench.models import is_decoder

    model = st.session_state.get("train_model") or ""
    conf = load_model_config(model) if model else None
    if conf is None or not is_decoder(conf):
        return {}
    builtin = BUILTIN_DATASETS.get(source)
    if st.session_state.get("pooling_for") != source:  # a new data set: its recommendation, then the user's choice
        st.session_state["pooling_for"] = source
        st.session_state["t.model.pooling"] = "mean" if builtin is not None and builtin.language != "en" else "auto"
    if "t.model.pooling" not in st.session_state:  # Streamlit drops a widget's value when it was not drawn
        st.session_state["t.model.pooling"] = "mean" if builtin is not None and builtin.language != "en" else "auto"
    choice = st.radio("What the classification head reads", ["auto", "mean"], key="t.model.pooling",
                      horizontal=True, help=field_help()["model.pooling"], persist_state="session",
                      format_func=lambda v: {"auto": "the last token (the model's own)",
                                             "mean": "the mean of all tokens"}[v])
    return {"model.pooling": choice}


# --- Evaluate page ---------------------------------------------------------------------------------
def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Scores before and after, per-class table, confusion matrix, error table, run diff, try-it box."""
    after, before = ev.get("after"), ev.get("before")
    main = after or before
    task = TASKS.get(run.summary()["task"]) or TASKS["text-classification"]
    keys = [m for m in task.directions if m != "loss"][:4]  # the task's metrics, headline first
    keys = [task.headline] + [m for m in keys if m != task.headline][:3]
    names = [METRIC_NAMES.get(k, k.replace("_", " ")) for k in keys]
    names = [n[:1].upper() + n[1:] for n in names]
    c = st.columns(4)
    for col, key, name in zip(c, keys, names):
        delta = main[key] - before[key] if after and before and main.get(key) is not None else None
        col.metric(name, f"{main[key]:.3f}" if main.get(key) is not None else "-",
                   delta=f"{delta:+.3f} vs before" if delta is not None else None)
    st.caption(f"Test split: {main.get('n')} examples. 'Before' is the pretrained model with a fresh, untrained "
               f"classification head, so it is near chance.")
    _baseline(ev, task.headline)

    tabs = st.tabs(["Scores", "Confusion matrix", "Errors", "Compare runs", "Try it"])
    with tabs[0]:
        a, b = st.columns(2)
        a.plotly_chart(before_after_figure(ev), key="fig_before_after")
        b.plotly_chart(per_class_figure(main), key="fig_per_class")
        score = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(_per_class_table(main), column_config={"precision": score, "recall": score, "f1": score})
    try:
        pred = run.predictions("after" if after else "before")
    except Exception as e:  # RunError, or a torn file while the run writes it
        for t in tabs[1:4]:
            t.info(str(e))
        pred = None
    if pred is not None:
        from workbench.analysis import run_row_kind

        with tabs[1]:
            errors_table.confusion_cell(main, pred, run_row_kind(run))
        with tabs[2]:
            errors_table.error_table(pred, main.get("labels", []), run_row_kind(run))
        with tabs[3]:
            _compare(run, runs)
    with tabs[4]:
        _try_it(run)


def _baseline(ev: dict, metric: str) -> None:
    """The majority-class score next to before/after (classification runs store it in eval.json), and a
    warning when "after" is not above it."""
    from workbench.baseline import baseline_line, baseline_warning

    line = baseline_line(ev)
    if line:
        st.caption(f"Score to beat: {line}.", help="Always answering the most frequent training class, scored "
                   "on the same test split. A model that does not beat it learned nothing useful.")
    warn = baseline_warning(ev, metric)
    if warn:
        st.warning(warn, icon=":material/warning:")


def _per_class_table(m: dict):
    import pandas as pd

    return pd.DataFrame.from_dict(m.get("per_class", {}), orient="index").rename_axis("class")


def _compare(run, runs) -> None:
    from workbench import analysis

    options = ["before fine-tuning (same run)"] + [r.name for r in runs if r.name != run.name and
                                                    r.predictions_file.exists()]
    other = st.selectbox("Compare this run (B) against (A)", options, key="cmp_other")
    with widgets.shown_errors():
        if other == options[0]:
            diff = analysis.compare_runs(run.path, run.path, which_a="before", which_b="after")
        else:
            diff = analysis.compare_runs(run.path.parent / other, run.path)
        s = analysis.compare_summary(diff)
        c = st.columns(4)
        c[0].metric("Fixed (A wrong, B right)", s["fixed"])
        c[1].metric("Broken (A right, B wrong)", s["broken"])
        c[2].metric("Net gain", f"{s['net']:+d}")
        c[3].metric("Accuracy A → B", f"{s['accuracy_a']:.3f} → {s['accuracy_b']:.3f}")
        show = st.multiselect("Show", list(analysis.CHANGES), default=["fixed", "broken"], key="cmp_show")
        st.dataframe(diff[diff["change"].isin(show)], hide_index=True, key="cmp_table")


def _try_it(run) -> None:
    if not run.model_dir.exists():
        st.info(f"{run.name} has no final model yet ({run.status().get('state')}).")
        return
    text = st.text_area("Type a text to classify", key="try_text", placeholder="a wonderful film with a great cast")
    if st.button("Classify", key="try_go", icon=":material/bolt:") and text.strip():
        with widgets.shown_errors():
            out = widgets.predictor(str(run.path), widgets.model_stamp(run)).predict([text])
            row = out.iloc[0]
            st.success(f"**{row['predicted']}** (confidence {row['confidence']:.2f})")
            probs = {c[2:]: float(row[c]) for c in out.columns if c.startswith("p_")}
            st.bar_chart(probs, horizontal=True, x_label="probability")
