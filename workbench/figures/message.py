"""The figure every builder returns when it has nothing to draw."""

from __future__ import annotations

import plotly.graph_objects as go


def message_figure(text: str, title: str | None = None) -> go.Figure:
    """An empty chart that says why it is empty (no metrics logged yet, ...) instead of a blank square."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    return fig
