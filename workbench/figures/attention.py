"""Plotly figures for attention maps and token saliency.

Each builder takes the arrays/results of `workbench.attention` / `workbench.saliency` and returns a
`go.Figure`. Token axes are numeric positions labelled with the tokens: a categorical axis would
merge repeated tokens ("the" twice) into one row.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..attention import AttentionResult, attention_rollout, readout_attention, select
from ..saliency import SaliencyResult

SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"  # red = positive, blue = negative, white = 0 (with zmid=0)


def _esc(s: str) -> str:
    """Plotly reads labels as a small HTML subset: '<s>' would strike the text through, so escape tokens."""
    return html.escape(str(s), quote=False)


def _pos(i: int, n: int) -> int:
    return i % n


def _what(result: AttentionResult, layer: int, head: int | None) -> str:
    layer = _pos(layer, result.n_layers)
    who = "head average" if head is None else f"head {_pos(head, result.n_heads)}"
    return f"layer {layer} of 0–{result.n_layers - 1}, {who}"


def _subtitle(result: AttentionResult, layer: int | None = None, head: int | None = None) -> str:
    parts = []
    if result.predicted is not None and result.probs is not None:
        parts.append(f"predicted {result.predicted} (p={float(np.max(result.probs)):.2f})")
    if result.virtual and result.virtual_share is not None:  # peft prompt / prefix tuning
        share = float(select(result.virtual_share, layer, head)[result.readout_index])
        n = result.n_virtual
        parts.append(f"soft prompt [P1]–[P{n}] takes {share:.0%} of the readout's attention" if result.virtual ==
                     "prompt" else f"prefix ({n} keys, not shown) takes {share:.0%} of the readout's attention; "
                     f"rows renormalised over the text")
    if result.truncated:
        parts.append(result.notice)
    return " · ".join(parts)


def _token_heatmap(z: np.ndarray, tokens: Sequence[str], title: str, subtitle: str = "", *,
                   diverging: bool = False, value_name: str = "weight") -> go.Figure:
    """A (seq, seq) map, rows = attending token (from), columns = attended token (to)."""
    n = len(tokens)
    labels = [f"{i}: {_esc(t)}" for i, t in enumerate(tokens)]
    custom = np.empty((n, n, 2), dtype=object)
    custom[:, :, 0] = np.array(labels, dtype=object)[:, None]
    custom[:, :, 1] = np.array(labels, dtype=object)[None, :]
    kw: dict = {"colorscale": SEQUENTIAL}
    if diverging:
        m = float(np.nanmax(np.abs(z))) or 1e-9
        kw = {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -m, "zmax": m}
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n)), customdata=custom, colorbar={"title": {"text": value_name}},
        hovertemplate="from %{customdata[0]}<br>to %{customdata[1]}<br>" + value_name + " %{z:.4f}<extra></extra>",
        **kw))
    axis = {"tickmode": "array", "tickvals": list(range(n)), "ticktext": [_esc(t) for t in tokens],
            "tickfont": {"size": 11 if n <= 40 else 8}}
    side = int(min(950, max(420, 14 * n + 180)))
    fig.update_layout(title={"text": title, "subtitle": {"text": _esc(subtitle)}},
                      xaxis={**axis, "title": {"text": "attended to"}, "tickangle": -60},
                      yaxis={**axis, "title": {"text": "attending token"}, "autorange": "reversed"},
                      width=side + 120, height=side, margin={"t": 90})
    return fig


def attention_heatmap(result: AttentionResult, layer: int, head: int | None = None) -> go.Figure:
    """One layer's attention map for one head (or the head average)."""
    z = select(result.attentions, layer, head)
    return _token_heatmap(z, result.tokens, f"Attention · {_what(result, layer, head)}",
                          _subtitle(result, layer, head))


def rollout_heatmap(result: AttentionResult, add_residual: bool = True) -> go.Figure:
    """Attention rollout through all layers (how much each output position draws on each input token)."""
    z = attention_rollout(result.attentions, add_residual=add_residual)
    return _token_heatmap(z, result.tokens, f"Attention rollout over {result.n_layers} layers", _subtitle(result),
                          value_name="share")


def attention_difference_heatmap(diff: np.ndarray, tokens: Sequence[str], title: str | None = None) -> go.Figure:
    """Tuned minus base attention: red where fine-tuning attends more, blue where less."""
    return _token_heatmap(np.asarray(diff), tokens, title or "Attention change after fine-tuning (tuned − base)",
                          "red: more attention after fine-tuning · blue: less", diverging=True, value_name="Δ weight")


def readout_bar(result: AttentionResult, layer: int, head: int | None = None) -> go.Figure:
    """Attention from the token the classifier reads ([CLS] / last token) to every token."""
    w = select(readout_attention(result), layer, head)  # (layers, heads, seq) -> (seq,)
    n = len(result.tokens)
    special = result.special or [False] * n
    fig = go.Figure(go.Bar(
        x=list(range(n)), y=w, customdata=[f"{i}: {_esc(t)}" for i, t in enumerate(result.tokens)],
        marker_color=["#9e9e9e" if s else "#1f77b4" for s in special],
        hovertemplate="%{customdata}<br>weight %{y:.4f}<extra></extra>"))
    r = result.readout_index
    fig.update_layout(
        title={"text": f"Attention from {_esc(result.tokens[r])} (position {r}) · {_what(result, layer, head)}",
               "subtitle": {"text": _esc(_subtitle(result, layer, head) or "grey: special tokens")}},
        xaxis={"tickmode": "array", "tickvals": list(range(n)), "ticktext": [_esc(t) for t in result.tokens],
               "tickangle": -60, "tickfont": {"size": 11 if n <= 40 else 8}},
        yaxis={"title": {"text": "attention weight"}}, height=420, margin={"t": 90})
    return fig


def saliency_figure(result: SaliencyResult, per_row: int = 12) -> go.Figure:
    """The tokens as coloured text, wrapped in rows: red raised the class logit, blue lowered it."""
    n = len(result.tokens)
    rows = max(1, -(-n // per_row))
    z = np.full((rows, per_row), np.nan)
    text = np.full((rows, per_row), "", dtype=object)
    hover = np.full((rows, per_row), "", dtype=object)
    for i, (tok, s) in enumerate(zip(result.tokens, result.scores)):
        z[i // per_row, i % per_row] = s
        text[i // per_row, i % per_row] = _esc(tok)
        hover[i // per_row, i % per_row] = f"{i}: {_esc(tok)}"
    m = float(np.nanmax(np.abs(result.scores))) if n else 0.0
    fig = go.Figure(go.Heatmap(
        z=z, text=text, customdata=hover, texttemplate="%{text}", textfont={"size": 13},
        colorscale=DIVERGING, zmid=0.0, zmin=-(m or 1e-9), zmax=m or 1e-9, xgap=2, ygap=2,
        colorbar={"title": {"text": "attribution"}, "nticks": 5, "thickness": 14},
        hovertemplate="%{customdata}<br>attribution %{z:.4f}<extra></extra>"))
    name = "Integrated gradients" if result.method == "ig" else "Gradient × input"
    sub = [f"predicted {result.predicted_label}"
           + (f" (p={float(result.probs[result.predicted]):.2f})" if result.probs is not None else "")]
    if result.completeness_gap is not None:
        sub.append(f"completeness gap {result.completeness_gap:.2g} of Δlogit {result.delta:.3g} "
                   f"({result.n_steps} steps)")
    if result.truncated:
        sub.append(result.notice)
    fig.update_layout(
        title={"text": f"{name} for class {_esc(repr(result.target_label))} (red raises it, blue lowers it)",
               "subtitle": {"text": _esc(" · ".join(sub))}},
        xaxis={"visible": False}, yaxis={"visible": False, "autorange": "reversed"},
        plot_bgcolor="white", height=int(max(280, 150 + 44 * rows)), margin={"t": 90, "l": 20, "r": 20})
    return fig


def write_figures_html(figs: Sequence[go.Figure], path: str | Path, title: str = "workbench") -> Path:
    """One self-contained HTML page (plotly.js inlined, so it opens offline) with the figures in order."""
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'><h2>{html.escape(title)}</h2>{''.join(parts)}</body></html>")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page, encoding="utf-8")
    return p
