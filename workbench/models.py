"""Model stage: find a model (built-in, local folder, hub id), load it safely, add a task head.

Safety defaults: safetensors only unless `allow_pickle` is set (pickle can run code while
loading), and `trust_remote_code` off unless asked. Every failure says what was looked for and how
to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .assets import BUILTIN_MODELS, builtin_model_path
from .config import ModelConfig, PeftConfig
from .errors import ConfigError, ModelError
from .gguf_files import check_gguf, find_gguf, gguf_model_path
from .peft_methods import LORA_TARGETS, apply_peft, lora_targets  # noqa: F401  (re-exported)
from .peft_methods import peft_quiet as _peft_quiet

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout",
                  "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "seq_classif_dropout")



def resolve_model_path(name_or_path: str) -> str:
    """A built-in name becomes its cached folder; a GGUF file (or a folder holding only one) becomes its cached
    safetensors conversion (`workbench.gguf_files`); a folder is returned as is; anything else is a hub id."""
    if name_or_path in BUILTIN_MODELS:
        return str(builtin_model_path(name_or_path))
    p = Path(name_or_path).expanduser()
    if is_run_dir(p):
        return str(run_model_folder(p))
    if p.exists():
        gguf = find_gguf(p)
        return str(gguf_model_path(gguf)) if gguf is not None else str(p)
    if _looks_like_path(name_or_path):
        raise ModelError(f"Model folder {name_or_path!r} does not exist. Fix: give an existing folder with "
                         f"config.json and model.safetensors, a .gguf file, a built-in ({', '.join(BUILTIN_MODELS)}), "
                         f"or a hub id.")
    return name_or_path


def is_run_dir(p: Path) -> bool:
    """A workbench run directory (config.yaml and status.json beside a `model` folder when finished)."""
    return p.is_dir() and (p / "config.yaml").is_file() and (p / "status.json").is_file()


def run_model_folder(run: Path) -> Path:
    """The model a new run starts from when `model.name_or_path` is an earlier run: its full weights (a LoRA run's
    merged copy), never its adapter alone. Its tokenizer is the run's own (tokens it added included)."""
    m = run / "model"
    if (m / "merged" / "config.json").is_file():
        return m / "merged"
    if (m / "config.json").is_file():
        return m
    if (m / "adapter_config.json").is_file():
        raise ModelError(f"{run} saved a PEFT adapter only, and a new run starts from whole weights. Fix: train it "
                         f"again with peft.merge_adapter: true (lora, adalora and ia3 merge; prefix and prompt tuning "
                         f"have nothing to fold into the weights; pre-training runs always save merged weights), or "
                         f"start from its base model.")
    import json
    try:
        state = json.loads((run / "status.json").read_text()).get("state", "unknown")
    except (OSError, ValueError, AttributeError):
        state = "unknown"
    raise ModelError(f"{run} is a run directory with no finished model (state: {state}). Fix: start from a "
                     f"completed run (`workbench runs` lists them), or wait for this one to finish.")


def _looks_like_path(name_or_path: str) -> bool:
    """Not a hub id (`name` or `org/name`): a relative or absolute path, or a file name."""
    return (name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or name_or_path.lower().endswith(".gguf")
            or os.sep in name_or_path.strip("/").replace("/", "", 1))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_source_problems(cfg: ModelConfig) -> list[str]:
    """What is wrong with `model.name_or_path`, checked without loading any weights (`config --validate`,
    before a run directory is created): a built-in, an existing model folder (config.json + safetensors),
    a GGUF file of a supported architecture (or a folder holding one), or something shaped like a hub id."""
    name = cfg.name_or_path
    if not name or name in BUILTIN_MODELS:
        return []
    p = Path(name).expanduser()
    try:
        if is_run_dir(p):
            check_model_dir(run_model_folder(p), False, pickle_fix=RUN_PICKLE_FIX)
            return []
        if p.exists():
            gguf = find_gguf(p)
            if gguf is not None:
                check_gguf(gguf)
            else:
                check_model_dir(p, cfg.allow_pickle)
            return []
    except ModelError as e:
        return [f"model.name_or_path: {e}"]
    if _looks_like_path(name):
        return [f"model.name_or_path: {name!r} does not exist (looked for {p.resolve()}). Fix: give an existing "
                f"folder with config.json and model.safetensors, a .gguf file, a built-in "
                f"({', '.join(BUILTIN_MODELS)}), or a hub id such as `org/model`."]
    if not _HUB_ID.fullmatch(name):
        return [f"model.name_or_path: {name!r} is not a built-in ({', '.join(BUILTIN_MODELS)}), an existing folder "
                f"or file, or a hub id (`name` or `org/name`: letters, digits, `-`, `_`, `.`)."]
    return []


def check_model_source(cfg: ModelConfig) -> None:
    """Raise `ConfigError` with `model_source_problems`: called before a run directory is made, so a wrong
    model path never leaves a failed run behind."""
    problems = model_source_problems(cfg)
    if problems:
        raise ConfigError(problems)


def check_model_dir(path: str | Path, allow_pickle: bool = False, *, pickle_fix: str | None = None) -> None:
    """Refuse folders that cannot be loaded safely, naming what is there and the fix.

    `pickle_fix` replaces the advice given when only pickle weights are found (a run's own model
    folder is never granted pickle: the workbench writes it as safetensors).
    """
    p = Path(path)
    if not p.is_dir():
        return  # a hub id: checked by the download itself (use_safetensors)
    files = sorted(f.name for f in p.iterdir())
    if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        raise ModelError(f"{p} is not a model folder: no config.json. Found: {files[:12]}. Fix: point at the "
                         f"folder written by `save_pretrained` (it holds config.json and model.safetensors).")
    adapter = (p / "adapter_config.json").exists()
    if adapter:
        # peft reads adapter_model.safetensors, and falls back to unpickling adapter_model.bin without it:
        # any other safetensors file in the folder must not let that fallback through.
        has_st = (p / "adapter_model.safetensors").is_file()
        pickled = [f for f in files if f.startswith("adapter_model") and f.endswith(PICKLE_SUFFIXES)]
    else:
        has_st = any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files)
        pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if not has_st:
        if pickled and not allow_pickle:
            fix = pickle_fix or ("convert them to safetensors (load once in a trusted session and "
                                 "`save_pretrained(..., safe_serialization=True)`), or set model.allow_pickle: true "
                                 "if you trust this file.")
            raise ModelError(f"{p} holds only pickle-based weights ({', '.join(pickled[:3])}), which can run code when "
                             f"loaded; loading {pickled[0]} was refused. Fix: {fix}")
        if not pickled:
            wanted = "adapter_model.safetensors" if adapter else "model.safetensors"
            raise ModelError(f"{p} has {'adapter_config.json' if adapter else 'config.json'} but no weights "
                             f"({wanted}). Found: {files[:12]}.")


def load_tokenizer(path: str, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _load_error(path, cfg, e, "tokenizer") from None
    return with_pad_token(tok)


def with_pad_token(tok: Any) -> Any:
    """`tok`, given a pad token if it has none (eos, else unk): Llama-family tokenizers ship without one,
    and batching needs it."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _load_error(path: str, cfg: ModelConfig, e: Exception, what: str) -> ModelError:
    msg = str(e)
    if "trust_remote_code" in msg:
        return ModelError(f"{cfg.name_or_path} ships its own Python code, which the workbench does not run unless "
                          f"you allow it. Fix: only if you trust this model's code, set model.trust_remote_code: true "
                          f"in your config (for a run's model: pass --trust-remote-code).")
    if isinstance(e, ModelError):
        return e
    if "offline" in msg.lower() or "connect" in msg.lower() or "resolve" in msg.lower() or "not a local folder" in msg:
        return ModelError(f"Could not load the {what} of {cfg.name_or_path!r}: it is not a local folder and the "
                          f"model hub could not be reached ({type(e).__name__}). Fix: connect to the network, "
                          f"give a local folder, or use a built-in model ({', '.join(BUILTIN_MODELS)}).")
    return ModelError(f"Could not load the {what} from {path!r}: {type(e).__name__}: {msg[:400]}")


def _hf_kwargs(cfg: ModelConfig, path: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if not cfg.allow_pickle:
        kw["use_safetensors"] = True
    return kw


def load_model_config(cfg: ModelConfig) -> Any:
    """The model's `PretrainedConfig` (architecture, sizes, position limit), after the folder's safety check."""
    from transformers import AutoConfig

    path = resolve_model_path(cfg.name_or_path)
    check_model_dir(path, cfg.allow_pickle)
    try:
        return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _load_error(path, cfg, e, "config") from None


def model_load_args(cfg: ModelConfig, tokenizer: Any = None,
                    attn_implementation: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    """(path, model config, from_pretrained keywords) for any head: `model.dropout` applied, the pad token
    id taken from the tokenizer when the model has none, the safety flags of `_hf_kwargs`."""
    path = resolve_model_path(cfg.name_or_path)
    mconf = load_model_config(cfg)
    if cfg.dropout is not None:
        for f in DROPOUT_FIELDS:
            if isinstance(getattr(mconf, f, None), float):
                setattr(mconf, f, cfg.dropout)
    if tokenizer is not None and getattr(mconf, "pad_token_id", None) is None:
        mconf.pad_token_id = tokenizer.pad_token_id
    kw = _hf_kwargs(cfg, path)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    return path, mconf, kw


def load_classifier(cfg: ModelConfig, labels: list[str], *, attn_implementation: str | None = None,
                    dtype: torch.dtype = torch.float32, tokenizer: Any = None,
                    auto_model: str = "AutoModelForSequenceClassification") -> Any:
    """A model with a `len(labels)`-way head (sequence classification unless `auto_model` names another
    transformers Auto class, e.g. token classification) and the label names as id2label.

    A head saved with another number of labels is replaced by a fresh one; any other weight whose shape
    differs from the model's config is an error that names it.
    """
    import transformers

    path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
    mconf.num_labels = len(labels)
    mconf.id2label = dict(enumerate(labels))
    mconf.label2id = {name: i for i, name in enumerate(labels)}
    try:
        model, info = getattr(transformers, auto_model).from_pretrained(
            path, config=mconf, dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True, **kw)
    except Exception as e:
        raise _load_error(path, cfg, e, "model") from None
    _check_mismatches(model, info.get("mismatched_keys") or (), len(labels), cfg)
    return apply_pooling(model, cfg)


def _mean_pooled_forward(self: Any, input_ids: Any = None, attention_mask: Any = None, labels: Any = None,
                         inputs_embeds: Any = None, output_attentions: Any = None, output_hidden_states: Any = None,
                         **kw: Any) -> Any:
    """A decoder classifier's forward with the head on the mean of the final hidden states over the real
    (attention-mask) tokens; same inputs and outputs as the model's own."""
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    kw.pop("use_cache", None)
    out = getattr(self, self.base_model_prefix)(
        input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
        output_attentions=output_attentions, output_hidden_states=output_hidden_states, use_cache=False, **kw)
    h = out.last_hidden_state
    mask = (attention_mask if attention_mask is not None else torch.ones(h.shape[:2], device=h.device))
    # prefix tuning (peft) prepends its keys' entries to the mask; the hidden states are the text's only.
    # Counted in fp32: a bf16 sum of ones is inexact above 256 tokens.
    mask = mask[:, -h.shape[1]:].float().unsqueeze(-1)
    pooled = ((h.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)).to(h.dtype)
    logits = self.score(pooled)  # looked up at each call: PEFT swaps `score` for a wrapper with the trained copy
    loss = None
    if labels is not None:
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
    return SequenceClassifierOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                            attentions=out.attentions)


_MEAN_POOLED: dict[type, type] = {}


def apply_pooling(model: Any, cfg: ModelConfig) -> Any:
    """`model.pooling: mean` on a decoder's sequence classifier: its head reads the mean of the final hidden
    states over the real tokens instead of the last token's. The model becomes an instance of a subclass of its
    own class with the same name whose `forward` is `_mean_pooled_forward` (a class method, so replicas made by
    `nn.DataParallel` and PEFT's wrappers use their own weights); the weights and the saved files are unchanged.
    Only the workbench reads the choice back (config.yaml and workbench_model.json record it): plain
    transformers loads the saved folder with the last-token head."""
    if getattr(cfg, "pooling", "auto") == "auto":
        return model
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not is_decoder(model) or base is None or not isinstance(getattr(model, "score", None), torch.nn.Module):
        raise ModelError(f"model.pooling={cfg.pooling!r} works for decoder classifiers (Llama, SmolLM2, Qwen, GPT-2); "
                         f"{cfg.name_or_path} is a {architecture(model) or 'different'} model that reads its own "
                         f"summary token. Fix: set model.pooling to auto.")
    cls = type(model)
    if cls not in _MEAN_POOLED.values():
        if cls not in _MEAN_POOLED:
            _MEAN_POOLED[cls] = type(cls.__name__, (cls,), {"forward": _mean_pooled_forward,
                                                            "__module__": cls.__module__})
        model.__class__ = _MEAN_POOLED[cls]
    model.workbench_pooling = cfg.pooling
    return model


def _check_mismatches(model: Any, mismatched: Any, num_labels: int, cfg: ModelConfig) -> None:
    """Allow only the task head to be swapped, and only because the label count differs.

    `ignore_mismatched_sizes` would silently re-initialise *any* weight whose shape disagrees (a
    position table, a vocabulary, a layer width); that is a wrong model or config, never a head swap.
    """
    prefix = getattr(model, "base_model_prefix", "") + "."
    bad = []
    for key, ckpt_shape, model_shape in sorted(mismatched, key=lambda m: m[0]):
        head = prefix == "." or not key.startswith(prefix)
        if head and len(model_shape) and model_shape[0] == num_labels and ckpt_shape[0] != num_labels:
            continue
        bad.append(f"{key}: {tuple(ckpt_shape)} in the checkpoint, {tuple(model_shape)} in the model")
    if bad:
        raise ModelError(f"{cfg.name_or_path}: weights whose shape differs from the model's config.json, which "
                         f"would be silently re-initialised: {'; '.join(bad[:5])}. Only the task head may differ "
                         f"(when the number of labels changes). Fix: check that config.json belongs to these "
                         f"weights, or that the folder holds one model.")


def architecture(model: Any) -> str:
    cfg = getattr(model, "config", model)
    return getattr(cfg, "model_type", "") or ""


def is_decoder(model: Any) -> bool:
    """Decoder-only models (Llama, GPT-2, Qwen) classify from the last token; encoders from the first. Takes
    a model or its config."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    mt = getattr(getattr(model, "config", model), "model_type", "")
    # BERT-likes are in the causal-LM table too (BertLMHeadModel); a masked-LM entry marks an encoder.
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def apply_lora(model: Any, peft_cfg: PeftConfig, task_type: str | None = "SEQ_CLS") -> Any:
    """LoRA adapters (`peft.lora`) whatever `peft_cfg.method` says: `apply_peft` for callers that mean LoRA."""
    import dataclasses
    return apply_peft(model, dataclasses.replace(peft_cfg, method="lora"), task_type)


def freeze_input_embeddings(model: Any) -> int:
    """Stop training the input token embeddings (`peft.freeze_embeddings`); returns the parameters frozen.

    Nothing is frozen when an output layer shares its weight with them (`tie_word_embeddings`, as in
    Llama/SmolLM2 causal LMs): freezing the input table would freeze the output layer too.
    """
    emb = model.get_input_embeddings()
    if tied_output_embeddings(model):
        return 0
    frozen = 0
    for p in emb.parameters():
        if p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def tied_output_embeddings(model: Any) -> bool:
    """Whether the model's output layer shares a weight with its input embeddings."""
    try:
        out = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    emb = model.get_input_embeddings()
    if out is None or emb is None:
        return False
    ids = {id(p) for p in emb.parameters()}
    return any(id(p) in ids for p in out.parameters())


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


RUN_PICKLE_FIX = ("the workbench writes a run's model as safetensors, so this file was put there by someone "
                  "else: get the run's model folder again from its source, or retrain the run.")


def load_trained(model_dir: str | Path, *, attn_implementation: str | None = None,
                 dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> tuple[Any, Any]:
    """Load a run's final model (full weights, or a PEFT adapter on its base) and its tokenizer.

    The run directory is untrusted (`workbench.untrusted`): remote code and pickled base weights are
    used only when the caller grants them here, whatever the run's files say. The run's own weights
    are always safetensors. The task named in workbench_model.json is looked up in the registry only.
    """
    import transformers
    from transformers import AutoTokenizer

    from .tasks import get_task

    from .untrusted import read_run_model

    d = Path(model_dir)
    kw: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    check_model_dir(d, allow_pickle=False, pickle_fix=RUN_PICKLE_FIX)  # before anything is loaded
    recorded = read_run_model(d, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    trust = recorded.base.trust_remote_code if recorded else False
    task = get_task(recorded.task if recorded else "text-classification")
    # First, so a base model is rebuilt for the run's tokenizer (tokens a task added, e.g. entity markers).
    tok = with_pad_token(AutoTokenizer.from_pretrained(d, trust_remote_code=trust))
    if (d / "adapter_config.json").exists():
        from peft import PeftModel
        if recorded is None:
            raise ModelError(f"{d} holds a PEFT adapter but no workbench_model.json naming its base model and labels. "
                             f"Fix: give the whole run's model folder as written by the workbench.")
        model = task.load_model(recorded.base, recorded.labels, attn_implementation=attn_implementation, dtype=dtype,
                                tokenizer=tok)
        from .peft_methods import METHOD_OF_TYPE, accept_prefix, loaded, read_adapter_config
        # Only the adapter's shape is read from the file (a shared run's adapter_config.json could otherwise name
        # a tokenizer to fetch, or an init that rewrites the base weights); the base is ours, from the record.
        pcfg = read_adapter_config(d, recorded.base.name_or_path)
        kind = str(getattr(pcfg.peft_type, "value", pcfg.peft_type))
        if recorded.method and recorded.method != "full" and METHOD_OF_TYPE.get(kind) != recorded.method:
            raise ModelError(f"{d}: adapter_config.json holds a {kind} adapter but workbench_model.json records "
                             f"method {recorded.method!r}; the folder is inconsistent. Fix: give the run's model "
                             f"folder as the workbench wrote it, or retrain.")
        if kind == "PREFIX_TUNING":
            accept_prefix(model)
        with _peft_quiet():
            model = loaded(PeftModel.from_pretrained(model, d, config=pcfg))
    else:
        try:
            model = getattr(transformers, task.auto_model).from_pretrained(d, use_safetensors=True,
                                                                          trust_remote_code=trust, **kw)
        except Exception as e:
            raise _load_error(str(d), ModelConfig(name_or_path=str(d)), e, "model") from None
        if recorded is not None:
            model = apply_pooling(model, recorded.base)  # as it was trained (config.yaml's model.pooling)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok
