"""Continued pre-training end to end on the real built-ins, each for a short CPU budget: MiniLM (masked LM) on
the English papers of `aclsum_papers`, SmolLM2-135M + LoRA (causal LM) on the Chinese news of `msra_text`.
Each lowers held-out perplexity on documents it never trained on. Slow; still run in CI."""

from __future__ import annotations

import pytest

from workbench.config import RunConfig
from workbench.rundir import new_run_dir
from workbench.training import run_training

pytestmark = pytest.mark.slow


def _run(tmp_path, monkeypatch, raw):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    cfg = RunConfig.from_dict(raw)
    return run_training(cfg, new_run_dir(cfg), progress=False)


def test_minilm_masked_lm_on_papers_lowers_perplexity(tmp_path, monkeypatch):
    run = _run(tmp_path, monkeypatch, {
        "task": "masked-lm", "model": {"name_or_path": "minilm"},
        "data": {"source": "aclsum_papers", "max_length": 64, "max_train_samples": 300, "max_eval_samples": 40},
        "training": {"max_steps": 25, "learning_rate": 5e-4, "per_device_train_batch_size": 16,
                     "eval_strategy": "no", "save_strategy": "no"}})
    ev = run.evaluation()
    # MiniLM ships without a trained MLM head: 25 steps already take it far below the untrained head's perplexity
    assert ev["after"]["perplexity"] < 0.5 * ev["before"]["perplexity"]
    assert ev["after"]["documents"] == 40 and ev["after"]["tokens"] > 100


def test_smollm2_causal_lm_on_chinese_news_lowers_perplexity(tmp_path, monkeypatch):
    run = _run(tmp_path, monkeypatch, {
        "task": "causal-lm", "model": {"name_or_path": "smollm2-135m"},
        "data": {"source": "msra_text", "max_length": 64, "max_train_samples": 200, "max_eval_samples": 30},
        "training": {"max_steps": 8, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                     "eval_strategy": "no", "save_strategy": "no"},
        "peft": {"method": "lora", "lora": {"r": 8, "lora_alpha": 16}}})
    ev = run.evaluation()
    assert ev["after"]["perplexity"] < ev["before"]["perplexity"]
    assert (run.path / "model" / "merged" / "model.safetensors").exists()  # whole weights: a starting point
