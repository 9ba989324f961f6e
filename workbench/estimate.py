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
                 model_config: Any = None, probe: bool = False) -> Estimate:
    """Estimate parameters, peak training memory and wall time of `cfg` on `train_rows` examples.

    `mean_tokens`/`max_tokens` come from the data report (token lengths); without them the estimate
    assumes half of `data.max_length` on average and all of it for the longest batch.

    Time comes from the median step time of the last few completed runs of the same model, method and
    precision (one run slowed by another process does not decide it), with a range from their spread;
    with no such run and `probe`, from a few training steps timed now (`probe_step`); else from a
    tabulated FLOP rate.
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


def model_summary(name_or_path: str) -> dict[str, Any]:
    """Architecture facts from config.json for display (empty when the config is not on disk)."""
    conf = load_model_config(name_or_path)
    if conf is None:
        return {}
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings")
    return {k: getattr(conf, k) for k in keys if getattr(conf, k, None) is not None}


__all__ = ["Estimate", "activation_bytes", "count_parameters", "estimate_run", "format_bytes", "format_estimate",
           "format_seconds", "gpu_memory_note", "load_model_config", "local_model_dir", "measured_step",
           "measured_steps", "model_summary", "probe_step"]

