"""Evaluate page: pick a run with test scores; what is shown for it comes from its task's section
(`dashboard.sections`): for text classification before/after, per-class scores, confusion matrix, error
table, run diff and a try-it box; for token classification the entity-level report."""

from __future__ import annotations

import streamlit as st

from workbench.errors import WorkbenchError

from . import sections, widgets


def page() -> None:
    st.title("Evaluate")
    runs = widgets.runs_with("eval_file")
    if not runs:
        st.info("No run has test scores yet: they appear here once a run has scored its test split.")
        return
    run = widgets.pick_run("Run", runs, key="eval_run")
    state = run.status()
    try:
        ev = run.evaluation()
    except WorkbenchError as e:  # a damaged eval.json: say which file and what is wrong, not a traceback
        st.error(str(e), icon=":material/error:")
        return
    if state.get("state") == "failed":
        st.error(f"{run.name} failed: {state.get('error')}", icon=":material/error:")
    if ev.get("after") is None:
        st.info(f"{run.name} is {state.get('state')}: only the scores before fine-tuning exist yet.")
    sections.hook(run.summary()["task"], "evaluate")(run, runs, ev)
