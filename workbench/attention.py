"""Attention maps: one eager forward pass -> arrays, plus pure functions on those arrays.

Models for inspection are loaded with eager attention (`load_for_attention`): the default `sdpa`
kernel is faster but returns no weights. Training never uses this loader. Everything after the
forward pass is numpy, so the figures, the dashboard and notebooks share one tested path.

Where the prediction is read (the "readout token", `workbench.readout`) is the task's business: a text
classifier reads one token per text ([CLS], or the last token of a decoder); a token classifier
predicts at every word, so the readout is a chosen word's first sub-word (last, for a decoder) and
`with_readout` moves it without another forward pass. A question-answering model reads a question and a
context in the windows its prediction uses (`read_answer`: `question_answering.encode.make_windows`, the
run's doc_stride); the window shown is the one holding the predicted answer, and the readout is the
answer's start token (where its start logit is read).

A model trained with peft's prompt or prefix tuning attends to positions that are not in the text
(`virtual_tokens`). Prompt tuning prepends a trained soft prompt to the input embeddings: its positions are
real queries and keys, so they are kept and shown as tokens `[P1]`..`[Pn]` (marked special) before the text;
every map stays square with rows summing to 1, and an encoder's classifier, which reads position 0, reads
`[P1]`. Prefix tuning adds trained keys/values at every layer but no queries: the attention a text token pays
to the prefix is kept as `virtual_share`, and the maps over the text are renormalised so each row sums to 1
again (what rollout needs): they show how the attention left for the text is split among its tokens.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelError, RunError, WorkbenchError
from .models import is_decoder
from .tasks.token_classification.encode import reading_piece, word_positions
from .readout import (ANSWER_READOUT, NOT_QA, ONE_PER_TEXT, answer_end_position, answer_position, choose_readout,
                      model_task, readout_kind, word_tags)

# Shown instead of tokens that are only whitespace, so an axis label is never blank.
_WHITESPACE = {"\n": "⏎", "\t": "⇥", " ": "␣", "\r": "⏎"}


@dataclass
class AttentionResult:
    """Attention of one input, every layer and (query) head.

    `attentions[l, h, i, j]` is how much token i attends to token j in layer l, head h; each row
    sums to 1. For grouped-query models (e.g. SmolLM2: 9 query heads sharing 3 key/value heads) there
    is one map per query head.
    """

    tokens: list[str]
    attentions: np.ndarray  # (layers, heads, seq, seq) float32
    # The token whose prediction is shown: [CLS] (0) for encoders, the last token for decoders; for a
    # token classifier, the chosen word's first sub-word (last for a decoder).
    readout_index: int
    model_type: str
    truncated: bool = False
    notice: str = ""  # visible message when the input was cut; "" otherwise
    window: tuple[int, int] = (0, 0)  # positions [start, end) of the full tokenised input that are shown
    special: list[bool] = field(default_factory=list)  # True for [CLS]/[SEP]/<s>-style tokens
    input_ids: list[int] = field(default_factory=list)
    probs: np.ndarray | None = None  # class probabilities at the readout token, from the same forward pass
    labels: list[str] = field(default_factory=list)
    n_tokens: int = 0  # length of the whole tokenised input, special tokens included
    readout: str = "sequence"  # "sequence": one prediction per text; "word": one per word (token classification)
    words: list[str] = field(default_factory=list)  # "word": the words of the whole text, as the task splits them
    word_ids: list[int | None] = field(default_factory=list)  # "word": each shown token's word (None: special)
    word_positions: list[int | None] = field(default_factory=list)  # "word": each word's reading piece, or None
    token_probs: np.ndarray | None = None  # "word": (seq, classes) probabilities at every shown token
    readout_word: int | None = None  # "word": the word read out (None for a special token)
    answer: str | None = None  # "answer": the predicted answer over all windows ("" for no answer)
    answer_span: tuple[int, int] = (-1, -1)  # "answer": its characters in the context (-1, -1: no answer)
    answer_tokens: tuple[int, int] | None = None  # "answer": its first and last token here (None: not here)
    start_logits: np.ndarray | None = None  # "answer": the start logit of every shown token
    qa_window: int = 0  # "answer": which of the context's windows is shown
    qa_windows: int = 0  # "answer": how many windows the context is read in
    context_span: tuple[int, int] = (0, 0)  # "answer": the context's characters in the shown window
    # peft prompt or prefix tuning (`virtual_tokens`): "prompt" / "prefix", else "". For "prompt" the first
    # `n_virtual` tokens are the soft prompt ([P1]..[Pn]; `input_ids` holds the text's ids only); for "prefix"
    # they are keys outside the maps, which are renormalised over the text.
    virtual: str = ""
    n_virtual: int = 0
    # (layers, heads, seq): the share of each shown token's attention on the virtual tokens (for "prefix", taken
    # before the renormalisation); None without them.
    virtual_share: np.ndarray | None = None

    @property
    def window_label(self) -> str:
        """Which tokens the prediction and the maps are of, e.g. "tokens 0–255 of 804"."""
        return window_label(self.window, self.n_tokens)

    @property
    def word_tags(self) -> list[str | None]:
        """The predicted tag of every word ("word" readout; None where the word is not shown)."""
        if self.token_probs is None:
            return []
        return word_tags(self.token_probs, self.word_positions, self.labels)

    @property
    def shown_words(self) -> list[int]:
        """"word" readout: the words whose first sub-word is shown (the words of this window)."""
        return [i for i, p in enumerate(self.word_positions) if p is not None]

    @property
    def n_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def start_prob(self) -> float | None:
        """"answer": the start probability of the readout token (softmax over the shown window's start logits)."""
        if self.start_logits is None:
            return None
        z = np.exp(self.start_logits - self.start_logits.max())
        return float(z[self.readout_index] / z.sum())

    @property
    def predicted(self) -> str | None:
        if self.readout == "answer":
            return self.answer or "(no answer)"
        if self.probs is None or not self.labels:
            return None
        return self.labels[int(np.argmax(self.probs))]


@dataclass
class EncodedText:
    """A tokenised input cut to what will be shown (shared by attention and saliency)."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    tokens: list[str]
    special: list[bool]
    truncated: bool
    notice: str
    window: tuple[int, int]
    n_tokens: int = 0  # the whole tokenised input
    words: list[str] = field(default_factory=list)  # a "word" task's words, else []
    word_ids: list[int | None] = field(default_factory=list)  # per kept token: its word (None: special)
    word_positions: list[int | None] = field(default_factory=list)  # per word: its reading piece, if kept

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        out = {"input_ids": torch.tensor([self.input_ids], device=device),
               "attention_mask": torch.ones(1, len(self.input_ids), dtype=torch.long, device=device)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = torch.tensor([self.token_type_ids], device=device)
        return out


# --- loading ---------------------------------------------------------------------------------------
def load_for_attention(source: str | Path | Any, *, base: bool = False, dtype: torch.dtype = torch.float32,
                       trust_remote_code: bool = False, allow_pickle: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) with eager attention, for inspection only; cached, so changing layer/head never reloads.

    `source`: a run directory (its fine-tuned model, LoRA applied), a model folder, or a built-in name.
    `base=True` gives the run's pretrained starting point with the same labels (its head is random:
    only its attention is meant to be compared with the tuned model's); for a plain model it changes
    nothing. `dtype=torch.bfloat16` roughly halves CPU latency on CPUs with bf16 instructions, at
    ~1e-4 mean error in the weights; keep float32 for saliency (gradients) and exact comparisons.
    `trust_remote_code` / `allow_pickle` are the caller's grants: a run directory's own files can never
    turn them on (`workbench.untrusted`).
    """
    path, trained = _locate(source)
    return _load_cached(path, base and trained, dtype, _stamp(path), trust_remote_code, allow_pickle)


def _locate(source: str | Path | Any) -> tuple[str, bool]:
    """Resolve to (folder or hub id, whether it is a workbench-trained model folder)."""
    p = Path(getattr(source, "path", source)).expanduser()
    if (p / "config.yaml").exists() and not (p / "config.json").exists():  # a run directory
        if not (p / "model").is_dir():
            raise RunError(f"run {p.name} has no final model yet (no {p / 'model'}); wait for it to complete, "
                           f"or resume it with `workbench resume {shlex.quote(str(p))}`.")
        p = p / "model"
    if (p / "workbench_model.json").exists() or (p / "adapter_config.json").exists():
        return str(p.resolve()), True
    from .models import resolve_model_path
    resolved = resolve_model_path(str(source))
    return (str(Path(resolved).resolve()) if Path(resolved).exists() else resolved), False


def _stamp(path: str) -> int:
    """Newest weight-file time: part of the cache key, so a re-saved model is loaded afresh."""
    p = Path(path)
    files = list(p.glob("*.safetensors")) if p.is_dir() else []
    return max((f.stat().st_mtime_ns for f in files), default=0)


@lru_cache(maxsize=4)  # a tuned + base pair of two models; SmolLM2 is ~0.5 GB each in float32
def _load_cached(path: str, base: bool, dtype: torch.dtype, stamp: int, trust_remote_code: bool,
                 allow_pickle: bool) -> tuple[Any, Any]:
    from transformers import AutoConfig

    from .config import ModelConfig
    from .models import load_classifier, load_tokenizer, load_trained
    from .untrusted import read_run_model

    d = Path(path)
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if base:
        recorded = read_run_model(d, **grants)
        if recorded is None:
            raise ModelError(f"{d} has no workbench_model.json, so its base model is unknown. Fix: give a run "
                             f"directory written by the workbench.")
        # The run's tokenizer, so base and tuned see identical tokens.
        tok = load_tokenizer(str(d), ModelConfig(name_or_path=str(d),
                                                 trust_remote_code=recorded.base.trust_remote_code))
        # A fixed seed for the new random head: the same base model every time it is loaded.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            from .tasks import get_task  # the run's task: its head, untrained
            model = get_task(recorded.task).load_model(recorded.base, recorded.labels, attn_implementation="eager",
                                                       dtype=dtype, tokenizer=tok)
    elif (d / "workbench_model.json").exists() or (d / "adapter_config.json").exists():
        model, tok = load_trained(d, attn_implementation="eager", dtype=dtype, **grants)
    else:  # a folder, built-in or hub id the user chose: still no code or pickle unless granted
        cfg = ModelConfig(name_or_path=path, **grants)
        tok = load_tokenizer(path, cfg)
        try:
            id2label = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).id2label
        except Exception as e:
            raise ModelError(f"Could not read the config of {path!r}: {type(e).__name__}: {str(e)[:300]}") from None
        labels = [id2label[i] for i in sorted(id2label)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = load_classifier(cfg, labels, attn_implementation="eager", dtype=dtype, tokenizer=tok)
    model.eval()
    return model, tok


# --- tokenising ------------------------------------------------------------------------------------
def readable_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Token strings for people: byte-level 'Ġ'/'Ċ', sentencepiece '▁' and WordPiece '##' markers removed."""
    specials = set(tokenizer.all_special_tokens)
    out = []
    for t in tokenizer.convert_ids_to_tokens(ids):
        if t in specials:
            out.append(t)
            continue
        # Decoding one token turns byte-level symbols back into text ('Ġfilm' -> ' film', 'ä¸Ń' -> '中').
        s = t[2:] if t.startswith("##") and len(t) > 2 else tokenizer.convert_tokens_to_string([t])
        stripped = s.strip()
        out.append(stripped if stripped else "".join(_WHITESPACE.get(c, "␣") for c in s) or t)
    return out


def _tokenise(tokenizer: Any, text: str, text_pair: str | None,
              task: Any = None) -> tuple[Any, list[int], list[bool], int, int, list[str], list[int | None] | None]:
    """(encoding, ids, special mask, leading specials, trailing specials, words, word ids) of the whole input.

    For a task with a "word" readout (`model_task`), the text is split into words and tokenised the way
    that task predicts (`words` and each token's word, None for a special token); else words is [] and
    the word ids None.
    """
    words: list[str] = []
    word_ids: list[int | None] | None = None
    if readout_kind(task) == "word":
        if text_pair is not None:
            raise WorkbenchError("A token-classification model tags a single text; leave out the second text "
                                 "(text_pair / --pair).")
        if not text.strip():
            raise WorkbenchError("The text has no words to tag; give a text with at least one word.")
        words, enc = task.tokenize_words(tokenizer, text)
        word_ids = list(enc.word_ids())
    else:
        enc = tokenizer(text, text_pair, add_special_tokens=True, verbose=False)
    ids = list(enc["input_ids"])
    n = len(ids)
    special = [bool(s) for s in tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)]
    lead = next((i for i, s in enumerate(special) if not s), n)
    trail = next((i for i, s in enumerate(reversed(special)) if not s), 0) if lead < n else 0
    return enc, ids, special, lead, trail, words, word_ids


def _check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 3:
        raise WorkbenchError(f"max_tokens={max_tokens} is too small to show anything; use at least 3.")


def token_windows(tokenizer: Any, text: str, text_pair: str | None = None, *,
                  max_tokens: int = 128, task: Any = None) -> list[tuple[int, int]]:
    """The consecutive windows of at most `max_tokens` that together show the whole input.

    Each is `(start, end)` in positions of the full tokenised input, ready for `encode_text(window=...)`;
    the special tokens at both ends are kept in every window, so the first window starts at 0 and
    the last ends at the input's length. A text that fits gives one window. For a "word" task (a tagger,
    pass its `task`; `attention_maps` uses `model_task(model)`), a window ends before a word rather than
    inside it, so each word's sub-words are all in one window (unless one word is longer than a window).
    """
    _check_max_tokens(max_tokens)
    _, ids, _, lead, trail, _, word_ids = _tokenise(tokenizer, text, text_pair, task)
    n = len(ids)
    budget = max(1, max_tokens - lead - trail)
    spans: list[tuple[int, int]] = []
    s = lead
    while s < n - trail:
        e = min(s + budget, n - trail)
        if word_ids is not None and e < n - trail and word_ids[e] is not None and word_ids[e] == word_ids[e - 1]:
            first = word_ids.index(word_ids[e])  # the word cut by this end: move the end back to its start
            e = first if first > s else e
        spans.append((s, e))
        s = e
    spans = spans or [(lead, n - trail)]
    return [(0 if i == 0 else a, n if b >= n - trail else b) for i, (a, b) in enumerate(spans)]


def word_window(windows: list[tuple[int, int]], tokenizer: Any, text: str, word: int, *, task: Any) -> int:
    """The index of the window in `windows` (from `token_windows`) that holds word `word`'s first sub-word,
    where a tagger reads that word's tag; an error that lists the words when there is no such word."""
    _, ids, _, lead, trail, words, word_ids = _tokenise(tokenizer, text, None, task)
    if word_ids is None:
        raise WorkbenchError(ONE_PER_TEXT)
    w = int(word)
    if not 0 <= w < len(words):
        listed = " ".join(f"{i}:{t}" for i, t in enumerate(words[:12])) + (" ..." if len(words) > 12 else "")
        raise WorkbenchError(f"word {w} does not exist: the text has {len(words)} words, 0..{len(words) - 1} "
                             f"({listed}). Fix: give a word index in that range.")
    if w not in word_ids:
        raise WorkbenchError(f"word {w} ({words[w]!r}) has no tokens (the tokenizer dropped it); choose another word.")
    first = word_ids.index(w)
    return next(i for i, (a, b) in enumerate(windows) if max(a, lead) <= first < min(b, len(ids) - trail))


def window_label(window: tuple[int, int], n_tokens: int) -> str:
    """"tokens 0–255 of 804": how the dashboard and the CLI name a window."""
    return f"tokens {window[0]}–{window[1] - 1} of {n_tokens}"


def pick_window(windows: list[tuple[int, int]], index: int) -> tuple[int, int]:
    """Window number `index` (0-based; -1 for the last), or an error that lists the windows there are."""
    n = len(windows)
    if not -n <= index < n:
        listing = ", ".join(f"{i} = {window_label(w, windows[-1][1])}" for i, w in enumerate(windows[:8]))
        raise WorkbenchError(f"window {index} does not exist: this text has {windows[-1][1]} tokens, shown in "
                             f"{n} window{'s' if n != 1 else ''} ({listing}{', ...' if n > 8 else ''}). Fix: choose a "
                             f"window from 0 to {n - 1} (`--window` on the command line), or raise max_tokens to "
                             f"see more at once.")
    return windows[index]


def encode_text(tokenizer: Any, text: str, text_pair: str | None = None, *, max_tokens: int = 128,
                window: tuple[int, int] | None = None, task: Any = None, piece: str = "first") -> EncodedText:
    """Tokenise and cut to at most `max_tokens`, keeping the special tokens at both ends.

    `window=(start, end)` picks positions of the full tokenised input (`token_windows` lists the ones
    that cover it); the kept tokens are re-numbered from the start, so the model sees them as a short
    input of their own (an approximation of how they behave in context, which is what makes long
    texts inspectable at all). For a task with a "word" readout (`model_task`), the text is split into
    words and tokenised the way that task predicts, and the result maps tokens to words (`token_windows`
    must then be given the same `task`, so its positions are of the same tokenisation); `piece` is the
    sub-word each word is read at (`reading_piece(model)`: "first", or "last" for a decoder).
    """
    _check_max_tokens(max_tokens)
    enc, ids, special, lead, trail, words, word_ids = _tokenise(tokenizer, text, text_pair, task)
    n = len(ids)
    budget = max_tokens - lead - trail
    start, end = lead, n - trail
    if window is not None:
        ws, we = int(window[0]), int(window[1])
        if not 0 <= ws < we <= n:
            raise WorkbenchError(f"window={window} is outside this input, which has {n} tokens. Fix: give "
                                 f"(start, end) with 0 <= start < end <= {n}.")
        start, end = max(ws, lead), min(we, n - trail)
        if start >= end:
            raise WorkbenchError(f"window={window} holds only special tokens; widen it (the text is at "
                                 f"positions {lead}..{n - trail - 1}).")
    if end - start > budget:
        end = start + budget
    keep = list(range(lead)) + list(range(start, end)) + list(range(n - trail, n))
    truncated = (end - start) < (n - lead - trail)
    # Report the window in full-input positions, counting the end specials when they are adjacent.
    shown = (0 if start == lead else start, n if end == n - trail else end)
    notice = ""
    if truncated:
        notice = (f"Input is {n} tokens; showing positions {shown[0]}–{shown[1] - 1} (max_tokens={max_tokens}"
                  f"{', special tokens kept' if lead + trail else ''}). Choose another window to see the rest.")
    tti = enc.get("token_type_ids")
    kept_words: list[int | None] = []
    positions: list[int | None] = []
    if word_ids is not None:
        kept_words = [word_ids[i] for i in keep]
        # A word's prediction is read at its reading piece (first sub-word; last for a decoder): a word whose
        # reading piece was cut has none here.
        read_at = word_positions(word_ids, piece)
        where = {full: k for k, full in enumerate(keep)}
        positions = [where.get(read_at[w]) if w in read_at else None for w in range(len(words))]
    return EncodedText(input_ids=[ids[i] for i in keep],
                       token_type_ids=[tti[i] for i in keep] if tti is not None else None,
                       tokens=readable_tokens(tokenizer, [ids[i] for i in keep]),
                       special=[special[i] for i in keep], truncated=truncated, notice=notice, window=shown,
                       n_tokens=n, words=list(words), word_ids=kept_words, word_positions=positions)


def class_labels(model: Any) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label.get(i, i)) for i in range(int(getattr(model.config, "num_labels", len(id2label))))]


def with_readout(result: AttentionResult, word: int | None = None, position: int | None = None) -> AttentionResult:
    """The same attention read out at another token (a token classifier's word or token position); the
    maps are unchanged, so no forward pass is needed. For a text classifier, only the default is valid; a
    question-answering model takes a `position` (default: the answer's start token)."""
    if result.readout == "answer":
        if word is not None:
            raise WorkbenchError(ANSWER_READOUT)
        if position is None:
            return result
        p = int(position)
        if not 0 <= p < len(result.tokens):
            raise WorkbenchError(f"token position {p} does not exist: {len(result.tokens)} tokens are shown "
                                 f"(0..{len(result.tokens) - 1}).")
        return dataclasses.replace(result, readout_index=p)
    if result.readout != "word" or result.token_probs is None:
        if word is not None or position is not None:
            raise WorkbenchError(ONE_PER_TEXT)
        return result
    pos, w = choose_readout(result.words, result.word_positions, result.word_ids, result.word_tags, word=word,
                            position=position)
    return dataclasses.replace(result, readout_index=pos, readout_word=w, probs=result.token_probs[pos])


# --- the forward pass ------------------------------------------------------------------------------
# peft types whose model attends to trained positions that are not in the text (`virtual_tokens`).
_VIRTUAL = {"PROMPT_TUNING": "prompt", "P_TUNING": "prompt", "MULTITASK_PROMPT_TUNING": "prompt",
            "PREFIX_TUNING": "prefix"}


def virtual_tokens(model: Any) -> tuple[str, int]:
    """("prompt", n) for a peft prompt-tuned model (n soft-prompt positions prepended to the input), ("prefix", n)
    for a prefix-tuned one (n trained keys/values at every layer), else ("", 0); read from its active adapter."""
    configs = getattr(model, "peft_config", None)
    name = getattr(model, "active_adapter", None)
    if not isinstance(configs, dict) or not isinstance(name, str) or name not in configs:
        return "", 0
    cfg = configs[name]
    kind = _VIRTUAL.get(str(getattr(cfg.peft_type, "value", cfg.peft_type)), "")
    return (kind, int(cfg.num_virtual_tokens)) if kind else ("", 0)


def _split_virtual(model: Any, att: np.ndarray, n_text: int) -> tuple[np.ndarray, str, int, np.ndarray | None]:
    """(maps, kind, n, share) from the raw (layers, heads, queries, keys) attention of `n_text` text tokens.

    Prompt tuning: queries = keys = n + n_text, the soft prompt first; the maps are kept whole. Prefix tuning:
    n_text queries over n + n_text keys, the prefix first; the maps over the text are renormalised (rows sum to
    1). `share` (layers, heads, queries) is the attention each query pays to the virtual positions."""
    kind, n = virtual_tokens(model)
    q, k = att.shape[-2:]
    expected = {"prompt": (n + n_text, n + n_text), "prefix": (n_text, n + n_text)}.get(kind, (n_text, n_text))
    if (q, k) != expected:
        raise ModelError(f"{type(model).__name__} returned attention maps of {q} x {k} positions for {n_text} tokens"
                         f"{f' and {n} {kind}-tuning virtual tokens' if kind else ''} (expected {expected[0]} x "
                         f"{expected[1]}); this model's attention cannot be lined up with its tokens.")
    if not kind:
        return att, "", 0, None
    share = att[..., :n].sum(-1)
    if kind == "prompt":
        return att, kind, n, share
    text = att[..., n:]
    total = text.sum(-1, keepdims=True)
    return (text / np.where(total > 0, total, 1.0)).astype(np.float32), kind, n, share


def soft_prompt_tokens(n: int) -> list[str]:
    """How a prompt-tuned model's n soft-prompt positions are labelled: [P1]..[Pn]."""
    return [f"[P{i + 1}]" for i in range(n)]


def virtual_note(result: AttentionResult, layer: int | None = None, head: int | None = None) -> str:
    """One line on the attention the virtual tokens get ("" without them): the readout token's share in `layer` /
    `head` (None: the mean over layers / heads), its mean over all layers, and the mean over the text's tokens."""
    if not result.virtual or result.virtual_share is None:
        return ""
    share = result.virtual_share
    r = result.readout_index
    at = float(select(share, layer, head)[r])
    where = (f"layer {_index(layer, result.n_layers, 'layer')}" if layer is not None else "mean of layers") + \
        (", head average" if head is None else f", head {_index(head, result.n_heads, 'head')}")
    text_rows = share[:, :, result.n_virtual:] if result.virtual == "prompt" else share
    overall = float(text_rows.mean())
    n = result.n_virtual
    if result.virtual == "prompt":
        what = (f"prompt tuning: {n} soft-prompt positions [P1]–[P{n}] are prepended to the text (shown as special "
                f"tokens; they have queries and keys like the text's)")
    else:
        what = (f"prefix tuning: {n} trained key/value positions at every layer, attended to but not shown (they "
                f"have no queries); the maps show the rest of each row, renormalised over the text tokens")
    return (f"{what}. The readout token {result.tokens[r]!r} (position {r}) pays {at:.1%} of its attention to them "
            f"({where}; {float(share[:, :, r].mean()):.1%} over all layers and heads); the text's tokens pay "
            f"{overall:.1%} on average.")


def attention_maps(model: Any, tokenizer: Any, text: str, text_pair: str | None = None, *, max_tokens: int = 128,
                   window: tuple[int, int] | int | None = None, word: int | None = None,
                   position: int | None = None, context: str | None = None,
                   qa: "QASettings | None" = None) -> AttentionResult:
    """Attention of every layer and head for one input (one forward pass, no gradients).

    For a token classifier, `word` / `position` choose the readout token (see `choose_readout`); the
    default is the first word predicted as an entity. A text classifier takes neither.

    A question-answering model reads `text` as the question about `context`, in windows of `max_tokens`
    tokens (its run's data.max_length gives exactly what prediction reads) with `qa`'s doc_stride
    (`read_answer`); `window` is then a window's index (default: the one holding the predicted answer) and
    the readout is the answer's start token (`position` moves it).
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise ModelError(f"This model uses {impl!r} attention, which returns no attention weights. Fix: load it "
                         f"with `workbench.attention.load_for_attention(...)` or attn_implementation='eager'.")
    task = model_task(model)
    if readout_kind(task) == "answer":
        return _answer_attention(model, tokenizer, text, context, max_tokens=max_tokens, window=window,
                                 word=word, position=position, qa=qa, text_pair=text_pair)
    if context is not None:
        raise WorkbenchError(NOT_QA)
    if readout_kind(task) != "word" and (word is not None or position is not None):
        raise WorkbenchError(ONE_PER_TEXT)
    enc = encode_text(tokenizer, text, text_pair, max_tokens=max_tokens, window=window, task=task,
                      piece=reading_piece(model))
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**enc.tensors(device), output_attentions=True)
    if not out.attentions:
        raise ModelError(f"{type(model).__name__} returned no attention weights; eager attention is required.")
    att = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    att, kind, n_virtual, share = _split_virtual(model, att, len(enc.input_ids))
    virtual = {"virtual": kind, "n_virtual": n_virtual, "virtual_share": share}
    tokens, special = enc.tokens, enc.special
    if kind == "prompt":  # the soft prompt is part of the sequence the model reads: show it as tokens
        tokens, special = soft_prompt_tokens(n_virtual) + tokens, [True] * n_virtual + special
    probs = torch.softmax(out.logits[0].float(), -1).cpu().numpy()
    if readout_kind(task) == "word":  # probs is (seq, classes): a prediction at every token
        if kind == "prompt":  # peft and the task refuse to train this (task_problem); say so rather than misalign
            raise ModelError("A token classifier with a soft prompt (peft prompt tuning) predicts at the prompt's "
                             "positions too, which the words cannot be lined up with; use a prefix-tuned or LoRA run.")
        result = AttentionResult(
            tokens=tokens, attentions=att, readout_index=0, model_type=getattr(model.config, "model_type", ""),
            truncated=enc.truncated, notice=enc.notice, window=enc.window, special=special,
            input_ids=enc.input_ids, labels=class_labels(model), readout="word", words=enc.words,
            word_ids=enc.word_ids, word_positions=enc.word_positions, token_probs=probs, n_tokens=enc.n_tokens,
            **virtual)
        return with_readout(result, word, position)
    # An encoder's head reads position 0 ([CLS]; with a soft prompt, [P1]); a decoder's the last token.
    return AttentionResult(
        tokens=tokens, attentions=att, readout_index=len(tokens) - 1 if is_decoder(model) else 0,
        model_type=getattr(model.config, "model_type", ""), truncated=enc.truncated, notice=enc.notice,
        window=enc.window, special=special, input_ids=enc.input_ids, probs=probs, labels=class_labels(model),
        n_tokens=enc.n_tokens, **virtual)


# --- question answering: read out at the predicted answer's start token ---------------------------
@dataclass(frozen=True)
class QASettings:
    """How a question-answering run reads a context (its data.* settings; `qa_settings` reads a run's)."""

    max_length: int = 384  # the window, question included, in tokens
    doc_stride: int = 128
    max_answer_length: int = 30
    null_threshold: float = 0.0
    allow_null: bool = False  # the run was trained with unanswerable questions, so "no answer" is possible


def qa_settings(source: str | Path | Any) -> QASettings:
    """A question-answering run's reading settings (a run directory or its `model` folder), else the defaults.
    Only numbers are read from the run's untrusted files."""
    from .config import DataConfig, RunConfig
    from .rundir import RunDir

    d = DataConfig()
    p = Path(getattr(source, "path", source)).expanduser()
    for run in (p, p.parent):
        if (run / "config.yaml").is_file() and not (run / "config.json").exists():
            try:
                cfg = RunConfig.from_yaml(run / "config.yaml").data
                labels = RunDir(run).labels()
            except Exception:
                break  # a damaged run: its other pages say so; read with the defaults here
            return QASettings(int(cfg.max_length), int(cfg.doc_stride), int(cfg.max_answer_length),
                              float(cfg.null_threshold), "no answer" in labels)
    return QASettings(int(d.max_length), int(d.doc_stride), int(d.max_answer_length), float(d.null_threshold))


@dataclass
class QAReading:
    """A question read in its context as prediction reads it, and the window to show."""

    enc: EncodedText  # the shown window
    answer: Any  # the best answer over all windows (`question_answering.encode.Answer`)
    window: int  # the shown window's index
    n_windows: int
    readout: int  # token position in the shown window: the answer's start (or this window's best start)
    answer_tokens: tuple[int, int] | None  # the answer's first and last token in the shown window
    start_logits: np.ndarray
    end_logits: np.ndarray
    context_span: tuple[int, int]  # the context's characters in the shown window
    doc_stride: int


def read_answer(model: Any, tokenizer: Any, question: str, context: str | None, *, max_length: int = 384,
                qa: QASettings | None = None, window: int | None = None) -> QAReading:
    """Predict the answer the way `workbench predict` does (`make_windows`, `window_logits`, `best_answer` over
    every window) and pick the window to show: `window` (an index), else the one holding the answer (the
    first when there is none). The readout is the answer's start token in it; in another window, the start of
    that window's own best span; with no answer, the null position (where "no answer" is read)."""
    from .tasks.classification import model_max_tokens
    from .tasks.question_answering import N_BEST
    from .tasks.question_answering.encode import best_answer, make_windows, window_logits

    qa = qa or QASettings()
    if context is None:
        raise WorkbenchError("A question-answering model reads a question and a context: give the context "
                             "(context=..., or --context \"the text that holds the answer\" on the command line).")
    if not str(question).strip() or not str(context).strip():
        raise WorkbenchError("The question or the context is empty: give a question and the text to find its "
                             "answer in.")
    max_length = min(int(max_length), model_max_tokens(model.config, tokenizer) or int(max_length))
    stride = min(qa.doc_stride, max_length // 2)
    win = make_windows(tokenizer, [question], [context], max_length, stride)
    logits = window_logits(model, tokenizer, win)
    per = [(s, e, win.offsets[w], win.null_index[w]) for w, (s, e) in enumerate(logits)]
    answer = best_answer(context, per, n_best=N_BEST, max_answer_length=qa.max_answer_length,
                         allow_null=qa.allow_null, null_threshold=qa.null_threshold)
    n = len(win)
    if window is None:
        w = answer.window if answer.window >= 0 else 0
    else:
        if not -n <= int(window) < n:
            raise WorkbenchError(f"window {window} does not exist: this context is read in {n} window"
                                 f"{'s' if n != 1 else ''} of {max_length} tokens (0..{n - 1}). Fix: choose a window "
                                 f"from 0 to {n - 1}, or leave it out to see the one holding the answer.")
        w = int(window) % n
    s, e = logits[w]
    offsets = win.offsets[w]
    here = answer if w == answer.window else best_answer(context, [per[w]], n_best=N_BEST,
                                                          max_answer_length=qa.max_answer_length)
    readout = answer_tokens = None
    if here.text:
        readout = answer_position(offsets, s, here.start)
        end = answer_end_position(offsets, e, readout, here.end) if readout is not None else None
        answer_tokens = (readout, end) if readout is not None and end is not None and w == answer.window else None
    if readout is None:
        readout = win.null_index[w]
    ids = list(win.columns["input_ids"][w])
    tti = win.columns.get("token_type_ids")
    ctx = [o for o in offsets if o is not None]
    span = (ctx[0][0], ctx[-1][1]) if ctx else (0, 0)
    notice = ""
    if n > 1:
        notice = (f"The context is longer than one window ({max_length} tokens with the question): it is read in {n} "
                  f"windows overlapping by {stride} tokens. Showing window {w} (context characters {span[0]}–"
                  f"{span[1]}){', the one holding the answer' if w == answer.window else ''}.")
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    enc = EncodedText(input_ids=ids, token_type_ids=list(tti[w]) if tti is not None else None,
                      tokens=readable_tokens(tokenizer, ids), special=[bool(x) for x in special],
                      truncated=n > 1, notice=notice, window=(0, len(ids)), n_tokens=len(ids))
    return QAReading(enc, answer, w, n, int(readout), answer_tokens, np.asarray(s), np.asarray(e), span, stride)


def _answer_attention(model: Any, tokenizer: Any, question: str, context: str | None, *, max_tokens: int,
                      window: Any, word: int | None, position: int | None, qa: QASettings | None,
                      text_pair: str | None) -> AttentionResult:
    if word is not None:
        raise WorkbenchError(ANSWER_READOUT)
    if text_pair is not None:
        raise WorkbenchError("A question-answering model reads a question and a context: give the context as "
                             "context= (--context), not as a second text (--pair).")
    if window is not None and not isinstance(window, (int, np.integer)):
        raise WorkbenchError(f"window={window!r}: a question-answering model's windows are numbered (0, 1, ...), "
                             f"as the context is read in overlapping windows; give a window's index.")
    reading = read_answer(model, tokenizer, question, context, max_length=max_tokens, qa=qa, window=window)
    enc = reading.enc
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**enc.tensors(device), output_attentions=True)
    if not out.attentions:
        raise ModelError(f"{type(model).__name__} returned no attention weights; eager attention is required.")
    att = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    att, kind, n_virtual, share = _split_virtual(model, att, len(enc.input_ids))
    if kind == "prompt":  # peft and the task refuse to train this (task_problem)
        raise ModelError("A question-answering model with a soft prompt (peft prompt tuning) has start/end logits at "
                         "the prompt's positions too, which the context cannot be lined up with; use a prefix-tuned "
                         "or LoRA run.")
    a = reading.answer
    result = AttentionResult(
        tokens=enc.tokens, attentions=att, readout_index=reading.readout,
        model_type=getattr(model.config, "model_type", ""), truncated=enc.truncated, notice=enc.notice,
        window=enc.window, special=enc.special, input_ids=enc.input_ids, n_tokens=enc.n_tokens, readout="answer",
        labels=["answer start", "answer end"], answer=a.text, answer_span=(a.start, a.end),
        answer_tokens=reading.answer_tokens, start_logits=out.start_logits[0].float().cpu().numpy(),
        qa_window=reading.window, qa_windows=reading.n_windows, context_span=reading.context_span,
        virtual=kind, n_virtual=n_virtual, virtual_share=share)
    return with_readout(result, position=position)


# --- the prediction for the whole text ------------------------------------------------------------
@dataclass
class TextPrediction:
    """The prediction for a whole text as normal prediction makes it (`workbench predict`, the evaluation):
    the input cut to `max_length` tokens, not a window of it."""

    probs: np.ndarray
    labels: list[str]
    n_tokens: int  # the whole tokenised input
    max_length: int  # the tokens normal prediction reads (the run's data.max_length, capped at the model's limit)
    word: int | None = None  # a token classifier: the word whose tag this is
    word_cut: bool = False  # that word lies past max_length: normal prediction tags it O without reading it

    @property
    def predicted(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.max_length

    @property
    def label(self) -> str:
        seen = (f"its first {self.max_length} of {self.n_tokens} tokens" if self.truncated
                else f"all {self.n_tokens} tokens")
        if self.word is None:
            return f"prediction for the whole text, as normal prediction sees it ({seen})"
        cut = "; this word is past them, so it is tagged O unread" if self.word_cut else ""
        return f"tag of word {self.word} in the whole text, as normal prediction sees it ({seen}{cut})"


def prediction_max_length(source: str | Path | Any) -> int:
    """The tokens normal prediction reads for `source`: a run's `data.max_length` (a run directory, or the
    `model` folder inside one), else the default `data.max_length`."""
    from .config import DataConfig, RunConfig

    p = Path(getattr(source, "path", source)).expanduser()
    for run in (p, p.parent):
        if (run / "config.yaml").is_file() and not (run / "config.json").exists():
            try:  # only a number is read from this untrusted file: no grant can come from it
                return int(RunConfig.from_yaml(run / "config.yaml").data.max_length)
            except Exception:
                break  # a damaged config: the run's other pages report it; use the default here
    return DataConfig().max_length


def whole_text_prediction(model: Any, tokenizer: Any, text: str, text_pair: str | None = None, *,
                          max_length: int, word: int | None = None) -> TextPrediction:
    """Class probabilities for the whole text through the same path as `workbench predict`; for a token
    classifier, word `word`'s tag probabilities through the task's prediction (`predict_word_probs`)."""
    from .predict import Predictor
    from .tasks.classification import model_max_tokens

    labels = class_labels(model)
    effective = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
    task = model_task(model)
    if readout_kind(task) == "word":
        from .tasks.token_classification.encode import predict_word_probs

        _, ids, _, _, trail, words, word_ids = _tokenise(tokenizer, text, text_pair, task)
        w = 0 if word is None else int(word)
        if not 0 <= w < len(words):
            raise WorkbenchError(f"word {w} does not exist: the text has {len(words)} words, 0..{len(words) - 1}.")
        probs = predict_word_probs(model, tokenizer, [words], max_length=max_length)[0][w]
        at = word_positions(word_ids, reading_piece(model)).get(w, len(ids))  # where the word's tag is read
        return TextPrediction(probs=probs, labels=labels, n_tokens=len(ids), max_length=effective, word=w,
                              word_cut=len(ids) > effective and at >= effective - trail)
    if word is not None:
        raise WorkbenchError(ONE_PER_TEXT)
    probs = Predictor(model, tokenizer, labels, max_length).predict_proba([text], None if text_pair is None
                                                                         else [text_pair])[0]
    n = len(tokenizer(text, text_pair, add_special_tokens=True, verbose=False)["input_ids"])
    return TextPrediction(probs=probs, labels=labels, n_tokens=n, max_length=effective)


# --- pure functions on arrays ----------------------------------------------------------------------
def head_average(att: np.ndarray, layer: int | None = None) -> np.ndarray:
    """Mean over heads: (layers, seq, seq), or (seq, seq) for one layer (negative indices count from the end)."""
    avg = np.asarray(att, dtype=np.float32).mean(axis=1)
    return avg if layer is None else avg[_index(layer, avg.shape[0], "layer")]


def attention_rollout(att: np.ndarray, add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): how much each top-layer token draws on each input token.

    Per layer: average the heads, add the identity for the residual stream and renormalise rows,
    then compose layers bottom-up (R = A_L ... A_2 A_1). Returns (seq, seq) with rows summing to 1.
    """
    layers = head_average(att).astype(np.float64)  # float64: 30 matrix products stay exact enough
    eye = np.eye(layers.shape[-1])
    rollout = eye
    for a in layers:
        if add_residual:
            a = a + eye
            a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout.astype(np.float32)


def readout_attention(result: AttentionResult) -> np.ndarray:
    """(layers, heads, seq): attention from the readout token ([CLS], the last token, or a tagger's chosen word)."""
    return result.attentions[:, :, result.readout_index, :]


def select(att: np.ndarray, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """One (seq, seq) map: a layer (None: mean over layers) and a head (None: mean over heads)."""
    a = np.asarray(att, dtype=np.float32)
    a = a.mean(axis=0) if layer is None else a[_index(layer, a.shape[0], "layer")]
    return a.mean(axis=0) if head is None else a[_index(head, a.shape[0], "head")]


def attention_difference(base: AttentionResult, tuned: AttentionResult, layer: int | None = None,
                         head: int | None = None) -> np.ndarray:
    """(seq, seq) tuned - base: where fine-tuning moved attention (positive: attends more after tuning).

    A prompt-tuned model shows its soft prompt [P1]..[Pn] before the text, which the base model has not got: the
    difference is then over the prompt-tuned model's positions, the base model's attention to the soft prompt
    counted as 0 and its soft-prompt rows (queries it does not have) NaN. A prefix-tuned model's maps are over the
    text (renormalised), as the base model's."""
    b, t = _aligned(base, tuned)
    return select(t, layer, head) - select(b, layer, head)


def readout_difference(base: AttentionResult, tuned: AttentionResult, layer: int | None = None,
                       head: int | None = None) -> np.ndarray:
    """(seq,) the readout token's attention, tuned - base, over the positions `attention_difference` uses.

    Each model's own readout row: with a soft prompt an encoder's classifier reads [P1], where the base model read
    [CLS], and this compares what the classifier reads from before and after tuning."""
    b, t = _aligned(base, tuned)
    rb, rt = base.readout_index + (b.shape[-2] - base.attentions.shape[-2]), tuned.readout_index + \
        (t.shape[-2] - tuned.attentions.shape[-2])
    return select(t[:, :, rt, :], layer, head) - select(b[:, :, rb, :], layer, head)


def _aligned(base: AttentionResult, tuned: AttentionResult) -> tuple[np.ndarray, np.ndarray]:
    """The two results' maps over the same positions (a soft prompt only one of them has: padded in the other,
    0 attention to it, NaN rows for its queries)."""
    nb = base.n_virtual if base.virtual == "prompt" else 0
    nt = tuned.n_virtual if tuned.virtual == "prompt" else 0
    if base.tokens[nb:] != tuned.tokens[nt:] or base.input_ids != tuned.input_ids:
        raise WorkbenchError(f"Cannot compare attention over different tokens ({len(base.tokens)} vs "
                             f"{len(tuned.tokens)} tokens). Fix: use the same text, tokenizer and max_tokens/window "
                             f"for both models.")
    if base.attentions.shape[:2] != tuned.attentions.shape[:2]:
        raise WorkbenchError(f"The models have different layer/head counts ({base.attentions.shape[:2]} vs "
                             f"{tuned.attentions.shape[:2]}); compare a run with its own base model.")
    if nb != nt and min(nb, nt) > 0:
        raise WorkbenchError(f"The models have soft prompts of different lengths ({nb} vs {nt}); compare a run with "
                             f"its own base model.")
    n = max(nb, nt)
    return _pad_prompt(base.attentions, n - nb), _pad_prompt(tuned.attentions, n - nt)


def _pad_prompt(att: np.ndarray, n: int) -> np.ndarray:
    if not n:
        return att
    layers, heads, q, k = att.shape
    out = np.zeros((layers, heads, q + n, k + n), dtype=np.float32)
    out[:, :, :n, :] = np.nan
    out[:, :, n:, n:] = att
    return out


def top_tokens(weights: np.ndarray, tokens: list[str], k: int = 5,
               special: list[bool] | None = None) -> list[tuple[int, str, float]]:
    """The k highest weights as (position, token, weight), skipping special tokens when a mask is given."""
    order = np.argsort(-np.asarray(weights), kind="stable")
    keep = [i for i in order if not (special and special[i])]
    return [(int(i), tokens[i], float(weights[i])) for i in keep[:k]]


def _index(i: int, n: int, what: str) -> int:
    if not -n <= i < n:
        raise WorkbenchError(f"{what} {i} does not exist: this model has {n} {what}s (0..{n - 1}, or -1 for the last).")
    return i % n
