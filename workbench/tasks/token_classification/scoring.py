"""Scores for taggers: entity-level (seqeval) and token-level, and every entity error typed.

Entity-level scores are the ones that mean something for NER: a tagger that labels every `O` right
gets a high token accuracy (most tokens are `O`) while finding few entities. Both are computed so the
difference can be shown. Errors follow the standard taxonomy (Chinchor & Sundheim's MUC categories, as
in `nervaluate`): each gold or predicted entity is correct, or a wrong type, a wrong boundary, a wrong
type and boundary, missed (gold only) or spurious (predicted only).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from .formats import entity_spans

ERROR_TYPES = ("missed", "spurious", "wrong type", "wrong boundary", "wrong type and boundary")


def entity_scores(gold: list[list[str]], pred: list[list[str]], mode: str | None = None) -> dict[str, Any]:
    """Entity precision/recall/F1 overall (micro) and per type, from seqeval.

    `mode=None` is seqeval's default (conlleval-compatible: an `I-` after `O` starts an entity);
    `mode="strict"` counts an entity only when its tags are a valid IOB2 sequence.
    """
    kw: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    rep = classification_report(gold, pred, output_dict=True, zero_division=0, **kw)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in rep.items() if not k.endswith(" avg")}
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    macro = rep.get("macro avg", {"f1-score": 0.0})
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "f1_macro": float(macro["f1-score"]), "support": int(micro["support"]), "per_type": per_type}


def token_scores(gold: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict[str, Any]:
    """Token accuracy, accuracy on non-`O` gold tokens, and the token-level confusion matrix (rows = gold)."""
    idx = {name: i for i, name in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for g_seq, p_seq in zip(gold, pred):
        for g, p in zip(g_seq, p_seq):
            if g in idx and p in idx:
                cm[idx[g], idx[p]] += 1
    total = cm.sum()
    o = idx.get("O")
    ent_rows = [i for i in range(len(labels)) if i != o]
    ent_total = cm[ent_rows].sum() if ent_rows else 0
    return {"token_accuracy": float(np.trace(cm) / total) if total else 0.0,
            "entity_token_accuracy": float(sum(cm[i, i] for i in ent_rows) / ent_total) if ent_total else 0.0,
            "confusion_matrix": cm.tolist(), "labels": list(labels)}


def compare_entities(gold: list[str], pred: list[str]) -> list[dict[str, Any]]:
    """Every gold and predicted entity of one sentence, matched and typed.

    Returns rows `{"kind", "gold": (type, start, end) | None, "pred": ... | None}` where kind is
    "correct" or one of `ERROR_TYPES`. A predicted entity overlapping a gold one is matched to it (the
    first by position when several overlap); each entity appears once.
    """
    g_spans, p_spans = entity_spans(gold), entity_spans(pred)
    used: set[int] = set()
    rows: list[dict[str, Any]] = []
    for g in g_spans:
        exact = [j for j, p in enumerate(p_spans) if j not in used and p[1:] == g[1:]]
        overlap = [j for j, p in enumerate(p_spans) if j not in used and p[1] < g[2] and g[1] < p[2]]
        j = exact[0] if exact else (overlap[0] if overlap else None)
        if j is None:
            rows.append({"kind": "missed", "gold": g, "pred": None})
            continue
        used.add(j)
        p = p_spans[j]
        same_type, same_span = p[0] == g[0], p[1:] == g[1:]
        kind = ("correct" if same_type and same_span else "wrong type" if same_span else
                "wrong boundary" if same_type else "wrong type and boundary")
        rows.append({"kind": kind, "gold": g, "pred": p})
    rows += [{"kind": "spurious", "gold": None, "pred": p} for j, p in enumerate(p_spans) if j not in used]
    return rows


def error_counts(gold: list[list[str]], pred: list[list[str]]) -> dict[str, int]:
    """How many entity errors of each type over a whole split (and how many were correct)."""
    c: Counter[str] = Counter()
    for g, p in zip(gold, pred):
        c.update(r["kind"] for r in compare_entities(g, p))
    return {k: int(c.get(k, 0)) for k in ("correct",) + ERROR_TYPES}
