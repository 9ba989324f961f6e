"""Conversations to encoder–decoder examples: the source text, the target ids, labels -100 on padding only.

A seq2seq model (T5, BART, Marian) reads a source text with its encoder and writes the target with its decoder;
there is no chat template and no prompt in the labels. The same data as causal-lm-sft (`causal_lm_sft.formats`)
becomes pairs: the target is the last assistant turn, the source is everything before it as plain text
(`source_text`): a single user turn as it is (a T5 prefix such as "translate Chinese to English: " comes from
`data.prompt_template`), a longer conversation one `role: content` line per turn.

Both sides are tokenised by the model's tokenizer (`text_target=` for the target, which selects the target-
language vocabulary of a Marian tokenizer) and truncated by it: the source at `data.max_length`, the target at
`target_cap(data.max_length)`; the tokenizer keeps its end-of-sequence token when it cuts. A target always ends
with the EOS token (added when a tokenizer does not), so the model learns where to stop. Padding is
`transformers.DataCollatorForSeq2Seq`'s: pad ids in the inputs, -100 in the labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


def flatten(messages: Sequence[dict[str, str]]) -> str:
    """A prompt (a conversation ending with a user turn) as one source text: system messages first, then the
    user turn as it is when it is the only one, else one `role: content` line per turn."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    talk = [m for m in messages if m["role"] != "system"]
    body = talk[0]["content"] if len(talk) == 1 else "\n".join(f"{m['role']}: {m['content']}" for m in talk)
    return "\n\n".join([*system, body]) if system else body


def source_text(messages: Sequence[dict[str, str]]) -> str:
    """The source of a conversation: everything before its last assistant turn (`flatten`)."""
    from ..causal_lm_sft.formats import split_last_turn

    return flatten(split_last_turn(list(messages))[0])


def target_cap(max_length: int) -> int:
    """The most target tokens trained and scored: `data.max_length`, the one length knob (sources and targets
    alike); a target cut there keeps its EOS token, and the data report names the rows."""
    return max_length


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids if eos is None or (ids and ids[-1] == eos) else [*ids, eos]


def encode_pairs(tokenizer: Any, sources: Sequence[str], targets: Sequence[str], max_length: int
                 ) -> dict[str, list[list[int]]]:
    """`input_ids`, `attention_mask` and `labels` (the target ids, EOS-terminated) of each pair, truncated
    (see the module doc); unpadded."""
    cap = target_cap(max_length)
    eos = tokenizer.eos_token_id
    src = tokenizer(list(sources), max_length=max_length, truncation=True)
    # text_target: the tokenizer's target side (Marian's target vocabulary; the same for T5 and BART)
    tgt = tokenizer(text_target=list(targets), max_length=cap, truncation=True)["input_ids"]
    labels = [_with_eos(list(t), eos) for t in tgt]
    labels = [t if len(t) <= cap else [*t[:cap - 1], eos] for t in labels]
    return {"input_ids": [list(i) for i in src["input_ids"]],
            "attention_mask": [list(m) for m in src["attention_mask"]], "labels": labels}


def token_counts(tokenizer: Any, texts: Sequence[str], *, target: bool = False) -> list[int]:
    """Tokens of each text before truncation (special tokens and, for targets, the EOS included)."""
    if target:
        eos = tokenizer.eos_token_id
        return [len(_with_eos(list(t), eos)) for t in tokenizer(text_target=list(texts))["input_ids"]]
    return [len(t) for t in tokenizer(list(texts))["input_ids"]]


class Seq2SeqCollator:
    """`DataCollatorForSeq2Seq` over the model inputs only (the dataset's `length` column, kept for length-grouped
    batches, is dropped): inputs padded with the pad id and attention 0, labels with -100. The model builds its
    decoder inputs from the labels (shifted right, -100 read as padding)."""

    def __init__(self, tokenizer: Any, model: Any = None):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.inner([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed negative log-likelihood of the labelled target tokens, and their count. The decoder's
    position t predicts label t (no shift: the model shifted the labels right to make its decoder inputs), as
    `model(labels=...)` computes its loss."""
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                            ignore_index=IGNORE, reduction="none").view(labels.shape)
    return nll.sum(1), (labels != IGNORE).sum(1)
