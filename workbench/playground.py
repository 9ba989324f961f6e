"""The pre-training playground: fill the mask (encoders) and continue the text (decoders).

Pure functions over a loaded model and tokenizer, shared by `workbench fill-mask` / `workbench generate`,
the dashboard's Playground and notebook 11. `load_lm` loads a built-in, a folder, a hub id or a finished
run with its language-model head (a run directory is untrusted: safetensors only, no remote code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DataError, ModelError


@dataclass
class LanguageModel:
    model: Any
    tokenizer: Any
    kind: str          # "masked" or "causal"
    name: str          # what the user gave
    note: str = ""     # e.g. a checkpoint without trained weights for this head (all-MiniLM-L6-v2's MLM head)


def load_lm(name_or_path: str | Path, kind: str | None = None) -> LanguageModel:
    """The model with its pre-training head: `AutoModelForMaskedLM` for an encoder, `AutoModelForCausalLM` for a
    decoder (`kind` forces one). A run directory (or its model folder) loads the run's full weights."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    from .config import ModelConfig
    from .models import _hf_kwargs, _load_error, load_model_config, load_tokenizer, resolve_model_path

    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir() and (p / "model").is_dir() and not (p / "config.json").exists() and \
            not (p / "config.yaml").exists():
        p = p / "model"
    cfg = ModelConfig(name_or_path=str(p) if p.exists() else name)
    path = resolve_model_path(cfg.name_or_path)
    if (Path(path) / "adapter_config.json").exists() and not (Path(path) / "config.json").exists():
        merged = Path(path) / "merged"
        if not (merged / "config.json").exists():
            raise ModelError(f"{name} holds a LoRA adapter without merged weights. Fix: give the run directory of a "
                             f"pre-training run (they always save merged weights), or its base model.")
        path = str(merged)
        cfg = ModelConfig(name_or_path=path)
    mconf = load_model_config(cfg)
    mtype = getattr(mconf, "model_type", "")
    if kind is None:
        kind = "masked" if mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and \
            not getattr(mconf, "is_decoder", False) else "causal"
    if kind == "masked" and mtype not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ModelError(f"{name} is a {mtype} decoder: it has no mask to fill. Use `workbench generate` to continue "
                         f"a text instead.")
    if kind == "causal" and mtype not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{name} is a {mtype} encoder: it cannot continue a text. Use `workbench fill-mask` with a "
                         f"[MASK] in the text instead.")
    tok = load_tokenizer(path, cfg)
    klass = transformers.AutoModelForMaskedLM if kind == "masked" else transformers.AutoModelForCausalLM
    try:
        import logging
        logger = transformers.utils.logging.get_logger("transformers.modeling_utils")
        level = logger.level
        logger.setLevel(logging.ERROR)  # the "newly initialised" report of a checkpoint without this head
        try:
            model, info = klass.from_pretrained(path, config=mconf, dtype=torch.float32, output_loading_info=True,
                                                **_hf_kwargs(cfg, path))
        finally:
            logger.setLevel(level)
    except Exception as e:
        raise _load_error(path, cfg, e, "model") from None
    model.eval()
    prefix = getattr(model, "base_model_prefix", "@") + "."
    new = sorted({".".join(k.split(".")[:2]) for k in info.get("missing_keys", ()) if not k.startswith(prefix)})
    note = (f"{name} has no trained weights for {', '.join(new)}: its guesses come from an untrained head (random). "
            f"A masked-lm run trains it." if new else "")
    return LanguageModel(model, tok, kind, name, note)


@torch.inference_mode()
def fill_mask(lm: LanguageModel, text: str, k: int = 10) -> list[list[dict[str, Any]]]:
    """For each mask in `text` (written `[MASK]`, or the tokenizer's own mask token), the `k` most likely tokens
    with their probabilities, most likely first."""
    tok = lm.tokenizer
    if tok.mask_token is None:
        raise ModelError(f"{lm.name} has no mask token: it is a decoder. Use continue_text (`workbench generate`).")
    text = text.replace("[MASK]", tok.mask_token) if tok.mask_token != "[MASK]" else text
    enc = tok(text, return_tensors="pt", truncation=True, max_length=getattr(lm.model.config,
                                                                              "max_position_embeddings", 512))
    where = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten().tolist()
    if not where:
        raise DataError("no mask in the text: write [MASK] where a word should be guessed, e.g. "
                        "\"The capital of France is [MASK].\"")
    logits = lm.model(**{k2: v.to(lm.model.device) for k2, v in enc.items()}).logits[0].float()
    out = []
    for i in where:
        probs = logits[i].softmax(-1)
        top = probs.topk(min(k, probs.numel()))
        out.append([{"token": tok.convert_ids_to_tokens(int(t)), "text": tok.decode([int(t)]).strip(),
                     "probability": float(p)} for p, t in zip(top.values, top.indices)])
    return out


@torch.inference_mode()
def continue_text(lm: LanguageModel, text: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0) -> str:
    """What the model writes after `text` (raw text, no chat template: a pre-trained model continues documents);
    greedy when `temperature` is 0, else sampled with `seed`."""
    if not text.strip():
        raise DataError("the text to continue is empty: give the beginning of a sentence.")
    tok = lm.tokenizer
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(seed)
    out = lm.model.generate(**{k: v.to(lm.model.device) for k, v in enc.items()}, max_new_tokens=max_new_tokens,
                            do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                            top_p=top_p if temperature > 0 else None, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # max_new_tokens may stop inside a character that byte-level BPE writes as several pieces (Chinese: 2-3)
    return text.rstrip("\ufffd")
