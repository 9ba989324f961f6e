"""Relation extraction's sentence view: a marked sentence (`<S:人物>李柏光</S:人物>从<O>北京大学</O>毕业`) drawn as
HTML with the subject and the object highlighted in two colours, each labelled with its role and type.

It reads the markers the model reads (`relation_extraction.encode.parse_marked`), so the same function shows a
data row, a prediction (whose text may be a window of a long sentence) and a typed try-it sentence. Text is
escaped: sentences come from files someone sent.
"""

from __future__ import annotations

import html

ROLE_COLORS = {"S": "#b3cde3", "O": "#fed9a6"}  # subject blue, object orange (figures.ner's palette)
ROLE_NAMES = {"S": "subject", "O": "object"}


def relation_legend() -> str:
    chips = "".join(f'<mark style="background:{ROLE_COLORS[r]};padding:0 4px;border-radius:3px;margin-right:6px">'
                    f'{ROLE_NAMES[r]}</mark>' for r in ("S", "O"))
    return f'<div style="font-size:0.85em">{chips}</div>'


def marked_sentence_html(text: str, relation: str | None = None, legend: bool = False) -> str:
    """`text` with its marked subject and object highlighted (nested entities too: the inner one's colour wins
    inside it); `relation` is written after the sentence when given. A text whose markers cannot be read is
    shown as it is (escaped), markers included."""
    from ..tasks.relation_extraction.encode import parse_marked

    parsed = parse_marked(str(text))
    tail = (f' <span style="font-size:0.85em;color:#555">→ <b>{html.escape(str(relation))}</b></span>'
            if relation is not None else "")
    if isinstance(parsed, str):
        return f'<div style="line-height:2.3">{html.escape(str(text))}{tail}</div>'
    plain, spans = parsed
    cuts = sorted({0, len(plain), *(x for s in spans.values() for x in s[:2])})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        inside = [r for r, (s, e, _) in spans.items() if s <= a and b <= e]
        piece = html.escape(plain[a:b])
        if inside:
            role = min(inside, key=lambda r: spans[r][1] - spans[r][0])  # the inner (shorter) entity
            piece = (f'<mark style="background:{ROLE_COLORS[role]};padding:0 2px;border-radius:3px" '
                     f'title="{ROLE_NAMES[role]}">{piece}</mark>')
        out.append(piece)
        for r, (_, e, etype) in spans.items():
            if e == b:  # after an entity's last piece: its role and type
                kind = ROLE_NAMES[r] + (f" · {etype}" if etype else "")
                out.append(f'<sub style="font-size:0.7em;color:#555">{html.escape(kind)}</sub>')
    return f'<div style="line-height:2.3">{"".join(out)}{tail}</div>' + (relation_legend() if legend else "")
