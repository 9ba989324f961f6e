"""Evaluation stage: scikit-learn metrics from gold and predicted labels, and scoring a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support


def classification_metrics(gold: Sequence[str] | Sequence[int], predicted: Sequence[str] | Sequence[int],
                           labels: Sequence[str] | Sequence[int]) -> dict[str, Any]:
    """Accuracy; macro/micro/weighted precision, recall and F1; per-class report; confusion matrix.

    `confusion_matrix[i][j]` counts examples of gold class `labels[i]` predicted as `labels[j]`.
    """
    labels = list(labels)
    out: dict[str, Any] = {"n": len(gold), "accuracy": float(accuracy_score(gold, predicted)) if len(gold) else None}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    rep = classification_report(gold, predicted, labels=labels, output_dict=True, zero_division=0)
    out["per_class"] = {str(k): {"precision": float(rep[str(k)]["precision"]), "recall": float(rep[str(k)]["recall"]),
                                 "f1": float(rep[str(k)]["f1-score"]), "support": int(rep[str(k)]["support"])}
                        for k in labels}
    out["labels"] = [str(k) for k in labels]
    out["confusion_matrix"] = confusion_matrix(gold, predicted, labels=labels).tolist()
    return out


def metrics_from_predictions(pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    m = classification_metrics(pred["gold"].astype(str).tolist(), pred["predicted"].astype(str).tolist(), labels)
    m["loss"] = float(pred["loss"].mean()) if "loss" in pred and len(pred) else None
    return m


def trainer_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for the HF Trainer's validation passes (kept small: it runs every epoch)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    pred = np.asarray(logits).argmax(axis=-1)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    return {"accuracy": float((pred == labels).mean()), "f1_macro": float(f), "precision_macro": float(p),
            "recall_macro": float(r)}


def evaluate_run(run: str | Path, *, split_file: str | Path | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Re-score a finished run's model on its stored test predictions' texts (or on another file)."""
    from .models import load_trained
    from .rundir import RunDir
    from .tasks import get_task

    r = RunDir(run).require()
    cfg = r.config()
    task = get_task(cfg.task)
    labels = r.labels()
    model, tok = load_trained(r.model_dir)
    if split_file:
        prep = task.prepare(cfg.data.__class__(**{**cfg.data.__dict__, "source": str(split_file), "test_size": 0.0,
                                                  "validation_size": 0.0}), cfg.training.seed, raise_on_problems=True)
        frame = task.align_labels(prep.train, labels, str(split_file))
    else:
        frame = task.frame_from_predictions(r.predictions("after"), labels)
    pred = task.predict(model, tok, frame, labels, max_length=cfg.data.max_length, batch_size=batch_size)
    return {"metrics": task.score(pred, labels), "predictions": pred}
