"""Exact match and F1 of extractive answers, as SQuAD scores them; character-level F1 for Chinese (CMRC 2018).

SQuAD's `normalize_answer`: lower case, punctuation removed, the articles a/an/the removed, whitespace
collapsed; F1 is the overlap of the bags of words of prediction and reference. For text with CJK characters
each character is a token (CMRC 2018's `mixed_segmentation`: runs of other characters stay words) and
punctuation, ASCII and full-width, is dropped, and F1 counts the longest common run of characters, as CMRC's
script does. The best score over the references counts; an unanswerable question has the empty string as its
reference, and only the empty prediction matches it.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _is_cjk(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "")


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1/v2.0 evaluation's normalisation (lower, no punctuation, no articles, single spaces)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    """The tokens F1 counts: SQuAD's words for text without CJK; CMRC's mixed segmentation (each CJK character a
    token, other runs words, punctuation dropped) for text with CJK."""
    if not any(_is_cjk(ch) for ch in s):
        return normalize_answer(s).split()
    out, word = [], ""
    for ch in s.lower():
        if _is_cjk(ch) or _is_punct(ch) or ch.isspace():
            if word:
                out.append(word)
                word = ""
            if _is_cjk(ch):
                out.append(ch)
        else:
            word += ch
    if word:
        out.append(word)
    return out


def exact_match(prediction: str, reference: str) -> float:
    if any(_is_cjk(ch) for ch in prediction + reference):
        return float(answer_tokens(prediction) == answer_tokens(reference))
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """The length of the longest contiguous run of tokens shared by `a` and `b` (CMRC 2018's `find_lcs`)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 (overlap of the bags of words); for CJK text CMRC 2018's: precision and recall from the longest
    common contiguous run of characters, so a right set of characters in the wrong order is not a full match."""
    p, g = answer_tokens(prediction), answer_tokens(reference)
    if not p or not g:  # an unanswerable reference, or an empty prediction: right only if both are empty
        return float(p == g)
    if any(_is_cjk(ch) for ch in prediction + reference):
        same = _longest_common_run(g, p)
    else:
        same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best_over(references: Sequence[str], prediction: str) -> tuple[float, float]:
    """(exact match, F1) against the best of the references ([""] for an unanswerable question)."""
    # SQuAD v2.0's evaluation drops references that normalise to nothing ("The"); none left: unanswerable.
    refs = [r for r in references if answer_tokens(r)] or [""]
    return max(exact_match(prediction, r) for r in refs), max(f1(prediction, r) for r in refs)
