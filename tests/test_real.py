"""End-to-end on real pretrained models and real data (built-ins fetched from PyPI once).
Slow: minutes on 2 CPU cores. Still run in CI."""

from pathlib import Path

import pytest

from workbench.cli import main
from workbench.config import load_config
from workbench.rundir import RunDir, new_run_dir
from workbench.training import run_training

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.slow
def test_demo_fine_tunes_minilm_on_rotten_tomatoes(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy after fine-tuning" in out and "train classes: fresh" in out
    run = RunDir(next(p for p in tmp_path.iterdir() if (p / "config.yaml").exists()))
    ev = run.evaluation()
    assert 0.40 <= ev["before"]["accuracy"] <= 0.60  # a fresh head: chance
    assert ev["after"]["accuracy"] >= 0.74
    assert ev["after"]["n"] == 1000 and run.status()["state"] == "completed"


@pytest.mark.slow
def test_smollm2_lora_from_the_config_file_learns(tmp_path):
    cfg = load_config(CONFIGS / "smollm2-lora-sms-spam.yaml", {
        "output_dir": str(tmp_path), "data.max_train_samples": 160, "data.max_eval_samples": 100,
        "training.num_train_epochs": 1})
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    ev = run.evaluation()
    assert run.status()["parameters"]["trainable"] < 0.05 * run.status()["parameters"]["total"]
    assert ev["after"]["loss"] < ev["before"]["loss"]
    assert ev["after"]["accuracy"] > ev["before"]["accuracy"]
    assert (run.model_dir / "adapter_model.safetensors").exists()
