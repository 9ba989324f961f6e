"""Page sections for a task that has none of its own yet: the scores and the per-example table.

Every task writes eval.json (before/after scores) and predictions tables with the common contract
(row, inputs, reference, prediction, loss, ...; `workbench.tasks.CONTRACT`), so this view works for any
task: each scalar metric before -> after, then the examples side by side (before and after predictions of
the same rows, worst first by the task's per-example loss). For a causal LM that is the base model's and
the tuned model's answers to the same prompts.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from workbench.errors import WorkbenchError
from workbench.tasks import TASKS, greater_is_better


def score_table(ev: dict[str, Any], task: Any) -> pd.DataFrame:
    """Scalar metrics before and after, with the change and whether it is an improvement."""
    before, after = ev.get("before") or {}, ev.get("after") or {}
    rows = []
    for name in dict.fromkeys(list(after) + list(before)):
        b, a = before.get(name), after.get(name)
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in (a, b)):
            continue
        if name == "n":
            continue
        try:
            better = greater_is_better(task, name)
        except KeyError:
            better = None
        change = a - b if a is not None and b is not None else None
        rows.append({"metric": name, "before": b, "after": a, "change": change,
                     "improved": None if change is None or better is None else (change > 0) == better and change != 0})
    return pd.DataFrame(rows, columns=["metric", "before", "after", "change", "improved"])


def side_by_side(before: pd.DataFrame | None, after: pd.DataFrame | None) -> pd.DataFrame:
    """The same rows' inputs, reference, and the predictions before and after (worst after first)."""
    keep = [c for c in ("row", "text", "gold", "predicted", "loss", "correct") if after is not None and c in after]
    if after is None or "row" not in keep:
        return pd.DataFrame()
    out = after[keep].rename(columns={"predicted": "after", "loss": "loss after", "correct": "correct after"})
    if before is not None and {"row", "predicted"} <= set(before):
        extra = before[["row", "predicted"] + (["loss"] if "loss" in before else [])]
        out = out.merge(extra.rename(columns={"predicted": "before", "loss": "loss before"}), on="row", how="left")
    order = ["row", "text", "gold", "before", "after", "loss before", "loss after", "correct after"]
    out = out[[c for c in order if c in out]]
    return out.sort_values("loss after", ascending=False) if "loss after" in out else out


def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    task_name = run.summary()["task"]
    task = TASKS.get(task_name)
    st.caption(f"Task {task_name}: {getattr(task, 'description', '')} The dashboard shows its scores and examples; "
               f"`workbench eval {run.path}` and `workbench errors {run.path}` print the full report.")
    if task is not None:
        table = score_table(ev, task)
        if len(table):
            st.dataframe(table, hide_index=True, key="generic_scores")
    frames = {}
    for which in ("before", "after"):
        try:
            frames[which] = run.predictions(which)
        except (WorkbenchError, FileNotFoundError, ValueError):
            frames[which] = None
    examples = side_by_side(frames["before"], frames["after"])
    if len(examples):
        st.subheader("Examples, before and after")
        st.caption("The same test examples scored by the model before and after fine-tuning; highest loss after first.")
        st.dataframe(examples, hide_index=True, key="generic_examples")
    else:
        st.info("No per-example predictions in this run yet.")
