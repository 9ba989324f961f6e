"""Text classification: tokenisation, dynamic-padding collator, fast batched prediction.

A task module supplies what differs between tasks (how examples become tensors, how outputs become
predictions); config, run directory and training loop stay the same for every task.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding

from .base import DataRole

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# Models whose position ids start after the padding index (RoBERTa's scheme): that many fewer usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text", "ibert",
                     "longformer")


def model_max_tokens(model_config: Any, tokenizer: Any = None) -> int | None:
    """The longest input (in tokens, special tokens included) the model can take, or None if it has no fixed limit.

    Models with learned position embeddings (BERT, MiniLM: 512) fail with an index error on longer inputs;
    a tokenizer's own `model_max_length` counts when it is set (an unset one is a huge sentinel).
    """
    limits = []
    pos = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if isinstance(pos, int) and pos > 0:
        if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS:
            pad = getattr(model_config, "pad_token_id", None)
            pos -= (1 if pad is None else pad) + 1
        limits.append(pos)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**9:
        limits.append(tok_max)
    return min(limits) if limits else None


def tokenize_frame(df: pd.DataFrame, tokenizer: Any, max_length: int) -> "datasets.Dataset":  # noqa: F821
    """Tokenise once, unpadded, with a `length` column for length-grouped batches."""
    import datasets

    args = [df["text"].tolist()] + ([df["text_pair"].tolist()] if "text_pair" in df else [])
    enc = tokenizer(*args, truncation=True, max_length=max_length)
    cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    cols["labels"] = df["label"].astype("int64").tolist()
    cols["length"] = [len(x) for x in enc["input_ids"]]
    return datasets.Dataset.from_dict(cols)


class PaddingCollator:
    """Pads each batch to its own longest example.

    Extra columns (`length`) are dropped here so the trainer can keep them for its length-grouped
    sampler. (The real-token count behind tokens/s in metrics.jsonl is `WorkbenchTrainer.real_tokens`,
    counted where the batch is trained on.)
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None, keep: Sequence[str] = MODEL_INPUTS):
        self.inner = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.keep = tuple(keep)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.inner([{k: v for k, v in f.items() if k in self.keep} for f in features])


def autocast_for(device: torch.device, bf16: bool) -> Any:
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def predict_proba(model: Any, tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                  max_length: int = 256, batch_size: int = 64, bf16: bool = False,
                  progress: Any = None) -> np.ndarray:
    """Class probabilities, shape (n, num_labels), in input order.

    Texts are sorted by length so each batch is padded only to its own longest text; that is where
    most of the speed over a plain pipeline comes from on a CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    texts = [str(t) for t in texts]
    if len(texts) == 0:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    args = [texts] + ([list(map(str, pairs))] if pairs is not None else [])
    # A run's config may ask for more than the model takes (the data report said so at training time).
    max_length = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
    enc = tokenizer(*args, truncation=True, max_length=max_length)
    order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")[::-1]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    # Batch by token budget: long texts get smaller batches, short ones bigger.
    budget = batch_size * max(8, int(np.median([len(x) for x in enc["input_ids"]])))
    i = 0
    while i < len(order):
        longest = len(enc["input_ids"][order[i]])
        n = max(1, min(len(order) - i, budget // max(1, longest), batch_size * 4))
        idx = order[i:i + n]
        feats = [{k: enc[k][j] for k in keys} for j in idx]
        batch = tokenizer.pad(feats, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_for(device, bf16):
            logits = model(**batch).logits
        out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        i += n
        if progress is not None:
            progress(min(i, len(order)), len(order))
    return out


def predictions_frame(df: pd.DataFrame, probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Per-example table: text, gold, predicted, probabilities, loss, correct, plus the user's columns."""
    pred = probs.argmax(axis=1)
    gold = df["label"].to_numpy()
    p_gold = probs[np.arange(len(gold)), gold]
    out = pd.DataFrame({"row": df.index.to_numpy(), "text": df["text"].to_numpy()})
    if "text_pair" in df:
        out["text_pair"] = df["text_pair"].to_numpy()
    out["gold"] = [labels[i] for i in gold]
    out["predicted"] = [labels[i] for i in pred]
    out["confidence"] = probs.max(axis=1)
    sorted_p = np.sort(probs, axis=1)
    out["margin"] = sorted_p[:, -1] - (sorted_p[:, -2] if probs.shape[1] > 1 else 0)
    out["loss"] = -np.log(np.clip(p_gold, 1e-12, 1.0))
    out["correct"] = pred == gold
    for i, name in enumerate(labels):
        out[f"p_{name}"] = probs[:, i]
    for c in df.columns:
        if c not in ("text", "text_pair", "label", "label_name") and c not in out:
            out[c] = df[c].to_numpy()
    return out


def class_weight_vector(spec: str | dict[str, float], train_ids: Sequence[int],
                        labels: Sequence[str]) -> list[float] | None:
    """Per-class loss weights in label-id order from `training.class_weights`.

    `balanced` is scikit-learn's `compute_class_weight` (n_samples / (n_classes * count)) over the classes
    present in training; a class absent from training (or left out of a map) gets 1.0, since it adds
    nothing to the loss either way. A map's keys must be label names of this data: an unknown one is a
    `ConfigError` naming the labels there are.
    """
    if spec is None or spec == "none":
        return None
    labels = [str(x) for x in labels]
    weights = [1.0] * len(labels)
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.asarray(train_ids, dtype=int)
        present = np.unique(y)
        for i, w in zip(present, compute_class_weight("balanced", classes=present, y=y)):
            weights[int(i)] = float(w)
        return weights
    if isinstance(spec, dict):
        unknown = [str(k) for k in spec if str(k) not in labels]
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"training.class_weights names {', '.join(repr(u) for u in unknown)}, not a label of "
                              f"this data. The labels are: {', '.join(repr(x) for x in labels)}. Fix: use those "
                              f"names (labels left out get weight 1.0), or `balanced`.")
        for k, w in spec.items():
            weights[labels.index(str(k))] = float(w)
        return weights
    from ..errors import ConfigError
    raise ConfigError(f"training.class_weights={spec!r}: use none, balanced, or a map {{label: weight}}.")


class TextClassification:
    """Text (or text-pair) classification: one label per example, a sequence-classification head.

    The data stage (`workbench.data.prepare`), the metrics (`workbench.evaluate`) and the model loader
    (`workbench.models.load_classifier`) were written for this task first and stay where they are; this
    object is how the shared stages reach them.
    """

    name = "text-classification"
    description = "One label per text (or text pair): sentiment, spam, topic, intent, entailment."
    roles = (
        DataRole("text", "text_column", True, "the text to classify"),
        DataRole("text_pair", "text_pair_column", False, "a second text, for pair tasks (premise/hypothesis)"),
        DataRole("label", "label_column", True, "the class, a string or an integer; at least two classes"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    directions: ClassVar[dict[str, bool]] = {"accuracy": True, "f1_macro": True, "precision_macro": True,
                                             "recall_macro": True, "loss": False}
    headline = "accuracy"
    freeze_embeddings_ok = True
    # Attention and saliency (`workbench.attention`) read one prediction per text: [CLS], or the last token.
    readout = "sequence"
    # `data.augment` rewrites the text (the first of a pair) and keeps the label (`workbench.augment`).
    augment = "text"

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        from ..data.prepare import prepare_data
        return prepare_data(cfg, seed, tokenizer=tokenizer, raise_on_problems=raise_on_problems,
                            max_positions=max_positions)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        return tokenize_frame(frame, tokenizer, max_length)

    def collator(self, tokenizer: Any) -> PaddingCollator:
        return PaddingCollator(tokenizer, keep=self.model_inputs)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        from ..models import load_classifier
        return load_classifier(cfg, labels, tokenizer=tokenizer, attn_implementation=attn_implementation,
                               dtype=dtype if dtype is not None else torch.float32)

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str] = ()) -> dict[str, float]:
        from ..evaluate import trainer_metrics
        return trainer_metrics(eval_pred)

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        probs = predict_proba(model, tokenizer, frame["text"].tolist(),
                              frame["text_pair"].tolist() if "text_pair" in frame else None,
                              max_length=max_length, batch_size=batch_size, bf16=bf16)
        return predictions_frame(frame, probs, labels)

    @staticmethod
    def predict_proba(model: Any, tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None,
                      **kw: Any) -> np.ndarray:
        """Class probabilities per text (`Predictor.predict_proba`); not part of the Task protocol."""
        return predict_proba(model, tokenizer, texts, pairs, **kw)

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        from ..evaluate import metrics_from_predictions
        return metrics_from_predictions(pred, labels)

    def baseline(self, prep: Any) -> dict[str, Any]:
        """Majority-class scores on the test split (eval.json's "baseline"); optional, not in the Task protocol."""
        from ..baseline import majority_baseline
        names = prep.labels
        return majority_baseline([names[i] for i in prep.train["label"]], [names[i] for i in prep.test["label"]],
                                 names)

    def class_weights(self, spec: Any, prep: Any) -> list[float] | None:
        """The loss weight of each class (`training.class_weights`), in label-id order; None for `none`.
        Optional, not in the Task protocol: a task without it refuses the setting."""
        return class_weight_vector(spec, prep.train["label"].tolist(), prep.labels)

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        l2i = {n: i for i, n in enumerate(labels)}
        frame = pd.DataFrame({"text": pred["text"], "label": pred["gold"].astype(str).map(l2i)})
        if "text_pair" in pred:
            frame["text_pair"] = pred["text_pair"]
        frame.index = pred["row"]
        return frame

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        l2i = {n: i for i, n in enumerate(labels)}
        frame = frame.assign(label=frame["label_name"].map(l2i))
        if frame["label"].isna().any():
            from ..errors import DataError
            raise DataError(f"{source} has labels {sorted(set(frame.loc[frame['label'].isna(), 'label_name']))} "
                            f"that the model was not trained on ({labels}).")
        return frame


TASK = TextClassification()
