"""Runs page: every run with its state and key metrics; overlay curves, diff configs, delete."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from workbench.config import RunConfig
from workbench.figures.training import loss_figure, metric_figure
from workbench.rundir import ACTIVE, RunDir, list_runs
from workbench.storage import delete_run

from . import ensemble, monitor, widgets


def page() -> None:
    st.title("Runs")
    folder = widgets.runs_folder()
    runs = list_runs(folder)
    if not runs:
        st.info(f"No runs in {folder} yet. Start one on the Train page (or `workbench train` in "
                f"{folder.parent}), or choose another runs folder in the sidebar.")
        return
    st.caption(f"{len(runs)} run(s) in `{folder}`, newest first. States are read from each run directory.")
    table = _table(runs)
    problems = {r: p for r, p in zip(table["run"], table.pop("problems")) if p}
    warnings = {r: w for r, w in zip(table["run"], table.pop("baseline_warning")) if w}
    st.dataframe(table, hide_index=True, column_config={
        "accuracy": st.column_config.NumberColumn(format="%.3f"),
        "accuracy_before": st.column_config.NumberColumn("accuracy before", format="%.3f"),
        "accuracy_baseline": st.column_config.NumberColumn(
            "majority baseline", format="%.3f", help="Accuracy of always answering the most frequent training "
            "class, on the same test split: the score a run must beat."),
        "f1_macro": st.column_config.NumberColumn("macro F1", format="%.3f"),
        "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")})
    failed = [r for r in runs if r.status().get("state") == "failed"]
    for r in failed:
        st.error(f"{r.name} failed: {r.status().get('error') or 'no message recorded'}", icon=":material/error:")
    for name, warn in warnings.items():  # "after" not above the majority-class score
        st.warning(f"{name}: {warn}", icon=":material/warning:")
    for name, found in problems.items():  # a damaged file hides that run's fields, never the page
        for problem in found:
            st.warning(f"{name}: {problem}", icon=":material/warning:")

    st.subheader("Compare")
    names = [r.name for r in runs]
    by_name = {r.name: r for r in runs}
    chosen = st.multiselect("Runs to overlay", names, default=names[:2], key="compare_runs")
    if chosen:
        metrics = {n: by_name[n].metrics() for n in chosen}
        a, b = st.columns(2)
        a.plotly_chart(loss_figure(metrics), key="cmp_loss")
        keys = list(dict.fromkeys(k for n in chosen for k in monitor._curve_keys(by_name[n])))
        b.plotly_chart(metric_figure(metrics, keys=keys), key="cmp_metric")
    if len(chosen) >= 2:
        with widgets.shown_errors():
            # The settings as recorded (shown, never loaded from): RunDir.config() would refuse a run whose
            # config.yaml asks for remote code or pickle loading.
            diff = config_diff({n: RunConfig.from_yaml(by_name[n].config_file).to_dict() for n in chosen})
            st.markdown("**Config differences**" if len(diff) else "**Config differences**: none (same settings)")
            if len(diff):
                st.dataframe(diff, key="cfg_diff")

    ensemble.section(runs)

    st.subheader("Delete a run")
    victim = st.selectbox("Run to delete", names, index=None, key="delete_run", placeholder="choose a run")
    if victim:
        run = by_name[victim]
        if run.status().get("state") in ACTIVE:
            st.warning(f"{victim} is still {run.status()['state']}: stop it on the Train page before deleting.")
            return
        sure = st.checkbox(f"Yes, delete {victim} with its checkpoints and model (cannot be undone)",
                           key=f"delete_sure_{victim}")
        if st.button("Delete", type="primary", disabled=not sure, icon=":material/delete:"):
            with widgets.shown_errors():
                delete_run(run)
                st.session_state.pop("delete_run", None)
                st.toast(f"Deleted {victim}")
                st.rerun()


def _table(runs: list[RunDir]) -> pd.DataFrame:
    rows = []
    for r in runs:
        s = r.summary()
        total = s.get("total_steps")
        s["progress"] = (s.get("step") or 0) / total if total else (1.0 if s["state"] == "completed" else 0.0)
        s["created"] = pd.to_datetime(s["created"], unit="s") if s.get("created") else None
        rows.append(s)
    df = pd.DataFrame(rows)
    # Each task's headline metric before and after, then its other metrics (for classification: accuracy, macro F1).
    heads = list(dict.fromkeys(df["headline"]))
    others = [c for c in ("f1_macro",) if c in df]
    return df[["run", "state", "progress", "model", "method", "data"]
              + [c for h in heads for c in (f"{h}_baseline", f"{h}_before", h)]
              + others + ["created", "problems", "baseline_warning"]]


def config_diff(configs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Fields whose values differ between configs: one row per dotted field, one column per run."""
    flat = {name: _flatten(c) for name, c in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - {"name"})
    rows = {k: [f.get(k) for f in flat.values()] for k in keys}
    differing = {k: v for k, v in rows.items() if len({repr(x) for x in v}) > 1}
    return pd.DataFrame.from_dict({k: [str(x) for x in v] for k, v in differing.items()}, orient="index",
                                  columns=list(flat))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
