"""Instruction and dialogue data in the formats the ecosystem uses, read into one representation.

Every example becomes a list of messages `[{"role": "system"|"user"|"assistant", "content": str}, ...]` (the
input of `tokenizer.apply_chat_template`, TRL and LLaMA-Factory), from:

- a `messages` column (JSONL/JSON records, a Parquet list column, or JSON text in a CSV cell);
- Alpaca records: `instruction`, optional `input`, `output` (the user turn is the instruction, then a blank
  line and the input when there is one);
- prompt/completion columns (CSV, TSV, JSONL, Parquet): `data.text_column` / `data.label_column`, or guessed
  from common names (prompt/question/input... and completion/response/answer/output...).

A prompt template (`data.prompt_template`, e.g. `Translate to English:\n{chinese}`) turns any table into
instruction data: the user turn is the template with each `{column}` replaced by that row's value, the answer
is `data.label_column` (translation pairs, document/summary pairs become user/assistant conversations).

An optional `system` column becomes a system message. Each conversation is checked: a user turn first (after
an optional system message), known roles only, the last turn the assistant's, no empty answer. Problems name
the row (the line of a JSONL file) and say how to fix it.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ROLES = ("system", "user", "assistant")
# Spellings other formats use for the two speakers (ShareGPT's human/gpt, Gemini's model, ...): named in the
# message so the fix is obvious, not guessed silently.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant",
                "chatbot": "assistant", "prompter": "user", "question": "user", "answer": "assistant"}
PROMPT_NAMES = ("prompt", "question", "query", "source", "input", "instruction", "text")
COMPLETION_NAMES = ("completion", "response", "answer", "output", "target", "reply", "chosen")
_TEMPLATED = "__prompt_from_template__"  # the filled-in prompt, a column only while reading
MAX_LISTED = 8  # rows named per kind of problem (the count says how many more)


@dataclass
class Conversations:
    """The examples as message lists (column `messages`, index = source row/line), the format read, and findings."""

    frame: pd.DataFrame
    format: str
    columns: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _as_list(v: Any) -> Any:
    """A Parquet list column arrives as numpy arrays of dicts; a CSV cell as JSON text."""
    if isinstance(v, np.ndarray):
        return [_as_list(x) for x in v.tolist()]
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    return str(v)


def _find(df: pd.DataFrame, names: tuple[str, ...], taken: set[str]) -> str | None:
    lower = {str(c).lower().strip(): c for c in df.columns}
    return next((lower[n] for n in names if n in lower and lower[n] not in taken), None)


def template_fields(template: str) -> list[str]:
    """The column names a prompt template refers to (`{chinese}`), in order; `{{`/`}}` are literal braces.

    Only plain names are allowed: no attribute or index access (`{x.y}`, `{x[0]}`), conversion or format spec,
    so a template can only paste a row's values, nothing else. Raises `ValueError` saying what is wrong."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"the prompt template {template[:80]!r} is not valid ({e}); write a column as {{name}} "
                         f"and a literal brace as {{{{ or }}}}") from None
    fields = []
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if not name.strip() or spec or conv or any(c in name for c in ".[]"):
            raise ValueError(f"the prompt template has the field {{{name}{'!' + conv if conv else ''}"
                             f"{':' + spec if spec else ''}}}: write a column name alone between braces, e.g. "
                             f"{{text}} (a literal brace is {{{{ or }}}})")
        fields.append(name)
    if not fields:
        raise ValueError(f"the prompt template {template[:80]!r} names no column: write the one to paste in "
                         f"between braces, e.g. 'Translate to English:\\n{{chinese}}'")
    return fields


def fill_template(df: pd.DataFrame, template: str, source: str, row_kind: str = "row"
                  ) -> tuple[list[str] | None, list[str]]:
    """Each row's prompt from `template` (see `template_fields`), or None and the problems (a missing column,
    empty cells, naming the rows)."""
    try:
        fields = template_fields(template)
    except ValueError as e:
        return None, [f"data.prompt_template: {e}."]
    missing = [f for f in dict.fromkeys(fields) if f not in df.columns]
    if missing:
        return None, [f"data.prompt_template names the column(s) {', '.join(map(repr, missing))}, which {source} "
                      f"does not have (found: {', '.join(map(str, df.columns[:12]))}). Fix: use those names in "
                      f"the template, between braces."]
    parts = list(string.Formatter().parse(template))
    out, empty = [], []
    for row, rec in zip(df.index, df[list(dict.fromkeys(fields))].to_dict("records")):
        vals = {k: _text(v) for k, v in rec.items()}
        if any(v is None or not v.strip() for v in vals.values()):
            empty.append(row)
        out.append("".join(lit + (vals[name] or "" if name is not None else "") for lit, name, _, _ in parts))
    if empty:
        listed = ", ".join(map(str, empty[:MAX_LISTED])) + (f" and {len(empty) - MAX_LISTED} more"
                                                           if len(empty) > MAX_LISTED else "")
        return None, [f"{source}: {row_kind}(s) {listed}: an empty value in a column the prompt template uses "
                      f"({', '.join(dict.fromkeys(fields))}). Fix: fill it in, or drop the row."]
    return out, []


def to_conversations(df: pd.DataFrame, source: str, *, prompt_column: str | None = None,
                     completion_column: str | None = None, row_kind: str = "row",
                     prompt_template: str | None = None) -> Conversations:
    """Map a loaded table to message lists, whichever of the three formats it is in (see the module doc); with
    a `prompt_template`, the user turn is the template filled from each row's columns."""
    if prompt_template:
        prompts, problems = fill_template(df, prompt_template, source, row_kind)
        if prompts is None:
            return Conversations(df.iloc[:0].assign(messages=[]), "prompt template", {}, problems)
        df = df.assign(**{_TEMPLATED: prompts})
        prompt_column = _TEMPLATED
    cols = {str(c).lower(): c for c in df.columns}
    system_col = cols.get("system")
    where = f"{source}"
    if "messages" in cols and not prompt_column:
        fmt, col = "messages", cols["messages"]
        convs = [_as_list(v) for v in df[col]]
        used = {"messages": str(col)}
    elif "instruction" in cols and "output" in cols and not prompt_column:
        fmt = "alpaca"
        inp = cols.get("input")
        convs = []
        for _, r in df.iterrows():
            user = _text(r[cols["instruction"]]) or ""
            extra = _text(r[inp]) if inp is not None else None
            if extra and extra.strip():
                user = f"{user}\n\n{extra}" if user.strip() else extra
            convs.append([{"role": "user", "content": user},
                          {"role": "assistant", "content": _text(r[cols["output"]]) or ""}])
        used = {"instruction": str(cols["instruction"]), "input": None if inp is None else str(inp),
                "output": str(cols["output"])}
    else:
        fmt = "prompt/completion"
        p = prompt_column or _find(df, PROMPT_NAMES, set())
        c = completion_column or _find(df, COMPLETION_NAMES, {p} if p else set())
        found = ", ".join(map(str, df.columns[:12]))
        missing = []
        if p is None or p not in df.columns:
            missing.append(f"{where}: no prompt column" + (f" {p!r}" if p else "") + f" (found: {found}). Fix: name "
                           f"it `prompt` (or set data.text_column), or give a `messages` column (a list of "
                           f"{{role, content}}) or Alpaca `instruction`/`input`/`output` columns.")
        if c is None or c not in df.columns:
            missing.append(f"{where}: no answer column" + (f" {c!r}" if c else "") + f" (found: {found}). Fix: name "
                           f"it `completion` (or set data.label_column).")
        if missing:
            return Conversations(df.iloc[:0].assign(messages=[]), fmt, {}, missing)
        convs = [[{"role": "user", "content": _text(a) or ""}, {"role": "assistant", "content": _text(b) or ""}]
                 for a, b in zip(df[p], df[c])]
        used = {"prompt": str(p), "completion": str(c)}
        if p == _TEMPLATED:
            fmt, used["prompt"] = "prompt template", f"template {prompt_template!r}"
    if system_col is not None and fmt != "messages":
        convs = [([{"role": "system", "content": s}] if (s := _text(v)) and s.strip() else []) + m
                 for v, m in zip(df[system_col], convs)]
        used["system"] = str(system_col)
    problems = check_conversations(convs, df.index.tolist(), where, row_kind)
    if not problems:  # one spelling of each role for the template (` User` -> `user`)
        convs = [[{"role": str(m["role"]).strip().lower(), "content": m["content"]} for m in c] for c in convs]
    keep = [c for c in df.columns if str(c).lower() not in {"messages", "instruction", "input", "output", "system"}
            and str(c) not in used.values() and str(c).lower() != "split" and c != _TEMPLATED]
    out = df[keep].copy()
    out["messages"] = convs
    if "split" in cols:
        out["split"] = df[cols["split"]].astype(str).str.lower().str.strip()
    return Conversations(out, fmt, used, problems)


def check_conversations(convs: list[Any], rows: list[Any], where: str, row_kind: str = "row") -> list[str]:
    """Every problem with the conversations, grouped by kind, each naming its rows and the fix."""
    found: dict[str, list[Any]] = {}
    detail: dict[str, str] = {}

    def add(kind: str, row: Any, note: str = "") -> None:
        found.setdefault(kind, []).append(row)
        if note and kind not in detail:
            detail[kind] = note

    for row, msgs in zip(rows, convs):
        if not isinstance(msgs, list) or not msgs:
            add("shape", row, f"{row_kind} {row} holds {type(msgs).__name__} {str(msgs)[:60]!r}")
            continue
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            bad = next(m for m in msgs if not (isinstance(m, dict) and "role" in m and "content" in m))
            add("shape", row, f"{row_kind} {row} has the turn {str(bad)[:60]!r}")
            continue
        roles = [str(m["role"]).strip().lower() for m in msgs]
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            alias = ROLE_ALIASES.get(unknown[0])
            add("role", row, f"{row_kind} {row} has role {unknown[0]!r}" + (f" (write {alias!r})" if alias else ""))
            continue
        if any(not isinstance(m["content"], str) for m in msgs):
            add("shape", row, f"{row_kind} {row} has a turn whose content is not text")
            continue
        if "system" in roles[1:]:
            add("system", row)
        talk = [r for r in roles if r != "system"]
        if "user" not in talk:
            add("no_user", row)
        elif talk[0] != "user":
            add("assistant_first", row)
        if "assistant" not in talk:
            add("one_sided", row)
        elif talk[-1] != "assistant":
            add("ends_with_user", row)
        if any(r == "assistant" and not m["content"].strip() for r, m in zip(roles, msgs)):
            add("empty_answer", row)
        if any(a == b for a, b in zip(talk, talk[1:])):
            add("alternate", row)
    msgs = {
        "shape": "not a conversation: `messages` must be a list of {\"role\": ..., \"content\": \"text\"}",
        "role": f"a role other than {', '.join(ROLES)}. Fix: rename the role",
        "system": "a system message after the first turn; chat templates take one, at the start. Fix: move it "
                  "to the start or make it a user turn",
        "no_user": "no user turn. Fix: every conversation needs a user turn before the assistant's answer",
        "assistant_first": "the assistant speaks first (before any user turn). Fix: start with the user turn "
                           "(after an optional system message), or drop the leading assistant turn",
        "one_sided": "no assistant turn: nothing to learn. Fix: add the answer, or drop the row",
        "ends_with_user": "the last turn is the user's: the last turn must be the assistant's answer (the one "
                          "predicted and scored). Fix: drop the trailing user turn",
        "empty_answer": "an empty assistant answer. Fix: write the answer, or drop the row",
        "alternate": "two turns in a row by the same speaker; chat templates expect user and assistant to take "
                     "turns. Fix: merge them into one turn",
    }
    out = []
    for kind, rows_ in found.items():
        listed = ", ".join(map(str, rows_[:MAX_LISTED])) + (f" and {len(rows_) - MAX_LISTED} more"
                                                          if len(rows_) > MAX_LISTED else "")
        note = f" (e.g. {detail[kind]})" if kind in detail else ""
        plural = "s" if len(rows_) > 1 else ""
        out.append(f"{where}: {row_kind}{plural} {listed}: {msgs[kind]}{note}.")
    return out


def split_last_turn(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to the last assistant turn (the prompt) and that turn's text (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The prompt side of a conversation as one readable string (for tables): the last user turn, with
    `[N earlier turns]` in front when there are more."""
    users = [m for m in messages if m["role"] == "user"]
    last = users[-1]["content"] if users else ""
    earlier = len([m for m in messages if m["role"] != "system"]) - 1
    return (f"[{earlier} earlier turns] " if earlier > 0 else "") + last
