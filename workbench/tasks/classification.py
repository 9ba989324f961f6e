"""Text classification: tokenisation, dynamic-padding collator, fast batched prediction.

A task module supplies what differs between tasks (how examples become tensors, how outputs become
predictions); config, run directory and training loop stay the same for every task.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding

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

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None):
        self.inner = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.inner([{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features])


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
