"""Held-out perplexity, one document at a time.

Perplexity is exp of the mean loss per predicted token over the whole split: every token counts once,
whichever document it is in (a mean over documents would let short documents weigh as much as long ones).

- Causal LM: each document is read on its own after the end-of-text token (what the model saw between
  documents in training) and every one of its tokens, and the end-of-text after it, is predicted once;
  a document longer than `max_length` is read in windows that overlap by one token (no token is predicted
  twice, none is skipped; a window's first token sees nothing before it).
- Masked LM: a fixed, seeded `rate` of each document's tokens (BERT's 80/10/10 replacement) is hidden,
  window by window of `max_length - 2` tokens in [CLS] ... [SEP]; the loss counts the hidden tokens only.
  The generator is seeded by the document's place and window number, so "before" and "after" hide the
  very same positions and their perplexities compare the same predictions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

IGNORE = -100
EVAL_SEED = 1234


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else float(math.exp(min(float(loss), 50.0)))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _forward_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, bf16: bool) -> torch.Tensor:
    from ..classification import autocast_for

    with autocast_for(ids.device, bf16):
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if getattr(out, "logits", None) is not None else out.prediction_logits


def _run(model: Any, windows: list[tuple[int, list[int], list[int]]], n_docs: int, pad: int, batch_size: int,
         bf16: bool, shift: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed NLL, predicted-token count and top-1 hits per document from (document, inputs, labels) windows;
    windows are batched longest first (little padding)."""
    dev = _device(model)
    total, count, hits = np.zeros(n_docs), np.zeros(n_docs, dtype=np.int64), np.zeros(n_docs, dtype=np.int64)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][1]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                n = max(len(windows[i][1]) for i in idx)
                ids = torch.full((len(idx), n), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), n), dtype=torch.long)
                lab = torch.full((len(idx), n), IGNORE, dtype=torch.long)
                for k, i in enumerate(idx):
                    m = len(windows[i][1])
                    ids[k, :m] = torch.as_tensor(windows[i][1])
                    lab[k, :m] = torch.as_tensor(windows[i][2])
                    mask[k, :m] = 1
                logits = _forward_logits(model, ids.to(dev), mask.to(dev), bf16).float()
                lab = lab.to(dev)
                if shift:
                    logits, lab = logits[:, :-1], lab[:, 1:]
                nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                                        ignore_index=IGNORE, reduction="none").view(lab.shape)
                keep = lab != IGNORE
                hit = ((logits.argmax(-1) == lab) & keep).sum(1).cpu().numpy()
                sums, cnt = nll.sum(1).cpu().numpy(), keep.sum(1).cpu().numpy()
                for k, i in enumerate(idx):
                    d = windows[i][0]
                    total[d] += sums[k]
                    count[d] += cnt[k]
                    hits[d] += hit[k]
    finally:
        model.train(was_training)
    return total, count, hits


def causal_windows(ids: list[int], eot: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """[eot] + ids + [eot] in windows of `max_length` that overlap by one token: (inputs, labels) where labels
    are the inputs, -100 on the first token of every window but the first (already predicted by the window
    before), so each token after the leading end-of-text is a target exactly once."""
    seq = [eot, *ids, eot]
    out = []
    start = 0
    while True:
        win = seq[start:start + max_length]
        labels = list(win)
        labels[0] = IGNORE  # the first input is never a target of the shifted loss anyway
        out.append((win, labels))
        if start + max_length >= len(seq):
            return out
        start += max_length - 1


def causal_document_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 16,
                           bf16: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean loss per token, tokens predicted, top-1 hits) per document (see the module docstring)."""
    from .blocks import end_of_text_id, token_stream

    eot = end_of_text_id(tokenizer)
    windows = [(d, w, lab) for d, ids in enumerate(token_stream(tokenizer, texts))
               for w, lab in causal_windows(ids, eot, max_length)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    total, count, hits = _run(model, windows, len(texts), pad, batch_size, bf16, shift=True)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), count, hits


def mlm_windows(ids: list[int], cls: int, sep: int, max_length: int) -> list[list[int]]:
    body = max_length - 2
    return [[cls, *ids[s:s + body], sep] for s in range(0, max(len(ids), 1), body)] if ids else []


def mlm_document_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 16,
                        bf16: bool = False, rate: float = 0.15, seed: int = EVAL_SEED,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean loss per hidden token, hidden tokens, top-1 hits) per document, the hidden positions fixed by
    `seed`, the document's number and the window's (see the module docstring)."""
    from transformers import DataCollatorForLanguageModeling

    from .blocks import token_stream

    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=rate)
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    windows = []
    for d, ids in enumerate(token_stream(tokenizer, texts)):
        for w, win in enumerate(mlm_windows(ids, cls, sep, max_length)):
            masker.generator = torch.Generator().manual_seed(seed + 1_000_003 * d + w)
            t = torch.tensor([win])
            special = torch.zeros_like(t)
            special[0, 0] = special[0, -1] = 1
            inputs, labels = masker.torch_mask_tokens(t, special_tokens_mask=special)
            windows.append((d, inputs[0].tolist(), labels[0].tolist()))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count, hits = _run(model, windows, len(texts), pad, batch_size, bf16, shift=False)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), count, hits
