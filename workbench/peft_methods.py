"""PEFT methods: the `peft` config each `peft.method` builds, which tasks it applies to, and reading a run's adapter.

Every method is `peft`'s own (LoraConfig with rsLoRA/DoRA/chosen layers, AdaLoraConfig, IA3Config,
PrefixTuningConfig, PromptTuningConfig) wrapped with `get_peft_model`; the task head stays trainable through the
task's `peft.TaskType`. What the workbench adds: defaults per architecture, tinit/tfinal as shares of the run,
AdaLoRA's budget update as a trainer callback (peft leaves the training loop to the caller), a clear refusal for
method/task pairs that cannot work, and an adapter_config.json read back with only the fields the workbench
writes (a shared run directory is untrusted: see `workbench.untrusted`).
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import PeftConfig
from .errors import ModelError

# Adapters on every attention projection: better than peft's q/v default for classification.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"], "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"], "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bert": ["query", "key", "value"], "roberta": ["query", "key", "value"], "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"], "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    # encoder-decoders peft has no default for (it has t5/mt5 ["q", "v"], bart/mbart ["q_proj", "v_proj"])
    "marian": ["q_proj", "v_proj"],
}
MERGEABLE = ("lora", "adalora", "ia3")  # adapters peft folds into the weights; prefix/prompt add inputs instead
PROMPT_LEARNING = ("prefix", "prompt")
EXPLAIN = {
    "full": "every weight trains (the input embeddings too unless kept fixed): the most memory, the reference score.",
    "lora": "small low-rank matrices beside chosen linear layers; rsLoRA rescales them, DoRA also trains each "
            "weight's magnitude.",
    "adalora": "LoRA whose rank budget is pruned during training towards the layers where it helps most.",
    "ia3": "learned vectors that rescale keys, values and feed-forward activations: the fewest weights.",
    "prefix": "trained key/value vectors prepended at every layer; nothing to merge into the weights.",
    "prompt": "a trained soft prompt prepended to the input embeddings; nothing to merge into the weights.",
}


def _arch(model: Any) -> str:
    return getattr(getattr(model, "config", model), "model_type", "") or ""


def _linear_names(model: Any) -> list[str]:
    import torch
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def lora_targets(model: Any, peft_cfg: PeftConfig, section: str = "lora") -> list[str] | str:
    """The modules that get LoRA/AdaLoRA adapters: the section's `target_modules` (`all-linear` passed on to peft),
    else the per-architecture default."""
    chosen = getattr(peft_cfg, section).target_modules
    if chosen:
        return "all-linear" if list(chosen) == ["all-linear"] else list(chosen)
    arch = _arch(model)
    if arch in LORA_TARGETS:
        return LORA_TARGETS[arch]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults
    if arch in peft_defaults:
        return list(peft_defaults[arch])
    raise ModelError(f"No default {section} target modules for architecture {arch!r}. Fix: set "
                     f"peft.{section}.target_modules to some of its linear layers: {_linear_names(model)[:12]}, or "
                     f"`all-linear`.")


def _check_present(model: Any, names: Any, field: str) -> None:
    if not isinstance(names, list):
        return
    present = {n.split(".")[-1] for n, _ in model.named_modules()} | {n for n, _ in model.named_modules()}
    missing = [t for t in names if t not in present and not any(n.endswith("." + t) for n in present)]
    if missing:
        raise ModelError(f"{field} {missing} are not modules of this {_arch(model) or 'model'} model. Linear modules "
                         f"it has: {_linear_names(model)[:12]}.")


def _layer_count(model: Any) -> int | None:
    c = getattr(model, "config", None)
    return getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", None) or getattr(c, "n_layer", None)


def adalora_schedule(peft_cfg: PeftConfig, total_steps: int | None) -> tuple[int, int, int]:
    """(total_step, tinit, tfinal) for AdaLoRA: a tinit/tfinal below 1 is a share of the run's optimizer steps.
    Raises `ModelError` naming the fix when the step count is unknown or leaves no steps to re-allocate in."""
    a = peft_cfg.adalora
    if not total_steps or total_steps <= 0:
        raise ModelError("peft.method: adalora needs the run's total number of optimizer steps (its rank budget is "
                         "pruned on a schedule over the whole run), and it is not known here. Fix: set "
                         "training.max_steps, or train on a data set of known length with num_train_epochs.")
    tinit = int(round(a.tinit * total_steps)) if a.tinit < 1 else int(a.tinit)
    tfinal = int(round(a.tfinal * total_steps)) if a.tfinal < 1 else int(a.tfinal)
    if tinit >= total_steps - tfinal:
        raise ModelError(f"peft.adalora: tinit={a.tinit:g} ({tinit} steps) and tfinal={a.tfinal:g} ({tfinal} steps) "
                         f"leave no steps to re-allocate the rank budget in a run of {total_steps} optimizer steps. "
                         f"Fix: lower peft.adalora.tinit/tfinal (shares below 1, e.g. 0.1 and 0.2), or train for "
                         f"more steps.")
    return total_steps, tinit, tfinal


def peft_config(model: Any, peft_cfg: PeftConfig, task_type: str | None, total_steps: int | None = None,
                tokenizer_path: str | None = None) -> Any:
    """The `peft` config object for `peft_cfg.method` on `model` (a `ModelError` says what is wrong)."""
    import peft

    method = peft_cfg.method
    tt = peft.TaskType[task_type] if task_type else None
    save = list(getattr(model, "workbench_modules_to_save", None) or []) or None
    new_tokens = list(getattr(model, "workbench_trainable_token_ids", None) or []) or None
    if method == "lora":
        s = peft_cfg.lora
        targets = lora_targets(model, peft_cfg, "lora")
        _check_present(model, targets, "peft.lora.target_modules")
        layers = list(s.layers) if s.layers else None
        n = _layer_count(model)
        if layers and n and any(i < 0 or i >= n for i in layers):
            raise ModelError(f"peft.lora.layers {layers}: this model has layers 0 to {n - 1}. Fix: list indices in "
                             f"that range, or leave it empty for every layer.")
        return peft.LoraConfig(task_type=tt, r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                               target_modules=targets, layers_to_transform=layers, use_rslora=s.use_rslora,
                               use_dora=s.use_dora, trainable_token_indices=new_tokens, modules_to_save=save)
    if method == "adalora":
        s = peft_cfg.adalora
        targets = lora_targets(model, peft_cfg, "adalora")
        _check_present(model, targets, "peft.adalora.target_modules")
        total, tinit, tfinal = adalora_schedule(peft_cfg, total_steps)
        return peft.AdaLoraConfig(task_type=tt, init_r=s.init_r, target_r=s.target_r, lora_alpha=s.lora_alpha,
                                  lora_dropout=s.lora_dropout, target_modules=targets, tinit=tinit, tfinal=tfinal,
                                  deltaT=s.deltaT, orth_reg_weight=s.orth_reg_weight, total_step=total,
                                  modules_to_save=save)
    if method == "ia3":
        s = peft_cfg.ia3
        from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as ff_defaults,
                                          TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as ia3_defaults)
        arch = _arch(model)
        targets = list(s.target_modules) if s.target_modules else ia3_defaults.get(arch)
        if targets is None:
            raise ModelError(f"peft has no default IA3 modules for architecture {arch!r}. Fix: set "
                             f"peft.ia3.target_modules (and feedforward_modules) to some of its linear layers: "
                             f"{_linear_names(model)[:12]}.")
        _check_present(model, list(targets), "peft.ia3.target_modules")
        ff = list(s.feedforward_modules) if s.feedforward_modules else [
            m for m in ff_defaults.get(arch, []) if m in targets]  # the default ones among the chosen targets
        if not set(ff) <= set(targets):
            raise ModelError(f"peft.ia3.feedforward_modules {sorted(set(ff) - set(targets))} are not among "
                             f"target_modules {list(targets)}. Fix: list them in target_modules too.")
        return peft.IA3Config(task_type=tt, target_modules=list(targets), feedforward_modules=ff, modules_to_save=save)
    if method == "prefix":
        s = peft_cfg.prefix
        hidden = s.encoder_hidden_size or getattr(model.config, "hidden_size", None) or \
            getattr(model.config, "d_model", None)
        return peft.PrefixTuningConfig(task_type=tt, num_virtual_tokens=s.num_virtual_tokens,
                                       prefix_projection=s.prefix_projection, encoder_hidden_size=hidden)
    if method == "prompt":
        s = peft_cfg.prompt
        if s.init_text:
            if not tokenizer_path:
                raise ModelError("peft.prompt.init_text needs the model's tokenizer, and none was given.")
            return peft.PromptTuningConfig(task_type=tt, num_virtual_tokens=s.num_virtual_tokens,
                                           prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                           prompt_tuning_init_text=s.init_text, tokenizer_name_or_path=tokenizer_path)
        return peft.PromptTuningConfig(task_type=tt, num_virtual_tokens=s.num_virtual_tokens)
    raise ModelError(f"peft.method={method!r} has no adapter to build.")


def apply_peft(model: Any, peft_cfg: PeftConfig, task_type: str | None = "SEQ_CLS", total_steps: int | None = None,
               *, tokenizer_path: str | None = None) -> Any:
    """Wrap `model` with `peft_cfg.method`'s adapter; the task head stays fully trainable (peft's task types do
    that). `task_type` is the task's `peft.TaskType` name (`Task.peft_task_type`); `total_steps` (the run's
    optimizer steps) is needed by AdaLoRA's schedule; `tokenizer_path` by prompt tuning's `init_text`.

    Token ids a task's `load_model` left on the model as `workbench_trainable_token_ids` (relation extraction's
    entity markers) are trained too with LoRA (peft's `trainable_token_indices`); modules it left as
    `workbench_modules_to_save` (masked LM's head transform) train whole beside the adapters."""
    from peft import get_peft_model

    problem = model_problem(model, peft_cfg.method)
    if problem:
        raise ModelError(problem)
    if peft_cfg.method == "prefix":
        accept_prefix(model)
    pcfg = peft_config(model, peft_cfg, task_type, total_steps, tokenizer_path)
    try:
        with peft_quiet():
            wrapped = get_peft_model(model, pcfg)
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ModelError(f"peft could not add {peft_cfg.method} adapters to this {_arch(model) or 'model'} model: "
                         f"{str(e)[:300]}") from None
    if getattr(pcfg, "trainable_token_indices", None):
        # peft saves the whole resized embedding table with the adapter (113 MB for SmolLM2) because the vocabulary
        # grew; the only rows that differ from the base are the new tokens', saved anyway as trainable tokens, and
        # `load_trained` rebuilds the table from the run's tokenizer before loading the adapter.
        wrapped.save_pretrained = functools.partial(wrapped.save_pretrained, save_embedding_layers=False)
    return wrapped


def task_problem(task: Any, method: str) -> str | None:
    """Why `method` does not apply to `task` (None when it does), from facts every task declares."""
    if method in ("full", "lora", "adalora", "ia3"):
        return None
    name = getattr(task, "name", "this task")
    what = "a trained soft prompt" if method == "prompt" else "trained keys/values at every layer"
    if getattr(task, "reusable_weights", False):
        return (f"peft.method: {method} does not apply to {name}: a pre-training run saves whole weights for later "
                f"fine-tunes to start from, and {method} tuning adds {what}, nothing that folds into the weights. "
                f"Fix: use lora, adalora or ia3 (merged into the saved weights), or full.")
    tt = getattr(task, "peft_task_type", None)
    if not tt:
        return (f"peft.method: {method} does not apply to {name}: peft adds {what} only for a model with a peft task "
                f"type, and {name} has none. Fix: use lora, adalora, ia3 or full.")
    if method == "prompt" and tt in ("TOKEN_CLS", "QUESTION_ANS"):
        per = "one tag per token" if tt == "TOKEN_CLS" else "answer start/end positions"
        return (f"peft.method: prompt does not apply to {name}: peft prepends the soft prompt to the input, so the "
                f"model's outputs gain num_virtual_tokens positions before the text while the labels are {per} of "
                f"the text itself, and peft does not realign them. Fix: use prefix (it adds keys/values, not "
                f"positions), lora, adalora, ia3 or full.")
    return None


def model_problem(model: Any, method: str) -> str | None:
    """Why `method` cannot work on this loaded model (None when it can), checked before wrapping."""
    if method not in PROMPT_LEARNING:
        return None
    from .models import is_decoder

    auto = type(model).__name__
    if method == "prefix" and not _takes_past_key_values(model) and not _body_takes_cache(model):
        return (f"peft.method: prefix cannot train this {_arch(model) or 'model'} {auto}: peft hands the prefix "
                f"to the model as `past_key_values` (in this transformers version: `cache`), and neither this model "
                f"nor its transformer body takes one. Fix: use lora, adalora, ia3 or prompt.")
    if method == "prompt" and is_decoder(model) and auto.endswith("ForSequenceClassification") and \
            getattr(model, "workbench_pooling", "auto") != "mean":
        return (f"peft.method: prompt on a decoder classifier ({_arch(model)}): peft feeds the soft prompt as input "
                f"embeddings, and then transformers reads the class from the last position of the padded batch, "
                f"a padding token for every shorter text. Fix: set model.pooling: mean (the head reads the mean over "
                f"the real tokens), or use lora, adalora or ia3.")
    return None


def _takes_past_key_values(model: Any) -> bool:
    return "past_key_values" in inspect.signature(model.forward).parameters


def _body_takes_cache(model: Any) -> bool:
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return body is not None and "cache" in inspect.signature(body.forward).parameters


def accept_prefix(model: Any) -> Any:
    """Let peft 0.21's prefix tuning reach a model with a task head under transformers 5.24.

    peft passes the prefix's keys/values as `past_key_values` and first checks that the model's forward signature
    has that name; transformers 5.24 renamed it `cache` (a head model such as BertForSequenceClassification passes
    `**kwargs` on to its body, whose forward takes `cache`), so peft refused every classifier, tagger and QA model.
    This gives the model's forward a `past_key_values` parameter that is handed on as `cache`: the body then prepends
    the prefix at every layer, as prefix tuning means (positions continue after the prefix; peft extends the
    attention mask over it). Applied before wrapping, and again before a saved prefix adapter is loaded."""
    if _takes_past_key_values(model) or not _body_takes_cache(model):
        return model
    forward = model.forward
    sig = inspect.signature(forward)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))

    @functools.wraps(forward)
    def with_prefix(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return forward(*args, **kwargs)

    with_prefix.__signature__ = sig.replace(parameters=params)  # what peft's check reads
    model.forward = with_prefix
    return model


def loaded(model: Any) -> Any:
    """A `PeftModel` just read back, made usable for scoring: peft 0.21's AdaLoRA names its trainable adapter only
    when built for training, yet reads that name in every forward that is given labels (its orthogonality
    penalty), so a reloaded AdaLoRA model failed on any loss; the name is set here (the penalty weight is 0)."""
    inner = getattr(model, "base_model", None)
    if type(inner).__name__ == "AdaLoraModel" and not hasattr(inner, "trainable_adapter_name"):
        inner.trainable_adapter_name = model.active_adapter
    return model


def mergeable(method: str) -> bool:
    return method in MERGEABLE


def merge(model: Any) -> Any:
    """The adapter folded into the weights (`merge_and_unload`), the trained copies of `modules_to_save` in place
    of the originals. Those copies are put in place here first: peft 0.21's IA3 unload assumes every wrapped module
    has a `weight`, and fails on a head block such as BERT's MLM `transform` (LoRA's unload handles it)."""
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    module.modules_to_save[module.active_adapters[0]])
    return model.merge_and_unload()


# --- AdaLoRA's budget update -------------------------------------------------------------------
def adalora_callback(resume_from: str | Path | None = None) -> Any:
    """A `TrainerCallback` that calls peft's `update_and_allocate(global_step)` after each optimizer step and
    before the gradients are zeroed (peft's documented order: it reads the gradients to score each rank).
    With `resume_from` (the checkpoint the Trainer resumes from), it first puts back the allocator's state that
    checkpoint holds (`restore_adalora_state`), once the Trainer has loaded the weights and the step count."""
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if resume_from is not None:
                restore_adalora_state(model, resume_from, state.global_step)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            inner = getattr(model, "module", model)  # DDP wraps the PeftModel
            inner.base_model.update_and_allocate(state.global_step)

    return AdaLoraBudget()


# --- AdaLoRA across a checkpoint ---------------------------------------------------------------
# Once peft has pruned the budget it keeps `rank_pattern` on the adapter's config, and `save_pretrained` then writes
# the adapter cut down to the kept ranks. A run resumes by rebuilding the model at init_r and loading the checkpoint
# into it, so checkpoints are written whole (`adalora_unpruned`): the pruned ranks are there as zeroed singular
# values (`lora_E`). What peft keeps only in memory travels beside them in ADALORA_STATE (`save_adalora_state`):
# the rank mask, and the rank allocator's importance scores (the two moving averages it prunes by), so a resumed
# run prunes as the uninterrupted one would. The run's final model is saved pruned, as peft saves it.
ADALORA_STATE = "adalora_state.safetensors"


def _adalora_model(model: Any) -> tuple[Any, str] | None:
    """(peft's AdaLoraModel, the adapter it trains) of a model being trained with AdaLoRA, else None."""
    inner = getattr(model, "module", model)  # DDP wraps the PeftModel
    base = getattr(inner, "base_model", None)
    if getattr(base, "rankallocator", None) is None or not hasattr(base, "trainable_adapter_name"):
        return None
    return base, base.trainable_adapter_name


@contextmanager
def adalora_unpruned(model: Any) -> Iterator[None]:
    """While inside, an AdaLoRA model saves its adapter at init_r (its rank mask is set aside, then put back);
    any other model as it is."""
    found = _adalora_model(model)
    if found is None:
        yield
        return
    base, name = found
    cfg = base.peft_config[name]
    pattern, cfg.rank_pattern = cfg.rank_pattern, None
    try:
        yield
    finally:
        cfg.rank_pattern = pattern


def save_adalora_state(model: Any, folder: str | Path) -> None:
    """Write an AdaLoRA model's rank mask and importance scores into `folder` (a checkpoint) as ADALORA_STATE:
    plain tensors named `rank_pattern.<lora_E parameter>`, `exp_avg_ipt.<parameter>`, `exp_avg_unc.<parameter>`."""
    import torch
    from safetensors.torch import save_file

    found = _adalora_model(model)
    if found is None:
        return
    base, name = found
    alloc = base.rankallocator
    tensors = {f"{kind}.{n}": t.detach().to("cpu").contiguous() for kind, scores in
               (("exp_avg_ipt", alloc.exp_avg_ipt), ("exp_avg_unc", alloc.exp_avg_unc)) for n, t in scores.items()}
    pattern = base.peft_config[name].rank_pattern or {}
    for n, keep in pattern.items():  # peft drops the adapter's name from the keys once it has saved the adapter
        full = n if f".{name}" in n else f"{n}.{name}"
        tensors[f"rank_pattern.{full}"] = torch.as_tensor(keep, dtype=torch.bool).view(-1)
    save_file(tensors, str(Path(folder) / ADALORA_STATE))


def restore_adalora_state(model: Any, folder: str | Path, global_step: int) -> None:
    """Put back the AdaLoRA state a checkpoint `folder` holds into `model` (already loaded from it, at step
    `global_step`): the importance scores, and the rank mask peft applies at each step after total_step - tfinal.
    (peft's `update_and_allocate` is called with the steps done before the current one: 0 at the first.)

    A checkpoint without ADALORA_STATE restarts the scores (they only steer the pruning still to come; refused
    just before the step that fixes the budget by them, where peft would fail) and, from total_step - tfinal on,
    reads the mask off the zeroed singular values (peft zeroes them at every step then). A state file that does not
    fit this model is refused with a `ModelError`: the checkpoint is untrusted input."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = _adalora_model(model)
    if found is None:
        return
    base, name = found
    cfg, alloc = base.peft_config[name], base.rankallocator
    params = {n: p for n, p in base.model.named_parameters() if "lora_" in n and f".{name}" in n}
    f = Path(folder) / ADALORA_STATE
    saved: dict[str, Any] = {}
    if f.is_file():
        try:
            saved = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{f} cannot be read ({str(e)[:120]}). Fix: delete that checkpoint folder to resume "
                             f"from an earlier one, or start a new run.") from None
    scores: dict[str, dict[str, Any]] = {"exp_avg_ipt": {}, "exp_avg_unc": {}}
    pattern: dict[str, list[bool]] = {}
    for key, t in saved.items():
        kind, _, n = key.partition(".")
        p = params.get(n)
        fits = p is not None and (t.shape == p.shape if kind in scores else
                                  kind == "rank_pattern" and n.rsplit(".", 2)[-2] == "lora_E"
                                  and t.dtype == torch.bool and t.shape == (p.shape[0],))
        if not fits:
            raise ModelError(f"{f}: {key!r} {tuple(t.shape)} does not fit this run's AdaLoRA adapter (init_r="
                             f"{cfg.init_r}, target_modules={cfg.target_modules}). Fix: resume with the config the "
                             f"run was started with, delete that checkpoint folder to resume from an earlier one, "
                             f"or start a new run.")
        if kind in scores:
            scores[kind][n] = t.to(device=p.device, dtype=p.dtype)
        else:
            pattern[n] = t.tolist()
    if scores["exp_avg_ipt"].keys() != scores["exp_avg_unc"].keys():
        raise ModelError(f"{f} holds importance scores for different parameters in exp_avg_ipt and exp_avg_unc. "
                         f"Fix: delete that checkpoint folder to resume from an earlier one, or start a new run.")
    if not scores["exp_avg_ipt"] and global_step == cfg.total_step - cfg.tfinal:
        # peft fixes the final budget at this step from the scores alone, without updating them first
        raise ModelError(f"checkpoint {Path(folder).name} has no AdaLoRA importance scores ({ADALORA_STATE}), and "
                         f"the next step fixes the rank budget by them. Fix: delete that checkpoint folder to "
                         f"resume from an earlier one, or start a new run.")
    if scores["exp_avg_ipt"]:
        for n, avg in scores["exp_avg_ipt"].items():
            # peft sets all three afresh for a parameter not in `ipt` (the instant score, recomputed at each step)
            alloc.ipt[n] = torch.zeros_like(avg)
            alloc.exp_avg_ipt[n] = avg
            alloc.exp_avg_unc[n] = scores["exp_avg_unc"][n]
    if not pattern and global_step >= cfg.total_step - cfg.tfinal:
        pattern = {n: (p.detach() != 0).view(-1).tolist() for n, p in params.items() if ".lora_E." in n}
    cfg.rank_pattern = pattern or None


def adalora_mask_from_weights(model: Any) -> None:
    """Once pruning has begun (some singular value is zero), set an AdaLoRA model's rank mask to its non-zero
    singular values, so its final save keeps exactly the ranks that act. For weights loaded from a checkpoint (the
    Trainer's best one) whose mask is not the one in memory; a zero one contributes nothing, so none is lost."""
    found = _adalora_model(model)
    if found is None:
        return
    base, name = found
    values = {n: (p.detach() != 0).view(-1).tolist() for n, p in base.model.named_parameters()
              if ".lora_E." in n and n.endswith(f".{name}")}
    pruned = any(not all(keep) for keep in values.values())
    base.peft_config[name].rank_pattern = values if pruned else None


def adalora_resume_problem(checkpoint: str | Path) -> str | None:
    """Why an AdaLoRA run cannot resume from `checkpoint`, or None: one whose adapter was saved already pruned
    (as workbench versions before `adalora_unpruned` wrote them) does not fit the model rebuilt at init_r."""
    f = Path(checkpoint) / "adapter_config.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the Trainer's load says what is wrong with it
    if isinstance(raw, dict) and raw.get("rank_pattern"):
        return (f"checkpoint {Path(checkpoint).name} holds an AdaLoRA adapter saved at its pruned ranks "
                f"(rank_pattern in {f.name}), as workbench versions before this one wrote checkpoints; it cannot "
                f"be loaded into the adapter rebuilt at init_r to continue training. Fix: start the run again "
                f"(`workbench train` with its config.yaml, or delete {Path(checkpoint).parent.name}/ and resume "
                f"to train it from step 0).")
    return None


def adalora_ranks(model: Any) -> dict[str, int]:
    """{module name: rank in use} of an AdaLoRA model: the non-zero entries of each layer's rank mask
    (`lora_E`, the singular values peft zeroes as it prunes)."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_E" in name:
            out[name.rsplit(".lora_E", 1)[0]] = int((p.detach() != 0).sum())
    return out


# --- reading a run's adapter (untrusted) ------------------------------------------------------
# The fields of adapter_config.json the workbench writes and reads back, per peft type. Anything else a shared
# file sets (init schemes that rewrite base weights at load, a tokenizer to fetch, megatron modules to import,
# layer replication, ...) is dropped: the file may only describe the adapter's shape.
_COMMON = ("peft_type", "task_type", "modules_to_save")
_SAFE_FIELDS = {
    "LORA": _COMMON + ("r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "layers_pattern",
                       "use_rslora", "use_dora", "trainable_token_indices", "rank_pattern", "alpha_pattern", "bias",
                       "fan_in_fan_out"),
    "ADALORA": _COMMON + ("r", "lora_alpha", "lora_dropout", "target_modules", "init_r", "target_r", "tinit",
                          "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step", "rank_pattern",
                          "bias", "fan_in_fan_out"),
    "IA3": _COMMON + ("target_modules", "feedforward_modules", "fan_in_fan_out"),
    "PREFIX_TUNING": _COMMON + ("num_virtual_tokens", "token_dim", "num_transformer_submodules",
                                "num_attention_heads", "num_layers", "encoder_hidden_size", "prefix_projection"),
    "PROMPT_TUNING": _COMMON + ("num_virtual_tokens", "token_dim", "num_transformer_submodules",
                                "num_attention_heads", "num_layers"),
}
METHOD_OF_TYPE = {"LORA": "lora", "ADALORA": "adalora", "IA3": "ia3", "PREFIX_TUNING": "prefix",
                  "PROMPT_TUNING": "prompt"}


def read_adapter_config(folder: str | Path, base_name: str | None = None) -> Any:
    """The peft config of a run's adapter folder, built from the allowed fields of its adapter_config.json only
    (see `_SAFE_FIELDS`). A prompt-tuning adapter loads as randomly initialised (its trained embeddings are then
    read from the weights), so no tokenizer named in the file is ever fetched."""
    import peft

    f = Path(folder) / "adapter_config.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{f} cannot be read ({type(e).__name__}: {str(e)[:120]}). Fix: retrain the run, or "
                         f"restore that file.") from None
    kind = raw.get("peft_type") if isinstance(raw, dict) else None
    if kind not in _SAFE_FIELDS:
        raise ModelError(f"{f}: peft_type {kind!r} is not an adapter the workbench trains "
                         f"({', '.join(_SAFE_FIELDS)}). Fix: give a run's model folder as the workbench wrote it.")
    kept = {k: v for k, v in raw.items() if k in _SAFE_FIELDS[kind]}
    if kind == "ADALORA":  # a training penalty: a loaded model's loss is the model's own
        kept["orth_reg_weight"] = 0.0
    kept["base_model_name_or_path"] = base_name
    kept["inference_mode"] = True
    cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    try:
        return cls(**{k: v for k, v in kept.items() if k != "peft_type"})
    except (TypeError, ValueError) as e:
        raise ModelError(f"{f} does not describe a valid {kind} adapter: {str(e)[:200]}. Fix: retrain the run, or "
                         f"restore that file.") from None


@contextmanager
def peft_quiet() -> Iterator[None]:
    """Silence the one FutureWarning peft causes on every wrap under transformers 5: `PeftModel.__init__`
    reads the deprecated `model.is_gradient_checkpointing` (its successor is `is_activation_checkpointing`).
    Nothing for the user to change, so only that message is hidden, and only around the peft call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
