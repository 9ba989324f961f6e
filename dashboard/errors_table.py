"""The Evaluate page's example-level views: a clickable confusion matrix and the filtered error table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from workbench.figures.evaluation import confusion_matrix_figure, slice_figure

from . import widgets

VIEWS = ("Confident mistakes", "Uncertain", "All examples")
SHOWN = ["row", "text", "gold", "predicted", "confidence", "margin", "loss"]


def confusion_cell(metrics: dict, pred: pd.DataFrame, row_kind: str | None = None) -> None:
    """The confusion matrix; clicking a cell (or choosing it below) lists that cell's examples.

    `row_kind` (the data report's "line" or "row") says what the `row` column counts."""
    labels = list(metrics.get("labels") or sorted(set(pred["gold"].astype(str))))
    normalize = st.toggle("Normalise rows (share of each gold class)", key="cm_norm")
    event = st.plotly_chart(_clickable(confusion_matrix_figure(metrics, normalize=normalize), labels),
                            key="cm_chart", on_select="rerun", selection_mode="points")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points and (points[0].get("y"), points[0].get("x")) != st.session_state.get("cm_clicked"):
        st.session_state["cm_clicked"] = (points[0].get("y"), points[0].get("x"))
        st.session_state["cm_gold"], st.session_state["cm_pred"] = str(points[0]["y"]), str(points[0]["x"])
    if st.session_state.get("cm_gold") not in labels or st.session_state.get("cm_pred") not in labels:
        st.session_state["cm_gold"], st.session_state["cm_pred"] = _worst_cell(metrics, labels)
    a, b = st.columns(2)
    gold = a.selectbox("Gold label", labels, key="cm_gold")
    predicted = b.selectbox("Predicted label", labels, key="cm_pred")
    cell = pred[(pred["gold"].astype(str) == gold) & (pred["predicted"].astype(str) == predicted)]
    st.caption(f"{len(cell)} example(s) with gold **{gold}** predicted as **{predicted}**, most confident first. "
               f"Click a cell of the matrix to choose it.")
    st.dataframe(cell.sort_values("confidence", ascending=False)[_columns(cell)], hide_index=True, key="cm_examples",
                 column_config=_row_column(row_kind))


def _clickable(fig: go.Figure, labels: list[str]) -> go.Figure:
    """Plotly heatmaps cannot be selected, so an invisible marker on each cell takes the click."""
    cells = [(g, p) for g in labels for p in labels]
    invisible = {"marker": {"opacity": 0}}
    fig.add_trace(go.Scatter(x=[p for _, p in cells], y=[g for g, _ in cells], mode="markers", showlegend=False,
                             marker={"size": 40, "symbol": "square", "opacity": 0}, selected=invisible,
                             unselected=invisible, hovertemplate="gold %{y} · predicted %{x}<br>click to list "
                             "these examples<extra></extra>"))
    return fig


def _worst_cell(metrics: dict, labels: list[str]) -> tuple[str, str]:
    """The largest off-diagonal cell (the most common confusion), else the first diagonal cell."""
    cm = metrics.get("confusion_matrix") or []
    best, where = -1, (labels[0], labels[0])
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            if i != j and n > best and i < len(labels) and j < len(labels):
                best, where = n, (labels[i], labels[j])
    return where if best > 0 else (labels[0], labels[0])


def error_table(pred: pd.DataFrame, labels: list[str], row_kind: str | None = None) -> None:
    """Mistakes and uncertain examples with filters, and the worst slices of the test set."""
    from workbench import analysis

    c = st.columns([2, 2, 2, 3])
    view = c[0].radio("Show", VIEWS, key="err_view")
    gold = c[1].multiselect("Gold", labels, key="err_gold")
    predicted = c[2].multiselect("Predicted", labels, key="err_pred")
    pattern = c[3].text_input("Text contains (word or regex)", key="err_pattern")
    lo, hi = c[3].slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05, key="err_conf")
    table = {VIEWS[0]: analysis.confident_mistakes, VIEWS[1]: analysis.uncertain_examples}.get(view, lambda p: p)(pred)
    keep = (table["confidence"] >= lo) & (table["confidence"] <= hi)
    if gold:
        keep &= table["gold"].astype(str).isin(gold)
    if predicted:
        keep &= table["predicted"].astype(str).isin(predicted)
    extra = analysis.slice_columns(pred)
    if extra:
        col = c[0].selectbox("Slice column", ["(all)"] + extra, key="err_slice_col")
        if col != "(all)":
            values = c[1].multiselect(f"{col} is", sorted(pred[col].dropna().astype(str).unique()), key="err_slice_val")
            if values:
                keep &= table[col].astype(str).isin(values)
    with widgets.shown_errors():
        if pattern.strip():
            keep &= analysis.pattern_mask(table, pattern.strip())
        shown = table[keep]
        st.caption(f"{len(shown)} of {len(pred)} test examples")
        if view == VIEWS[0] and not len(table):
            st.success("No mistakes on the test split.", icon=":material/check_circle:")
        else:
            st.dataframe(shown[_columns(shown)], hide_index=True, column_config=_row_column(row_kind))
        st.markdown("**Worst slices** (gold/predicted label, length, your extra columns"
                    + (", the text pattern" if pattern.strip() else "") + ")")
        slices = analysis.worst_slices(pred, patterns=[pattern.strip()] if pattern.strip() else None,
                                       labels=labels)
        st.plotly_chart(slice_figure(slices), key="fig_slices")
        share = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(slices, hide_index=True, column_config={c: share for c in ("accuracy", "f1_macro", "error_rate",
                                                                                 "delta_accuracy")})


def _row_column(row_kind: str | None) -> dict:
    """`row` is a place in the data file (a CSV's line number can pass the number of examples): say which."""
    from workbench.analysis import row_meaning

    label, help_text = row_meaning(row_kind)
    return {"row": st.column_config.NumberColumn(label, help=help_text, format="%d")}


def _columns(df: pd.DataFrame) -> list[str]:
    from workbench import analysis

    extra = [c for c in df.columns if c not in analysis.PREDICTION_COLUMNS and not str(c).startswith("p_")]
    return [c for c in SHOWN if c in df] + extra
