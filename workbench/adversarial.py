"""Adversarial training on the input embeddings: FGM and PGD (`training.adversarial`), one training step each.

The step trains on the batch as it is, then on a copy whose token embeddings are pushed along the loss
gradient, and the gradients of both passes add up before the optimizer step (Goodfellow et al., 2015;
Miyato et al., 2017 for text; PGD: Madry et al., 2018).

Where the push goes: the *output* of the input-embedding layer (`model.get_input_embeddings()`), through a
forward hook that adds a tensor `delta` to it, not the embedding weight as the often-copied FGM snippet does
(`param.data.add_(r)`, then restore). Why:
- It works whether the embedding weight trains or not. Under LoRA, prompt tuning or `peft.freeze_embeddings`
  the weight has no gradient to read; the gradient with respect to the embedding *output* always exists,
  because `delta` requires grad (peft's `enable_input_require_grads` makes the output require grad the same
  way).
- The weight is never written, so it is left exactly as it was (tests/test_adversarial.py checks
  `torch.equal`) and there is no restore step to get wrong: no subtraction rounding, no backup to forget
  on an exception. A decoder whose output layer shares the embedding weight (tied) keeps its output layer
  unperturbed, which the weight version would also shift.
- Each token occurrence gets its own push, as in Miyato et al.'s perturbation of the embedded sequence
  (the weight version moves every occurrence of a token the same way), and the gradient is this
  micro-batch's own: the weight version normalises `param.grad`, which under gradient accumulation also
  holds the earlier micro-batches' gradients.
- Size: each example's push has L2 norm `epsilon` over its (positions x hidden) values (Miyato et al.), so
  its strength does not depend on the batch size (which an out-of-memory retry may halve). Padding positions
  have zero gradient and get no push.

The hook is only in place inside `step`: evaluation and prediction never see a perturbation. A model whose
embedding layer runs more than once per forward (T5's shared table, for the encoder's and the decoder's
inputs) gets one `delta` per call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import ConfigError

Method = Literal["fgm", "pgd"]


def per_example_unit(g: torch.Tensor) -> torch.Tensor:
    """`g` scaled so that each example (first dimension) has L2 norm 1; an all-zero example stays zero."""
    norms = g.detach().float().flatten(1).norm(dim=1).clamp_min(1e-12)
    return (g.float() / norms.view(-1, *[1] * (g.dim() - 1))).to(g.dtype)


def project(r: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`r` with each example's push pulled back onto the L2 ball of radius `epsilon` where it lies outside."""
    norms = r.detach().float().flatten(1).norm(dim=1)
    scale = torch.where(norms > epsilon, epsilon / norms.clamp_min(1e-12), torch.ones_like(norms))
    return (r.float() * scale.view(-1, *[1] * (r.dim() - 1))).to(r.dtype)


@dataclass
class EmbeddingAdversary:
    """FGM or PGD on the output of `embeddings` (a model's input-embedding module).

    `step(train_pass, loss_pass)` runs one adversarial training step:
    - `train_pass()` runs forward and backward on the batch (gradients add into the parameters' `.grad`, with
      whatever loss scaling the caller's mixed precision needs) and returns the loss, detached;
    - `loss_pass()` (PGD only) runs forward only and returns the loss with its graph; its gradient is taken
      with respect to the push alone, so the parameters' `.grad` are not touched by PGD's inner steps.
    The parameters end with the clean gradient plus the last adversarial pass's gradient (the standard recipe
    for both methods).
    """

    embeddings: torch.nn.Module
    method: Method = "fgm"
    epsilon: float = 1.0
    steps: int = 3  # pgd
    alpha: float = 0.3  # pgd
    seconds: float = 0.0  # wall time spent in the adversarial passes, all steps together
    last_loss: float | None = None  # the last adversarial pass's loss
    last_push: list[torch.Tensor] = field(default_factory=list)  # the last step's push, per embedding call
    _deltas: list[torch.Tensor | None] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.method not in ("fgm", "pgd"):
            raise ConfigError([f"training.adversarial={self.method!r}: use none, fgm or pgd."])
        if not isinstance(self.embeddings, torch.nn.Module):
            raise ConfigError(["training.adversarial needs the model's input embeddings, and this model has none "
                               "(get_input_embeddings() gave nothing). Fix: set training.adversarial to none."])

    @contextlib.contextmanager
    def pushed(self, deltas: list[torch.Tensor | None], create: bool = False) -> Iterator[None]:
        """While inside, the i-th call of the embedding layer in a forward returns its output + `deltas[i]`;
        with `create`, a missing delta is made as zeros that require grad (to read the gradient there)."""
        calls = [0]

        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            i = calls[0]
            calls[0] += 1
            if not isinstance(out, torch.Tensor):
                raise ConfigError([f"training.adversarial: the input embedding layer ({type(module).__name__}) "
                                   f"returns {type(out).__name__}, not a tensor, so it cannot be pushed. Fix: set "
                                   f"training.adversarial to none."])
            if i >= len(deltas):
                deltas.append(None)
            if deltas[i] is None:
                if not create:
                    return None
                deltas[i] = torch.zeros_like(out, requires_grad=True)
            d = deltas[i]
            if d.shape != out.shape:  # internal invariant: the passes of one step see the same batch
                raise RuntimeError(f"adversarial push of shape {tuple(d.shape)} for an embedding output of "
                                   f"shape {tuple(out.shape)}")
            return out + d.to(out.dtype)

        handle = self.embeddings.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def step(self, train_pass: Callable[[], torch.Tensor],
             loss_pass: Callable[[], torch.Tensor] | None = None, loss_scale: float = 1.0) -> torch.Tensor:
        """One training step with its adversarial pass(es); returns the clean loss (what the run logs)."""
        deltas: list[torch.Tensor | None] = []
        with self.pushed(deltas, create=True):
            loss = train_pass()
        grads = [d.grad if d is not None and d.grad is not None else None for d in deltas]
        self.last_push, self.last_loss = [], None
        if not deltas or all(g is None for g in grads):
            return loss  # nothing reached the embeddings (a frozen model?): a plain step
        if not all(torch.isfinite(g).all() for g in grads if g is not None):
            return loss  # an fp16 overflow: the scaler skips this step anyway; do not push along inf/nan
        start = time.perf_counter()
        units = [per_example_unit(g) if g is not None else None for g in grads]
        if self.method == "fgm":
            push = [u * self.epsilon if u is not None else None for u in units]
        else:
            push = [project(u * self.alpha, self.epsilon) if u is not None else None for u in units]
            for _ in range(self.steps - 1):
                if loss_pass is None:
                    raise ValueError("pgd needs loss_pass, a forward pass returning the loss with its graph")
                leaves = [p.detach().requires_grad_() if p is not None else None for p in push]
                with self.pushed(list(leaves)):
                    inner = loss_pass()
                used = [p for p in leaves if p is not None]
                gs = torch.autograd.grad(inner * loss_scale, used, allow_unused=True)
                it = iter(gs)
                new = []
                for p in leaves:
                    g = next(it) if p is not None else None
                    if p is None or g is None or not torch.isfinite(g).all():
                        new.append(p.detach() if p is not None else None)
                    else:
                        new.append(project(p.detach() + self.alpha * per_example_unit(g), self.epsilon))
                push = new
        push = [p.detach() if p is not None else None for p in push]
        with self.pushed(list(push)):
            adv = train_pass()
        if adv.is_cuda:  # kernels run asynchronously: wait, or the time would leave them out
            torch.cuda.synchronize(adv.device)
        self.seconds += time.perf_counter() - start
        self.last_push, self.last_loss = [p for p in push if p is not None], float(adv.detach().float().mean())
        return loss

    def describe(self) -> dict[str, object]:
        """What status.json records about this adversary."""
        out: dict[str, object] = {"method": self.method, "epsilon": self.epsilon}
        if self.method == "pgd":
            out.update(steps=self.steps, alpha=self.alpha)
        out["perturbs"] = "input-embedding output, L2 norm per example"
        return out


def status_line(info: dict[str, Any]) -> str:
    """One line about a run's adversarial training from its status.json record (untrusted: shown, never used):
    the method, its size, and what it cost so far."""
    def num(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"

    method = str(info.get("method", "?"))[:10]
    line = f"adversarial training: {method}, epsilon {num(info.get('epsilon'))}"
    if method == "pgd":
        line += f", {num(info.get('steps'))} steps of {num(info.get('alpha'))}"
    secs, total = info.get("seconds"), info.get("train_seconds")
    if isinstance(secs, (int, float)) and isinstance(total, (int, float)) and total > 0:
        line += f"; its extra passes took {secs:.1f} s of {total:.1f} s training ({100 * secs / total:.0f}%)"
    return line
