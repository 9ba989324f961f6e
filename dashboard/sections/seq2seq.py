"""Text-to-text's page sections (`seq2seq`: T5, BART, Marian): the same data and the same per-example table as
causal-lm-sft, so its sections serve: the Train page's data choice (conversation files and the built-ins
`hsk_zh_en`, `aclsum`, with the prompt/answer column mapping of a table) and the Evaluate page (loss,
perplexity, chrF, BLEU; base and tuned outputs side by side). Data files stay claimed by causal-lm-sft (the
Data page shows them as conversations); this module claims none."""

from __future__ import annotations

from typing import Any

from . import causal_lm_sft

DATA_TASK = causal_lm_sft.TASK  # whose uploads and built-ins hold this task's data


def train_defaults(model: str) -> dict[str, Any]:
    """Full fine-tuning: t5-small (60M) and opus-mt (77M) are small enough, and the usual recipe for them;
    LoRA (peft SEQ_2_SEQ_LM, on the attention's q/v projections) stays one click away."""
    return {"peft.method": "full"}


def train_data(task: str) -> dict[str, Any]:
    """causal-lm-sft's data section, offering its files and built-ins (the source is the prompt, the target the
    answer)."""
    return causal_lm_sft.train_data(DATA_TASK)


evaluate = causal_lm_sft.evaluate
