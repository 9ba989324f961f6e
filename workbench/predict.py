"""Prediction with a run's fine-tuned model: the same batched, length-sorted path the run used."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .models import load_trained
from .rundir import RunDir


class Predictor:
    """Load once, predict many times (CLI `predict`, the dashboard's try-it box, notebooks)."""

    def __init__(self, model, tokenizer, labels: list[str], max_length: int = 256, bf16: bool = False,
                 task: str = "text-classification"):
        from .tasks import get_task
        self.model, self.tokenizer, self.labels = model, tokenizer, labels
        self.max_length, self.bf16 = max_length, bf16
        self.task = get_task(task)
        self.task_settings: dict[str, Any] = {}  # question answering: the run's doc_stride, max_answer_length, ...

    @classmethod
    def from_run(cls, run: str | Path | RunDir, bf16: bool | None = None, *, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> "Predictor":
        """Load a run's final model. The run's files cannot grant remote code or pickle loading: only
        `trust_remote_code` / `allow_pickle` here can (`workbench.untrusted`)."""
        r = run if isinstance(run, RunDir) else RunDir(run)
        r.require()
        if not r.model_dir.exists():
            from .errors import RunError
            raise RunError(f"run {r.name} has no final model yet (state: {r.status().get('state')}); "
                           f"wait for it to complete, or resume it.")
        grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        cfg = r.config(**grants)
        r.labels()  # a damaged labels.json is reported before the model is loaded
        model, tok = load_trained(r.model_dir, **grants)
        if bf16 is None:
            from .training import precision
            bf16 = precision(cfg)["bf16"]
        n = model.config.num_labels
        if cfg.task == "question-answering":  # the start/end head has 2 outputs; the labels are answer kinds
            p = cls(model, tok, r.labels(), cfg.data.max_length, bf16, cfg.task)
            p.task_settings = {k: getattr(cfg.data, k) for k in ("doc_stride", "max_answer_length", "null_threshold")}
            return p
        return cls(model, tok, r.model_labels(n) or [model.config.id2label[i] for i in range(n)],
                   cfg.data.max_length, bf16, cfg.task)

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                      batch_size: int = 64) -> np.ndarray:
        predict_proba = getattr(self.task, "predict_proba", None)
        if predict_proba is None:
            from .errors import WorkbenchError
            raise WorkbenchError(f"a {self.task.name} model gives no class probabilities per text; use predict().")
        return predict_proba(self.model, self.tokenizer, texts, pairs, max_length=self.max_length,
                             batch_size=batch_size, bf16=self.bf16)

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64, *,
                contexts: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per text; `contexts` (one per text) for question answering, where the texts are questions."""
        predict_texts = getattr(self.task, "predict_texts", None)
        if predict_texts is not None:  # a task that reads raw text its own way (a tagger splits it into words)
            kw = {"contexts": list(contexts) if contexts is not None else None, **self.task_settings} \
                if self.task.name == "question-answering" else {}
            return predict_texts(self.model, self.tokenizer, list(texts), self.labels, max_length=self.max_length,
                                 batch_size=batch_size, bf16=self.bf16, **kw)
        if getattr(self.task, "predict_proba", None) is None:  # any task: its table, without references
            frame = pd.DataFrame({"text": list(texts)} | ({"text_pair": list(pairs)} if pairs is not None else {}))
            return self.task.predict(self.model, self.tokenizer, frame, self.labels, max_length=self.max_length,
                                     batch_size=batch_size, bf16=self.bf16)
        probs = self.predict_proba(texts, pairs, batch_size)
        out = pd.DataFrame({"text": list(texts), "predicted": [self.labels[i] for i in probs.argmax(1)],
                            "confidence": probs.max(1)})
        for i, name in enumerate(self.labels):
            out[f"p_{name}"] = probs[:, i]
        return out

    def to(self, device: str | torch.device) -> "Predictor":
        self.model.to(device)
        return self
