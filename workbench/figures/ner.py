"""Figures for taggers (token classification): entity scores per type, error types, the token-level
confusion matrix, entity slices, and a sentence view with entities highlighted per type.

Inputs are what a NER run stores: eval.json's "before"/"after" (`TokenClassification.score`), the
predictions table (predictions.jsonl) and `entity_slices(pred)`. The sentence view is an HTML string,
not a figure: every word in it comes from a data file someone sent, so all text is escaped.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .evaluation import confusion_matrix_figure
from .message import message_figure

# The same kinds, in the same order, as `workbench.tasks.token_classification.scoring.ERROR_TYPES` (a test
# checks); not imported from there so that drawing figures needs no seqeval.
ERROR_TYPES = ("missed", "spurious", "wrong type", "wrong boundary", "wrong type and boundary")
STAGES = (("before", "#9aa5b1"), ("after", "#1f77b4"))
# Light backgrounds that keep black text readable (ColorBrewer Pastel1 + Set3), one per entity type.
PALETTE = ("#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec", "#8dd3c7",
           "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#bc80bd")


def _stages(evaluation: Mapping[str, Any]) -> list[tuple[str, str]]:
    present = [(s, c) for s, c in STAGES if evaluation.get(s)]
    return present if len(present) == 2 else [(s, "#1f77b4") for s, _ in present]


def entity_type_figure(evaluation: Mapping[str, Mapping[str, Any]], metric: str = "f1", strict: bool = False,
                       title: str | None = None) -> go.Figure:
    """Entity precision, recall or F1 (`metric`) per entity type, one bar per stage (before, after).

    `strict=True` plots seqeval's strict mode (an entity counts only when its tags are a valid BIO
    sequence). The number of gold entities of each type is in the hover.
    """
    key = "per_type_strict" if strict else "per_type"
    title = title or f"Entity {metric} per type" + (" (strict)" if strict else "")
    stages = _stages(evaluation)
    types: list[str] = []
    for s, _ in stages:
        types += [t for t in (evaluation[s].get(key) or {}) if t not in types]
    if not types:
        return message_figure("no per-type entity scores yet", title)
    fig = go.Figure()
    for stage, colour in stages:
        per = evaluation[stage].get(key) or {}
        vals = [(per.get(t) or {}).get(metric) for t in types]
        support = [(per.get(t) or {}).get("support") for t in types]
        fig.add_trace(go.Bar(x=types, y=vals, name=f"{stage} fine-tuning", marker_color=colour, customdata=support,
                             text=[f"{v:.2f}" if v is not None else "" for v in vals], textposition="outside",
                             hovertemplate=f"%{{x}}<br>{metric} %{{y:.3f}}<br>gold entities %{{customdata}}"
                                           f"<extra>{stage}</extra>"))
    fig.update_layout(title=title, barmode="group", xaxis_title="entity type", yaxis_title=metric,
                      yaxis_range=[0, 1.1])
    fig.update_xaxes(type="category")
    return fig


def error_types_figure(evaluation: Mapping[str, Mapping[str, Any]], title: str = "Entity errors by type"
                       ) -> go.Figure:
    """How many entity errors of each kind (missed, spurious, wrong type, wrong boundary, wrong type and
    boundary), one bar per stage; the count of correct entities is in the legend."""
    stages = [(s, c) for s, c in _stages(evaluation) if evaluation[s].get("errors")]
    if not stages:
        return message_figure("no entity error counts yet", title)
    fig = go.Figure()
    for stage, colour in stages:
        counts = evaluation[stage]["errors"]
        vals = [int(counts.get(k, 0) or 0) for k in ERROR_TYPES]
        fig.add_trace(go.Bar(x=list(ERROR_TYPES), y=vals, name=f"{stage} fine-tuning "
                             f"({int(counts.get('correct', 0) or 0)} correct)", marker_color=colour, text=vals,
                             textposition="outside", hovertemplate=f"%{{x}}: %{{y}}<extra>{stage}</extra>"))
    fig.update_layout(title=title, barmode="group", xaxis_title="error type", yaxis_title="entities")
    return fig


def token_confusion_figure(metrics: Mapping[str, Any], normalize: bool = True, title: str | None = None
                           ) -> go.Figure:
    """Gold tag (rows) against predicted tag (columns) over every word.

    Row-normalised by default: `O` words outnumber the rest, so raw counts would paint one cell."""
    return confusion_matrix_figure(metrics, normalize=normalize, title=title or (
        "Token-level confusion (row-normalised)" if normalize else "Token-level confusion"))


def entity_slices_figure(slices: pd.DataFrame, metric: str = "f1", title: str | None = None) -> go.Figure:
    """Entity `metric` (f1, recall or precision) of each slice from `entity_slices`: by entity type, entity
    length in words and sentence length, as horizontal bars grouped by kind of slice."""
    title = title or f"Entity {metric} by slice"
    if slices is None or not len(slices):
        return message_figure("no entities to slice", title)
    s = slices.assign(name=[f"{d}: {v}" for d, v in zip(slices["slice"], slices["value"])])
    fig = go.Figure()
    for dim, part in s.groupby("slice", sort=False):
        vals = part[metric].astype(float)
        fig.add_trace(go.Bar(
            x=vals, y=part["name"], orientation="h", name=str(dim),
            text=[f"{v:.2f}" if v == v else "-" for v in vals], textposition="auto",
            customdata=np.stack([part["gold"], part["recall"], part["predicted"], part["precision"]], axis=1),
            hovertemplate=f"%{{y}}<br>{metric} %{{x:.3f}}<br>recall %{{customdata[1]:.3f}} of %{{customdata[0]}} gold"
                          "<br>precision %{customdata[3]:.3f} of %{customdata[2]} predicted<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=metric, xaxis_range=[0, 1.05], legend_title="slice",
                      height=max(300, 28 * len(s) + 120))
    fig.update_yaxes(categoryorder="array", categoryarray=list(s["name"])[::-1])
    return fig


# --- the sentence view (HTML) ----------------------------------------------------------------------
def entity_colors(types: Sequence[str]) -> dict[str, str]:
    """A background colour per entity type, stable for the same set of types (sorted, then the palette)."""
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(sorted({str(t) for t in types}))}


def _cjk(ch: str) -> bool:
    from ..tasks.token_classification.formats import is_cjk

    return bool(ch) and is_cjk(ch)


def _spans(entities: Sequence[Mapping[str, Any]] | None, n: int) -> list[tuple[int, int, str]]:
    """(start, end, type) of well-formed entities inside 0..n, in order, without overlaps (the file is
    untrusted: a malformed entry is skipped, not raised)."""
    out: list[tuple[int, int, str]] = []
    for e in entities or []:
        try:
            s, t_end, typ = int(e["start"]), int(e["end"]), str(e["type"])
        except (KeyError, TypeError, ValueError):
            continue
        if 0 <= s < t_end <= n:
            out.append((s, t_end, typ))
    out.sort()
    kept: list[tuple[int, int, str]] = []
    for sp in out:
        if not kept or sp[0] >= kept[-1][1]:
            kept.append(sp)
    return kept


def _mark(inner: str, typ: str, colors: Mapping[str, str]) -> str:
    colour = html.escape(colors.get(typ, "#e0e0e0"), quote=True)
    return (f'<mark style="background:{colour};padding:0.1em 0.35em;border-radius:0.35em;color:#111" '
            f'title="{html.escape(typ, quote=True)}">{inner}{" " if inner else ""}'
            f'<span style="font-size:0.7em;font-weight:700;opacity:0.75">{html.escape(typ)}</span></mark>')


def legend_html(colors: Mapping[str, str]) -> str:
    """The colour key: one chip per entity type."""
    chips = " ".join(_mark("", t, colors) for t in colors)
    return f'<div style="margin-top:0.4em;font-size:0.85em">entity types: {chips}</div>' if colors else ""


def highlight_entities(tokens: Sequence[str], entities: Sequence[Mapping[str, Any]] | None,
                       colors: Mapping[str, str] | None = None, legend: bool = True) -> str:
    """The sentence's words as HTML with each entity in a `<mark>` coloured by type (word positions
    `start`..`end`, end exclusive, as predictions.jsonl stores them), plus a legend. All text is escaped."""
    words = [str(t) for t in tokens]
    spans = _spans(entities, len(words))
    colors = dict(colors) if colors is not None else entity_colors([t for _, _, t in spans])
    pieces: list[tuple[str, str, str]] = []  # (html, first char, last char): CJK characters join without spaces
    i = 0
    for s, e, typ in spans + [(len(words), len(words), "")]:
        pieces += [(html.escape(w), w[:1], w[-1:]) for w in words[i:s]]
        if e > s:
            inner = _join([(html.escape(w), w[:1], w[-1:]) for w in words[s:e]])
            pieces.append((_mark(inner, typ, colors), words[s][:1], words[e - 1][-1:]))
        i = e
    body = f'<div style="line-height:2.3">{_join(pieces)}</div>'
    return body + (legend_html(colors) if legend else "")


def _join(pieces: list[tuple[str, str, str]]) -> str:
    out, last = "", ""
    for piece, first, end in pieces:
        if out and not (_cjk(last) and _cjk(first)):
            out += " "
        out += piece
        last = end
    return out


def sentence_view(tokens: Sequence[str], gold: Sequence[Mapping[str, Any]] | None,
                  predicted: Sequence[Mapping[str, Any]] | None, colors: Mapping[str, str] | None = None) -> str:
    """Gold and predicted entities of one sentence, one line each, in the same colours, with one legend."""
    types = [e.get("type") for e in list(gold or []) + list(predicted or []) if isinstance(e, Mapping)]
    colors = dict(colors) if colors is not None else entity_colors([str(t) for t in types if t is not None])
    rows = [(name, highlight_entities(tokens, ents, colors, legend=False)) for name, ents in
            (("gold", gold), ("predicted", predicted))]
    table = "".join(f'<tr><td style="padding-right:1em;vertical-align:top;color:#666;white-space:nowrap">{n}</td>'
                    f"<td>{h}</td></tr>" for n, h in rows)
    return f'<table style="border:none">{table}</table>' + legend_html(colors)


def highlight_text(text: str, entities: Sequence[Mapping[str, Any]] | None,
                   colors: Mapping[str, str] | None = None, legend: bool = True) -> str:
    """Raw text with entities marked by CHARACTER offsets (`predict_texts` output), escaped, with a legend."""
    spans = _spans(entities, len(text))
    colors = dict(colors) if colors is not None else entity_colors([t for _, _, t in spans])
    out, i = "", 0
    for s, e, typ in spans:
        out += html.escape(text[i:s]) + _mark(html.escape(text[s:e]), typ, colors)
        i = e
    out += html.escape(text[i:])
    return f'<div style="line-height:2.3">{out}</div>' + (legend_html(colors) if legend else "")
