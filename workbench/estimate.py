"""Before a run starts: how big is the model, how much memory will training take, how long will it run.

Every number here is an *estimate*, made without loading weights or touching a GPU:

- parameters are counted exactly, by building the classifier from its `config.json` on PyTorch's
  `meta` device (no memory, no weights read);
- memory is weights + gradients + AdamW state + a rough activation term (Korthikanti et al., 2022,
  "Reducing Activation Recomputation in Large Transformer Models": ~`s*b*h*(34 + 5*a*s/h)` bytes per
  layer at 16 bits) + a fixed runtime overhead;
- time comes from the seconds per step *measured* by an earlier completed run of the same model and
  method when there is one (scaled up for longer batches), else from a tabulated FLOP rate (calibrated on 2-core CPUs:
  MiniLM 16x128 step ~1.3 s, SmolLM2-135M ~10 s, i.e. ~50 GFLOP/s per core in fp32).

The dashboard's Train page and notebooks both call `estimate_run`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import RunConfig

GB = 1024 ** 3
# Tabulated effective training throughput (FLOP/s) when nothing was measured yet.
CPU_FLOPS_PER_CORE = 50e9
GPU_FLOPS = 25e12  # a mid-range GPU at realistic utilisation with bf16/fp16
BF16_CPU_SPEEDUP = 1.4  # autocast on CPUs with native bf16 (see ASSETS.md reference figures)
RUNTIME_OVERHEAD_BYTES = 0.5 * GB  # torch + transformers + tokenizer in the run's process
STARTUP_SECONDS = 15.0  # process start, imports, model load, data preparation
# Used only when a built-in model is not downloaded yet (its config.json is not on disk).
KNOWN_PARAMS = {"minilm": 22_713_216, "smollm2-135m": 134_515_008}


@dataclass
class Estimate:
    """What `estimate_run` found. Sizes in bytes, times in seconds; `None` where unknown."""

    total_params: int | None
    trainable_params: int | None
    memory: dict[str, float] = field(default_factory=dict)  # weights, gradients, optimizer, activations, ...
    steps: int = 0
    step_seconds: float | None = None
    total_seconds: float | None = None
    low_seconds: float | None = None  # the range of `total_seconds`, from the spread of the measured runs
    high_seconds: float | None = None
    time_source: str = ""
    notes: list[str] = field(default_factory=list)
    # Per-device memory of every strategy (`memory_plan`), the run's own under `plan_choice`, and what to change
    # when it does not fit the stated or reported memory (`suggest_plan`; None: it fits, or no budget was known).
    plan: dict[str, dict[str, float]] = field(default_factory=dict)
    plan_choice: str | None = None
    suggestion: dict[str, Any] | None = None

    @property
    def total_memory(self) -> float:
        return float(sum(self.memory.values()))


def local_model_dir(name_or_path: str) -> Path | None:
    """The folder holding this model's config.json, without downloading anything (None: not on disk)."""
    from .assets import BUILTIN_MODELS
    from .paths import assets_dir

    if name_or_path in BUILTIN_MODELS:
        p = assets_dir() / "models" / name_or_path
    else:
        p = Path(name_or_path).expanduser()
        if (p / "config.yaml").is_file() and (p / "status.json").is_file():  # a run directory: its weights
            from .errors import ModelError
            from .models import run_model_folder
            try:
                return run_model_folder(p)
            except ModelError:
                return None
        if p.is_file() or (p.is_dir() and not (p / "config.json").exists()):  # a GGUF file: its cached conversion
            from .errors import ModelError
            from .gguf_files import converted_dir, find_gguf
            try:
                gguf = find_gguf(p)
            except ModelError:
                gguf = None
            p = converted_dir(gguf) if gguf is not None else p
    return p if (p / "config.json").is_file() else None


def load_model_config(name_or_path: str) -> Any | None:
    """A `PretrainedConfig` from a local folder, a cached built-in or the local hub cache; None if absent."""
    from transformers import AutoConfig

    folder = local_model_dir(name_or_path)
    try:
        # Explicitly no remote code: the default (None) would prompt on stdin for a config with an auto_map.
        if folder is not None:
            return AutoConfig.from_pretrained(folder, trust_remote_code=False)
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=False)
    except Exception:  # not cached, not a model: the caller says "unknown" rather than failing
        return None


def count_parameters(config: Any, num_labels: int, peft: Any = None, task: Any = None) -> tuple[int, int]:
    """(total, trainable) parameters of `task`'s model (default: text classification) built from `config`,
    with `peft.method`'s adapter (LoRA, AdaLoRA at its starting rank, IA3, prefix or prompt tuning).

    The model is built on the `meta` device, so this is exact and takes no memory.
    """
    import copy

    import torch
    import transformers

    from .models import tied_output_embeddings
    from .tasks import get_task

    task = task if task is not None else get_task("text-classification")
    config = copy.deepcopy(config)
    config.num_labels = max(2, num_labels)
    try:
        with torch.device("meta"):
            model = getattr(transformers, task.auto_model).from_config(config)
    except ValueError:  # transformers: this architecture has no such head (a BERT as a seq2seq model)
        from .errors import ModelError
        raise ModelError(f"a {getattr(config, 'model_type', '?')} model cannot be used for {task.name}: it needs a "
                         f"model transformers builds as {task.auto_model}. Fix: choose a model made for "
                         f"{task.name}.") from None
    total = sum(p.numel() for p in model.parameters())
    if peft is None or peft.method == "full":
        freeze = getattr(peft, "freeze_embeddings", False) and task.freeze_embeddings_ok
        frozen = model.get_input_embeddings().weight.numel() if freeze and not tied_output_embeddings(model) else 0
        return total, total - frozen
    import dataclasses

    from .peft_methods import apply_peft

    # peft's own wrap, on the meta device: exact for every method. Counting needs no tokenizer (a soft prompt's
    # init text changes its values, not its size) and AdaLoRA counts at its starting rank, whatever the schedule.
    counted = dataclasses.replace(peft, prompt=dataclasses.replace(peft.prompt, init_text=None))
    with torch.device("meta"):
        wrapped = apply_peft(model, counted, task.peft_task_type, total_steps=10_000)
    total = sum(p.numel() for p in wrapped.parameters())
    return total, sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def activation_bytes(config: Any, batch: int, seq: int, bytes_per_value: float) -> float:
    """Activations kept for the backward pass (rough): per layer s*b*h*(34 + 5*a*s/h) at 16-bit."""
    h = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    inter = getattr(config, "intermediate_size", None) or 4 * h
    if not h or not layers:
        return 0.0
    # The 34 assumes a 4h MLP: 10 for attention and norms, 24 for the MLP; scale the MLP part.
    per_layer = seq * batch * h * (10 + 24 * inter / (4 * h) + 5 * heads * seq / h)
    return float(layers * per_layer * bytes_per_value / 2)


# --- memory per device, for every way of spreading the run over processes -----------------------------------
PLAN_ORDER = ("one process", "ddp", "fsdp SHARD_GRAD_OP", "fsdp FULL_SHARD", "fsdp FULL_SHARD + cpu_offload",
              "zero2", "zero2 + offload_optimizer", "zero3", "zero3 + offload")
# What `suggest_plan` tries, cheapest first (least communication and host traffic for the memory it saves).
SUGGEST_ORDER = ("ddp", "fsdp SHARD_GRAD_OP", "fsdp FULL_SHARD", "zero3", "fsdp FULL_SHARD + cpu_offload",
                 "zero3 + offload")
HOST = "host: "  # parts kept in CPU memory (offload); not counted against the device
# Activations a transformers model keeps in eager PyTorch, relative to `activation_bytes` (Korthikanti et al.'s
# count assumes Megatron's fused kernels; op by op every LayerNorm, GELU, softmax and dropout saves its own input
# and output, and the backward pass adds its temporary gradient buffers). Measured: MiniLM, fp32, CPU, batch 16 x 32
# tokens, the Trainer's peak resident memory less weights, gradients, AdamW state and `PROCESS_DATA_BYTES`: 1.5x
# (benchmarks/bench_memory_plan.py).
EAGER_ACTIVATION_FACTOR = 1.5
# What a training process holds besides the model and its training state, after the imports the runtime overhead
# covers: the tokenizer, the tokenised data, kernels and libraries loaded on first use. Measured by
# bench_memory_plan.py --quick (a model of 24K parameters): 48 MB in one process, 62-66 MB per rank with DDP/FSDP.
PROCESS_DATA_BYTES = 64 * 2 ** 20
ZERO_BUCKET_VALUES = 5e7  # deepspeed_config: reduce_bucket_size / stage3_prefetch_bucket_size (values)


@dataclass
class Units:
    """How the model splits into the units FSDP and ZeRO-3 gather whole while they run (parameter counts)."""

    largest_layer: int = 0  # the biggest wrapped layer (a decoder/encoder block)
    embeddings: int = 0  # the input embedding matrix: its own unit (accelerate carves it out)
    rest: int = 0  # everything outside the layers and the input embeddings (norms, heads, an untied LM head)

    @property
    def largest(self) -> int:
        return max(self.largest_layer, self.embeddings, self.rest)


def model_units(config: Any, num_labels: int = 2, task: Any = None, auto_wrap: list[str] | None = None) -> Units:
    """The unit sizes of `task`'s model built from `config` on the meta device (exact, no memory): the layers are
    the `auto_wrap` classes, else the model's `_no_split_modules` without its embeddings class (accelerate wraps the
    input embeddings on their own)."""
    import copy

    import torch
    import transformers

    from .tasks import get_task

    task = task if task is not None else get_task("text-classification")
    config = copy.deepcopy(config)
    config.num_labels = max(2, num_labels)
    with torch.device("meta"):
        model = getattr(transformers, task.auto_model).from_config(config)
    inner = getattr(model, "base_model", model)
    wanted = set(auto_wrap or getattr(inner, "_no_split_modules", None) or getattr(model, "_no_split_modules", None)
                 or [])
    wanted = {w for w in wanted if not w.endswith("Embeddings")} if not auto_wrap else wanted
    emb = model.get_input_embeddings()
    emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
    layers = [m for m in model.modules() if type(m).__name__ in wanted]
    in_layers: set[int] = set()
    largest = 0
    for m in layers:
        ps = [p for p in m.parameters() if id(p) not in emb_ids]
        largest = max(largest, sum(p.numel() for p in ps))
        in_layers.update(id(p) for p in ps)
    total = {id(p): p.numel() for p in model.parameters()}
    embeddings = sum(n for i, n in total.items() if i in emb_ids)
    rest = sum(n for i, n in total.items() if i not in emb_ids and i not in in_layers)
    return Units(largest, embeddings, rest)


def memory_plan(cfg: RunConfig, total_params: int, trainable_params: int, activations: float,
                world_size: int | None = None, *, mixed: bool = False, units: Units | None = None,
                ) -> dict[str, dict[str, float]]:
    """Per-device memory (bytes) of training `cfg` with each strategy, by part.

    P = all parameters, T = trainable ones, N = processes (`world_size`, default `cfg.distributed.world_size`),
    A = `activations` (per device: they scale with the per-device batch, not with N), U = the largest unit gathered
    whole while it runs (`units`; the largest of a layer, the input embeddings and the rest, see `model_units`),
    w = bytes per weight the forward pass reads (2 with `mixed` bf16/fp16 under DeepSpeed/FSDP mixed precision,
    else 4). AdamW keeps two fp32 moments: 8 B per trainable parameter.

    - one process: weights 4P (fp32 master weights: the Trainer's autocast keeps them fp32), gradients 4T,
      optimizer 8T, activations A. 16 B/param, the figure of the ZeRO paper (Rajbhandari et al., 2020, "ZeRO:
      Memory Optimizations Toward Training Trillion Parameter Models", sec. 3.1: 2+2+12 B/param for mixed-precision
      Adam, which is 16 B as well).
    - ddp: the same on every process, plus DDP's gradient buckets 4T: torch's `DistributedDataParallel` all-reduces
      flat bucket tensors that are a second copy of the gradients unless `gradient_as_bucket_view=True`, which
      transformers/accelerate leave off (torch/nn/parallel/distributed.py, Reducer).
    - fsdp FULL_SHARD (FSDP2 `fully_shard`, reshard after forward): weights 4P/N, gradients 4T/N, optimizer 8T/N,
      plus the gathered unit: while a unit runs its whole weights exist twice (FSDP2 all-gathers into one buffer
      and copies out into the unsharded parameters: 2*w*U), and in the backward pass its whole gradient until the
      reduce-scatter (4U, scaled by the trainable share T/P: frozen weights have none): 2*w*U + 4U*T/P.
    - fsdp SHARD_GRAD_OP (no reshard after forward, ZeRO-2-like): as FULL_SHARD, but every unit stays gathered
      from its forward to its backward, so at the end of the forward pass the whole model is there: w*P gathered,
      plus the all-gather buffer of the unit in flight and its whole gradient: w*P + w*U + 4U*T/P.
    - fsdp + cpu_offload (`CPUOffloadPolicy`): the sharded weights, gradients and optimizer (16 B/param / N) live
      in host memory and the optimizer steps there; the device holds the gathered units and the activations.
    - zero2 (DeepSpeed ZeRO stage 2): weights w*P whole, gradients w*T/N (partitioned) + a reduce bucket
      (5e7 values), optimizer 12T/N: fp32 master copy 4 B + Adam 8 B (DeepSpeed keeps the fp32 partition even
      when training in fp32). With offload_optimizer (ZeRO-Offload, Ren et al., 2021) the master copy, the Adam
      state and an fp32 gradient partition (16T/N) go to host memory.
    - zero3: as zero2 with the weights partitioned too (w*P/N) plus the gathered unit and the prefetch bucket
      (2*w*U); with offload (`offload_optimizer` and `offload_params`, ZeRO-Infinity-like) the partitions live
      in host memory: w*P/N + 16T/N there.

    `activations` should be what eager PyTorch keeps: `estimate_run` passes `activation_bytes` x
    `EAGER_ACTIVATION_FACTOR` (Korthikanti et al. count Megatron's fused kernels; a transformers model run op by
    op keeps more, measured by benchmarks/bench_memory_plan.py).

    Every process also holds `PROCESS_DATA_BYTES` (tokenizer, tokenised data, kernels loaded on first use;
    measured) and the fixed runtime overhead (torch and the libraries once imported).
    Host-side parts are keyed `host: ...` and left out of `device_total`.
    """
    n = max(1, int(world_size or cfg.distributed.world_size))
    P, T, A = float(total_params), float(trainable_params), float(activations)
    U = float((units or Units()).largest)
    w = 2.0 if mixed else 4.0
    Ug = U * (T / P if P else 1.0)  # the unit's gradient: only its trainable share has one (LoRA: almost none)
    base = {"data and kernels": PROCESS_DATA_BYTES, "runtime overhead": RUNTIME_OVERHEAD_BYTES}
    one = {"weights": 4 * P, "gradients": 4 * T, "optimizer": 8 * T, "activations": A}
    plan: dict[str, dict[str, float]] = {"one process": {**one, **base}}
    plan["ddp"] = {**one, "gradient buckets": 4 * T, **base}
    sharded = {"weights": 4 * P / n, "gradients": 4 * T / n, "optimizer": 8 * T / n, "activations": A}
    plan["fsdp SHARD_GRAD_OP"] = {**sharded, "gathered layer": w * P + w * U + 4 * Ug, **base}
    plan["fsdp FULL_SHARD"] = {**sharded, "gathered layer": 2 * w * U + 4 * Ug, **base}
    plan["fsdp FULL_SHARD + cpu_offload"] = {"activations": A, "gathered layer": 2 * w * U + 4 * Ug, **base,
                                             HOST + "weights": 4 * P / n, HOST + "gradients": 4 * T / n,
                                             HOST + "optimizer": 8 * T / n}
    bucket = min(ZERO_BUCKET_VALUES, T) * w
    plan["zero2"] = {"weights": w * P, "gradients": w * T / n + bucket, "optimizer": 12 * T / n, "activations": A,
                     **base}
    plan["zero2 + offload_optimizer"] = {"weights": w * P, "gradients": w * T / n + bucket, "activations": A, **base,
                                         HOST + "optimizer": 16 * T / n}
    gathered3 = 2 * w * U
    plan["zero3"] = {"weights": w * P / n, "gradients": w * T / n + bucket, "optimizer": 12 * T / n,
                     "activations": A, "gathered layer": gathered3, **base}
    plan["zero3 + offload"] = {"gradients": bucket, "activations": A, "gathered layer": gathered3, **base,
                               HOST + "weights": w * P / n, HOST + "optimizer": 16 * T / n}
    return plan


def device_total(parts: dict[str, float], *, overhead: bool = True) -> float:
    """The bytes one device holds: every part but the host-side ones (and, with `overhead=False`, the runtime's)."""
    return float(sum(v for k, v in parts.items()
                     if not k.startswith(HOST) and (overhead or k != "runtime overhead")))


def host_total(parts: dict[str, float]) -> float:
    """The bytes an offloading strategy keeps in host (CPU) memory per process."""
    return float(sum(v for k, v in parts.items() if k.startswith(HOST)))


def plan_choice(cfg: RunConfig) -> str:
    """The `memory_plan` row of `cfg.distributed` as configured."""
    d = cfg.distributed
    if d.strategy == "ddp" or (d.strategy == "none" and d.world_size > 1):
        return "ddp"
    if d.strategy == "fsdp":
        return "fsdp FULL_SHARD + cpu_offload" if d.fsdp.cpu_offload else f"fsdp {d.fsdp.sharding_strategy}"
    if d.strategy == "deepspeed":
        ds = d.deepspeed
        if ds.zero_stage == 3:
            return "zero3 + offload" if ds.offload_params or ds.offload_optimizer else "zero3"
        return "zero2 + offload_optimizer" if ds.offload_optimizer else "zero2"
    return "one process"


def _with_batch(parts: dict[str, float], batch: int, configured: int) -> dict[str, float]:
    out = dict(parts)
    if "activations" in out:
        out["activations"] = parts["activations"] * batch / max(configured, 1)
    return out


def suggest_plan(cfg: RunConfig, plan: dict[str, dict[str, float]], budget: float | None,
                 choice: str | None = None) -> dict[str, Any] | None:
    """What to change when `choice` (default: `cfg`'s strategy) does not fit `budget` bytes per device; None when
    it fits (or no budget is known).

    Tried in `SUGGEST_ORDER` (DDP, FSDP SHARD_GRAD_OP, FSDP FULL_SHARD, ZeRO-3, then with offload: each shards more
    and communicates more than the one before), each at the configured per-device batch, then at half of it, down
    to 1 (activations scale with the batch): the first strategy that fits at the largest batch wins, so the batch
    is only cut when no strategy fits the configured one. Returns {"strategy", "batch", "fits", "device_bytes",
    "budget", "gradient_accumulation_steps", "set" (the `--set` overrides), "message"}; `fits` False when nothing
    fits even at batch 1 (the message says so).
    """
    if not budget or budget <= 0 or not plan:
        return None
    choice = choice or plan_choice(cfg)
    t = cfg.training
    batch0 = t.per_device_train_batch_size
    if choice in plan and device_total(plan[choice]) <= budget:
        return None
    world = cfg.distributed.world_size
    order = [s for s in SUGGEST_ORDER if s in plan]
    if world == 1:  # one device: sharding across one process saves nothing; only offload (and the batch) help
        order = [s for s in order if "offload" in s]
    batch = batch0
    found: tuple[str, int] | None = None
    while found is None:
        for s in order:
            if device_total(_with_batch(plan[s], batch, batch0)) <= budget:
                found = (s, batch)
                break
        if found is None and batch == 1:
            break
        batch = max(1, batch // 2) if found is None else batch
    have = format_bytes(budget)
    if found is None:
        best = min(order or [choice], key=lambda s: device_total(_with_batch(plan[s], 1, batch0)))
        need = device_total(_with_batch(plan[best], 1, batch0))
        return {"strategy": best, "batch": 1, "fits": False, "device_bytes": need, "budget": budget,
                "gradient_accumulation_steps": t.gradient_accumulation_steps, "set": {},
                "message": f"nothing fits {have} per device: even {best} at batch 1 needs {format_bytes(need)}. "
                           f"Fix: more processes/devices, LoRA (peft.method: lora), a shorter data.max_length, or a "
                           f"device with more memory."}
    s, b = found
    accum = t.gradient_accumulation_steps * max(1, batch0 // b)
    sets = _strategy_sets(s)
    if b != batch0:
        sets.update({"training.per_device_train_batch_size": b, "training.gradient_accumulation_steps": accum})
    need = device_total(_with_batch(plan[s], b, batch0))
    cur = device_total(plan[choice]) if choice in plan else float("nan")
    change = f"use {s}" + (f" with per-device batch {b} (gradient_accumulation_steps {accum} keeps the batch of "
                           f"{batch0 * t.gradient_accumulation_steps} per process)" if b != batch0 else "")
    return {"strategy": s, "batch": b, "fits": True, "device_bytes": need, "budget": budget,
            "gradient_accumulation_steps": accum, "set": sets,
            "message": f"{choice} needs {format_bytes(cur)} per device, more than {have}: {change}, about "
                       f"{format_bytes(need)} per device. "
                       + " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}"
                                  for k, v in sets.items())}


def _strategy_sets(s: str) -> dict[str, Any]:
    """The config overrides that select `memory_plan` row `s`."""
    if s == "one process":
        return {"distributed.strategy": "none"}
    if s == "ddp":
        return {"distributed.strategy": "ddp"}
    if s.startswith("fsdp"):
        return {"distributed.strategy": "fsdp", "distributed.fsdp.sharding_strategy": s.split()[1],
                "distributed.fsdp.cpu_offload": "cpu_offload" in s}
    stage = 3 if s.startswith("zero3") else 2
    return {"distributed.strategy": "deepspeed", "distributed.deepspeed.zero_stage": stage,
            "distributed.deepspeed.offload_optimizer": "offload" in s,
            "distributed.deepspeed.offload_params": s == "zero3 + offload"}


def _run_step_time(run: Any) -> tuple[float, float] | None:
    """(seconds per optimizer step, real tokens per step) of one completed run, from its metrics.jsonl.

    The median over its logged intervals (each train row's tokens/s covers the steps since the previous
    row), so a burst of contention inside the run moves it little; a run without per-interval rows
    falls back to its whole-run average (the summary's steps/s).
    """
    m = run.metrics()
    if "kind" not in m:
        return None
    summary = m[m["kind"] == "summary"]
    if not len(summary):
        return None
    last = summary.iloc[-1]
    steps = max(float(last.get("step") or 1), 1.0)
    real = float(last.get("real_tokens") or 0) if pd.notna(last.get("real_tokens")) else 0.0
    tok_per_step = real / steps
    train = m[m["kind"] == "train"] if "tokens_per_second" in m else m.iloc[0:0]
    rates = train["tokens_per_second"].dropna() if len(train) else pd.Series(dtype=float)
    rates = rates[rates > 0]
    if tok_per_step > 0 and len(rates):
        return float(np.median(1.0 / rates.to_numpy())) * tok_per_step, tok_per_step
    sps = last.get("train_steps_per_second")
    if sps is not None and pd.notna(sps) and float(sps) > 0:
        return 1.0 / float(sps), tok_per_step
    return None


def measured_steps(cfg: RunConfig, root: str | Path | None = None, *, last: int = 5,
                   precision: str | None = None) -> list[tuple[float, float, str]]:
    """(seconds per step, real tokens per step, run name) of the `last` newest completed runs with the same
    model and method (and `precision`, "bf16"/"fp16"/"fp32", where the run recorded one)."""
    from .rundir import list_runs

    out: list[tuple[float, float, str]] = []
    for run in list_runs(root):
        try:
            st = run.status()
            if st.get("state") != "completed":
                continue
            other = RunConfig.from_yaml(run.config_file)  # names to compare; nothing is loaded from it
            if other.model.name_or_path != cfg.model.name_or_path or other.peft.method != cfg.peft.method:
                continue
            if precision and st.get("precision") and st["precision"] != precision:
                continue
            found = _run_step_time(run)
        except Exception:  # a damaged run is skipped, not fatal: this is only an estimate
            continue
        if found:
            out.append((*found, run.name))
            if len(out) >= last:
                break
    return out


def measured_step(cfg: RunConfig, root: str | Path | None = None) -> tuple[float, float, str] | None:
    """(seconds per optimizer step, real tokens per step, run name) of the newest completed run with the
    same model and method; None when there is none yet. (`estimate_run` uses the median of several.)"""
    found = measured_steps(cfg, root, last=1)
    return found[0] if found else None


def probe_step(cfg: RunConfig, batch: int, seq: int, *, num_labels: int = 2, steps: int = 3) -> tuple[float, float]:
    """(seconds per optimizer step, real tokens per step) timed on this machine now: `steps` training steps
    (after one untimed warm-up step) of `cfg`'s model on a random batch of `batch` x `seq` token ids.

    The fallback when no run of this model has been measured yet: it loads the model (seconds for MiniLM)
    and measures the machine as it is now, contention included.
    """
    import time

    import torch

    from .models import apply_peft, load_tokenizer, resolve_model_path
    from .tasks import get_task

    task = get_task(cfg.task)
    path = resolve_model_path(cfg.model.name_or_path)
    tok = load_tokenizer(path, cfg.model)
    model = task.load_model(cfg.model, [f"class{i}" for i in range(max(2, num_labels))], tokenizer=tok)
    if cfg.peft.method != "full":
        model = apply_peft(model, cfg.peft, task.peft_task_type, total_steps=10_000, tokenizer_path=path)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, max(2, num_labels), (batch,), generator=gen)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step pays for lazy initialisation
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(batch * seq)


def _device() -> tuple[str, float, bool]:
    """(description, tabulated FLOP/s, native bf16) for the machine this runs on."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), GPU_FLOPS, torch.cuda.is_bf16_supported()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return f"CPU, {cores} core(s)", CPU_FLOPS_PER_CORE * cores, bf16


def estimate_run(cfg: RunConfig, train_rows: int, *, num_labels: int = 2, mean_tokens: float | None = None,
                 max_tokens: int | None = None, eval_rows: int = 0, runs_root: str | Path | None = None,
                 model_config: Any = None, probe: bool = False, memory_budget: float | None = None) -> Estimate:
    """Estimate parameters, peak training memory and wall time of `cfg` on `train_rows` examples.

    `mean_tokens`/`max_tokens` come from the data report (token lengths); without them the estimate
    assumes half of `data.max_length` on average and all of it for the longest batch.

    Time comes from the median step time of the last few completed runs of the same model, method and
    precision (one run slowed by another process does not decide it), with a range from their spread;
    with no such run and `probe`, from a few training steps timed now (`probe_step`); else from a
    tabulated FLOP rate.

    `plan` holds the per-device memory of every strategy for `cfg.distributed`'s process count (`memory_plan`);
    with `memory_budget` (bytes per device: what the user states, or `device_memory_budget()`), `suggestion` says
    what to change when the configured strategy does not fit it (`suggest_plan`).
    """
    from .tasks import get_task

    t = cfg.training
    conf = model_config if model_config is not None else load_model_config(cfg.model.name_or_path)
    est = Estimate(None, None)
    if conf is not None:
        est.total_params, est.trainable_params = count_parameters(conf, num_labels, cfg.peft, get_task(cfg.task))
    elif cfg.model.name_or_path in KNOWN_PARAMS:
        est.total_params = KNOWN_PARAMS[cfg.model.name_or_path]
        est.notes.append("The built-in model is not downloaded yet: its parameter count comes from a table; "
                         "the LoRA share and activation memory are unknown until it is.")
    else:
        est.notes.append(f"No config.json for {cfg.model.name_or_path!r} on this machine (a hub id needs a "
                         f"network): parameters and memory are unknown.")

    device, flops, native_bf16 = _device()
    bf16 = native_bf16 if t.bf16 == "auto" else bool(t.bf16)
    mixed = bf16 or t.fp16
    seq_mean = min(mean_tokens or cfg.data.max_length / 2, cfg.data.max_length)
    seq_max = min(max_tokens or cfg.data.max_length, cfg.data.max_length)
    if est.total_params is not None:
        trainable = est.trainable_params if est.trainable_params is not None else est.total_params
        est.memory = {"weights": est.total_params * 4.0, "gradients": trainable * 4.0,
                      "optimizer (AdamW)": trainable * 8.0}
        if conf is not None:
            est.memory["activations"] = activation_bytes(conf, t.per_device_train_batch_size, seq_max,
                                                         3.0 if mixed else 4.0)
        est.memory["runtime overhead"] = RUNTIME_OVERHEAD_BYTES
        units = None
        if conf is not None:
            try:
                units = model_units(conf, num_labels, get_task(cfg.task), cfg.distributed.fsdp.auto_wrap)
            except Exception:  # an architecture the meta build cannot split: the gathered layer is left out
                est.notes.append("The model's layers could not be sized: FSDP/ZeRO-3 rows leave out the gathered "
                                 "layer.")
        # `memory` stays the single-process figure earlier versions showed; the plan counts eager activations.
        est.plan = memory_plan(cfg, est.total_params, trainable,
                               est.memory.get("activations", 0.0) * EAGER_ACTIVATION_FACTOR, mixed=mixed, units=units)
        est.plan_choice = plan_choice(cfg)
        est.suggestion = suggest_plan(cfg, est.plan, memory_budget)

    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(train_rows / per_step))
    est.steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(steps_per_epoch * t.num_train_epochs))
    tokens = est.steps * per_step * seq_mean * 1.1  # length-grouped batches still pad a little
    prec = "bf16" if bf16 else "fp16" if t.fp16 and "CPU" not in device else "fp32"
    measured = measured_steps(cfg, runs_root, precision=prec)
    spread: list[float] = []
    if not measured and probe and conf is not None:
        step_s, step_tokens = probe_step(cfg, t.per_device_train_batch_size * t.gradient_accumulation_steps,
                                         max(8, int(round(seq_mean))), num_labels=num_labels)
        measured = [(step_s, step_tokens, "")]
    if measured:
        # Small models spend most of a step on fixed overhead, so time does not shrink with fewer
        # tokens per step; it is scaled up (only) when steps carry more tokens than the measured ones.
        want = tokens / est.steps
        per_run = [step_s * (max(1.0, want / step_tokens) if step_tokens else 1.0) for step_s, step_tokens, _ in
                   measured]
        step_s = float(np.median(per_run))
        train_s = est.steps * step_s
        spread = [est.steps * x for x in per_run]
        names = [name for *_, name in measured]
        if names == [""]:
            est.time_source = f"a probe: {step_s:.2f} s per step, timed just now on this machine"
        elif len(names) == 1:
            est.time_source = f"measured: {step_s:.2f} s per step in run {names[0]!r} (same model and method)"
        else:
            est.time_source = (f"measured: median {step_s:.2f} s per step over the last {len(names)} runs of the "
                               f"same model, method and precision ({', '.join(repr(n) for n in names)})")
        if any(x > m[0] * 1.05 for x, m in zip(per_run, measured)):
            est.time_source += ", scaled up for longer batches"
    elif est.total_params is not None:
        emb = _embedding_params(conf) if conf is not None else 0
        layers = getattr(conf, "num_hidden_layers", 0) or 0
        h = getattr(conf, "hidden_size", 0) or 0
        body = max(est.total_params - emb, 1)
        # 6N per token for full fine-tuning (forward 2N, backward 4N); LoRA skips weight gradients: ~4N.
        per_token = (6 if cfg.peft.method == "full" else 4) * body + 12 * layers * h * seq_mean
        rate = flops * (BF16_CPU_SPEEDUP if bf16 and "CPU" in device else 1.0)
        train_s = tokens * per_token / rate
        est.time_source = f"tabulated: ~{rate / 1e9:,.0f} GFLOP/s assumed for this machine ({device})"
    else:
        est.time_source = "unknown: no measured run and no model config to count FLOPs from"
        return est
    eval_passes = (2 if cfg.evaluate_before else 1) + (t.num_train_epochs if t.eval_strategy != "no" else 0)
    eval_s = train_s / max(train_rows, 1) * eval_rows * eval_passes / 3  # forward only: ~1/3 of a train step
    est.step_seconds = train_s / est.steps
    est.total_seconds = STARTUP_SECONDS + train_s + eval_s
    if spread and max(spread) > min(spread):
        # The middle half of the runs once there are enough of them (one odd run does not stretch it), else all.
        lo, hi = (np.percentile(spread, [25, 75]) if len(spread) >= 4 else (min(spread), max(spread)))
        est.low_seconds = STARTUP_SECONDS + lo * (1 + eval_s / train_s)
        est.high_seconds = STARTUP_SECONDS + hi * (1 + eval_s / train_s)
    return est


def format_estimate(est: Estimate) -> str:
    """`about 5 min (4-7 min)`; without a range `about 5 min`; `unknown` without an estimate."""
    if est.total_seconds is None or not math.isfinite(est.total_seconds):
        return "unknown"
    text = f"about {format_seconds(est.total_seconds)}"
    if est.low_seconds is not None and est.high_seconds is not None:
        lo, hi = format_seconds(est.low_seconds), format_seconds(est.high_seconds)
        if lo != hi:
            unit = lo.split()[-1]
            text += f" ({lo.split()[0]}-{hi})" if unit == hi.split()[-1] else f" ({lo} - {hi})"
    return text


def _embedding_params(conf: Any) -> int:
    """Input embeddings do a lookup, not a matmul: leave them out of the FLOP count."""
    h = getattr(conf, "hidden_size", 0) or 0
    vocab = getattr(conf, "vocab_size", 0) or 0
    pos = getattr(conf, "max_position_embeddings", 0) if getattr(conf, "model_type", "") in ("bert", "roberta") else 0
    return int((vocab + (pos or 0)) * h)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit in ("B", "KB") else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "unknown"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def gpu_memory_note(total_bytes: float) -> str | None:
    """A warning when the estimate exceeds the free memory of the device it will train on."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            where = "GPU"
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = "RAM"
    except (ValueError, OSError, AttributeError):
        return None
    if total_bytes > free:
        return (f"the estimate ({format_bytes(total_bytes)}) exceeds the free {where} ({format_bytes(free)}): "
                f"lower the batch size or data.max_length, or use LoRA.")
    return None


def device_memory_budget() -> float | None:
    """Free memory of this machine's first GPU in bytes (what a run there could use); None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.mem_get_info()[0])
    except (RuntimeError, AssertionError):  # a driver that does not answer: no budget, no suggestion
        return None
    return None


def plan_table(est: Estimate) -> pd.DataFrame:
    """`est.plan` as a table: one row per strategy (the configured one marked), MB per part, device and host
    totals."""
    rows = []
    parts = [k for k in ("weights", "gradients", "optimizer", "activations", "gathered layer", "gradient buckets")
             if any(k in p for p in est.plan.values())]
    for name, p in est.plan.items():
        row: dict[str, Any] = {"strategy": name + (" (chosen)" if name == est.plan_choice else "")}
        row.update({k: p.get(k, 0.0) / 2**20 for k in parts})
        row["device total"] = device_total(p) / 2**20
        row["host (offload)"] = host_total(p) / 2**20
        rows.append(row)
    return pd.DataFrame(rows)


def model_summary(name_or_path: str) -> dict[str, Any]:
    """Architecture facts from config.json for display (empty when the config is not on disk)."""
    conf = load_model_config(name_or_path)
    if conf is None:
        return {}
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings")
    return {k: getattr(conf, k) for k in keys if getattr(conf, k, None) is not None}


__all__ = ["Estimate", "PLAN_ORDER", "SUGGEST_ORDER", "Units", "activation_bytes", "count_parameters",
           "device_memory_budget", "device_total", "estimate_run", "format_bytes", "format_estimate", "format_seconds",
           "gpu_memory_note", "host_total", "load_model_config", "local_model_dir", "measured_step", "measured_steps",
           "memory_plan", "model_summary", "model_units", "plan_choice", "plan_table", "probe_step", "suggest_plan"]

