"""Reading tagged sentences: CoNLL-style columns, JSON/JSONL token lists, span-annotated JSONL.

All three become one representation — a DataFrame with `tokens` (list of words), `tags` (list of BIO
tags, one per word), `text` (the words joined, for display) and `line` (where the sentence starts in
the file: a line number for CoNLL, a record number for JSON) — plus a list of the repairs made and
the problems that stop a run. Tagging schemes BIO (IOB2), IOB1, BIOES/BILOU and BMES are accepted and
normalised to BIO, because BIO is what `seqeval` and the model's label set use; what was changed is
always said, never done silently.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ...errors import DataError

# The prefixes each scheme uses; BIO is what everything is normalised to.
_TO_BIO = {"B": "B", "I": "I", "M": "I", "E": "I", "L": "I", "S": "B", "U": "B"}
_TAG = re.compile(r"^([A-Za-z])[-_](.+)$")
MAX_EXAMPLES = 5  # line numbers quoted per kind of repair or problem


@dataclass
class TaggedData:
    """Sentences in one representation, with what reading them found."""

    frame: pd.DataFrame  # columns: tokens, tags, text, line
    format: str
    row_kind: str = "line"  # "line": CoNLL line numbers; "record": JSON record numbers
    scheme: str = "BIO"  # the scheme(s) found in the file, e.g. "BMES" or "BIO+BMES"
    repairs: list[str] = field(default_factory=list)  # warnings: what was changed, with line numbers
    problems: list[str] = field(default_factory=list)  # stop a run
    invalid: list[dict[str, Any]] = field(default_factory=list)  # {"line", "tag", "why"} for the data report


def _where(lines: list[int], kind: str) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_EXAMPLES])
    more = f" and {len(lines) - MAX_EXAMPLES} more" if len(lines) > MAX_EXAMPLES else ""
    return f"{kind}{'s' if len(lines) > 1 else ''} {shown}{more}"


def is_cjk(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "") or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef"


def join_tokens(tokens: list[str]) -> str:
    """Words as a person would read them: no space between two CJK characters, one space otherwise."""
    out = ""
    for tok in tokens:
        if out and not (is_cjk(out[-1]) and tok and is_cjk(tok[0])):
            out += " "
        out += tok
    return out


# --- tag schemes ---------------------------------------------------------------------------------
def normalise_tags(sentences: list[tuple[int, list[str], list[int]]]) -> tuple[list[list[str]], TaggedData]:
    """Map every sentence's tags to BIO. `sentences`: (start line, tags, line of each tag).

    Returns the BIO tag lists and a `TaggedData` shell carrying the scheme found, the repairs and the
    problems (unknown tags). Repairs: lower-case prefixes, one spelling per entity type, M-/E-/S-/L-/U-
    prefixes mapped to BIO, and an `I-X` that does not continue an `X` entity read as its start (what
    seqeval's default mode does too) — each listed with its line numbers.
    """
    shell = TaggedData(frame=pd.DataFrame(), format="")
    prefixes: set[str] = set()
    lower_lines: list[int] = []
    unknown: dict[str, list[int]] = {}
    type_spellings: dict[str, dict[str, int]] = {}
    parsed: list[list[tuple[str, str | None]]] = []
    for _, tags, lines in sentences:
        row: list[tuple[str, str | None]] = []
        for tag, line in zip(tags, lines):
            t = tag.strip()
            if t.upper() == "O" or t in ("-", ""):
                if t == "o":
                    lower_lines.append(line)
                row.append(("O", None))
                continue
            m = _TAG.match(t)
            if not m or m.group(1).upper() not in _TO_BIO:
                unknown.setdefault(t, []).append(line)
                row.append(("O", None))
                continue
            prefix, etype = m.group(1), m.group(2).strip()
            if prefix.islower():
                lower_lines.append(line)
            prefixes.add(prefix.upper())
            spell = type_spellings.setdefault(etype.upper(), {})
            spell[etype] = spell.get(etype, 0) + 1
            row.append((prefix.upper(), etype))
        parsed.append(row)
    # One spelling per type: an upper-case one when the file has it (PER, not per), else the most frequent.
    canon = {k: k if k in v else max(v, key=v.get) for k, v in type_spellings.items()}
    respelled = sorted({s for k, v in type_spellings.items() for s in v if s != canon[k]})

    if "M" in prefixes:
        scheme = "BIO+BMES" if "I" in prefixes else "BMES"  # BMES has no I-: with one, two schemes are mixed
    elif prefixes & {"L", "U"}:
        scheme = "BILOU"
    elif prefixes & {"E", "S"}:
        scheme = "BIOES"
    else:
        scheme = "BIO"
    shell.scheme = scheme

    out: list[list[str]] = []
    stray: list[int] = []
    for (_, _, lines), row in zip(sentences, parsed):
        bio: list[str] = []
        prev_type: str | None = None
        prev_open = False  # the previous tag can be continued (not O, not an S-/U-/E-/L- end)
        for (prefix, etype), line in zip(row, lines):
            if etype is None:
                bio.append("O")
                prev_type, prev_open = None, False
                continue
            etype = canon[etype.upper()]
            p = _TO_BIO[prefix]
            if p == "I" and not (prev_open and prev_type == etype):
                # An inside tag with no entity of its type to continue. In IOB1 this is how an entity
                # starts; in IOB2 it is an error. Either way the only reading is "starts here".
                stray.append(line)
                p = "B"
            bio.append(f"{p}-{etype}")
            prev_type = etype
            prev_open = prefix not in ("S", "U", "E", "L")
        out.append(bio)

    if lower_lines:
        shell.repairs.append(f"tags written in lower case ({_where(lower_lines, 'line')}) were read as upper case "
                             f"(`b-per` = `B-per`).")
    if respelled:
        shell.repairs.append("entity types spelled several ways were merged: " + ", ".join(
            f"{s!r} -> {canon[s.upper()]!r}" for s in respelled) + ".")
    if scheme == "BIO+BMES":
        shell.repairs.append("the file mixes BIO tags (I-) with BMES tags (M-/E-/S-): both were normalised to BIO "
                             "(M-, E- -> I-; S- -> B-). Check that this is one annotation scheme used inconsistently, "
                             "not two different annotations.")
    elif scheme != "BIO":
        shell.repairs.append(f"{scheme} tags were normalised to BIO (" + {
            "BMES": "M-, E- -> I-; S- -> B-", "BIOES": "E- -> I-; S- -> B-",
            "BILOU": "L- -> I-; U- -> B-"}[scheme] + ").")
    if stray:
        shell.repairs.append(f"{len(stray)} `I-` tag(s) did not continue an entity of their type ("
                             f"{_where(stray, 'line')}): each was read as the start of a new entity (`B-`).")
        shell.invalid += [{"line": n, "why": "I- without B-"} for n in stray]
    for tag, lines in unknown.items():
        shell.problems.append(f"unknown tag {tag!r} on {_where(lines, 'line')}: a tag must be `O` or a prefix "
                              f"(B, I, E, S, M) + `-` + entity type, e.g. `B-PER`. Fix those lines.")
        shell.invalid += [{"line": n, "why": f"unknown tag {tag!r}"} for n in lines]
    return out, shell


# --- readers -------------------------------------------------------------------------------------
def read_conll(text: str, name: str = "data") -> TaggedData:
    """Token + whitespace + tag per line (the tag is the last column), blank line between sentences.

    `-DOCSTART-` lines are skipped; a line with one column is an error naming the line. A line holding
    only whitespace counts as blank (some files write a tab there).
    """
    sentences: list[tuple[int, list[str], list[int]]] = []
    tokens_all: list[list[str]] = []
    cur_tokens: list[str] = []
    cur_tags: list[str] = []
    cur_lines: list[int] = []
    bad: list[int] = []

    def close() -> None:
        if cur_tokens:
            sentences.append((cur_lines[0], list(cur_tags), list(cur_lines)))
            tokens_all.append(list(cur_tokens))
        cur_tokens.clear(), cur_tags.clear(), cur_lines.clear()

    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            close()
            continue
        if line.startswith("-DOCSTART-"):
            close()
            continue
        # Split on tabs, else on plain spaces only: str.split() would also eat a full-width space that
        # is itself a token in Chinese text.
        parts = [p for p in (line.split("\t") if "\t" in line else line.split(" ")) if p.strip(" ")]
        if len(parts) < 2:
            bad.append(i)
            continue
        cur_tokens.append(parts[0])
        cur_tags.append(parts[-1])
        cur_lines.append(i)
    close()
    if not sentences and not bad:
        raise DataError(f"{name}: no tagged tokens found. A CoNLL file has one `token<TAB>tag` (or `token tag`) "
                        f"per line and a blank line between sentences.")
    bio, data = normalise_tags(sentences)
    data.format = "conll"
    if bad:
        data.problems.insert(0, f"{len(bad)} line(s) without a tag ({_where(bad, 'line')}): each line needs a token "
                                f"and a tag separated by a tab or space. Fix or delete those lines.")
        data.invalid += [{"line": n, "why": "no tag"} for n in bad]
    data.frame = pd.DataFrame({"tokens": tokens_all, "tags": bio, "text": [join_tokens(t) for t in tokens_all],
                               "line": [s[0] for s in sentences]})
    return data


def _records(text: str, name: str) -> list[tuple[int, dict]]:
    """JSON (a list of records) or JSONL (one record a line), with the record's line/number."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: not valid JSON ({e.msg} at line {e.lineno}). Fix that line.") from None
        return [(i, r) for i, r in enumerate(rows, start=1)]
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{name}, line {i}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
    return out


def split_words(text: str, cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Word spans of `text`: runs of letters/digits, each other non-space character alone, each CJK
    character alone — and a cut at every entity edge in `cuts`, so no entity starts or ends inside a word."""
    cuts = set(cuts)
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for i, ch in enumerate(text):
        if start is not None and i in cuts:
            spans.append((start, i))
            start = None
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif ch.isalnum() and not is_cjk(ch):
            if start is None:
                start = i
        else:
            if start is not None:
                spans.append((start, i))
                start = None
            spans.append((i, i + 1))
    if start is not None:
        spans.append((start, len(text)))
    return spans


def read_json_tagged(text: str, name: str = "data") -> TaggedData:
    """JSON/JSONL records with `tokens` + `tags` (or `ner_tags`) lists, or `text` + `entities` spans."""
    records = _records(text, name)
    if not records:
        raise DataError(f"{name}: the file holds no records.")
    first = records[0][1]
    if not isinstance(first, dict):
        raise DataError(f"{name}: record 1 is a {type(first).__name__}, not an object with `tokens` and `tags` "
                        f"(or `text` and `entities`).")
    if "entities" in first or ("text" in first and "tokens" not in first):
        return _read_spans(records, name)
    return _read_token_lists(records, name)


def _read_token_lists(records: list[tuple[int, dict]], name: str) -> TaggedData:
    sentences, tokens_all, problems, empty = [], [], [], []
    tag_key = "tags" if "tags" in records[0][1] else "ner_tags" if "ner_tags" in records[0][1] else "tags"
    for line, rec in records:
        toks, tags = rec.get("tokens"), rec.get(tag_key)
        if not isinstance(toks, list) or not isinstance(tags, list):
            problems.append(f"line {line}: needs `tokens` and `{tag_key}` lists (found keys: "
                            f"{', '.join(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__}).")
            continue
        if len(toks) != len(tags):
            problems.append(f"line {line}: {len(toks)} tokens but {len(tags)} tags; they must pair one to one.")
            continue
        if not toks:
            empty.append(line)
            continue
        if any(not isinstance(t, str) for t in tags):
            problems.append(f"line {line}: tags must be strings like `B-PER` (integer tag ids need the label "
                            f"names: write the names instead).")
            continue
        sentences.append((line, [str(t) for t in tags], [line] * len(tags)))
        tokens_all.append([str(t) for t in toks])
    bio, data = normalise_tags(sentences)
    data.format, data.row_kind = "json-tokens", "line"
    data.problems = problems[:20] + data.problems
    if empty:
        data.repairs.append(f"{len(empty)} empty sentence(s) skipped ({_where(empty, 'line')}).")
    data.frame = pd.DataFrame({"tokens": tokens_all, "tags": bio, "text": [join_tokens(t) for t in tokens_all],
                               "line": [s[0] for s in sentences]})
    return data


def _read_spans(records: list[tuple[int, dict]], name: str) -> TaggedData:
    tokens_all, tags_all, lines, problems, cut_words, empty, overlaps = [], [], [], [], [], [], []
    for line, rec in records:
        text = rec.get("text")
        ents = rec.get("entities", [])
        if not isinstance(text, str) or not isinstance(ents, list):
            problems.append(f"line {line}: needs `text` (a string) and `entities` (a list of {{start, end, label}}).")
            continue
        if not text.strip():
            empty.append(line)
            continue
        good = []
        for e in ents:
            try:
                s, t, lab = int(e["start"]), int(e["end"]), str(e["label"]).strip()
            except (KeyError, TypeError, ValueError):
                problems.append(f"line {line}: entity {e!r} needs integer `start`, `end` and a `label`.")
                continue
            if not (0 <= s < t <= len(text)) or not lab:
                problems.append(f"line {line}: entity {e!r} is outside the text (length {len(text)}) or empty; "
                                f"`end` is exclusive, like Python slices.")
                continue
            good.append((s, t, lab))
        good.sort()
        for a, b in zip(good, good[1:]):
            if b[0] < a[1]:
                overlaps.append(line)
                break
        spans = split_words(text, [x for s, t, _ in good for x in (s, t)])
        plain = split_words(text, [])
        if len(spans) != len(plain):
            cut_words.append(line)
        tags = ["O"] * len(spans)
        for s, t, lab in good:
            inside = [k for k, (a, b) in enumerate(spans) if a >= s and b <= t]
            for j, k in enumerate(inside):
                if tags[k] == "O":
                    tags[k] = ("B-" if j == 0 else "I-") + lab
        tokens_all.append([text[a:b] for a, b in spans])
        tags_all.append(tags)
        lines.append(line)
    sentences = [(ln, tg, [ln] * len(tg)) for ln, tg in zip(lines, tags_all)]
    bio, data = normalise_tags(sentences)
    data.format, data.row_kind = "json-spans", "line"
    data.problems = problems[:20] + data.problems
    if cut_words:
        data.repairs.append(f"{len(cut_words)} record(s) have an entity edge inside a word "
                            f"({_where(cut_words, 'line')}): the word was split at the edge so the entity keeps "
                            f"its exact characters. Check the offsets if that is not what you meant.")
    if overlaps:
        data.repairs.append(f"{len(overlaps)} record(s) have overlapping entities ({_where(overlaps, 'line')}): "
                            f"the first one keeps the overlapping words (flat NER tags one entity per word).")
    if empty:
        data.repairs.append(f"{len(empty)} empty text(s) skipped ({_where(empty, 'line')}).")
    data.frame = pd.DataFrame({"tokens": tokens_all, "tags": bio,
                               "text": [join_tokens(t) for t in tokens_all], "line": lines})
    return data


def read_tagged(source: str | Path | bytes, name: str | None = None) -> TaggedData:
    """Read a tagged file (CoNLL `.txt/.conll/.bio/.tsv`, or `.json/.jsonl`) from a path or bytes."""
    from ...data.io import decode

    if isinstance(source, (bytes, bytearray)):
        raw, label = bytes(source), name or "upload"
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{p}: file not found. Give the path to a CoNLL (.txt/.conll) or JSONL file.")
        raw, label = p.read_bytes(), name or p.name
    if b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{label}: this is a binary file, not tagged text. Give a CoNLL text file or a JSONL file.")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        text, _ = decode(raw, label)
    head = text.lstrip()[:1]
    if head in ("[", "{"):
        return read_json_tagged(text, label)
    return read_conll(text, label)


_SNIFF_TAG = re.compile(r"^(O|[A-Za-z][-_]\S+)$")
_SNIFF_JSON = (re.compile(r'"tokens"\s*:'), re.compile(r'"(tags|ner_tags)"\s*:'), re.compile(r'"entities"\s*:'))


def looks_tagged(source: str | Path, head_bytes: int = 65536) -> bool:
    """Whether a file looks like tagged sentences rather than a table: CoNLL lines (word, then a tag such as
    `O` or `B-PER`) or JSON records with `tokens` + `tags` or `entities`. Reads only the file's start and
    never raises: a front end uses it to pick the view for a file (the reader then reports what is wrong)."""
    p = Path(source)
    ext = p.suffix.lower()
    if ext in (".conll", ".bio", ".iob"):
        return True
    if ext not in (".txt", ".tsv", ".json", ".jsonl", ".ndjson") or not p.is_file():
        return False
    try:
        with p.open("rb") as f:
            head = f.read(head_bytes).decode("utf-8", errors="replace")
    except OSError:
        return False
    if head.lstrip()[:1] in ("{", "["):
        tokens, tags, entities = (r.search(head) for r in _SNIFF_JSON)
        return bool((tokens and tags) or entities)
    lines = head.splitlines()[:-1] if len(head) == head_bytes else head.splitlines()
    rows = [ln.split() for ln in lines[:400] if ln.strip() and not ln.startswith("-DOCSTART-")]
    tagged = sum(1 for r in rows if len(r) >= 2 and _SNIFF_TAG.match(r[-1]))
    return len(rows) >= 2 and tagged >= 0.9 * len(rows)


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) for each entity in a BIO sequence (IOB2 reading)."""
    spans: list[tuple[str, int, int]] = []
    cur: list[Any] | None = None
    for i, tag in enumerate(list(tags) + ["O"]):
        p, _, t = tag.partition("-")
        if cur is not None and (p != "I" or t != cur[0]):
            spans.append((cur[0], cur[1], i))
            cur = None
        if p == "B" or (p == "I" and cur is None):
            cur = [t, i]
    return spans
