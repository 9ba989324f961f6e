"""Evaluation stage: scikit-learn metrics from gold and predicted labels, and scoring a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support


def macro_scores(gold: Sequence[Any], predicted: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
    """Macro precision, recall and F1: the one definition behind validation (`trainer_metrics`) and test scores.

    The average runs over the classes of `labels` that occur in `gold` or in `predicted`. A class missing
    from both has no evidence either way (a small validation split may simply lack it), so it is left out
    rather than counted as 0; a class that is gold but never predicted, or predicted but never gold,
    counts with its 0. Per-class numbers are in `classification_metrics(...)["per_class"]`.
    """
    seen = set(np.asarray(gold).tolist()) | set(np.asarray(predicted).tolist())
    present = [lab for lab in labels if lab in seen]
    if not present:
        return {"precision_macro": 0.0, "recall_macro": 0.0, "f1_macro": 0.0}
    p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=present, average="macro", zero_division=0)
    return {"precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f)}


def classification_metrics(gold: Sequence[str] | Sequence[int], predicted: Sequence[str] | Sequence[int],
                           labels: Sequence[str] | Sequence[int]) -> dict[str, Any]:
    """Accuracy; macro/micro/weighted precision, recall and F1; per-class report; confusion matrix.

    `confusion_matrix[i][j]` counts examples of gold class `labels[i]` predicted as `labels[j]`.
    """
    labels = list(labels)
    out: dict[str, Any] = {"n": len(gold), "accuracy": float(accuracy_score(gold, predicted)) if len(gold) else None}
    out.update(macro_scores(gold, predicted, labels))
    for avg in ("micro", "weighted"):
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


def score_frame(task: Any, model: Any, tok: Any, frame: pd.DataFrame, labels: Sequence[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
    """The task's per-example predictions table (`Task.predict`) of `model` on a prepared `frame`. Out of
    memory while scoring: smaller batches, down to 1, instead of failing."""
    while True:
        try:
            return task.predict(model, tok, frame, list(labels), max_length=max_length, batch_size=batch_size,
                                bf16=bf16)
        except Exception as e:
            from .trainer import is_oom

            if not is_oom(e) or batch_size <= 1:
                raise
            batch_size //= 2


def trainer_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for the HF Trainer's validation passes (kept small: it runs every epoch)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits)
    pred = logits.argmax(axis=-1)
    return {"accuracy": float((pred == labels).mean()), **macro_scores(labels, pred, range(logits.shape[-1]))}


def evaluate_run(run: str | Path, *, split_file: str | Path | None = None, batch_size: int = 64,
                 trust_remote_code: bool = False, allow_pickle: bool = False) -> dict[str, Any]:
    """Re-score a finished run's model on its stored test predictions' texts (or on another file).

    The run's files cannot grant remote code or pickle loading; only the two flags here can.
    """
    from .models import load_trained
    from .rundir import RunDir
    from .tasks import get_task

    r = RunDir(run).require()
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    cfg = r.config(**grants)
    task = get_task(cfg.task)
    r.labels()  # a damaged labels.json is reported before the model is loaded
    model, tok = load_trained(r.model_dir, **grants)
    n = model.config.num_labels
    if cfg.task == "question-answering":  # a start/end head (2 outputs); the run's labels are its answer kinds
        labels = r.labels()
    else:
        labels = r.model_labels(n) or [model.config.id2label[i] for i in range(n)]
    if split_file:
        # Every row of the file is scored: the run's own split settings (a split column, separate validation or
        # test files, a cap on training rows) are about its training data, not this file.
        prep = task.prepare(cfg.data.__class__(**{**cfg.data.__dict__, "source": str(split_file), "test_size": 0.0,
                                                  "validation_size": 0.0, "split_column": None,
                                                  "validation_source": None, "test_source": None,
                                                  "max_train_samples": None}), cfg.training.seed,
                            raise_on_problems=True)
        frame = task.align_labels(prep.train, labels, str(split_file))
    else:
        frame = task.frame_from_predictions(r.predictions("after"), labels)
    pred = score_frame(task, model, tok, frame, labels, max_length=cfg.data.max_length, batch_size=batch_size)
    return {"metrics": task.score(pred, labels), "predictions": pred}
