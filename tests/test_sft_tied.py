"""Tied input/output embeddings (SmolLM2's `tie_word_embeddings: true`) through causal-lm-sft on a tiny Llama:
full fine-tuning trains the one shared matrix and saves it once, the reloaded model shares it again; LoRA leaves
it untouched; an untied model keeps two matrices."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import _tokenizer
from test_sft import _chat_file
from workbench.config import RunConfig


def _tiny_causal_llama(folder: Path, tie: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tokenizer("llama")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=tie)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _run(model: Path, tmp_path: Path, method: str):
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(tmp_path / "runs"), "name": method, "evaluate_before": False,
        "model": {"name_or_path": str(model)},
        "data": {"source": str(_chat_file(tmp_path / "chat.jsonl", 40)), "max_length": 64, "max_eval_samples": 4},
        "training": {"max_steps": 3, "learning_rate": 5e-3, "per_device_train_batch_size": 8,
                     "eval_strategy": "no", "save_strategy": "no"},
        "peft": {"method": method, "merge_adapter": method == "lora"}})
    return run_training(cfg, new_run_dir(cfg), progress=False)


def _stored(path: Path) -> dict[str, int]:
    """The tensors a safetensors file holds: name -> number of values."""
    with safe_open(path, "pt") as f:
        return {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}


def _base(folder: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder)


def _embeddings(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_input_embeddings().weight, inner.get_output_embeddings().weight


@pytest.mark.parametrize("tie", [True, False])
def test_full_fine_tuning_trains_saves_and_reloads_the_tie(tmp_path, tie):
    from workbench.models import load_trained

    base = _tiny_causal_llama(tmp_path / "base", tie)
    base_emb, base_out = _embeddings(_base(base))
    run = _run(base, tmp_path, "full")
    model, _ = load_trained(run.model_dir)
    emb, out = _embeddings(model)
    assert not torch.equal(emb, base_emb)  # trained: with a tie it is the output layer too
    stored = _stored(run.model_dir / "model.safetensors")
    unique = sum(p.numel() for p in model.parameters())  # shared parameters counted once
    assert run.status()["parameters"] == {"total": unique, "trainable": unique}
    if tie:
        assert emb.data_ptr() == out.data_ptr() and torch.equal(emb, out)  # one tensor again after reload
        assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored  # saved once
        assert sum(stored.values()) == unique
        # the file holds one copy: its size is the parameters' bytes plus a small header
        assert unique * 4 < (run.model_dir / "model.safetensors").stat().st_size < unique * 4 + 64_000
    else:
        assert emb.data_ptr() != out.data_ptr() and not torch.equal(out, base_out)  # two matrices, both trained
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(stored) and sum(stored.values()) == unique


def test_lora_leaves_the_tied_embeddings_alone_and_the_merged_model_keeps_the_tie(tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.models import load_trained

    base = _tiny_causal_llama(tmp_path / "base", True)
    base_emb, _ = _embeddings(_base(base))
    run = _run(base, tmp_path, "lora")
    adapter = _stored(run.model_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # no embedding or output matrix in the adapter
    params = run.status()["parameters"]
    assert params["trainable"] == sum(adapter.values()) < params["total"]  # only the adapters trained
    model, _ = load_trained(run.model_dir)
    emb, out = _embeddings(model)
    assert torch.equal(emb, base_emb) and emb.data_ptr() == out.data_ptr()
    merged = AutoModelForCausalLM.from_pretrained(run.model_dir / "merged")
    emb, out = _embeddings(merged)
    assert torch.equal(emb, base_emb) and emb.data_ptr() == out.data_ptr()
    assert "lm_head.weight" not in _stored(run.model_dir / "merged" / "model.safetensors")
