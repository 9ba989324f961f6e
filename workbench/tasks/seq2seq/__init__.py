"""Text-to-text with encoder–decoder models (`seq2seq`: T5, BART, Marian): translation and summarisation.

The data is causal-lm-sft's (`causal_lm_sft.formats`: `messages`, Alpaca, prompt/completion columns,
`data.prompt_template`, the built-ins `hsk_zh_en` and `aclsum`), read, checked and split by its `prepare_sft`;
what differs is here and in `encode`: an example is a source text (the conversation before the last answer,
`encode.source_text`) and a target (that answer), tokenised with `text_target=`, batched by
`DataCollatorForSeq2Seq` (labels -100 on padding only), the model is `AutoModelForSeq2SeqLM` (PEFT
`SEQ_2_SEQ_LM`), the loss is the decoder's teacher-forced cross-entropy over the target tokens. The
predictions table, scores (loss, perplexity, chrF, BLEU, ROUGE), the paired bootstrap before/after and the
error report are causal-lm-sft's, inherited: the same columns, so `workbench eval/errors/compare` read both.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import ModelError
from ..base import DataRole
from ..causal_lm_sft import MAX_NEW_TOKENS, CausalLMSFT, _stats, answer_sampling, answer_table, prepare_sft
from .encode import (IGNORE, MODEL_INPUTS, Seq2SeqCollator, encode_pairs, flatten, source_text, target_cap,
                     target_nll, token_counts)


def _describe_pairs(prep: Any, tokenizer: Any, max_length: int) -> None:
    """The data report's seq2seq findings: source and target token lengths, which were truncated, and how much
    of the sources the tokenizer cannot read (T5's vocabulary has no Chinese, for one)."""
    from ...data.prepare import _first as _rows
    from ...data.report import UNKNOWN_WARN, token_length_stats, unknown_token_stats

    rep, cap = prep.report, target_cap(max_length)
    cut_src, cut_tgt, lengths = [], [], {}
    for split in ("train", "validation", "test"):
        f = getattr(prep, split)
        if not len(f):
            continue
        sources = [source_text(m) for m in f["messages"]]
        targets = [m[-1]["content"] for m in f["messages"]]
        s, t = token_counts(tokenizer, sources), token_counts(tokenizer, targets, target=True)
        lengths[split] = (s, t)
        cut_src += [f"{r} ({split})" for r, n in zip(f.index, s) if n > max_length]
        cut_tgt += [f"{r} ({split})" for r, n in zip(f.index, t) if n > cap]
    src, tgt = lengths.get("train", ([], []))
    rep.token_lengths = token_length_stats(src, max_length, getattr(tokenizer, "name_or_path", ""))
    rep.details.update(template="none (encoder-decoder: the source text as is)", source_tokens=_stats(src),
                       target_tokens=_stats(tgt), sources_truncated=len(cut_src), targets_truncated=len(cut_tgt),
                       target_max_length=cap, truncated_rows=(cut_src + cut_tgt)[:200])
    kind = rep.row_kind
    if cut_src:
        rep.warnings.append(f"{len(cut_src)} source text(s) are longer than data.max_length={max_length} tokens "
                            f"({kind} {_rows(cut_src)}): their end is cut (the tokenizer's truncation). Raise "
                            f"data.max_length to keep them whole.")
    if cut_tgt:
        rep.warnings.append(f"{len(cut_tgt)} target(s) are longer than {cap} tokens (data.max_length) ({kind} "
                            f"{_rows(cut_tgt)}): they are cut there, ending with the EOS token, so the model learns "
                            f"shorter answers for them. Raise data.max_length to keep them whole.")
    if len(prep.train):
        texts = [source_text(m) for m in prep.train["messages"].head(2000)]
        u = rep.unknown_tokens = unknown_token_stats(tokenizer, texts)
        if u and u["share"] > UNKNOWN_WARN:
            seen = f" (most often {' '.join(u['examples'][:8])})" if u["examples"] else ""
            rep.warnings.append(f"{u['share']:.0%} of the source tokens are {u['token']}{seen}: this model's "
                                f"vocabulary does not cover the source language (T5 and BART read English). Fix: a "
                                f"model made for it (a Marian `Helsinki-NLP/opus-mt-<src>-<tgt>`, mT5, mBART).")


class Seq2Seq(CausalLMSFT):
    """causal-lm-sft's data, predictions table and scores (inherited); encoder–decoder encoding, batching,
    model, loss and generation (overridden)."""

    name = "seq2seq"
    description = ("Text-to-text with an encoder-decoder (T5, BART, Marian): translation, summarisation; "
                   "the source is the prompt, the target the answer.")
    roles = (
        DataRole("messages", None, False, "a list of {role, content} turns per example: the last assistant turn is "
                 "the target, the turns before it (as plain text) the source; or Alpaca `instruction`/`input`/"
                 "`output`; or the two columns below"),
        DataRole("prompt", "text_column", False, "the source text (guessed: prompt, question, source, input, ...); "
                 "a T5 task prefix comes from data.prompt_template"),
        DataRole("completion", "label_column", False, "the target text (guessed: completion, response, answer, "
                 "output, target, ...)"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    # T5, BART and Marian share one embedding table between encoder, decoder (and, in T5 v1 and BART, the
    # output layer): freezing it would freeze what every target token is read and written through.
    freeze_embeddings_ok = False

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        """causal-lm-sft's reading, checks and splits (`prepare_sft`, without its chat-template findings), then
        the source/target token lengths and truncation (`_describe_pairs`)."""
        from ...data.prepare import _finish

        prep = prepare_sft(cfg, seed, None, raise_on_problems=False, max_positions=max_positions)
        if tokenizer is not None and not prep.report.problems:
            _describe_pairs(prep, tokenizer, prep.max_length or cfg.max_length)
        return _finish(prep, raise_on_problems)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        import datasets

        msgs = list(frame["messages"])
        cols = encode_pairs(tokenizer, [source_text(m) for m in msgs], [m[-1]["content"] for m in msgs], max_length)
        cols["length"] = [len(s) + len(t) for s, t in zip(cols["input_ids"], cols["labels"])]
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer: Any) -> Seq2SeqCollator:
        return Seq2SeqCollator(tokenizer)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        """The pretrained encoder–decoder as is (its own LM head; `labels` is unused). A decoder-only model is
        refused with the task it needs."""
        import transformers

        from ...models import _load_error, model_load_args

        path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
        if not getattr(mconf, "is_encoder_decoder", False):
            raise ModelError(f"{cfg.name_or_path} is a {getattr(mconf, 'model_type', '?')} model without an encoder-"
                             f"decoder: task seq2seq needs one (T5, BART, Marian, e.g. google-t5/t5-small or "
                             f"Helsinki-NLP/opus-mt-zh-en). For a decoder such as Llama use task causal-lm-sft.")
        try:
            return transformers.AutoModelForSeq2SeqLM.from_pretrained(
                path, config=mconf, dtype=dtype if dtype is not None else torch.float32, **kw)
        except Exception as e:
            raise _load_error(path, cfg, e, "model") from None

    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Validation keeps (summed loss, target tokens) per example instead of the decoder's logits."""
        if isinstance(logits, tuple):
            logits = logits[0]
        total, n = target_nll(logits, labels)
        return torch.stack([total, n.float()], dim=1)

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """causal-lm-sft's per-example table: source, reference (the target), the greedy output (stopping at
        EOS), the teacher-forced loss per target token and the count of target tokens, chrF, exact match."""
        from ...generate import seq2seq_answers

        msgs = [list(m) for m in frame["messages"]]
        sources, refs = [source_text(m) for m in msgs], [m[-1]["content"] for m in msgs]
        loss, count = example_losses(model, tokenizer, sources, refs, max_length, batch_size, bf16)
        longest = max(token_counts(tokenizer, refs, target=True), default=1)
        answers = seq2seq_answers(model, tokenizer, sources, sampling=answer_sampling(longest),
                                  max_length=max_length, batch_size=min(batch_size, 32), bf16=bf16)
        return answer_table(frame, msgs, sources, refs, answers, loss, count)

    def predict_texts(self, model: Any, tokenizer: Any, texts: Sequence[str], labels: list[str], *,
                      max_length: int = 256, batch_size: int = 16, bf16: bool = False) -> pd.DataFrame:
        """Greedy outputs for raw source texts (`workbench predict RUN "text"`), each read as it is."""
        from ...generate import Sampling, seq2seq_answers

        answers = seq2seq_answers(model, tokenizer, list(texts), sampling=Sampling(max_new_tokens=MAX_NEW_TOKENS),
                                  max_length=max_length, batch_size=batch_size, bf16=bf16)
        return pd.DataFrame({"text": list(texts), "predicted": answers})


def example_losses(model: Any, tokenizer: Any, sources: Sequence[str], targets: Sequence[str], max_length: int,
                   batch_size: int = 32, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean loss over its target tokens (teacher-forced, truncated as in training) and their count:
    for one example, what `model(input_ids, attention_mask, labels=...).loss` gives."""
    from ..classification import autocast_for

    if not len(sources):
        return np.zeros(0), np.zeros(0, dtype=int)
    enc = encode_pairs(tokenizer, sources, targets, max_length)
    feats = [{k: enc[k][i] for k in MODEL_INPUTS} for i in range(len(sources))]
    collate = Seq2SeqCollator(tokenizer)
    device = next(model.parameters()).device
    order = np.argsort([len(f["input_ids"]) + len(f["labels"]) for f in feats], kind="stable")[::-1]
    loss, count = np.zeros(len(feats)), np.zeros(len(feats), dtype=int)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = {k: v.to(device) for k, v in collate([feats[j] for j in idx]).items()}
            with autocast_for(device, bf16):
                logits = model(**batch, use_cache=False).logits
            total, n = target_nll(logits, batch["labels"])
            loss[idx] = (total / n.clamp(min=1)).cpu().numpy()
            count[idx] = n.cpu().numpy()
    return loss, count


TASK = Seq2Seq()
__all__ = ["IGNORE", "TASK", "Seq2Seq", "example_losses", "flatten", "source_text"]
