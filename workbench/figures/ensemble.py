"""Ensemble figure: each member's scores beside the ensemble's (`workbench.ensemble.Ensemble.scores`)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from .evaluation import METRIC_NAMES
from .message import message_figure

COLOURS = {"member": "#9aa5b1", "best member": "#1f77b4", "ensemble": "#ff7f0e"}


def ensemble_scores_figure(scores: pd.DataFrame, keys: Sequence[str] = ("accuracy", "f1_macro"),
                           title: str = "Members and their ensemble on the same test split") -> go.Figure:
    """One bar group per metric, one bar per member (grey), the best member (blue) and the ensemble
    (orange), with a dotted line at the best member's headline score so the ensemble's gain or loss reads
    at a glance. `scores` has a `model` and a `role` column ("member", "best member", "ensemble") and one
    column per metric."""
    keys = [k for k in keys if k in scores and scores[k].notna().any()]
    if scores is None or not len(scores) or not keys:
        return message_figure("no scores to compare", title)
    fig = go.Figure()
    for _, row in scores.iterrows():
        vals = [row[k] for k in keys]
        fig.add_trace(go.Bar(
            x=[METRIC_NAMES.get(k, k) for k in keys], y=vals, name=f"{row['model']} (best member)"
            if row["role"] == "best member" else str(row["model"]), marker_color=COLOURS.get(row["role"], "#9aa5b1"),
            text=[f"{v:.3f}" if pd.notna(v) else "" for v in vals], textposition="outside",
            hovertemplate=f"{row['model']}<br>%{{x}} %{{y:.4f}}<extra></extra>"))
    best = scores[scores["role"] == "best member"]
    if len(best):
        fig.add_hline(y=float(best[keys[0]].iloc[0]), line_dash="dot",
                      annotation_text=f"best member's {METRIC_NAMES.get(keys[0], keys[0])}",
                      annotation_position="top left")
    fig.update_layout(title=title, barmode="group", yaxis_title="score", yaxis_range=[0, 1.1], legend_title="model")
    return fig
