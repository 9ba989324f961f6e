"""The score to beat: what always answering the most frequent training class scores on the test split.

A fine-tuned model whose "after" is not above this learned nothing a constant answer would not give
(on imbalanced data a 0.58 accuracy can be exactly that). Training stores it in eval.json as
`"baseline"` (`training._run`, through the task's optional `baseline`), so the CLI, the dashboard and
`workbench runs` all show the same number. Kept free of heavy imports: run listings call it.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd


def majority_baseline(train_labels: Sequence[str], test_gold: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """The score to beat: always answer the most frequent *training* class, scored on the test split.

    Ties go to the first class in `labels` order. Macro F1 uses the same definition as the model's scores
    (`macro_scores`), so "after" and the baseline compare like for like.
    """
    from sklearn.metrics import accuracy_score

    from .evaluate import macro_scores

    labels = [str(x) for x in labels]
    counts = pd.Series([str(x) for x in train_labels], dtype=object).value_counts()
    if not len(counts) or not len(test_gold):
        return {}
    majority = max(labels, key=lambda lab: (int(counts.get(lab, 0)), -labels.index(lab)))
    gold = [str(x) for x in test_gold]
    guess = [majority] * len(gold)
    return {"kind": "majority", "label": majority, "train_share": float(counts.get(majority, 0) / counts.sum()),
            "accuracy": float(accuracy_score(gold, guess)), **macro_scores(gold, guess, labels), "n": len(gold)}


def baseline_line(evaluation: dict[str, Any]) -> str | None:
    """One line, e.g. `majority baseline (always 'fresh', 58% of training rows): accuracy 0.580, macro F1
    0.367`; None when eval.json has no baseline (older runs, tasks without one)."""
    b = evaluation.get("baseline") or {}
    if not isinstance(b.get("accuracy"), (int, float)):
        return None
    f1 = f", macro F1 {b['f1_macro']:.3f}" if isinstance(b.get("f1_macro"), (int, float)) else ""
    share = f", {b['train_share']:.0%} of training rows" if isinstance(b.get("train_share"), (int, float)) else ""
    return f"majority baseline (always {b.get('label')!r}{share}): accuracy {b['accuracy']:.3f}{f1}"


def baseline_warning(evaluation: dict[str, Any], metric: str = "accuracy") -> str | None:
    """A warning when the fine-tuned score is not above the majority baseline: the model learned nothing
    a constant answer would not give. None when it is above, or when either number is missing."""
    b, a = evaluation.get("baseline") or {}, evaluation.get("after") or {}
    base, after = b.get(metric), a.get(metric)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, after)):
        return None
    if round(after, 3) > round(base, 3):
        return None
    return (f"after {after:.3f} {metric} is not above the majority baseline {base:.3f} (always answering "
            f"{b.get('label')!r}): the model learned nothing useful. Try more training steps, a higher learning "
            f"rate, or training.class_weights: balanced for imbalanced classes.")
