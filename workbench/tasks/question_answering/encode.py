"""Question + context -> overlapping windows of token ids; start/end logits -> the best answer span.

A context longer than the window is split into windows of at most `max_length` tokens (question included)
that share `doc_stride` tokens with the next one (the tokenizer's `return_overflowing_tokens` / `stride`),
each with its offset mapping back to the context's characters. Training labels are per window: the answer's
first and last token (for byte-level BPE, the first character's last byte piece: `span_positions`) when the
whole answer is inside the window, else both point at the null position (the first token: [CLS] for an
encoder) — also for an unanswerable question. At prediction every window is read,
the `n_best` highest start and end logits of each are paired into spans inside one window's context (so no
span crosses a window edge) of at most `max_answer_length` tokens, and the best-scoring span over all windows
wins; when the model was trained with unanswerable questions, the empty answer wins instead if the null score
(start + end logit at the null position, the lowest over the windows) beats the best span by more than
`null_threshold` (SQuAD 2.0's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
MIN_CONTEXT_TOKENS = 16  # a window holds at least this many context tokens beyond the overlap


def question_text(question: str, tokenizer: Any) -> str:
    """A tokenizer without a separator token (a decoder's byte-level BPE) joins the pair without one: end the
    question with a newline so question and context stay apart."""
    q = question.strip()
    return q if getattr(tokenizer, "sep_token", None) else q + "\n"


def question_budget(tokenizer: Any, max_length: int, doc_stride: int) -> int:
    """How many tokens of the question fit, leaving room for the overlap and some new context per window."""
    room = max_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True)
    return room - min(MIN_CONTEXT_TOKENS, max(2, room // 2))


def _cut_questions(tokenizer: Any, questions: Sequence[str], budget: int) -> list[str]:
    out = []
    for q in questions:
        enc = tokenizer(q, add_special_tokens=False, return_offsets_mapping=True)
        out.append(q if len(enc["input_ids"]) <= budget else q[:enc["offset_mapping"][budget - 1][1]])
    return out


@dataclass
class Windows:
    """The windows of a list of examples: the tokenizer's columns plus, per window, its example's index and
    the offset mapping with None outside the context."""

    columns: dict[str, list[Any]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]
    null_index: list[int]

    def __len__(self) -> int:
        return len(self.example)


def make_windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], max_length: int,
                 doc_stride: int) -> Windows:
    budget = question_budget(tokenizer, max_length, doc_stride)
    if budget < 4:
        from ...errors import ConfigError
        raise ConfigError(f"data.doc_stride={doc_stride} leaves no room in a window of data.max_length={max_length} "
                          f"tokens for the question and new context. Fix: lower data.doc_stride (typical: a "
                          f"quarter to a third of max_length, e.g. 128 for 384) or raise data.max_length.")
    qs = _cut_questions(tokenizer, [question_text(q, tokenizer) for q in questions], budget)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(qs, list(contexts), truncation="only_second", max_length=max_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    finally:
        tokenizer.padding_side = pad_side
    sample = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    offsets, nulls = [], []
    cls = getattr(tokenizer, "cls_token_id", None)
    for i in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(offsets_all[i], seq)])
        ids = enc["input_ids"][i]
        nulls.append(ids.index(cls) if cls is not None and cls in ids else 0)
    cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return Windows(cols, list(sample), offsets, nulls)


def span_positions(offsets: list[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int] | None:
    """The first and last token of the characters [start_char, end_char) when all of them are in this window's
    context, else None."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return None
    # The answer starts at the LAST token holding its first character: byte-level BPE (SmolLM2) splits a CJK
    # character into 2-3 byte pieces with the same offsets, and a decoder has read the whole character only at
    # its last piece (the first byte is shared by thousands of characters). One token per character elsewhere.
    start = next((i for i in reversed(ctx) if offsets[i][0] <= start_char < offsets[i][1]), None)
    if start is None:
        start = next((i for i in ctx if offsets[i][1] > start_char), None)
    end = next((i for i in reversed(ctx) if offsets[i][0] < end_char), None)
    if start is None or end is None or end < start:
        return None
    return start, end


def training_labels(win: Windows, starts: Sequence[int], answers: Sequence[str]) -> tuple[list[int], list[int]]:
    s_pos, e_pos = [], []
    for w, ex in enumerate(win.example):
        found = None
        if answers[ex]:
            found = span_positions(win.offsets[w], int(starts[ex]), int(starts[ex]) + len(answers[ex]))
        s, e = found or (win.null_index[w], win.null_index[w])
        s_pos.append(s)
        e_pos.append(e)
    return s_pos, e_pos


class QACollator:
    """Pads each batch on the right (positions stay where the labels point, whatever the tokenizer's padding
    side) to its longest window; keeps only the model's inputs and the start/end labels."""

    def __init__(self, tokenizer: Any, keep: Sequence[str] = MODEL_INPUTS):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.keep = tuple(keep)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        out: dict[str, torch.Tensor] = {}
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            if k in self.keep and k in features[0]:
                fill = self.pad_id if k == "input_ids" else 0
                out[k] = torch.tensor([list(f[k]) + [fill] * (longest - len(f[k])) for f in features])
        for k in ("start_positions", "end_positions"):
            if k in self.keep and k in features[0]:
                out[k] = torch.tensor([int(f[k]) for f in features])
        return out


@torch.inference_mode()
def window_logits(model: Any, tokenizer: Any, win: Windows, *, batch_size: int = 32, bf16: bool = False,
                  progress: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start logits, end logits) of every window, in window order; batches sorted by length."""
    from ..classification import autocast_for

    model.eval()
    device = next(model.parameters()).device
    keys = list(win.columns)
    lengths = [len(x) for x in win.columns["input_ids"]]
    order = np.argsort(lengths, kind="stable")[::-1]
    collate = QACollator(tokenizer, keys)
    out: list[Any] = [None] * len(win)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = collate([{k: win.columns[k][j] for k in keys} for j in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_for(device, bf16):
            res = model(**batch)
        s, e = res.start_logits.float().cpu().numpy(), res.end_logits.float().cpu().numpy()
        for row, j in enumerate(idx):
            out[j] = (s[row, :lengths[j]], e[row, :lengths[j]])
        if progress is not None:
            progress(min(i + batch_size, len(order)), len(order))
    return out


@dataclass
class Answer:
    text: str
    start: int  # character offsets into the context; -1 for no answer
    end: int
    score: float  # start + end logit of the span (or of the null position when `text` is "")
    null_score: float
    window: int  # which of the example's windows it came from (-1: none)


def best_answer(context: str, windows: Sequence[tuple[np.ndarray, np.ndarray, list[Any], int]], *,
                n_best: int = 20, max_answer_length: int = 30, allow_null: bool = False,
                null_threshold: float = 0.0) -> Answer:
    """The answer to one question from its windows' (start logits, end logits, offsets, null index)."""
    best: tuple[float, int, int, int] | None = None
    null = float("inf")
    for w, (s, e, offsets, null_at) in enumerate(windows):
        null = min(null, float(s[null_at] + e[null_at]))
        starts = np.argsort(s)[::-1][:n_best]
        ends = np.argsort(e)[::-1][:n_best]
        for i in starts:
            if i >= len(offsets) or offsets[i] is None:
                continue
            for j in ends:
                if j >= len(offsets) or offsets[j] is None or j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(s[i] + e[j])
                if best is None or score > best[0]:
                    best = (score, w, int(i), int(j))
    if best is None or (allow_null and null - best[0] > null_threshold):
        return Answer("", -1, -1, null if best is None else null, null, -1)
    score, w, i, j = best
    offsets = windows[w][2]
    a, b = offsets[i][0], offsets[j][1]
    while a < b and context[a].isspace():  # byte-level BPE puts the space before a word into its token
        a += 1
    while b > a and context[b - 1].isspace():
        b -= 1
    return Answer(context[a:b], a, b, score, null, w)
