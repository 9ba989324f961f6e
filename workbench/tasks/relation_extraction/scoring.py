"""Relation scores as TACRED and DuIE count them: precision, recall and F1 over the positive relations.

`no_relation` is not a relation found: a pair predicted `no_relation` counts for nothing, a gold
`no_relation` predicted as a relation is a false positive, a relation predicted as another relation is
both a false positive and a false negative. With `no_relation` left out, sklearn's micro average over the
positive labels is exactly that count. Macro F1 averages the positive relations present in gold or
predictions (the `macro_scores` rule); accuracy counts every pair, `no_relation` included.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from ...evaluate import classification_metrics, macro_scores
from .formats import NO_RELATION

ERROR_KINDS = ("missed relation", "spurious relation", "wrong relation")


def positive_labels(labels: Sequence[Any], names: Sequence[str] | None = None) -> list[Any]:
    """`labels` without `no_relation` (`names` gives the label names when `labels` are ids)."""
    names = list(names) if names is not None else [str(x) for x in labels]
    return [lab for lab, name in zip(labels, names) if name != NO_RELATION]


def relation_scores(gold: Sequence[Any], predicted: Sequence[Any], labels: Sequence[Any],
                    names: Sequence[str] | None = None) -> dict[str, float]:
    """f1/precision/recall (micro over the positive relations), f1_macro (their macro), accuracy."""
    pos = positive_labels(labels, names)
    gold, predicted = list(gold), list(predicted)
    out = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "f1_macro": 0.0,
           "accuracy": float(np.mean(np.asarray(gold) == np.asarray(predicted))) if gold else 0.0}
    if pos and gold:
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=pos, average="micro", zero_division=0)
        out.update(precision=float(p), recall=float(r), f1=float(f),
                   f1_macro=macro_scores(gold, predicted, pos)["f1_macro"])
    return out


def error_kind(gold: str, predicted: str) -> str:
    """"" when right, else one of `ERROR_KINDS`."""
    if gold == predicted:
        return ""
    if predicted == NO_RELATION:
        return "missed relation"
    return "spurious relation" if gold == NO_RELATION else "wrong relation"


def score_table(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Test-split metrics: `relation_scores`, a per-relation report (precision/recall/F1/support, every label),
    the confusion matrix (`confusion_matrix[i][j]`: gold `labels[i]` predicted `labels[j]`) and error counts."""
    gold, predicted = [str(x) for x in gold], [str(x) for x in predicted]
    labels = [str(x) for x in labels]
    full = classification_metrics(gold, predicted, labels) if gold else {"per_class": {}, "confusion_matrix": []}
    kinds = [error_kind(g, p) for g, p in zip(gold, predicted)]
    return {**relation_scores(gold, predicted, labels), "n": len(gold),
            "per_relation": full["per_class"], "labels": labels, "confusion_matrix": full["confusion_matrix"],
            "errors": {k: kinds.count(k) for k in ERROR_KINDS},
            "no_relation_share": float(np.mean([g == NO_RELATION for g in gold])) if gold else 0.0}
