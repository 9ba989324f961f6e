"""The run configuration: defaults, YAML round-trip, every problem reported at once, examples load."""

from pathlib import Path

import pytest

from workbench.config import RunConfig, field_help, load_config
from workbench.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = RunConfig()
    assert cfg.validate() == []
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_every_field_has_help():
    helps = field_help()
    assert "training.learning_rate" in helps and "peft.lora.r" in helps and "data.text_column" in helps
    assert all(len(h) > 10 for h in helps.values()), [k for k, h in helps.items() if len(h) <= 10]


def test_trainingarguments_names_are_real():
    from transformers import TrainingArguments
    import dataclasses
    ta = {f.name for f in dataclasses.fields(TrainingArguments)}
    ours = {f.name for f in dataclasses.fields(RunConfig().training)}
    # Our own additions, which TrainingArguments does not have, are explicit here.
    assert ours - ta == {"early_stopping_patience", "cpu_speedups", "class_weights",
                        "head_learning_rate", "adversarial", "adversarial_epsilon", "adversarial_steps",
                        "adversarial_alpha"}


def test_validation_reports_all_problems_with_fixes():
    cfg = RunConfig.from_dict({
        "data": {"validation_size": 0.6, "test_size": 0.5, "max_length": 2},
        "training": {"learning_rate": -1, "per_device_train_batch_size": 0, "eval_strategy": "steps",
                     "bf16": True, "fp16": True},
        "peft": {"method": "lora", "lora": {"r": 0}},
    })
    problems = cfg.validate()
    text = "\n".join(problems)
    for needle in ("validation_size + data.test_size", "max_length", "learning_rate", "per_device_train_batch_size",
                   "eval_steps", "bf16 and training.fp16", "peft.lora.r"):
        assert needle in text, needle
    with pytest.raises(ConfigError) as e:
        cfg.check()
    assert f"{len(problems)} problems" in str(e.value)


def test_unknown_and_mistyped_fields_are_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("training:\n  learning_rte: 1e-4\n  num_train_epochs: three\nmodle: {}\n")
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml(p)
    msg = str(e.value)
    assert "training.learning_rte" in msg and "Did you mean `training.learning_rate`" in msg
    assert "num_train_epochs" in msg and "wrong type" in msg
    assert "`modle`" in msg and "`model`" in msg


def test_yaml_scientific_notation_string_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  learning_rate: 5e-5\n")  # PyYAML reads this as a string
    assert RunConfig.from_yaml(p).training.learning_rate == 5e-5


def test_overrides_and_missing_file(tmp_path):
    cfg = RunConfig().override({"training.learning_rate": 1e-3, "peft.method": "lora"})
    assert cfg.training.learning_rate == 1e-3 and cfg.peft.method == "lora"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load_and_validate(path):
    assert load_config(path).validate() == []


def test_demo_config_matches_the_cli_demo():
    from workbench.cli import DEMO
    assert RunConfig.from_yaml(Path(__file__).parent.parent / "configs" / "minilm-rotten-tomatoes.yaml") == \
        RunConfig.from_dict(DEMO)


def test_split_seed_keeps_the_split_while_the_training_seed_varies(tmp_path):
    import pandas as pd

    from workbench.data import prepare_data
    csv = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"review number {i}" for i in range(60)], "label": ["a", "b"] * 30}).to_csv(csv)

    def test_rows(**raw):
        cfg = RunConfig.from_dict({"data": {"source": str(csv), **raw.get("data", {})},
                                   "training": raw.get("training", {})})
        return sorted(prepare_data(cfg.data, cfg.split_seed).test["text"])

    assert RunConfig().split_seed == 42
    assert test_rows(training={"seed": 1}) != test_rows(training={"seed": 2})  # the seed draws the split...
    fixed = [test_rows(training={"seed": s}, data={"split_seed": 7}) for s in (1, 2)]
    assert fixed[0] == fixed[1] == test_rows(training={"seed": 7})  # ...unless data.split_seed fixes it


def test_old_flat_lora_names_work_in_overrides_too(tmp_path):
    from workbench.config import load_config
    cfg = RunConfig().override({"peft.r": 16, "peft.lora_alpha": 32, "training.learning_rate": 1e-4})
    assert (cfg.peft.lora.r, cfg.peft.lora.lora_alpha, cfg.training.learning_rate) == (16, 32, 1e-4)
    assert "peft.r, peft.lora_alpha" in cfg.load_notes[0] and "peft.lora.r" in cfg.load_notes[0]
    old = tmp_path / "old.yaml"
    old.write_text("peft:\n  method: lora\n  r: 4\n")
    cfg = load_config(old, {"peft.lora_dropout": 0.1})
    assert (cfg.peft.lora.r, cfg.peft.lora.lora_dropout) == (4, 0.1) and len(cfg.load_notes) == 2
