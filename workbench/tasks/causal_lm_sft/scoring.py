"""Scores of generated text against references: sacreBLEU's chrF and BLEU (the libraries, not re-implemented).

chrF (character n-grams up to 6, recall weighted twice as much as precision) suits short answers and
morphologically rich or unsegmented languages; BLEU (word n-grams up to 4, brevity penalty) is the classic
translation score. Both are corpus-level, 0-100. BLEU tokenises Chinese/Japanese references character by
character (`zh` tokenizer) and everything else with the standard `13a` rules. A per-example sentence chrF
goes into the predictions table for error analysis (the worst answers, slices).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

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
            "bleu": float(BLEU(tokenize=tok).corpus_score(hyp, [ref]).score), "bleu_tokenize": tok}


def sentence_chrf(predicted: Sequence[str], references: Sequence[str]) -> list[float]:
    """chrF of each answer against its own reference (0-100)."""
    from sacrebleu.metrics import CHRF

    m = CHRF()
    return [float(m.sentence_score(str(p), [str(r)]).score) for p, r in zip(predicted, references)]
