"""Scores of generated text against references: sacreBLEU's chrF and BLEU, Google's ROUGE (`rouge-score`), and
a paired bootstrap interval for the tuned-minus-base chrF difference (the libraries, not re-implemented).

chrF (character n-grams up to 6, recall weighted twice as much as precision) suits short answers and
morphologically rich or unsegmented languages; BLEU (word n-grams up to 4, brevity penalty) is the classic
translation score. Both are corpus-level, 0-100. BLEU tokenises Chinese/Japanese references character by
character (`zh` tokenizer) and everything else with the standard `13a` rules. A per-example sentence chrF
goes into the predictions table for error analysis (the worst answers, slices).

ROUGE-1/2/L (F-measure, the mean over examples, 0-100) is the summarisation score. `rouge-score`'s own
tokenizer keeps only `[a-z0-9]` and would drop Chinese entirely, so Chinese references are scored character
by character (`CharTokenizer`), the usual way for Chinese ROUGE; English ones with its default tokenizer and
Porter stemming, as in the summarisation papers.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def bleu_tokenizer(references: Sequence[str]) -> str:
    """`zh` when the references are mostly CJK text (no spaces between words), else sacreBLEU's default `13a`."""
    text = "".join(references)
    return "zh" if text and len(_CJK.findall(text)) > 0.3 * len(text.replace(" ", "")) else "13a"


def generation_scores(predicted: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus chrF and BLEU (0-100) of `predicted` against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF

    hyp, ref = [str(p) for p in predicted], [str(r) for r in references]
    if not hyp:
        return {"chrf": None, "bleu": None}
    tok = bleu_tokenizer(ref)
    return {"chrf": float(CHRF().corpus_score(hyp, [ref]).score),
            "bleu": float(BLEU(tokenize=tok).corpus_score(hyp, [ref]).score), "bleu_tokenize": tok,
            **rouge_scores(hyp, ref)}


class CharTokenizer:
    """ROUGE tokens for Chinese: every character but whitespace (rouge-score's tokenizer drops CJK)."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in str(text).lower() if not c.isspace()]


def rouge_scores(predicted: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-100) over the examples, and which tokens were compared
    ("char" for Chinese references, else "word")."""
    from rouge_score import rouge_scorer

    ref = [str(r) for r in references]
    if not ref:
        return {"rouge1": None, "rouge2": None, "rougeL": None}
    chars = bleu_tokenizer(ref) == "zh"
    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=not chars, tokenizer=CharTokenizer() if chars else None)
    per = [scorer.score(r, str(p)) for p, r in zip(predicted, ref)]
    return {**{t: float(100 * np.mean([s[t].fmeasure for s in per])) for t in types},
            "rouge_tokens": "char" if chars else "word"}


def paired_bootstrap_chrf(base: Sequence[str], tuned: Sequence[str], references: Sequence[str], *,
                          n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Corpus chrF of `tuned` minus that of `base` on the same prompts, with a paired bootstrap interval.

    Each resample draws the examples with replacement and scores both systems on the *same* draw (pairing
    removes the variation that comes from which prompts happen to be easy), so the interval is about the
    difference itself. Corpus chrF is recomputed from sacreBLEU's per-sentence n-gram statistics, summed over
    the draw (what `corpus_score` does, without re-extracting n-grams 2 x `n_resamples` times). The interval is
    the percentile one; `excludes_zero` says whether the difference is significant at that level."""
    from sacrebleu.metrics import CHRF

    if not len(references) == len(base) == len(tuned) or not len(references):
        raise ValueError(f"paired bootstrap needs one base and one tuned answer per reference; got {len(base)} "
                         f"base, {len(tuned)} tuned, {len(references)} references")
    m, refs = CHRF(), [[str(r) for r in references]]
    stats = [np.asarray(m._extract_corpus_statistics([str(h) for h in hyps], refs), dtype=np.int64)
             for hyps in (base, tuned)]

    def score(st: np.ndarray) -> float:
        return float(m._compute_score_from_stats(st.tolist()).score)

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(refs[0]), size=(n_resamples, len(refs[0])))
    sums = [st[idx].sum(axis=1) for st in stats]  # resamples x statistics, per system
    diffs = np.array([score(t) - score(b) for b, t in zip(*sums)])
    alpha = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(diffs, [alpha, 1 - alpha]))
    base_score, tuned_score = (score(st.sum(axis=0)) for st in stats)
    return {"metric": "chrf", "base": base_score, "tuned": tuned_score, "difference": tuned_score - base_score,
            "low": low, "high": high, "confidence": confidence, "n": len(refs[0]), "n_resamples": n_resamples,
            "seed": seed, "excludes_zero": bool(low > 0 or high < 0)}


def sentence_chrf(predicted: Sequence[str], references: Sequence[str]) -> list[float]:
    """chrF of each answer against its own reference (0-100)."""
    from sacrebleu.metrics import CHRF

    m = CHRF()
    return [float(m.sentence_score(str(p), [str(r)]).score) for p, r in zip(predicted, references)]
