"""Relation-extraction data: a flat table of (sentence, subject, object, relation) rows, or DuIE sentences.

Two shapes, both read through `workbench.data.io.read_table` (CSV, TSV, JSON, JSONL, Parquet, a built-in):
- flat: `text`, `subject`, `object`, `relation` (also `label`/`predicate`), optional `subject_start` /
  `object_start` (character offsets; without them the first occurrence is used, and the report says when
  there was more than one) and `subject_type` / `object_type`;
- DuIE: `text` + `spo_list` (`[{subject, predicate, object, subject_type, object_type}]`, all triples of the
  sentence): one example per (subject, object) pair with a triple, and pairs of the sentence's entities with
  none between them become `no_relation` examples (at most `negative_ratio` x the positives, a seeded sample).

Every bad row becomes a message naming it and the fix (`RelationData.problems`), never an exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

NO_RELATION = "no_relation"
TEXT_NAMES = ("text", "sentence")
LABEL_NAMES = ("relation", "label", "predicate")
OUT_COLUMNS = ("sentence", "subject", "object", "subject_start", "object_start", "subject_type", "object_type",
               "label_name", "line")
SHOWN = 8  # rows named per kind of problem; the rest are counted
_BAD_TYPE = re.compile(r"[<>\s]")


@dataclass
class RelationData:
    """Examples (index: a unique example number; `line` the source row/line) plus what reading them found."""

    frame: pd.DataFrame
    format: str                      # "table" or "duie"
    row_kind: str = "row"            # "line" for CSV/TSV/JSONL
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class _Collector:
    """Row messages grouped by kind: the first few named one by one, the rest counted, each kind with its fix."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[list[str], str]] = {}

    def add(self, kind: str, message: str, fix: str) -> None:
        self.kinds.setdefault(kind, ([], fix))[0].append(message)

    def messages(self) -> list[str]:
        out = []
        for msgs, fix in self.kinds.values():
            out += msgs[:SHOWN]
            more = f"(and {len(msgs) - SHOWN} more like this) " if len(msgs) > SHOWN else ""
            out[-1] = f"{out[-1]} {more}Fix: {fix}"
        return out


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str:
    return "" if _missing(v) else str(v).strip()


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


def _offset(v: Any) -> int | None | str:
    """A cell of an offset column: an int, None (empty: find the entity), or the bad value as text."""
    if _missing(v) or (isinstance(v, str) and not v.strip()):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return int(f) if f.is_integer() else str(v)


def find_span(text: str, entity: str, start: Any, where: str, role: str, bad: _Collector,
              avoid: tuple[int, int] | None = None) -> tuple[int, int, int] | None:
    """(start, end, occurrences) of `entity` in `text`: at `start` when given (checked), else its first
    occurrence (the first that does not overlap `avoid`, the other entity's span). None after recording why."""
    off = _offset(start)
    if isinstance(off, str) or (isinstance(off, int) and off < 0):
        shown = off if isinstance(off, int) else repr(_clip(str(start)))
        bad.add("offset", f"{where}: {role}_start={shown} is not a character offset (an integer >= 0).",
                f"give the 0-based position of the {role} in the sentence, or leave the cell empty to find it.")
        return None
    if off is not None:
        if text[off:off + len(entity)] != entity:
            at = text.find(entity)
            hint = f" ({entity!r} is at {at})" if at >= 0 else f" ({entity!r} is not in the sentence at all)"
            bad.add("offset", f"{where}: {role}_start={off} does not point at the {role} {entity!r}: the sentence "
                    f"has {text[off:off + len(entity)]!r} there{hint}.",
                    f"correct the offset (0-based, in characters), or leave it empty to find the {role} by its text.")
            return None
        return off, off + len(entity), text.count(entity)
    starts = [m.start() for m in re.finditer(re.escape(entity), text)]
    if not starts:
        bad.add("absent", f"{where}: the {role} {_clip(entity)!r} does not occur in its sentence "
                f"{_clip(text, 60)!r}.", "write the entity exactly as it appears in the sentence (same characters, "
                "same case), or remove the row.")
        return None
    if avoid is not None:
        free = [s for s in starts if s + len(entity) <= avoid[0] or s >= avoid[1]]
        starts = free or starts
    return starts[0], starts[0] + len(entity), len(re.findall(re.escape(entity), text))


def crossing(s: tuple[int, int], o: tuple[int, int]) -> bool:
    """Two spans that overlap without one holding the other: their markers cannot both be placed (nested
    ones can: `<O>《<S>X</S>》</O>`)."""
    return s[0] < o[1] and o[0] < s[1] and not (s[0] <= o[0] and o[1] <= s[1]) and \
        not (o[0] <= s[0] and s[1] <= o[1])


def _check_pair(s: tuple[int, int], o: tuple[int, int], where: str, bad: _Collector) -> bool:
    if s == o:
        bad.add("same", f"{where}: subject and object are the same span ({s[0]}-{s[1]}): a relation needs two "
                f"different mentions.", "give the object's own mention (its `object_start`), or remove the row.")
        return False
    if crossing(s, o):
        bad.add("overlap", f"{where}: subject ({s[0]}-{s[1]}) and object ({o[0]}-{o[1]}) overlap (neither holds the "
                f"other), so their markers cannot both be placed.", "give offsets of two mentions that do not "
                "cross, or remove the row.")
        return False
    return True


def _type(v: Any, where: str, role: str, bad: _Collector) -> str:
    t = _text(v)
    if t and _BAD_TYPE.search(t):
        bad.add("type", f"{where}: {role}_type {_clip(t)!r} contains a space or `<`/`>`, which cannot go into an "
                f"entity marker such as <S:TYPE>.", "use type names without spaces or angle brackets (e.g. "
                "PERSON, 人物), or leave the column empty.")
    return t


def read_pairs(df: pd.DataFrame, *, text_column: str | None = None, label_column: str | None = None,
               row_kind: str = "row", negative_ratio: float = 1.0, seed: int = 42,
               keep: Iterable[str] = ()) -> RelationData:
    """Examples from a loaded table (index: row/line numbers): DuIE sentences when it has `spo_list`, else flat
    (sentence, subject, object, relation) rows. `keep`: further columns to carry (e.g. `split`); a flat table
    keeps all its other columns anyway."""
    found = [str(c) for c in df.columns]
    tcol = text_column or next((c for c in TEXT_NAMES if c in df.columns), None)
    if tcol is None or tcol not in df.columns:
        return RelationData(pd.DataFrame(), "table", row_kind, problems=[
            f"no sentence column {'(' + repr(text_column) + ') ' if text_column else ''}found; columns found: "
            f"{found}. Fix: name it `text` (or set data.text_column)."])
    if "spo_list" in df.columns:
        return _read_duie(df, tcol, row_kind, negative_ratio, seed, list(keep))
    lcol = label_column or next((c for c in LABEL_NAMES if c in df.columns), None)
    missing = [c for c, have in (("subject", "subject" in df), ("object", "object" in df),
                                 ("relation", lcol in df.columns if lcol else False)) if not have]
    if missing:
        what = f"data.label_column {label_column!r}" if label_column and "relation" in missing else None
        return RelationData(pd.DataFrame(), "table", row_kind, problems=[
            f"missing column(s) {[what or m for m in missing]}; columns found: {found}. Fix: a relation table needs "
            f"`text`, `subject`, `object` and `relation` columns (optional `subject_start`, `object_start`, "
            f"`subject_type`, `object_type`), or DuIE lines with `text` and `spo_list`."])
    return _read_flat(df, tcol, lcol, row_kind)


def _read_flat(df: pd.DataFrame, tcol: str, lcol: str, row_kind: str) -> RelationData:
    bad, rows, ambiguous = _Collector(), [], []
    reserved = {tcol, lcol, "subject", "object", "subject_start", "object_start", "subject_type", "object_type"}
    extras = [c for c in df.columns if c not in reserved]
    for line, r in df.iterrows():
        where = f"{row_kind} {line}"
        text, subj, obj, rel = _text(r[tcol]), _text(r["subject"]), _text(r["object"]), _text(r[lcol])
        if not text:
            bad.add("text", f"{where}: the sentence is empty.", "give the sentence, or remove the row.")
            continue
        empty = [n for n, v in (("subject", subj), ("object", obj)) if not v]
        if empty:
            bad.add("entity", f"{where}: empty {' and '.join(empty)}.", "write both entities as they appear in the "
                    "sentence, or remove the row.")
            continue
        if not rel:
            bad.add("relation", f"{where}: empty relation for ({_clip(subj)!r}, {_clip(obj)!r}).",
                    f"write the relation, or `{NO_RELATION}` for a pair with none.")
            continue
        s = find_span(text, subj, r.get("subject_start"), where, "subject", bad)
        o = find_span(text, obj, r.get("object_start"), where, "object", bad, avoid=s[:2] if s else None)
        if s is None or o is None or not _check_pair(s[:2], o[:2], where, bad):
            continue
        if s[2] > 1 and _offset(r.get("subject_start")) is None or o[2] > 1 and _offset(r.get("object_start")) is None:
            ambiguous.append(int(line))
        rows.append({"sentence": text, "subject": subj, "object": obj, "subject_start": s[0], "object_start": o[0],
                     "subject_type": _type(r.get("subject_type"), where, "subject", bad),
                     "object_type": _type(r.get("object_type"), where, "object", bad), "label_name": rel,
                     "line": int(line), **{c: r[c] for c in extras}})
    out = RelationData(pd.DataFrame(rows, columns=list(OUT_COLUMNS) + extras), "table", row_kind,
                       problems=bad.messages())
    out.frame.index = pd.Index(out.frame["line"].to_numpy())
    _note_ambiguous(out, ambiguous, row_kind)
    return out


def _note_ambiguous(out: RelationData, rows: list[int], kind: str) -> None:
    out.details["ambiguous_entities"] = len(rows)
    if rows:
        shown = ", ".join(map(str, rows[:SHOWN])) + (f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else "")
        out.warnings.append(f"{len(rows)} example(s) name an entity that occurs more than once in its sentence "
                            f"({kind}s {shown}); its first occurrence was marked. Give `subject_start` / "
                            f"`object_start` if another mention is meant.")


def _read_duie(df: pd.DataFrame, tcol: str, row_kind: str, ratio: float, seed: int, keep: list[str]) -> RelationData:
    bad, pos, cands, ambiguous, multi = _Collector(), [], [], [], 0
    for line, r in df.iterrows():
        where = f"{row_kind} {line}"
        text, spo = _text(r[tcol]), r["spo_list"]
        if not text:
            bad.add("text", f"{where}: the sentence is empty.", "give the sentence, or remove the line.")
            continue
        if isinstance(spo, np.ndarray):
            spo = spo.tolist()
        if not isinstance(spo, list) or not all(isinstance(t, dict) for t in spo):
            bad.add("spo", f"{where}: `spo_list` is not a list of {{subject, predicate, object}} objects.",
                    "write `spo_list` as a JSON list of objects, e.g. [{\"subject\": \"...\", \"predicate\": "
                    "\"...\", \"object\": \"...\"}].")
            continue
        extra = {c: r[c] for c in keep if c in df.columns}
        ents: dict[str, tuple[int, int, str]] = {}  # mention -> (start, end, type)
        pairs: dict[tuple[str, str], str] = {}
        for k, t in enumerate(spo, 1):
            at = f"{where}, triple {k}"
            subj, obj, rel = _text(t.get("subject")), _text(t.get("object")), _text(t.get("predicate"))
            if not subj or not obj:
                bad.add("entity", f"{at}: empty subject or object.", "give both entities, or drop the triple.")
                continue
            if not rel:
                bad.add("relation", f"{at}: empty predicate for ({_clip(subj)!r}, {_clip(obj)!r}).",
                        "write the relation (`predicate`), or drop the triple.")
                continue
            s = _known(ents, subj) or find_span(text, subj, None, at, "subject", bad)
            o = _known(ents, obj) or find_span(text, obj, None, at, "object", bad, avoid=s[:2] if s else None)
            if s is None or o is None or not _check_pair(s[:2], o[:2], at, bad):
                continue
            if s[2] > 1 or o[2] > 1:
                ambiguous.append(int(line))
            ents.setdefault(subj, (s[0], s[1], _type(t.get("subject_type"), at, "subject", bad)))
            ents.setdefault(obj, (o[0], o[1], _type(t.get("object_type"), at, "object", bad)))
            if (subj, obj) in pairs:
                multi += pairs[(subj, obj)] != rel
                continue
            pairs[(subj, obj)] = rel
            pos.append(_example(text, subj, obj, ents, rel, int(line), extra))
        for a, (sa, ea, _) in ents.items():
            for b, (sb, eb, _) in ents.items():
                if a != b and (a, b) not in pairs and (sa, ea) != (sb, eb) and not crossing((sa, ea), (sb, eb)):
                    cands.append(_example(text, a, b, ents, NO_RELATION, int(line), extra))
    n_neg = min(len(cands), int(math.floor(ratio * len(pos) + 1e-9)))
    pick = sorted(np.random.default_rng(seed).choice(len(cands), size=n_neg, replace=False).tolist()) if n_neg else []
    rows = pos + [cands[i] for i in pick]
    rows.sort(key=lambda x: (x["line"], x["label_name"] == NO_RELATION))
    out = RelationData(pd.DataFrame(rows, columns=list(OUT_COLUMNS) + [c for c in keep if c in df.columns]),
                       "duie", row_kind, problems=bad.messages())
    out.frame.index = pd.RangeIndex(1, len(out.frame) + 1, name="example")
    out.details.update({"sentences": int(len(df)), "positive_pairs": len(pos), "candidate_negatives": len(cands),
                        "negatives": n_neg, "negative_ratio": ratio})
    if multi:
        out.warnings.append(f"{multi} (subject, object) pair(s) carry more than one relation; each example gets the "
                            f"first one (a pair is classified into one relation).")
    _note_ambiguous(out, sorted(set(ambiguous)), row_kind)
    return out


def _known(ents: dict[str, tuple[int, int, str]], mention: str) -> tuple[int, int, int] | None:
    """An entity already placed in this sentence (by an earlier triple): the same mention, same span."""
    return (ents[mention][0], ents[mention][1], 1) if mention in ents else None


def _example(text: str, subj: str, obj: str, ents: dict[str, tuple[int, int, str]], rel: str, line: int,
             extra: dict[str, Any]) -> dict[str, Any]:
    return {"sentence": text, "subject": subj, "object": obj, "subject_start": ents[subj][0],
            "object_start": ents[obj][0], "subject_type": ents[subj][2], "object_type": ents[obj][2],
            "label_name": rel, "line": line, **extra}


def expand_duie(sentences: pd.DataFrame, negative_ratio: float = 1.0, seed: int = 0,
                keep: Iterable[str] = ("split",)) -> pd.DataFrame:
    """DuIE sentences (`text`, `spo_list`) as a flat relation table (`text`, `subject`, `object`, `relation`,
    offsets, types, and the `keep` columns): how the built-in `duie_re` is made."""
    data = _read_duie(sentences, "text", "row", negative_ratio, seed, list(keep))
    if data.problems:
        from ...errors import DataError
        raise DataError("\n".join(data.problems))
    return data.frame.drop(columns="line").rename(columns={"sentence": "text", "label_name": "relation"}) \
        .reset_index(drop=True)
