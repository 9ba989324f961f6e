"""The dashboard and a task without page sections of its own (causal-lm-sft): the Train page says where it
is trained, and the Evaluate page shows its scores before -> after and base vs tuned answers side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_sft import _chat_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_llama):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("sft-dash")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_RUNS", str(root / "runs"))
    cfg = RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(root / "runs"), "name": "sft-tiny",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(_chat_file(root / "chat.jsonl", 120)), "max_length": 64},
        "training": {"num_train_epochs": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "save_strategy": "no"},
        "peft": {"method": "full"}})
    run_training(cfg, new_run_dir(cfg), progress=False)
    yield root
    mp.undo()


def _page(name: str) -> AppTest:
    return AppTest.from_string(f"from dashboard import {name}\n{name}.page()", default_timeout=120)


def test_evaluate_page_shows_scores_and_base_vs_tuned_answers(sft_runs):
    at = _page("evaluate").run()
    at.selectbox(key="eval_run").set_value("sft-tiny")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    scores = tables[("metric", "before", "after", "change", "improved")].set_index("metric")
    assert scores.loc["loss", "after"] < scores.loc["loss", "before"] and bool(scores.loc["loss", "improved"])
    assert {"perplexity", "chrf"} <= set(scores.index)
    examples = next(t for cols, t in tables.items() if "before" in cols and "after" in cols and "gold" in cols)
    assert {"text", "gold", "before", "after", "loss after"} <= set(examples.columns)
    assert set(examples["gold"]) <= {"great film", "awful film"} and len(examples) > 0
    assert list(examples["loss after"]) == sorted(examples["loss after"], reverse=True)  # worst first


def test_train_page_offers_only_tasks_with_page_sections_and_names_the_others(sft_runs):
    at = _page("train").run()
    assert not at.exception, [e.value for e in at.exception]
    options = at.selectbox(key="train_task").options
    assert "causal-lm-sft" not in options and "text-classification" in options
    assert any("causal-lm-sft" in c.value and "CLI" in c.value for c in at.caption)
