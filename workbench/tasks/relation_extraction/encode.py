"""Entity markers: the text a relation classifier reads, its tokenizer's marker tokens, and a window that keeps them.

`<S:人物>李柏光</S:人物>从<O:学校>北京大学</O:学校>毕业` (typed, Baldini Soares et al. 2019's "entity markers")
or `<S>…</S>` / `<O>…</O>` without types. Each marker is added to the tokenizer as a special token, so it is
one token that no tokenizer splits, lower-cases or merges with its neighbours; the model's embedding table
grows by one row per marker (`resize_embeddings`).

A sentence longer than `max_length` is not cut at its end (which could drop a marker and leave the model
nothing to classify): `fit_window` keeps a window of tokens around the two marked entities, and cuts the
middle only when the entities are further apart than the window.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Sequence

UNTYPED = ("<S>", "</S>", "<O>", "</O>")
MARKER = re.compile(r"<(/?)([SO])(?::([^<>\s]+))?>")
GAP = " … "  # where the middle of a sentence was cut to keep both entities


def open_close(role: Literal["S", "O"], etype: str = "") -> tuple[str, str]:
    t = f":{etype}" if etype else ""
    return f"<{role}{t}>", f"</{role}{t}>"


def marker_tokens(subject_types: Iterable[str], object_types: Iterable[str]) -> list[str]:
    """The untyped markers (always, so a sentence marked without types reads as one token each) and a typed
    pair per subject and per object type, in a stable order."""
    out = list(UNTYPED)
    for role, types in (("S", subject_types), ("O", object_types)):
        for t in sorted({str(x) for x in types if x}):
            out += open_close(role, t)
    return out


def add_markers(tokenizer: Any, markers: Sequence[str]) -> list[int]:
    """Add `markers` to `tokenizer` as special tokens (idempotent); returns every marker id it now has."""
    tokenizer.add_tokens([m for m in markers if m not in tokenizer.get_added_vocab()], special_tokens=True)
    return marker_ids(tokenizer)


def marker_ids(tokenizer: Any) -> list[int]:
    """Ids of the entity markers a tokenizer carries (a run's saved tokenizer has them), sorted."""
    return sorted(i for t, i in tokenizer.get_added_vocab().items() if MARKER.fullmatch(t))


def marker_types(tokenizer: Any) -> dict[str, list[str]]:
    """The entity types of a tokenizer's typed markers: {"S": [...], "O": [...]}."""
    out: dict[str, list[str]] = {"S": [], "O": []}
    for t in tokenizer.get_added_vocab():
        m = MARKER.fullmatch(t)
        if m and not m.group(1) and m.group(3):
            out[m.group(2)].append(m.group(3))
    return {k: sorted(v) for k, v in out.items()}


def mark(sentence: str, s: tuple[int, int], o: tuple[int, int], s_type: str = "", o_type: str = "") -> str:
    """`sentence` with its subject span `s` and object span `o` (character [start, end)) marked. Spans may
    nest (the outer markers go outside the inner ones), not cross."""
    events = []
    for (a, b), (left, right) in ((s, open_close("S", s_type)), (o, open_close("O", o_type))):
        events += [(a, 1, -(b - a), left), (b, 0, b - a, right)]  # at one place: closes first, inner ones inside
    out, at = [], 0
    for pos, _, _, token in sorted(events):
        out += [sentence[at:pos], token]
        at = pos
    return "".join(out + [sentence[at:]])


def resize_embeddings(model: Any, tokenizer: Any) -> list[int]:
    """Grow the model's input embeddings to hold the tokenizer's markers (new rows start at the mean of the
    old ones, transformers' `mean_resizing`); returns the marker ids. The ids are also left on the model as
    `workbench_trainable_token_ids`, which `models.apply_lora` makes trainable (peft's `trainable_token_indices`),
    so LoRA learns the markers' embeddings and saves them with the adapter."""
    ids = marker_ids(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.workbench_trainable_token_ids = ids
    return ids


def fit_window(text: str, tokenizer: Any, max_length: int) -> tuple[str, Literal["whole", "window", "lost"]]:
    """`text` (marked) cut to at most `max_length` tokens, special tokens included, keeping all four markers:

    - "whole": it fits as it is;
    - "window": a window of the sentence around the two entities (cut at both ends, and in the middle, marked
      with " … ", when the entities are further apart than the window);
    - "lost": even the two marked entities alone are longer than `max_length`; the text is returned whole and
      plain truncation will drop a marker (the data report counts these).
    """
    budget = max_length - tokenizer.num_special_tokens_to_add()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    if len(ids) <= budget:
        return text, "whole"
    marks = set(marker_ids(tokenizer))
    at = [i for i, t in enumerate(ids) if t in marks]
    if len(at) < 4:
        return text, "lost"
    for slack in (0, 2, 4, 8, 16):  # re-tokenising a cut text can take a token or two more at the edges
        cut = _window(at, len(ids), budget - slack)
        if cut is None:
            return text, "lost"
        parts = [text[offs[a][0]:offs[b - 1][1]] for a, b in cut]
        out = GAP.join(parts)
        got = tokenizer(out, add_special_tokens=False, verbose=False)["input_ids"]
        if len(got) <= budget:
            return (out, "window") if sum(t in marks for t in got) == len(at) else (text, "lost")
    return text, "lost"


def _window(at: list[int], n: int, budget: int) -> list[tuple[int, int]] | None:
    """Token ranges to keep: both entity blocks (marker to marker), grown outwards in turn until `budget`
    tokens; one range when the entities fit in one window with their middle, else two (the middle cut)."""
    first, last = min(at), max(at)
    if last - first + 1 <= budget:
        spare = budget - (last - first + 1)
        left = min(first, spare // 2)
        right = min(n - 1 - last, spare - left)
        left = min(first, spare - right)
        return [(first - left, last + 1 + right)]
    a = sorted(at)
    blocks = [[a[0], a[1] + 1], [a[2], a[3] + 1]]
    need = (blocks[0][1] - blocks[0][0]) + (blocks[1][1] - blocks[1][0]) + 2  # the gap takes a token or two
    if need > budget:
        return None
    spare, grew = budget - need, True
    while spare > 0 and grew:  # each block gains a token of context on each side in turn
        grew = False
        for blk, lo, hi in ((blocks[0], 0, blocks[1][0]), (blocks[1], blocks[0][1], n)):
            if spare > 0 and blk[0] > lo:
                blk[0] -= 1
                spare, grew = spare - 1, True
            if spare > 0 and blk[1] < hi:
                blk[1] += 1
                spare, grew = spare - 1, True
    if blocks[0][1] >= blocks[1][0]:
        return [(blocks[0][0], blocks[1][1])]
    return [tuple(blocks[0]), tuple(blocks[1])]


def parse_marked(text: str) -> tuple[str, dict[str, tuple[int, int, str]]] | str:
    """A sentence with its two entities marked inline (`<S>李柏光</S>从<O:学校>北京大学</O:学校>毕业`): the plain
    sentence and {"S"/"O": (start, end, type)}, or a message saying what is wrong with the markers."""
    found = list(MARKER.finditer(text))
    roles = [(m.group(1) == "/", m.group(2), m.group(3) or "") for m in found]
    expect = "mark the subject with <S>…</S> and the object with <O>…</O> (types optional: <S:人物>…</S:人物>)"
    for role in ("S", "O"):
        opens = [r for r in roles if r[1] == role and not r[0]]
        closes = [r for r in roles if r[1] == role and r[0]]
        if len(opens) != 1 or len(closes) != 1:
            name = "subject" if role == "S" else "object"
            return (f"expected one <{role}>…</{role}> around the {name}, found {len(opens)} opening and "
                    f"{len(closes)} closing marker(s): {expect}.")
        if opens[0][2] != closes[0][2]:
            return f"<{role}:{opens[0][2]}> is closed by </{role}:{closes[0][2]}>: use the same type in both."
    stray = re.sub(MARKER, "", text)
    if re.search(r"</?[SOso](:[^>]*)?>", stray):
        return f"a marker is malformed ({re.search(r'</?[SOso](:[^>]*)?>', stray).group(0)!r}): {expect}."
    plain, spans, open_at, stack, pos = [], {}, {}, [], 0
    for m, (closing, role, etype) in zip(found, roles):
        if closing and (not stack or stack[-1] != role):
            return f"the markers are out of order near {m.group(0)!r}: {expect}; one may hold the other, not cross it."
        if closing:
            stack.pop()
        else:
            stack.append(role)
        plain.append(text[pos:m.start()])
        pos = m.end()
        at = sum(map(len, plain))
        if closing:
            start = open_at.pop(role)
            if at == start:
                return f"nothing between <{role}> and </{role}>: put the entity inside its markers."
            spans[role] = (start, at, etype)
        else:
            open_at[role] = at
    plain.append(text[pos:])
    if "S" in spans and "O" in spans and spans["S"][:2] == spans["O"][:2]:
        return "the subject and the object mark the same words: a relation links two different entities."
    return "".join(plain), spans
