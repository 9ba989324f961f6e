"""Evaluate page: before/after, per-class scores, confusion matrix, error table, run diff, try-it box."""

from __future__ import annotations

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.figures.evaluation import (
    METRIC_NAMES,
    before_after_figure,
    per_class_figure,
)
from workbench.tasks import TASKS

from . import errors_table, widgets


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
    after, before = ev.get("after"), ev.get("before")
    if after is None:
        st.info(f"{run.name} is {state.get('state')}: only the scores before fine-tuning exist yet.")
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
        with tabs[1]:
            errors_table.confusion_cell(main, pred)
        with tabs[2]:
            errors_table.error_table(pred, main.get("labels", []))
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
