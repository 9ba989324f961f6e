"""Deploy figures: what compression costs and buys (`deploy.catalog.comparison_table`), and what a server has been
predicting next to the run's test split (`GET /v1/monitor`, `deploy.monitor.Monitor.report`)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import plotly.graph_objects as go

from .evaluation import METRIC_NAMES
from .message import message_figure

AXES = {"size_mb": "size on disk (MB)", "latency_ms_p50": "p50 latency, one text (ms)",
        "throughput": "throughput (texts/s, one batch)", "score": "test score"}
WINDOW, REFERENCE = "#ff7f0e", "#9aa5b1"


def compression_figure(table: pd.DataFrame, x: str = "size_mb", y: str = "score",
                       title: str | None = None) -> go.Figure:
    """One point per model folder (`comparison_table` rows: folder, kind, and the `x` / `y` columns), named in the
    legend, the original run a green star, with a dotted line at its score: points on the line and to the left of
    it (or right, for throughput) lose nothing and cost less. Rows without both numbers (not measured yet) are left
    out, and the title says how many."""
    if table is None or not len(table) or x not in table or y not in table:
        return message_figure("nothing to compare yet", title)
    rows = table[table[x].notna() & table[y].notna()]
    metric = next((m for m in table.get("metric", pd.Series(dtype=object)).dropna()), None)
    y_name = f"test {METRIC_NAMES.get(metric, metric)}" if y == "score" and metric else AXES.get(y, y)
    title = title or f"{y_name} against {AXES.get(x, x).split(' (')[0]}"
    if not len(rows):
        return message_figure("no folder has both numbers yet: measure one", title)
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
    rows = pd.concat([rows[~rows["kind"].astype(str).str.startswith("run")],
                      rows[rows["kind"].astype(str).str.startswith("run")]])  # the run's star drawn on top
    for i, (_, row) in enumerate(rows.iterrows()):  # one trace per folder: the legend names them, no label overlaps
        is_run = str(row["kind"]).startswith("run")
        fig.add_trace(go.Scatter(
            x=[row[x]], y=[row[y]], mode="markers", name=f"{row['kind']} ({row['folder']})" if not is_run
            else "the run", marker={"size": 16 if is_run else 12, "symbol": "star" if is_run else "circle",
                                    "color": "#2ca02c" if is_run else palette[i % len(palette)],
                                    "line": {"width": 1, "color": "white"}},
            hovertemplate=f"{row['folder']}<br>{AXES.get(x, x)} %{{x:.3g}}<br>{y_name} %{{y:.4f}}<extra></extra>"))
    base = table[table["kind"].astype(str).str.startswith("run") & table[y].notna()]
    if len(base):
        fig.add_hline(y=float(base[y].iloc[0]), line_dash="dot", annotation_text="the run",
                      annotation_position="bottom right")
    hidden = len(table) - len(rows)
    fig.update_layout(title=title + (f" ({hidden} not measured yet)" if hidden else ""), xaxis_title=AXES.get(x, x),
                      yaxis_title=y_name, legend_title="")
    return fig


def monitor_labels_figure(report: Mapping[str, Any], title: str = "Predicted labels: live window and test split"
                          ) -> go.Figure:
    """Label shares side by side: the server's window (its last predictions) and the reference (what the model
    predicted on the run's test split). `report` is the JSON of GET /v1/monitor."""
    window = (report.get("window") or {}).get("label_distribution") or {}
    ref = (report.get("reference") or {}).get("label_distribution") or {}
    labels = sorted(set(window) | set(ref))
    if not labels:
        return message_figure("no labels to compare yet (no predictions, or a generator)", title)
    n_win = (report.get("window") or {}).get("n")
    n_ref = (report.get("reference") or {}).get("n")
    fig = go.Figure()
    for name, shares, colour, n in (("test split", ref, REFERENCE, n_ref), ("live window", window, WINDOW, n_win)):
        vals = [float(shares.get(k, 0.0)) for k in labels]
        fig.add_trace(go.Bar(x=labels, y=vals, name=f"{name} (n={n})" if n is not None else name,
                             marker_color=colour, text=[f"{v:.0%}" for v in vals], textposition="outside",
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.update_layout(title=title, barmode="group", yaxis_title="share of predictions", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.1], legend_title="")
    return fig


def monitor_summary(report: Mapping[str, Any]) -> pd.DataFrame:
    """Mean confidence and input length quantiles (characters) of the window and the reference, one row each."""
    window, ref = report.get("window") or {}, report.get("reference") or {}
    rows = []
    for name, part in (("live window", window), ("test split", ref)):
        lengths = part.get("input_length") or {}
        rows.append({"": name, "predictions": part.get("n"), "mean confidence": part.get("confidence_mean"),
                     **{f"length {k}": lengths.get(k) for k in ("p10", "p50", "p90")}})
    return pd.DataFrame(rows).set_index("")


def drift_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """The drift statistics (label TVD, confidence and length PSI): value, threshold, over it or not."""
    stats = ((report.get("drift") or {}).get("statistics")) or {}
    return pd.DataFrame([{"statistic": k, "value": v.get("value"), "threshold": v.get("threshold"),
                          "over": v.get("over")} for k, v in stats.items() if isinstance(v, Mapping)],
                        columns=["statistic", "value", "threshold", "over"])


__all__ = ["compression_figure", "drift_table", "monitor_labels_figure", "monitor_summary"]
