"""Pieces the pages share: error display, run pickers and the cached loaders.

Loaders sit behind `st.cache_resource` (models, tokenizers: one copy for every session) or
`st.cache_data` (tables and reports: copied per caller), keyed on what invalidates them (a file's
modification time, a run's model folder), so moving a widget never reloads a model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.paths import runs_root
from workbench.rundir import RunDir, list_runs

# Material icons, not emoji: they render the same in every browser (headless ones have no emoji font).
STATE_ICONS = {"queued": ":gray[:material/hourglass_empty:]", "running": ":blue[:material/directions_run:]",
               "stopping": ":orange[:material/pan_tool:]", "stopped": ":orange[:material/pause_circle:]",
               "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
               "unknown": ":gray[:material/help:]"}


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a `WorkbenchError` as its message with `st.error` (never a traceback) and carry on."""
    try:
        yield
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")


def pick_run(label: str, runs: list[RunDir], key: str, help: str | None = None) -> RunDir | None:
    """A selectbox of runs; the choice is kept in the URL (`?key=name`) so a reload keeps it."""
    if not runs:
        return None
    names = [r.name for r in runs]
    if st.session_state.get(key) not in names:
        st.session_state.pop(key, None)  # a deleted run, or a stale URL
    by_name = {r.name: r for r in runs}
    # Plain names as options: a label that carried the state would change while the run progresses,
    # and a widget whose options change loses its selection.
    name = st.selectbox(label, names, key=key, help=help, bind="query-params")
    return by_name.get(name)


def runs_folder() -> Path:
    """The folder of run directories this session reads: the one chosen in the sidebar, else the workbench's
    rule (`$WORKBENCH_RUNS`, which `workbench app` sets to the CLI's folder, else `./runs`)."""
    chosen = st.session_state.get("runs_folder")
    return Path(chosen) if chosen else runs_root().resolve()


def runs_folder_picker() -> Path:
    """Sidebar: which runs folder the dashboard reads, and a box to read another (an existing folder)."""
    current = runs_folder()
    st.session_state.setdefault("runs_folder_input", str(current))
    with st.sidebar:
        typed = st.text_input("Runs folder", key="runs_folder_input",
                              help="The folder of run directories every page reads and the Train page writes to. "
                                   "`workbench app` starts with the folder `workbench runs` lists from where you "
                                   "started it (`$WORKBENCH_RUNS`, else `./runs` there). Type another existing "
                                   "folder to switch.").strip()
        if typed and Path(typed).expanduser().resolve() != current:
            new = Path(typed).expanduser().resolve()
            if new.is_dir():
                st.session_state["runs_folder"] = str(new)
                current = new
            else:
                st.error(f"{typed} is not an existing folder; still reading {current}. Fix: type the path of a "
                         f"folder that exists (e.g. the `runs` folder next to where you ran `workbench train`).",
                         icon=":material/error:")
        st.caption(f"Reading runs from `{current}`" + ("" if current.is_dir() else " (no runs yet)"))
    return current


def runs_with(file_attr: str) -> list[RunDir]:
    """Runs whose run directory already holds the given file (e.g. `eval_file`), newest first."""
    return [r for r in list_runs(runs_folder()) if getattr(r, file_attr).exists()]


def model_stamp(run: RunDir) -> float:
    """Changes when a run's final model is rewritten: part of the cache key of loaded models."""
    files = [p for p in run.model_dir.glob("*") if p.is_file()] if run.model_dir.exists() else []
    return max((p.stat().st_mtime for p in files), default=0.0)


@st.cache_resource(max_entries=3, show_spinner="Loading the fine-tuned model...")
def predictor(run_path: str, stamp: float) -> Any:
    from workbench.predict import Predictor

    return Predictor.from_run(run_path)


@st.cache_resource(max_entries=4, show_spinner=False)
def tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)  # never a model's own code here


@st.cache_data(max_entries=8, show_spinner="Reading the table...")
def table(source: str, stamp: float) -> Any:
    from workbench.data import read_table

    return read_table(source)


@st.cache_data(max_entries=16, show_spinner="Checking the data...")
def data_report(source: str, stamp: float, columns: tuple[str | None, str | None, str | None],
                max_length: int, tokenizer_dir: str | None, task: str = "text-classification",
                model: str | None = None) -> tuple[dict[str, Any], int]:
    """The data report (as a dict) and the number of training rows for these column choices, made by
    `task`'s own preparation (a tagger reads its file its own way: no columns); `model` names the model
    in the advice when it cannot read the text."""
    from workbench.config import DataConfig
    from workbench.data import prepare_data
    from workbench.tasks import get_task

    text, label, pair = columns
    cfg = DataConfig(source=source, text_column=text, label_column=label, text_pair_column=pair,
                     max_length=max_length)
    tok = tokenizer(tokenizer_dir) if tokenizer_dir else None
    if task != "text-classification":
        try:
            prep = get_task(task).prepare(cfg, 42, tok, raise_on_problems=False)
        except WorkbenchError as e:  # a file its reader cannot read at all: the message is the report
            from workbench.data.report import DataReport

            return DataReport(source=source, problems=[str(e)]).to_dict(), 0
        return prep.report.to_dict(), len(prep.train)
    prep = prepare_data(cfg, 42, tok, table=table(source, stamp), raise_on_problems=False, model_name=model)
    return prep.report.to_dict(), len(prep.train)


def file_stamp(source: str) -> float:
    p = Path(source)
    return p.stat().st_mtime if p.is_file() else 0.0


def token_length_panel(col: Any, report: dict[str, Any], tokenized: bool, model: str) -> None:
    """The data report's token-length histogram in `col`, or why it is not there yet (one text for every task)."""
    from workbench.figures.data import token_length_figure

    if tokenized:
        col.plotly_chart(token_length_figure(report), key="fig_tokens")
    else:
        col.info(f"Token lengths need the tokenizer of {model!r}, which is not on this machine yet; "
                 f"they appear once the model has been downloaded (first run with it).")
