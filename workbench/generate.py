"""Generation with a causal LM: answers to conversations, greedy or sampled, stopping at the end of the turn.

Pure functions over a loaded model and tokenizer (the CLI's `workbench generate`, the SFT task's predictions,
notebooks): the conversation goes through the model's chat template (`causal_lm_sft.encode.render`),
generation is `model.generate` with the KV cache on, and it stops at the EOS token or the template's
end-of-turn token (`<|im_end|>`, `<|eot_id|>`). Batches are sorted by prompt length and padded on the left,
so each batch waits only for its own longest prompt.

An encoder–decoder (T5, BART, Marian: the `seq2seq` task) has no chat template: the conversation is flattened
into one source text (`tasks.seq2seq.flatten`: a single user turn as it is), the encoder reads it and the
decoder writes from its start token until EOS (`seq2seq_answers`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

Messages = list[dict[str, str]]
# Transformers classes of models that write text: a run of a task with one of these can be generated from.
GENERATORS = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM")


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token. `temperature` 0 is greedy decoding (the same answer every time); above 0
    samples from the softmax at that temperature, restricted to the `top_k` most likely tokens (0: no limit)
    and to the smallest set whose probabilities add up to `top_p`. `repetition_penalty` > 1 makes tokens
    already in the text less likely (1: off)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def problems(self) -> list[str]:
        p = []
        if self.max_new_tokens < 1:
            p.append(f"max_new_tokens={self.max_new_tokens}: give at least 1.")
        if self.temperature < 0:
            p.append(f"temperature={self.temperature}: give 0 (greedy) or more.")
        if not 0 < self.top_p <= 1:
            p.append(f"top_p={self.top_p}: give a share in (0, 1].")
        if self.top_k < 0:
            p.append(f"top_k={self.top_k}: give 0 (no limit) or more.")
        if self.repetition_penalty <= 0:
            p.append(f"repetition_penalty={self.repetition_penalty}: give a number > 0 (1 is off).")
        return p


def generation_config(s: Sampling, stop_ids: Sequence[int], pad_id: int | None) -> Any:
    """A complete `GenerationConfig` (the model's own defaults, e.g. a sampling temperature, do not leak in)."""
    from transformers import GenerationConfig

    sample = s.temperature > 0
    kw: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": sample, "use_cache": True,
                          "eos_token_id": list(stop_ids), "pad_token_id": pad_id,
                          "repetition_penalty": s.repetition_penalty}
    if sample:
        kw.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
    else:  # greedy: say so explicitly, or generate() warns about sampling settings that would not apply
        kw.update(temperature=None, top_p=None, top_k=None)
    return GenerationConfig(**kw)


@torch.inference_mode()
def generate_answers(model: Any, tokenizer: Any, conversations: Sequence[Messages], *, sampling: Sampling = Sampling(),
                     max_length: int = 1024, batch_size: int = 16, bf16: bool = False,
                     seed: int | None = None) -> list[str]:
    """The assistant's next answer to each conversation (each ends with a user turn), in input order.

    Prompts longer than `max_length` tokens lose their oldest tokens (`prompt_ids`)."""
    from .tasks.causal_lm_sft.encode import prompt_ids, stop_token_ids
    from .tasks.classification import autocast_for

    if not conversations:
        return []
    if is_encoder_decoder(model):  # no chat template: the conversation as one source text
        from .tasks.seq2seq import flatten

        return seq2seq_answers(model, tokenizer, [flatten(c) for c in conversations], sampling=sampling,
                               max_length=max_length, batch_size=batch_size, bf16=bf16, seed=seed)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gcfg = generation_config(sampling, stop_token_ids(tokenizer, model), pad)
    if seed is not None:
        torch.manual_seed(seed)
    prompts = [prompt_ids(tokenizer, c, max_length) for c in conversations]
    order = np.argsort([len(p) for p in prompts], kind="stable")[::-1]
    out: list[str] = [""] * len(prompts)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        n = max(len(prompts[j]) for j in idx)
        ids = torch.full((len(idx), n), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for k, j in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[k, n - len(prompts[j]):] = torch.as_tensor(prompts[j])
            mask[k, n - len(prompts[j]):] = 1
        with autocast_for(device, bf16):
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gcfg)
        for k, j in enumerate(idx):
            out[j] = tokenizer.decode(gen[k, n:], skip_special_tokens=True).strip()
    return out


def is_encoder_decoder(model: Any) -> bool:
    """T5, BART, Marian (`seq2seq`): the encoder reads the prompt, the decoder writes the answer from scratch."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def seq2seq_stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """An encoder–decoder's answer ends at its EOS token (the tokenizer's and the model's generation EOS ids)."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(gen if isinstance(gen, list) else [gen])]
    return [i for k, i in enumerate(ids) if isinstance(i, int) and i not in ids[:k]]


@torch.inference_mode()
def seq2seq_answers(model: Any, tokenizer: Any, sources: Sequence[str], *, sampling: Sampling = Sampling(),
                    max_length: int = 512, batch_size: int = 16, bf16: bool = False,
                    seed: int | None = None) -> list[str]:
    """An encoder–decoder's output for each source text, in input order: the text as it is (no chat template;
    a T5 task prefix is part of it), cut at `max_length` tokens; the decoder starts from the model's
    `decoder_start_token_id`, keeps its KV cache, and stops at EOS. Batches of similar length, padded right."""
    from .tasks.classification import autocast_for

    if not sources:
        return []
    model.eval()
    device = next(model.parameters()).device
    gcfg = generation_config(sampling, seq2seq_stop_ids(tokenizer, model), tokenizer.pad_token_id)
    if seed is not None:
        torch.manual_seed(seed)
    ids = tokenizer(list(sources), max_length=max_length, truncation=True)["input_ids"]
    order = np.argsort([len(i) for i in ids], kind="stable")[::-1]
    out: list[str] = [""] * len(ids)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = tokenizer.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="pt")
        with autocast_for(device, bf16):
            gen = model.generate(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].to(device), generation_config=gcfg)
        for k, j in enumerate(idx):  # the output starts with the decoder start token: a special token, skipped
            out[j] = tokenizer.decode(gen[k], skip_special_tokens=True).strip()
    return out


@torch.inference_mode()
def stream_answer(model: Any, tokenizer: Any, messages: Messages, on_text: Callable[[str], None], *,
                  sampling: Sampling = Sampling(), max_length: int = 1024, bf16: bool = False) -> str:
    """The assistant's next answer to one conversation, handed to `on_text` piece by piece as it is written
    (transformers' `TextStreamer`: a piece is a whole word, or a character of a script without spaces, so
    bytes of a multi-byte character are never shown apart); returns the whole answer, as `generate_answers`
    would write it. The prompt loses its oldest tokens beyond `max_length`."""
    from transformers import TextStreamer

    from .tasks.causal_lm_sft.encode import prompt_ids, stop_token_ids
    from .tasks.classification import autocast_for

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if is_encoder_decoder(model):  # the source text to the encoder; the decoder's output is all answer
        from .tasks.seq2seq import flatten

        ids = torch.as_tensor([tokenizer(flatten(messages), max_length=max_length, truncation=True)["input_ids"]],
                              device=device)
        stops, start = seq2seq_stop_ids(tokenizer, model), 0
    else:
        ids = torch.as_tensor([prompt_ids(tokenizer, messages, max_length)], device=device)
        stops, start = stop_token_ids(tokenizer, model), ids.shape[1]
    with autocast_for(device, bf16):
        # skip_prompt: the streamer's first piece is the prompt (a decoder-only model) or the decoder start token
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             generation_config=generation_config(sampling, stops, pad),
                             streamer=_Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    return tokenizer.decode(gen[0, start:], skip_special_tokens=True).strip()


def iter_answer(model: Any, tokenizer: Any, messages: Messages, *, sampling: Sampling = Sampling(),
                max_length: int = 1024, bf16: bool = False, stop: threading.Event | None = None) -> Iterator[str]:
    """`stream_answer` as an iterator of pieces (for `st.write_stream`): generation runs in a thread and each
    piece is yielded as soon as it is written; an error in generation is raised here, after the pieces before it.
    Closing the iterator early (Streamlit stops a script when the user acts mid-answer), or setting `stop` (from
    any thread: a server whose client hung up while the iterator is busy in another thread, where it cannot be
    closed), stops the generation at its next piece, so an abandoned answer does not keep the CPU busy."""
    import queue

    pieces: queue.Queue = queue.Queue()
    done = object()
    failed: list[BaseException] = []
    stop = threading.Event() if stop is None else stop

    class _Abandoned(Exception):
        pass

    def put(piece: str) -> None:
        if stop.is_set():
            raise _Abandoned  # raised inside model.generate's streamer: generation ends here
        pieces.put(piece)

    def work() -> None:
        try:
            stream_answer(model, tokenizer, messages, put, sampling=sampling, max_length=max_length, bf16=bf16)
        except _Abandoned:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer's thread
            failed.append(e)
        finally:
            pieces.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (piece := pieces.get()) is not done:
            yield piece
    finally:
        stop.set()
    thread.join()
    if failed:
        raise failed[0]


def as_conversation(prompt: str | Messages, system: str | None = None) -> Messages:
    """A prompt string becomes one user turn (after `system`, if given); a message list is used as is."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return ([{"role": "system", "content": system}] if system else []) + msgs


def load_generator(run_or_model: str | Path, *, trust_remote_code: bool = False,
                   allow_pickle: bool = False) -> tuple[Any, Any, int]:
    """(model, tokenizer, max_length) for a run directory (its fine-tuned model) or for a model: a built-in name,
    a folder, a GGUF file or a hub id (the base model, to chat with before any fine-tuning)."""
    from .config import ModelConfig
    from .errors import RunError
    from .models import load_model_config, load_tokenizer, load_trained, resolve_model_path
    from .rundir import RunDir
    from .tasks import get_task
    from .tasks.classification import model_max_tokens

    run = RunDir(run_or_model)
    if run.exists():
        grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        cfg = run.config(**grants)
        if get_task(cfg.task).auto_model not in GENERATORS:
            raise RunError(f"run {run.name} is a {cfg.task} run: its model classifies, it does not generate text. "
                           f"Use `workbench predict` for it, or give a causal-lm-sft or seq2seq run or a model.")
        if not run.model_dir.exists():
            raise RunError(f"run {run.name} has no final model yet (state: {run.status().get('state')}); wait for "
                           f"it to complete, or resume it.")
        model, tok = load_trained(run.model_dir, **grants)
        return model, tok, cfg.data.max_length
    mcfg = ModelConfig(name_or_path=str(run_or_model), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    tok = load_tokenizer(resolve_model_path(mcfg.name_or_path), mcfg)
    seq2seq = bool(getattr(load_model_config(mcfg), "is_encoder_decoder", False))  # T5, BART, Marian
    model = get_task("seq2seq" if seq2seq else "causal-lm-sft").load_model(mcfg, [], tokenizer=tok)
    model.eval()
    limit = model_max_tokens(model.config, tok)  # T5 has no position table: its tokenizer's 512
    return model, tok, int(min(limit, 2048)) if limit else 512 if seq2seq else 2048
