"""The data report: what a person should know about their data before a run starts.

Returned as data (`DataReport`, JSON-serialisable via `to_dict`), printed by the CLI with
`format_report`, drawn by the dashboard. `problems` stop a run; `warnings` do not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataReport:
    source: str = ""
    format: str = ""
    columns_found: list[str] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)  # role -> column used
    guessed: list[str] = field(default_factory=list)  # roles whose column was guessed
    rows_read: int = 0
    rows_used: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> row/line numbers
    row_kind: str = "row"
    labels: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_balance: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> count
    duplicates: int = 0  # rows in train whose text repeats an earlier train row
    conflicting_duplicates: int = 0  # repeated texts that carry different labels
    leakage: dict[str, int] = field(default_factory=dict)  # split -> rows whose text is also in train
    token_lengths: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # task-specific findings (e.g. a tagger's scheme)
    unknown_tokens: dict[str, Any] = field(default_factory=dict)  # `unknown_token_stats` for the chosen tokenizer
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataReport":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def token_length_stats(lengths: list[int] | np.ndarray, max_length: int, tokenizer_name: str = "") -> dict[str, Any]:
    """Percentiles of token counts (before truncation) and the share of texts that get truncated."""
    arr = np.asarray(lengths, dtype=float)
    if arr.size == 0:
        return {}
    pct = {f"p{q}": int(np.percentile(arr, q)) for q in (50, 90, 95, 99)}
    counts, edges = np.histogram(arr, bins=min(30, max(5, int(arr.max() - arr.min() + 1))))
    return {"tokenizer": tokenizer_name, "n": int(arr.size), "mean": round(float(arr.mean()), 1), **pct,
            "max": int(arr.max()), "max_length": max_length,
            "truncated": int((arr > max_length).sum()), "truncated_share": round(float((arr > max_length).mean()), 4),
            "histogram": counts.tolist(), "histogram_edges": edges.tolist()}


UNKNOWN_WARN = 0.05  # above this share of unknown tokens a model is not reading the text


def unknown_token_stats(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """How much of `texts` the tokenizer cannot represent: the share of tokens that are its unknown token, the
    share of characters they replace (from offsets, fast tokenizers only) and the characters lost most often.
    Empty for a tokenizer without an unknown token. Byte-level BPE (SmolLM2, GPT-2) never produces one."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return {}
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=fast)
    n_tokens = n_unknown = lost = 0
    chars: Counter[str] = Counter()
    for i, ids in enumerate(enc["input_ids"]):
        n_tokens += len(ids)
        for j, t in enumerate(ids):
            if t != unk:
                continue
            n_unknown += 1
            if fast:
                start, end = enc["offset_mapping"][i][j]
                lost += end - start
                chars.update(c for c in texts[i][start:end] if not c.isspace())
    n_chars = sum(len(t) for t in texts)
    return {"token": str(tokenizer.unk_token), "texts": len(texts), "tokens": n_tokens, "unknown": n_unknown,
            "share": round(n_unknown / max(n_tokens, 1), 4),
            "chars_lost_share": round(lost / max(n_chars, 1), 4) if fast else None,
            "examples": [c for c, _ in chars.most_common(10)]}


def packing_line(p: dict[str, Any]) -> str:
    """What `data.packing` did (`details["packing"]`), in one line for the report and the training log."""
    return (f"packing: {p['rows']:,} training conversations -> {p['packed_rows']:,} rows of up to "
            f"{p['max_length']} tokens, {p['fill']:.0%} full ({p['tokens']:,} tokens)")


def augmentation_line(summary: dict[str, Any]) -> str:
    """What augmentation did (`details["augmentation"]`), in one line for the report and the training log.
    A record that is not what the workbench writes (a damaged or hand-edited data_report.json) reads as such."""
    try:
        return _augmentation_line(summary)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "augmentation: (the recorded counts are unreadable: data_report.json was changed or damaged)"


def _augmentation_line(summary: dict[str, Any]) -> str:
    added = summary.get("added") or {}
    parts = [f"+{n:,} {op}" for op, n in added.items()]
    p = summary.get("paraphrase") or {}
    if p.get("at_training"):
        parts.append(f"paraphrase of up to {p['sources']:,} text(s) x {summary.get('copies', 1)} by "
                     f"{p['model']} at training (slow on a CPU: not made for this report)")
    line = (f"augmentation: {', '.join(parts) or 'nothing added'}; train {summary['train_rows_before']:,} -> "
            f"{summary['train_rows_after']:,} rows")
    dropped: dict[str, int] = {}
    for reasons in (summary.get("dropped") or {}).values():
        for why, n in reasons.items():
            dropped[why] = dropped.get(why, 0) + n
    if dropped:
        line += "; dropped " + ", ".join(f"{n:,} {why}" for why, n in dropped.items())
    if summary.get("sources_skipped"):
        line += f"; {summary['sources_skipped']:,} training text(s) also in validation/test never used"
    if p.get("seconds") is not None:
        line += f"; paraphrasing took {p['seconds']:g} s"
    return line


def format_report(r: DataReport, verbose: bool = False) -> str:
    """A short, human-readable summary (CLI and notebooks)."""
    unit = "documents" if r.row_kind == "document" else "rows"
    out = [f"Data: {r.source} ({r.format}), {r.rows_read} {unit} read, {r.rows_used} used"]
    cols = ", ".join(f"{role}={col!r}" + (" (guessed)" if role in r.guessed else "")
                     for role, col in r.columns.items() if col)
    if cols:
        out.append(f"  columns: {cols}")
    for reason, rows in r.dropped.items():
        shown = ", ".join(map(str, rows[:8])) + (" ..." if len(rows) > 8 else "")
        out.append(f"  dropped {len(rows)} row(s), {reason} ({r.row_kind}s {shown})")
    if r.split_sizes:
        out.append("  splits: " + ", ".join(f"{k} {v}" for k, v in r.split_sizes.items()))
    d = r.details
    if d.get("scheme"):
        w = d.get("sentence_words") or {}
        out.append(f"  tags: {d['scheme']} (read as BIO); sentence length in words: median {w.get('p50')}, "
                   f"p95 {w.get('p95')}, max {w.get('max')}; {d.get('entities_per_sentence')} entities per sentence")
    if d.get("turns"):  # conversations (causal-lm-sft)
        t, pt, at = d["turns"], d.get("prompt_tokens") or {}, d.get("answer_tokens") or {}
        out.append(f"  conversations: {t.get('p50')} turns median (max {t.get('max')}), {d.get('multi_turn')} "
                   f"multi-turn, {d.get('with_system')} with a system message")
        if pt:
            out.append(f"  prompt tokens median {pt.get('p50')}, p95 {pt.get('p95')}, max {pt.get('max')}; answer "
                       f"tokens median {at.get('p50')}, p95 {at.get('p95')}, max {at.get('max')}; "
                       f"{d.get('template')} chat template, end of turn {d.get('end_of_turn')!r}; "
                       f"{d.get('truncated', 0)} truncated (oldest tokens dropped, last answer kept)")
        st, tt = d.get("source_tokens") or {}, d.get("target_tokens") or {}
        if st:  # text-to-text (seq2seq): a source and a target per example
            out.append(f"  source tokens median {st.get('p50')}, p95 {st.get('p95')}, max {st.get('max')}; target "
                       f"tokens median {tt.get('p50')}, p95 {tt.get('p95')}, max {tt.get('max')}; "
                       f"{d.get('sources_truncated', 0)} sources and {d.get('targets_truncated', 0)} targets "
                       f"truncated (at {d.get('target_max_length')} tokens)")
    if d.get("packing"):
        out.append(f"  {packing_line(d['packing'])}")
    if d.get("augmentation"):
        out.append(f"  {augmentation_line(d['augmentation'])}")
    if d.get("objective") and d.get("characters"):  # a corpus (masked-lm, causal-lm)
        tok = d.get("tokens") or {}
        out.append("  corpus: " + "; ".join(
            f"{s} {n:,} documents, {d['characters'].get(s, 0):,} characters"
            + (f", {tok[s]:,} tokens" if s in tok else "") for s, n in (d.get("documents") or {}).items())
            + ("" if d.get("tokens_exact", True) else " (tokens estimated from a sample)"))
        if d.get("train_blocks") is not None:
            out.append(f"  training rows: {d['train_blocks']:,} blocks of {d.get('block_tokens')} tokens "
                       f"(documents joined, cut across document ends; the last block may be shorter)")
    if r.class_balance.get("train"):
        total = sum(r.class_balance["train"].values()) or 1
        head = "  train entities: " if d.get("scheme") else "  train classes: "
        out.append(head + ", ".join(f"{k} {v} ({v / total:.0%})"
                                                   for k, v in r.class_balance["train"].items()))
    if r.duplicates:
        out.append(f"  duplicates in train: {r.duplicates}" +
                   (f" ({r.conflicting_duplicates} with conflicting labels)" if r.conflicting_duplicates else ""))
    for split, n in r.leakage.items():
        if n:
            out.append(f"  leakage: {n} {split} text(s) also appear in train")
    t = r.token_lengths
    if t:
        # A task that does not simply cut long texts says what it does instead (`fate`, a phrase after "longer
        # than max_length=N"); question answering's `windowed` flag is the older form of the same thing.
        fate = t.get("fate") or ("are read in overlapping windows" if t.get("windowed") else "get truncated")
        out.append(f"  tokens ({t.get('tokenizer', '')}): median {t['p50']}, p95 {t['p95']}, max {t['max']}; "
                   f"{t['truncated']} text(s) longer than max_length={t['max_length']} {fate}")
    u = r.unknown_tokens
    if u and u.get("unknown"):
        lost = f", {u['chars_lost_share']:.0%} of the characters lost" if u.get("chars_lost_share") is not None else ""
        out.append(f"  unknown tokens: {u['share']:.1%} of the tokens are {u['token']}{lost}")
    for w in r.warnings:
        out.append(f"  warning: {w}")
    for p in r.problems:
        out.append(f"  PROBLEM: {p}")
    return "\n".join(out)
