"""Data figures from the data report (data_report.json, `DataReport.to_dict()`): class balance per
split and the token-length histogram with the truncation limit marked."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

from .message import message_figure


SPLIT_ORDER = ("train", "validation", "test")


def _as_dict(report: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    return report.to_dict() if hasattr(report, "to_dict") else (report or {})


def class_balance_figure(report: Mapping[str, Any] | Any, share: bool = False,
                         title: str = "Class balance") -> go.Figure:
    """One bar per class for each split (train, validation, test).

    `share=True` plots each split's fraction instead of counts, so a small test split can be checked
    against train for the same proportions (a stratified split should match).
    """
    rep = _as_dict(report)
    balance: Mapping[str, Mapping[str, int]] = rep.get("class_balance") or {}
    if not balance:
        return message_figure("no class balance in the report", title)
    splits = [s for s in SPLIT_ORDER if s in balance] + [s for s in balance if s not in SPLIT_ORDER]
    labels = list(rep.get("labels") or [])
    labels += [lab for s in splits for lab in balance[s] if lab not in labels]
    fig = go.Figure()
    for split in splits:
        counts = [int(balance[split].get(lab, 0)) for lab in labels]
        total = sum(counts) or 1
        y = [c / total for c in counts] if share else counts
        fig.add_trace(go.Bar(x=labels, y=y, name=f"{split} ({sum(counts)})", customdata=counts,
                             text=[f"{c / total:.0%}" for c in counts], textposition="outside",
                             hovertemplate=f"{split}<br>%{{x}}: %{{customdata}} (%{{text}})<extra></extra>"))
    fig.update_layout(title=title, barmode="group", xaxis_title="class", legend_title="split",
                      yaxis_title="share of split" if share else "examples")
    if share:
        fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    return fig


def token_length_figure(report: Mapping[str, Any] | Any, max_length: int | None = None,
                        title: str = "Token lengths") -> go.Figure:
    """Histogram of tokens per example (before truncation) with a line at `max_length`.

    Bars right of the line are texts the model only sees in part; the annotation says how many.
    `max_length` defaults to the one the report was made with.
    """
    t = _as_dict(report).get("token_lengths") or {}
    counts, edges = t.get("histogram") or [], t.get("histogram_edges") or []
    if not counts or len(edges) != len(counts) + 1:
        return message_figure("no token lengths in the report (made without a tokenizer?)", title)
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    fig = go.Figure(go.Bar(x=centres, y=counts, width=widths, name="examples", marker_color="#1f77b4",
                           customdata=list(zip(edges, edges[1:])),
                           hovertemplate="%{customdata[0]:.0f}–%{customdata[1]:.0f} tokens: %{y}<extra></extra>"))
    limit = max_length if max_length is not None else t.get("max_length")
    if limit is not None:
        # The histogram cannot say how many exceed an arbitrary new limit; the report's count is exact.
        truncated = t.get("truncated") if max_length is None else (0 if limit >= t.get("max", float("inf")) else None)
        cut = "windowed" if t.get("fate") or t.get("windowed") else "truncated"  # a task that keeps a window
        note = f"max_length {limit}" + (f": {truncated} {cut}" if truncated is not None else "")
        fig.add_vline(x=limit, line_color="#d62728", line_dash="dash", annotation_text=note,
                      annotation_position="top left")
    if t.get("p50") is not None:
        fig.add_vline(x=t["p50"], line_color="#7f7f7f", line_dash="dot", annotation_text=f"median {t['p50']}",
                      annotation_position="top right")
    tok = f" ({t['tokenizer']})" if t.get("tokenizer") else ""
    # A fixed range from 0: lengths cannot be negative, and plotly's autorange around the wide bars and the
    # marker lines ran the axis far below 0 on long-text data.
    right = max(edges[-1], float(limit or 0), float(t.get("p50") or 0))
    fig.update_layout(title=title + tok, xaxis_title="tokens per example", yaxis_title="examples", bargap=0,
                      showlegend=False, xaxis_range=[0, right * 1.04])
    return fig

