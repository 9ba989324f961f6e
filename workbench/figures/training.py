"""Training curves from metrics.jsonl: loss (train and validation on one chart) and validation metrics.

Every builder takes one run or several — a metrics DataFrame, a RunDir or run path, or a mapping
{run name: either} — and draws each run in one colour, so runs overlay and compare at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..rundir import RunDir
from .message import message_figure

RunMetrics = Union[pd.DataFrame, RunDir, str, Path]
RunsInput = Union[RunMetrics, Mapping[str, RunMetrics], Sequence[RunMetrics]]
COLOURS = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def _frame(item: RunMetrics) -> tuple[str | None, pd.DataFrame]:
    if isinstance(item, pd.DataFrame):
        return None, item
    run = item if isinstance(item, RunDir) else RunDir(item)
    return run.name, run.metrics()


def metrics_by_run(runs: RunsInput) -> dict[str, pd.DataFrame]:
    """Normalise the accepted inputs to {run name: metrics DataFrame}, in the order given."""
    if isinstance(runs, Mapping):
        return {str(k): _frame(v)[1] for k, v in runs.items()}
    items = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    out: dict[str, pd.DataFrame] = {}
    for i, item in enumerate(items):
        name, frame = _frame(item)
        base = name or ("run" if len(items) == 1 else f"run {i + 1}")
        name, k = base, 2
        while name in out:  # the same run twice (or two folders of one name) must still be two lines
            name, k = f"{base} ({k})", k + 1
        out[name] = frame
    return out


def _points(m: pd.DataFrame, key: str, x: str, kinds: Sequence[str]) -> pd.DataFrame:
    """Rows of the given kinds that carry `key`, sorted by x (resumed runs may log a step twice)."""
    if key not in m or x not in m:
        return m.iloc[:0]
    rows = m[m["kind"].isin(kinds)] if "kind" in m else m
    rows = rows[rows[key].notna() & rows[x].notna()]
    return rows.drop_duplicates(subset=[x], keep="last").sort_values(x)


def loss_figure(runs: RunsInput, x: Literal["step", "epoch"] = "step", title: str = "Loss") -> go.Figure:
    """Training loss (solid) and validation loss (dashed, markers) per run; one colour per run.

    Validation loss rising while training loss keeps falling is overfitting: the chart makes the gap visible.
    """
    frames = metrics_by_run(runs)
    fig = go.Figure()
    for i, (name, m) in enumerate(frames.items()):
        colour = COLOURS[i % len(COLOURS)]
        train, val = _points(m, "loss", x, ["train"]), _points(m, "eval_loss", x, ["eval"])
        train_mode = "lines" if len(train) > 1 else "markers"  # a single point drawn as a line is invisible
        for label, pts, key, style in (("train loss", train, "loss", {"mode": train_mode, "line": {"color": colour}}),
                                       ("validation loss", val, "eval_loss",
                                        {"mode": "lines+markers", "line": {"color": colour, "dash": "dash"}})):
            if len(pts):
                fig.add_trace(go.Scatter(x=pts[x], y=pts[key], name=label, legendgroup=name,
                                         legendgrouptitle_text=name, **style,
                                         hovertemplate=f"{name}<br>{label}: %{{y:.4f}}<br>{x} %{{x}}<extra></extra>"))
        if "nan" in m and m["nan"].fillna(False).astype(bool).any():  # a run halted on NaN/inf: mark where
            bad = m[m["nan"].fillna(False).astype(bool)]
            last = train["loss"].iloc[-1] if len(train) else 0.0
            fig.add_trace(go.Scatter(x=bad[x] if x in bad else bad["step"], y=[last] * len(bad), mode="markers+text",
                                     marker={"symbol": "x", "size": 12, "color": "crimson"}, text=["loss NaN/inf"],
                                     textposition="top center", name="halted: NaN loss", legendgroup=name))
    if not fig.data:
        return message_figure("no loss logged yet", title)
    fig.update_layout(title=title, xaxis_title=x, yaxis_title="loss", hovermode="x unified",
                      legend_groupclick="toggleitem")
    return fig


def metric_figure(runs: RunsInput, keys: Sequence[str] = ("eval_accuracy", "eval_f1_macro"),
                  x: Literal["step", "epoch"] = "step", title: str = "Validation metrics") -> go.Figure:
    """Any logged metrics over training (default: validation accuracy and macro F1).

    Colour is the run, dash style the metric. Also draws train-side keys such as `learning_rate` or
    `tokens_per_second` (the final `summary` row is left out: it is an average, not a point in time).
    """
    frames = metrics_by_run(runs)
    fig = go.Figure()
    for i, (name, m) in enumerate(frames.items()):
        for j, key in enumerate(keys):
            pts = _points(m, key, x, ["train", "eval"])
            if not len(pts):
                continue
            label = key.removeprefix("eval_").replace("_", " ")
            fig.add_trace(go.Scatter(x=pts[x], y=pts[key], name=label, mode="lines+markers", legendgroup=name,
                                     legendgrouptitle_text=name,
                                     line={"color": COLOURS[i % len(COLOURS)], "dash": DASHES[j % len(DASHES)]},
                                     hovertemplate=f"{name}<br>{label}: %{{y:.4g}}<br>{x} %{{x}}<extra></extra>"))
    if not fig.data:
        return message_figure(f"no {', '.join(keys)} logged yet", title)
    fig.update_layout(title=title, xaxis_title=x, hovermode="x unified", legend_groupclick="toggleitem")
    scores = all(k.startswith("eval_") and not k.endswith("loss") for k in keys)
    if scores:
        fig.update_yaxes(title="score")
    y = [float(v) for t in fig.data for v in t.y if v is not None and v == v]
    y_range = _narrow_range(y, scores)
    if y_range is not None:
        fig.update_yaxes(range=y_range)
    return fig


def _narrow_range(values: Sequence[float], scores: bool) -> list[float] | None:
    """A y-range for values that (nearly) coincide, e.g. one validation point; None to let plotly choose.

    Plotly's autorange around one point spans a sliver (0.9002–0.9009), which makes a single score look
    like a precise measurement of nothing. Scores get a window at least 0.1 wide inside [0, 1]; other
    values at least ±10% of their size.
    """
    if not values:
        return None
    lo, hi = min(values), max(values)
    if scores:
        if hi - lo >= 0.1:
            return None
        mid = (lo + hi) / 2
        a, b = mid - 0.05, mid + 0.05
        a, b = (0.0, 0.1) if a < 0 else (0.9, 1.0) if b > 1 else (a, b)
        return [min(a, lo) - 0.005, max(b, hi) + 0.005]  # the margin keeps a marker at 0 or 1 whole
    size = max(abs(lo), abs(hi))
    pad = 0.1 * size if size else 1.0
    if hi - lo >= 2 * pad:
        return None
    mid = (lo + hi) / 2
    return [mid - pad, mid + pad]


def learning_rate_figure(runs: RunsInput, x: Literal["step", "epoch"] = "step") -> go.Figure:
    """The learning-rate schedule as logged (warmup, then decay)."""
    return metric_figure(runs, keys=("learning_rate",), x=x, title="Learning rate")


def throughput_figure(runs: RunsInput, x: Literal["step", "epoch"] = "step") -> go.Figure:
    """Real (non-padding) tokens per second between log steps."""
    return metric_figure(runs, keys=("tokens_per_second",), x=x, title="Throughput (tokens/s)")
