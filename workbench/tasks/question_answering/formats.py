"""Reading question-answering data: SQuAD JSON (`data/paragraphs/qas`) and flat rows (JSONL, CSV, ...).

Both become one frame — `question`, `context`, `answers` (a list of `{text, answer_start}`, empty for an
unanswerable question), `answer` and `answer_start` (the first answer, "" and -1 when there is none), `id`,
`line` (where the example is in its file: a line for JSONL/CSV, the question's number for SQuAD JSON) and
the user's other columns — plus the repairs made and the problems that stop a run. Every answer must occur in
its context at its offset: an offset that is off is repaired when the answer text occurs exactly once in the
context (and said so); otherwise the row is named as a problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ...errors import DataError

QUESTION_NAMES = ("question", "query", "q")
CONTEXT_NAMES = ("context", "passage", "paragraph", "document", "text")
ANSWER_NAMES = ("answer", "answer_text", "answers", "gold", "a")
START_NAMES = ("answer_start", "start", "answer_offset", "offset")
MAX_SHOWN = 5


@dataclass
class QAData:
    frame: pd.DataFrame
    format: str
    row_kind: str = "line"
    rows_read: int = 0  # questions in the source, the ones with problems included
    repairs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _where(rows: list[Any], kind: str) -> str:
    shown = ", ".join(str(r) for r in rows[:MAX_SHOWN])
    more = f" and {len(rows) - MAX_SHOWN} more" if len(rows) > MAX_SHOWN else ""
    return f"{kind}{'s' if len(rows) > 1 else ''} {shown}{more}"


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower().strip(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _answers_of(value: Any, start: Any) -> list[dict[str, Any]] | str:
    """A row's answers as [{text, answer_start}] from the forms files use: a string (+ a start column), a
    {text, answer_start} dict, SQuAD's list of them, or Hugging Face's {text: [...], answer_start: [...]}.
    A string return is what was wrong."""
    import numpy as np

    def start_of(s: Any) -> int | None | str:
        if _is_missing(s):
            return None
        try:
            f = float(s)
        except (TypeError, ValueError):
            return f"answer_start {s!r} is not a number"
        if not math.isfinite(f) or f != int(f):
            return f"answer_start {s!r} is not a whole number"
        return int(f)

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict) and isinstance(value.get("text"), (list, tuple, np.ndarray)):  # HF datasets
        starts = list(value.get("answer_start", [None] * len(value["text"])))
        value = [{"text": t, "answer_start": s} for t, s in zip(list(value["text"]), starts)]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)):
        out = []
        for a in value:
            if not isinstance(a, dict):
                return "an answer in the list is not {text, answer_start}"
            s = start_of(a.get("answer_start"))
            if isinstance(s, str):
                return s
            if not _is_missing(a.get("text")):
                out.append({"text": str(a["text"]), "answer_start": s})
        return out
    if _is_missing(value):
        return []
    s = start_of(start)
    if isinstance(s, str):
        return s
    return [{"text": str(value), "answer_start": s}]


def _flatten_squad(articles: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """SQuAD's nested articles -> one row per question, numbered 1.. in file order."""
    rows, problems = [], []
    n = 0
    for _, art in articles.iterrows():
        title = art.get("title", "")
        paragraphs = art.get("paragraphs")
        if not isinstance(paragraphs, list):
            problems.append(f"an article ({title!r}) has no `paragraphs` list")
            continue
        for p in paragraphs:
            if not isinstance(p, dict):
                continue
            for qa in p.get("qas") or []:
                n += 1
                if not isinstance(qa, dict):
                    problems.append(f"question {n} is not an object with `question` and `answers`")
                    continue
                answers = qa.get("answers") or []
                if qa.get("is_impossible"):
                    answers = []
                rows.append({"line": n, "id": str(qa.get("id", n)), "title": str(title or ""),
                             "question": qa.get("question"), "context": p.get("context"), "answers": answers,
                             "answer_start": None})
    return pd.DataFrame(rows), problems


def normalise(df: pd.DataFrame, name: str, row_kind: str, question_column: str | None = None,
              context_column: str | None = None, answer_column: str | None = None) -> QAData:
    """A table of QA rows (any of the forms above) -> the one representation, checked."""
    fmt = "squad" if "paragraphs" in df.columns else "flat"
    problems: list[str] = []
    if fmt == "squad":
        df, problems = _flatten_squad(df)
        row_kind, q, c, a, s = "question", "question", "context", "answers", "answer_start"
    else:
        cols = [str(x) for x in df.columns]
        q = question_column or _pick(cols, QUESTION_NAMES)
        c = context_column or _pick(cols, CONTEXT_NAMES)
        a = answer_column or _pick(cols, ANSWER_NAMES)
        s = _pick(cols, START_NAMES)
        missing = [role for role, col in (("question", q), ("context", c), ("answer", a)) if col is None]
        if missing:
            raise DataError(f"{name}: no {' / '.join(missing)} column. Question answering reads a question, its "
                            f"context and the answer text with its character offset (`answer_start`) per row, "
                            f"e.g. {{\"context\": \"...\", \"question\": \"...\", \"answer\": \"...\", "
                            f"\"answer_start\": 12}}, "
                            f"or a SQuAD JSON file (data/paragraphs/qas). Columns found: {', '.join(cols)}.")
        df = df.assign(line=df.index.to_numpy())
    out_rows, repairs = [], []
    bad: dict[str, list[Any]] = {}
    moved: list[Any] = []
    for _, r in df.iterrows():
        where = r["line"]
        question, context = r.get(q), r.get(c)
        if _is_missing(question):
            bad.setdefault("the question is empty", []).append(where)
            continue
        if _is_missing(context):
            bad.setdefault("the context is empty", []).append(where)
            continue
        question, context = str(question).strip(), str(context)
        answers = _answers_of(r.get(a), r.get(s) if s else None)
        if isinstance(answers, str):
            bad.setdefault(answers, []).append(where)
            continue
        fixed, ok = [], True
        for ans in answers:
            text, start = ans["text"], ans["answer_start"]
            if start is not None and start < 0:
                bad.setdefault(f"answer_start is negative ({start}): give the answer's character offset in the "
                               f"context, 0 for its first character (or leave the answer empty if the question "
                               f"has none)", []).append(where)
                ok = False
                break
            if start is not None and context[start:start + len(text)] == text:
                fixed.append({"text": text, "answer_start": start})
                continue
            hits = _occurrences(context, text)
            if len(hits) == 1:
                if start is not None:
                    moved.append(where)
                fixed.append({"text": text, "answer_start": hits[0]})
            elif not hits:
                bad.setdefault("the answer does not occur in its context (check the answer text: copy it from the "
                               "context exactly, same spaces and punctuation)", []).append(where)
                ok = False
                break
            else:
                at = "no answer_start is given" if start is None else f"answer_start {start} is not where it is"
                bad.setdefault(f"the answer occurs several times in its context and {at}: give answer_start, the "
                               f"offset of the one meant", []).append(where)
                ok = False
                break
        if not ok:
            continue
        first = fixed[0] if fixed else {"text": "", "answer_start": -1}
        row = {"line": where, "id": str(r.get("id", where)) if not _is_missing(r.get("id")) else str(where),
               "question": question, "context": context, "answers": fixed, "answer": first["text"],
               "answer_start": int(first["answer_start"])}
        for k, v in r.items():
            if k not in row and k not in (q, c, a, s) and not str(k).startswith("Unnamed"):
                row[k] = v
        out_rows.append(row)
    for why, rows in bad.items():
        problems.append(f"{name}: {why} ({_where(rows, row_kind)}).")
    if moved:
        repairs.append(f"{name}: {len(moved)} answer(s) were not at their answer_start; each occurs exactly once in "
                       f"its context, so the offset was moved there ({_where(moved, row_kind)}).")
    frame = pd.DataFrame(out_rows)
    if len(frame):
        frame.index = frame["line"].to_numpy()
    return QAData(frame, fmt, row_kind, len(df), repairs, problems)


def _occurrences(context: str, text: str) -> list[int]:
    out, i = [], context.find(text)
    while i >= 0 and text:
        out.append(i)
        i = context.find(text, i + 1)
    return out


def read_qa(source: str, *, encoding: str | None = None, delimiter: str | None = None) -> QAData:
    """A QA file (SQuAD JSON, JSONL, CSV/TSV, Parquet) or a built-in QA data set, normalised and checked."""
    from ...assets import BUILTIN_DATASETS, load_builtin_dataset
    from ...data.io import read_table

    if source in BUILTIN_DATASETS:
        b = BUILTIN_DATASETS[source]
        if b.task != "question-answering":
            raise DataError(f"{source} is a built-in data set for {b.task}, not question answering. QA built-ins: "
                            + ", ".join(k for k, v in BUILTIN_DATASETS.items() if v.task == "question-answering")
                            + ".")
        df = load_builtin_dataset(source)
        df.index = pd.RangeIndex(1, len(df) + 1)
        data = normalise(df, source, "row")
        data.format = "built-in"
        return data
    table = read_table(source, encoding=encoding, delimiter=delimiter)
    data = normalise(table.df, table.source, table.row_kind)
    data.repairs = list(table.warnings) + data.repairs
    return data
