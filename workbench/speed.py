"""Training speed-ups on CPUs that keep the maths of training the same.

`nn.Dropout` on a CPU draws one 32-bit random number per element (`bernoulli_`), which is slow:
about 13 % of a MiniLM training step on 2 cores was spent making dropout masks (measured with
torch.profiler; see benchmarks/bench.py). `FastDropout` draws 64 random bits and cuts them into four
16-bit numbers, so it calls the generator a quarter as often: same keep probability (to 1/65,536), same
1/(1-p) scaling, same seeded torch generator (runs stay reproducible and resumable), about half the
time per dropout forward + backward.

On a GPU the built-in dropout is already fused and fast, so `speed_up_dropout` is used for CPU training
only, as is `cpu_training_attention` (below). `apply_cpu_speedups` applies the ones config
`training.cpu_speedups` names (default: all).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LOW, _HIGH = -(2**63), 2**63 - 1


def dropout_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean keep-mask with P(keep) = 1 - p (p rounded to a multiple of 1/65,536)."""
    n = 1
    for s in shape:
        n *= s
    bits = torch.randint(_LOW, _HIGH, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return bits.view(torch.int16)[:n].view(shape) >= (round(p * 65536) - 32768)


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        # One multiplier tensor, 1/(1-p) where kept and 0 elsewhere, serves both passes.
        scale, zero = torch.tensor(1.0 / (1.0 - p), dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype)
        mult = torch.where(dropout_mask(x.shape, p, x.device), scale.to(x.device), zero.to(x.device))
        ctx.save_for_backward(mult)
        return x * mult

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mult,) = ctx.saved_tensors
        return grad * mult, None


class FastDropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on CPUs (see the module docstring). Keeps `p`, which some
    attention implementations read from their dropout module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        return _DropoutFn.apply(x, self.p)


def speed_up_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` in `model` for `FastDropout` (in place); returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(module, name, fast)
                swapped += 1
    return swapped


ATTENTION = "workbench_cpu_training"


def cpu_training_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """softmax(QKᵀ·scale + mask)·V written out, with `FastDropout`'s mask on the attention weights.

    Used while training on a CPU only. There, PyTorch's scaled_dot_product_attention either takes its
    math path with the slow dropout (models with attention dropout, like BERT) or its CPU flash kernel,
    whose backward pass is slow for short sequences (models without, like Llama: with its attention
    dropout set to 0, a MiniLM step's backward pass took 1.8x as long on the flash kernel). Anything
    else (evaluation, GPUs, attention weights requested) goes to transformers' own SDPA function.
    """
    # transformers' documented way to wrap SDPA (docs: "Attention Interface"); its module is not public API,
    # so pyproject pins transformers to the tested minor and tests/test_untrusted.py checks this signature.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training or query.device.type != "cpu" or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)  # KV heads
    q_len, k_len = query.shape[2], key.shape[2]
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :k_len]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    elif is_causal and q_len > 1:
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).triu(k_len - q_len + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0:
        probs = _DropoutFn.apply(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def use_cpu_training_attention(model: Any) -> bool:
    """Switch a transformers model that uses SDPA to `cpu_training_attention`; False if it cannot."""
    from transformers import AttentionInterface
    # The mask registry is the documented companion of AttentionInterface; masking_utils itself is internal.
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(ATTENTION, cpu_training_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, NotImplementedError):
        return False
    return model.config._attn_implementation == ATTENTION


def apply_cpu_speedups(model: Any, which: bool | list[str]) -> list[str]:
    """Apply the speed-ups `training.cpu_speedups` names (`True`: all, `False`: none) to `model` in place;
    returns the names of those that took effect (attention needs a model that uses SDPA)."""
    from .config import CPU_SPEEDUPS

    names = list(CPU_SPEEDUPS) if which is True else list(which or [])
    applied = []
    if "dropout" in names and speed_up_dropout(model):
        applied.append("dropout")
    if "attention" in names and use_cpu_training_attention(model):
        applied.append("attention")
    return applied


def restore_attention(model: Any) -> None:
    """Back to SDPA (before saving or scoring)."""
    if getattr(model.config, "_attn_implementation", None) == ATTENTION:
        model.set_attn_implementation("sdpa")
