"""Token saliency: which input tokens pushed a class logit up or down.

Two methods over the input (word) embeddings:
  - `grad`: gradient x input, one backward pass; fast, but only a local linear picture.
  - `ig`: integrated gradients (Sundararajan et al. 2017) from a baseline input to the real one. Its
    attributions add up to f(x) - f(baseline) (completeness); the gap left is reported so a reader
    can tell whether enough steps were taken.

For a token classifier the explained logit is a chosen token's (a word's first sub-word, or last for a
decoder, the same
readout as `workbench.attention`): which input tokens made the model tag THAT word as it did. For a
question-answering model it is the start logit at the predicted answer's start token, in the window
prediction found it in (`workbench.attention.read_answer`): which tokens of the question and the context
made the model start the answer there.

Written in plain torch rather than with captum: the whole method is a few tensor lines here, and
captum would add matplotlib and four more packages to the install for it. Works for any model that
accepts `inputs_embeds` (BERT-likes, Llama-likes, PEFT-wrapped ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .attention import QASettings, class_labels, encode_text, read_answer, reading_piece
from .errors import WorkbenchError
from .readout import ANSWER_READOUT, NOT_QA, ONE_PER_TEXT, choose_readout, model_task, readout_kind, word_tags

Method = Literal["ig", "grad"]
Integration = Literal["gausslegendre", "riemann"]
Baseline = Literal["pad", "zero"]


@dataclass
class SaliencyResult:
    """Per-token attributions for one class logit (positive: the token raised it)."""

    tokens: list[str]
    scores: np.ndarray  # (seq,) float32
    target: int
    target_label: str
    predicted: int
    predicted_label: str
    method: str
    completeness_gap: float | None = None  # IG only: |sum(scores) - (f(x) - f(baseline))|
    delta: float | None = None  # IG only: f(x) - f(baseline), the amount the scores should add up to
    probs: np.ndarray | None = None
    special: list[bool] = field(default_factory=list)
    truncated: bool = False
    notice: str = ""
    n_steps: int = 0
    readout_index: int | None = None  # token classifier: the position whose logit is explained
    readout_word: int | None = None  # token classifier: that token's word (None for a special token)
    words: list[str] = field(default_factory=list)  # token classifier: the words of the text

    @property
    def relative_gap(self) -> float | None:
        """The completeness gap as a share of |f(x) - f(baseline)| (small means the integral converged)."""
        if self.completeness_gap is None or self.delta is None:
            return None
        return self.completeness_gap / max(abs(self.delta), 1e-12)


def resolve_target(model: Any, target: int | str | None, predicted: int) -> int:
    """A class id from an id, a label name, or None (the predicted class)."""
    labels = class_labels(model)
    if target is None:
        return predicted
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in labels:
            raise WorkbenchError(f"Class {target!r} is not one of this model's labels: {labels}.")
        return labels.index(target)
    t = int(target)
    if not 0 <= t < len(labels):
        raise WorkbenchError(f"Class id {t} does not exist: this model has {len(labels)} classes {labels}.")
    return t


def integration_points(n_steps: int, integration: Integration = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1] whose weighted sum approximates an integral over the path."""
    if n_steps < 1:
        raise WorkbenchError(f"n_steps must be at least 1 (got {n_steps}).")
    if integration == "gausslegendre":
        # Exact for polynomials of degree 2n-1: far fewer steps than Riemann for the same gap.
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return (x + 1) / 2, w / 2
    if integration == "riemann":  # midpoint rule
        return (np.arange(n_steps) + 0.5) / n_steps, np.full(n_steps, 1.0 / n_steps)
    raise WorkbenchError(f"integration={integration!r}: use 'gausslegendre' or 'riemann'.")


def token_saliency(model: Any, tokenizer: Any, text: str, text_pair: str | None = None, *,
                   target: int | str | None = None, method: Method = "ig", n_steps: int = 32,
                   integration: Integration = "gausslegendre", baseline: Baseline = "pad",
                   max_tokens: int = 128, window: tuple[int, int] | None = None,
                   batch_size: int = 16, word: int | None = None, position: int | None = None,
                   context: str | None = None, qa: QASettings | None = None) -> SaliencyResult:
    """Attribute the `target` class logit (default: the predicted class) to the input tokens.

    For a token classifier the logit is the readout token's: `word` / `position` choose it (default:
    the first word predicted as an entity; see `workbench.readout.choose_readout`).

    Baseline for IG: every non-special token replaced by the pad token's embedding (`pad`) or by a
    zero vector (`zero`); special tokens ([CLS], [SEP], <s>) stay, so they get no attribution.
    A zero vector suits Llama-style models badly: RMSNorm jumps to full scale as soon as the path
    leaves 0, and no step count integrates that; a large `completeness_gap` is the sign.
    Cost: one forward+backward per step (`grad`: one), in batches of `batch_size`.

    A question-answering model reads `text` as the question about `context` (windows of `max_tokens`, `qa`'s
    doc_stride; `window` a window's index, default the one holding the answer); the explained logit is the
    start logit at the answer's start token (`position` moves it; `target="end"` explains the end logit there).
    """
    if method not in ("ig", "grad"):
        raise WorkbenchError(f"method={method!r}: use 'ig' (integrated gradients) or 'grad' (gradient x input).")
    model.eval()
    task = model_task(model)
    if readout_kind(task) == "answer":
        return _answer_saliency(model, tokenizer, text, context, method=method, n_steps=n_steps,
                                integration=integration, baseline=baseline, max_tokens=max_tokens, window=window,
                                batch_size=batch_size, word=word, position=position, qa=qa, target=target)
    if context is not None:
        raise WorkbenchError(NOT_QA)
    per_word = readout_kind(task) == "word"
    if not per_word and (word is not None or position is not None):
        raise WorkbenchError(ONE_PER_TEXT)
    enc = encode_text(tokenizer, text, text_pair, max_tokens=max_tokens, window=window, task=task,
                      piece=reading_piece(model))
    device = next(model.parameters()).device
    inputs = enc.tensors(device)
    ids = inputs.pop("input_ids")
    embed = model.get_input_embeddings()
    labels = class_labels(model)
    pos = readout_word = None
    with torch.no_grad():
        x = embed(ids).detach()  # (1, seq, hidden)
        logits = _forward(model, x, inputs)[0].float()
    if per_word:  # (seq, classes), a prediction at every token: choose the one to explain
        every = torch.softmax(logits, -1).cpu().numpy()
        pos, readout_word = choose_readout(enc.words, enc.word_positions, enc.word_ids,
                                           word_tags(every, enc.word_positions, labels), word=word, position=position)
        logits = logits[pos]
    probs = torch.softmax(logits, -1).cpu().numpy()
    predicted = int(probs.argmax())
    t = resolve_target(model, target, predicted)

    common = dict(tokens=enc.tokens, target=t, target_label=labels[t], predicted=predicted,
                  predicted_label=labels[predicted], probs=probs, special=enc.special, truncated=enc.truncated,
                  notice=enc.notice, readout_index=pos, readout_word=readout_word, words=enc.words)
    return _attribute(model, x, inputs, ids, enc, tokenizer, logits, t, pos, method, n_steps, integration, baseline,
                      batch_size, common)


def _forward(model: Any, embeds: torch.Tensor, inputs: dict[str, torch.Tensor],
             position: int | None = None) -> torch.Tensor:
    """Logits for a batch of embedded copies of one input (masks repeated to the batch size): (batch, classes),
    or for a token classifier (batch, seq, classes), or with `position` that token's row, (batch, classes).
    A question-answering model's start and end logits are its two "classes" per token."""
    n = embeds.shape[0]
    extra = {k: v.expand(n, -1) for k, v in inputs.items()}
    # One unpadded sequence per row: decoder classifiers then read the last position, which is right.
    out = model(inputs_embeds=embeds, **extra)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = torch.stack([out.start_logits, out.end_logits], -1)
    return logits if position is None else logits[:, position]


def _answer_saliency(model: Any, tokenizer: Any, question: str, context: str | None, *, method: Method,
                     n_steps: int, integration: Integration, baseline: Baseline, max_tokens: int, window: Any,
                     batch_size: int, word: int | None, position: int | None, qa: QASettings | None,
                     target: int | str | None) -> SaliencyResult:
    """Saliency of a question-answering model's start (or end) logit at the answer's start token."""
    if word is not None:
        raise WorkbenchError(ANSWER_READOUT)
    if window is not None and not isinstance(window, (int, np.integer)):
        raise WorkbenchError(f"window={window!r}: a question-answering model's windows are numbered; give an index.")
    t = {None: 0, "start": 0, "end": 1, 0: 0, 1: 1, "0": 0, "1": 1}.get(target, -1)
    if t < 0:
        raise WorkbenchError(f"target={target!r}: a question-answering model is explained at its 'start' or 'end' "
                             f"logit.")
    reading = read_answer(model, tokenizer, question, context, max_length=max_tokens, qa=qa, window=window)
    enc = reading.enc
    pos = reading.readout if position is None else int(position)
    if not 0 <= pos < len(enc.input_ids):
        raise WorkbenchError(f"token position {pos} does not exist: {len(enc.input_ids)} tokens are shown "
                             f"(0..{len(enc.input_ids) - 1}).")
    device = next(model.parameters()).device
    inputs = enc.tensors(device)
    ids = inputs.pop("input_ids")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(ids).detach()
        logits = _forward(model, x, inputs, pos)[0].float()
    answer = reading.answer.text or "(no answer)"
    common = dict(tokens=enc.tokens, target=t, target_label=f"answer {'start' if t == 0 else 'end'} at token "
                  f"{pos} {enc.tokens[pos]!r}", predicted=0, predicted_label=answer, probs=None,
                  special=enc.special, truncated=enc.truncated, notice=enc.notice, readout_index=pos)
    return _attribute(model, x, inputs, ids, enc, tokenizer, logits, t, pos, method, n_steps, integration, baseline,
                      batch_size, common)


def _attribute(model: Any, x: torch.Tensor, inputs: dict[str, torch.Tensor], ids: torch.Tensor, enc: Any,
               tokenizer: Any, logits: torch.Tensor, t: int, pos: int | None, method: str, n_steps: int,
               integration: Integration, baseline: Baseline, batch_size: int, common: dict) -> SaliencyResult:
    """Gradient x input, or integrated gradients, of logit `t` (at token `pos`, when given)."""
    if method == "grad":
        grad = _grads(model, x, inputs, t, pos)
        scores = (grad * x).sum(-1)[0]
        return SaliencyResult(scores=scores.float().cpu().numpy(), method="grad", n_steps=1, **common)
    embed = model.get_input_embeddings()
    base = _baseline(embed, ids, x, enc.special, tokenizer, baseline)
    alphas, weights = integration_points(n_steps, integration)
    diff = x - base
    avg_grad = torch.zeros_like(x)
    for i in range(0, n_steps, batch_size):
        a = torch.tensor(alphas[i:i + batch_size], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        w = torch.tensor(weights[i:i + batch_size], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        g = _grads(model, base + a * diff, inputs, t, pos)
        avg_grad += (w * g).sum(0, keepdim=True)
    scores = (diff * avg_grad).sum(-1)[0].double()
    with torch.no_grad():
        f_base = float(_forward(model, base, inputs, pos)[0, t])
    delta = float(logits[t]) - f_base
    gap = abs(float(scores.sum()) - delta)
    return SaliencyResult(scores=scores.float().cpu().numpy(), method="ig", completeness_gap=gap, delta=delta,
                          n_steps=n_steps, **common)


def _grads(model: Any, embeds: torch.Tensor, inputs: dict[str, torch.Tensor], target: int,
           position: int | None = None) -> torch.Tensor:
    """d logit[target] / d embeds, for each row of the batch (rows are independent, so sum is fine)."""
    with torch.enable_grad():
        e = embeds.detach().requires_grad_(True)
        out = _forward(model, e, inputs, position)[:, target].sum()
        # autograd.grad touches only what leads to `e`: no parameter .grad is filled in.
        (g,) = torch.autograd.grad(out, e)
    return g.detach()


def _baseline(embed: torch.nn.Module, ids: torch.Tensor, x: torch.Tensor, special: list[bool], tokenizer: Any,
              kind: Baseline) -> torch.Tensor:
    keep = torch.tensor(special, device=x.device).view(1, -1, 1)
    if kind == "zero":
        return torch.where(keep, x, torch.zeros_like(x))
    if kind != "pad":
        raise WorkbenchError(f"baseline={kind!r}: use 'pad' or 'zero'.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        return embed(torch.where(keep.view(1, -1), ids, torch.full_like(ids, pad))).detach()
