"""Evaluation figures: confusion matrix, per-class scores, before vs after, error slices, confidence.

Metric dicts are what `workbench.evaluate.classification_metrics` returns (and eval.json stores under
"before"/"after"); slice tables come from `workbench.analysis.worst_slices`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .message import message_figure


METRIC_NAMES = {"accuracy": "accuracy", "f1_macro": "macro F1", "precision_macro": "macro precision",
                "recall_macro": "macro recall", "f1_weighted": "weighted F1", "f1_micro": "micro F1"}


def confusion_matrix_figure(metrics: Mapping[str, Any], normalize: bool = False,
                            title: str | None = None) -> go.Figure:
    """Heatmap of gold (rows, top to bottom) against predicted (columns).

    `normalize=True` colours each gold row by its share (the diagonal is then per-class recall), which
    keeps a rare class readable next to a common one; cells always show the raw count too.
    """
    labels = list(metrics.get("labels") or [])
    cm = np.asarray(metrics.get("confusion_matrix") or [], dtype=float)
    if not labels or cm.size == 0:
        return message_figure("no confusion matrix yet", title)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    z = share if normalize else cm
    text = [[f"{share[i, j]:.0%}<br>({int(cm[i, j])})" if normalize else f"{int(cm[i, j])}"
             for j in range(len(labels))] for i in range(len(labels))]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=labels, y=labels, text=text, texttemplate="%{text}", colorscale="Blues",
        zmin=0, zmax=1 if normalize else None, colorbar_title="share of gold" if normalize else "count",
        hovertemplate="gold %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(title=title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"),
                      xaxis_title="predicted", yaxis_title="gold")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(side="bottom", type="category")
    return fig


def per_class_figure(metrics: Mapping[str, Any], title: str = "Per-class scores") -> go.Figure:
    """Precision, recall and F1 for each class, grouped bars (support in the hover)."""
    per = metrics.get("per_class") or {}
    labels = [lab for lab in (metrics.get("labels") or list(per)) if lab in per]
    if not labels:
        return message_figure("no per-class metrics yet", title)
    support = [per[lab].get("support") for lab in labels]
    fig = go.Figure()
    for key in ("precision", "recall", "f1"):
        vals = [per[lab][key] for lab in labels]
        fig.add_trace(go.Bar(x=labels, y=vals, name=key, text=[f"{v:.2f}" for v in vals], customdata=support,
                             hovertemplate=f"%{{x}}<br>{key} %{{y:.3f}}<br>support %{{customdata}}<extra></extra>"))
    fig.update_layout(title=title, barmode="group", xaxis_title="class", yaxis_title="score", yaxis_range=[0, 1.05])
    return fig


def before_after_figure(evaluation: Mapping[str, Mapping[str, Any]],
                        keys: Sequence[str] = ("accuracy", "f1_macro", "precision_macro", "recall_macro"),
                        title: str = "Test metrics before and after fine-tuning") -> go.Figure:
    """One bar group per metric, one bar per stage present in eval.json ("before", "after")."""
    stages = [s for s in ("before", "after") if evaluation.get(s)]
    if not stages:
        return message_figure("no test evaluation yet", title)
    names = [METRIC_NAMES.get(k, k) for k in keys]
    fig = go.Figure()
    for stage, colour in zip(stages, ("#9aa5b1", "#1f77b4") if len(stages) == 2 else ("#1f77b4",)):
        vals = [evaluation[stage].get(k) for k in keys]
        fig.add_trace(go.Bar(x=names, y=vals, name=f"{stage} fine-tuning", marker_color=colour,
                             text=[f"{v:.3f}" if v is not None else "" for v in vals], textposition="outside"))
    fig.update_layout(title=title, barmode="group", yaxis_title="score", yaxis_range=[0, 1.1])
    return fig


def slice_figure(slices: pd.DataFrame, top: int = 15, title: str = "Worst slices") -> go.Figure:
    """Accuracy of the `top` worst slices as horizontal bars, worst at the top, with the overall accuracy.

    Bars are coloured by feature (gold label, length, a pattern, a user column) so related slices read
    together; the dotted line is the whole test set's accuracy, so "how much worse" is visible.
    """
    if slices is None or not len(slices):
        return message_figure("no slices (all smaller than min_size?)", title)
    s = slices.sort_values(["accuracy", "n"], ascending=[True, False], kind="stable").head(top)
    s = s.assign(name=[f"{f}: {v} (n={n})" for f, v, n in zip(s["feature"], s["slice"], s["n"])])
    fig = go.Figure()
    for feature, part in s.groupby("feature", sort=False):
        fig.add_trace(go.Bar(
            x=part["accuracy"], y=part["name"], orientation="h", name=str(feature),
            text=[f"{a:.2f}" for a in part["accuracy"]], textposition="auto",
            customdata=np.stack([part["n"], part["errors"], part["f1_macro"]], axis=1),
            hovertemplate="%{y}<br>accuracy %{x:.3f}<br>errors %{customdata[1]} of %{customdata[0]}"
                          "<br>macro F1 %{customdata[2]:.3f}<extra></extra>"))
    if "delta_accuracy" in s:
        overall = float((s["accuracy"] - s["delta_accuracy"]).iloc[0])
        fig.add_vline(x=overall, line_dash="dot", annotation_text=f"all: {overall:.2f}", annotation_position="top")
    fig.update_layout(title=title, xaxis_title="accuracy", xaxis_range=[0, 1.05], height=max(300, 28 * len(s) + 120),
                      legend_title="feature")
    # Category order top-to-bottom = worst first (plotly draws the first category at the bottom).
    fig.update_yaxes(categoryorder="array", categoryarray=list(s["name"])[::-1])
    return fig


def confidence_figure(pred: pd.DataFrame, bins: int = 20, title: str = "Confidence of right and wrong predictions"
                      ) -> go.Figure:
    """Overlaid histograms of top-class probability for correct and wrong predictions.

    A well-behaved model has its mistakes piled at low confidence; a heap of wrong answers near 1.0
    means confident mistakes worth reading (`analysis.confident_mistakes`).
    """
    if pred is None or not len(pred):
        return message_figure("no predictions yet", title)
    correct = pred["correct"].astype(bool) if "correct" in pred else pred["gold"] == pred["predicted"]
    fig = go.Figure()
    for name, mask, colour in (("correct", correct, "#2ca02c"), ("wrong", ~correct, "#d62728")):
        fig.add_trace(go.Histogram(x=pred.loc[mask, "confidence"], name=f"{name} ({int(mask.sum())})",
                                   xbins={"start": 0, "end": 1.0001, "size": 1 / bins}, marker_color=colour,
                                   opacity=0.65))
    fig.update_layout(title=title, barmode="overlay", xaxis_title="confidence (top-class probability)",
                      yaxis_title="examples")
    return fig
