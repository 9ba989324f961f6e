"""workbench.estimate: parameter counts, memory and time estimates before a run starts."""

from __future__ import annotations

import pytest

from workbench.config import RunConfig
from workbench.estimate import (activation_bytes, count_parameters, estimate_run, format_bytes, format_seconds,
                                load_model_config, local_model_dir)


def _cfg(model, **training) -> RunConfig:
    return RunConfig.from_dict({"model": {"name_or_path": str(model)}, "data": {"max_length": 64},
                                "training": {"num_train_epochs": 2, "per_device_train_batch_size": 8, **training}})


def test_parameter_count_matches_the_real_model(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    conf = load_model_config(str(tiny_bert))
    total, trainable = count_parameters(conf, num_labels=3)
    real = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    assert total == trainable == sum(p.numel() for p in real.parameters())


def test_lora_trains_only_adapters_and_the_head(tiny_bert):
    from peft import get_peft_model

    from workbench.models import apply_lora, load_classifier

    cfg = _cfg(tiny_bert)
    cfg.peft.method = "lora"
    total, trainable = count_parameters(load_model_config(str(tiny_bert)), 2, cfg.peft)
    model = apply_lora(load_classifier(cfg.model, ["a", "b"]), cfg.peft)
    assert (total, trainable) == (sum(p.numel() for p in model.parameters()),
                                  sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert trainable < total / 2
    assert get_peft_model  # peft is installed: the comparison above used it


def test_estimate_is_complete_and_scales_with_the_work(tiny_bert, runs_dir):
    small = estimate_run(_cfg(tiny_bert), 100, mean_tokens=10, max_tokens=20, runs_root=runs_dir)
    big = estimate_run(_cfg(tiny_bert, num_train_epochs=4), 400, mean_tokens=10, max_tokens=20, runs_root=runs_dir)
    assert small.total_params and small.steps == 26  # ceil(100 / 8) * 2
    assert {"weights", "gradients", "optimizer (AdamW)", "activations"} <= set(small.memory)
    assert small.memory["optimizer (AdamW)"] == 2 * small.memory["gradients"]
    assert big.steps == 200 and big.total_seconds > small.total_seconds > 0
    assert small.time_source.startswith("tabulated")


def test_estimate_uses_a_measured_run_of_the_same_model(tiny_bert, runs_dir, sentiment_csv):
    from workbench.rundir import new_run_dir

    cfg = _cfg(tiny_bert)
    cfg.output_dir = str(runs_dir)
    cfg.data.source = str(sentiment_csv)
    run = new_run_dir(cfg)
    run.append_metrics({"step": 10, "kind": "summary", "train_steps_per_second": 4.0, "real_tokens": 1000})
    run.update_status(state="completed")
    est = estimate_run(cfg, 80, mean_tokens=10, runs_root=runs_dir)  # 88 tokens per step < 100 measured: no scaling
    assert est.time_source.startswith("measured") and run.name in est.time_source
    assert est.step_seconds == pytest.approx(0.25)


def test_activation_memory_grows_with_batch_and_quadratically_in_attention(tiny_bert):
    conf = load_model_config(str(tiny_bert))
    a = activation_bytes(conf, 8, 64, 4)
    assert activation_bytes(conf, 16, 64, 4) == pytest.approx(2 * a)
    assert activation_bytes(conf, 8, 128, 4) > 2 * a


def test_unknown_models_are_said_to_be_unknown(tmp_path):
    assert local_model_dir(str(tmp_path)) is None
    est = estimate_run(_cfg("someone/not-cached-model"), 100)
    assert est.total_params is None and est.total_seconds is None and est.notes


def test_formatting():
    assert format_bytes(512) == "512 B" and format_bytes(3 * 1024 ** 3) == "3.0 GB"
    assert format_seconds(42) == "42 s" and format_seconds(600) == "10 min" and format_seconds(None) == "unknown"
