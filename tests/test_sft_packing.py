"""Packing for causal-lm-sft (`data.packing`) on a tiny Llama: packed rows give exactly the loss of their
conversations taken one by one (no attention or prediction across conversations), and a packed run trains."""

from __future__ import annotations

import json

import pytest
import torch

from test_sft import _chat_file
from workbench.config import DataConfig, ModelConfig, RunConfig
from workbench.tasks.causal_lm_sft import TASK, token_nll
from workbench.tasks.causal_lm_sft.encode import IGNORE, SFTCollator
from workbench.tasks.causal_lm_sft.packing import bins


@pytest.fixture
def tok(tiny_llama):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_llama)


def _encoded(tok, tmp_path, n: int = 24, max_length: int = 64):
    prep = TASK.prepare(DataConfig(source=str(_chat_file(tmp_path / "c.jsonl", n)), max_length=max_length,
                                   test_size=0.0, validation_size=0.0), 0, tokenizer=tok)
    return TASK.encode(prep.train, tok, max_length)


def test_best_fit_bins_hold_every_item_once_within_capacity():
    lengths = [9, 3, 7, 2, 5, 5, 1, 8, 4, 6]
    rows = bins(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 5  # 50 tokens in rows of 10: best fit leaves no room at all here
    assert bins([12, 3], 10) == [[0], [1]]  # longer than a row: a row of its own


def test_packed_rows_restart_positions_and_mask_each_first_label(tok, tmp_path):
    ds = _encoded(tok, tmp_path)
    packed, stats = TASK.pack(ds, 64)
    assert stats["rows"] == len(ds) == 24 and stats["packed_rows"] == len(packed) < len(ds) / 2
    assert stats["tokens"] == sum(ds["length"]) == sum(packed["length"])
    assert stats["fill"] == pytest.approx(stats["tokens"] / (64 * len(packed)), abs=1e-4)
    for row in packed:
        assert len(row["input_ids"]) <= 64 == max(64, len(row["input_ids"]))
        starts = [k for k, p in enumerate(row["position_ids"]) if p == 0]
        assert len(starts) >= 2 and all(row["labels"][k] == IGNORE for k in starts)
    # every conversation's ids and (but for its first, always a prompt token) labels are in some row, whole
    rows = [(tuple(r["input_ids"]), tuple(r["labels"])) for r in packed]
    for ids, labels in zip(ds["input_ids"], ds["labels"]):
        assert labels[0] == IGNORE
        assert any(_contains(r, tuple(ids)) and _contains(lab, tuple(labels)) for r, lab in rows)


def _contains(seq: tuple, part: tuple) -> bool:
    return any(seq[k:k + len(part)] == part for k in range(len(seq) - len(part) + 1))


@pytest.mark.parametrize("attention", ["sdpa", "eager", "workbench_cpu_training"])
def test_a_packed_batch_has_the_summed_loss_of_its_conversations_one_by_one(tiny_llama, tok, tmp_path, attention):
    """Fails if attention (or a prediction) leaks across conversations: checked below with two leaking batches."""
    from workbench.speed import apply_cpu_speedups

    torch.manual_seed(0)
    model = TASK.load_model(ModelConfig(name_or_path=str(tiny_llama)), [], tokenizer=tok,
                            attn_implementation="eager" if attention == "eager" else "sdpa")
    if attention == "workbench_cpu_training":  # what training on a CPU uses (workbench/speed.py)
        assert apply_cpu_speedups(model, ["attention"]) == ["attention"]
    model.train()  # as in training (Llama has no dropout: the same maths as eval)
    ds = _encoded(tok, tmp_path)
    packed, _ = TASK.pack(ds, 64)
    batch = SFTCollator(tok)(list(packed))
    assert "attention_mask" not in batch and batch.pop("real_tokens") == sum(ds["length"])
    with torch.no_grad():
        out = model(**batch)
        total, n = token_nll(out.logits, batch["labels"])
        one_by_one, n1 = torch.zeros(()), 0
        for ids, labels in zip(ds["input_ids"], ds["labels"]):
            t, c = token_nll(model(input_ids=torch.tensor([ids])).logits, torch.tensor([labels]))
            one_by_one, n1 = one_by_one + t.sum(), n1 + int(c.sum())
        assert int(n.sum()) == n1 > 0  # the same answer tokens are learned, none more
        assert float(total.sum()) == pytest.approx(float(one_by_one), abs=1e-4)
        assert float(out.loss) * n1 == pytest.approx(float(one_by_one), abs=1e-3)  # the loss the trainer uses

        # Leaks the test must catch: (1) a KV cache (Llama's config has use_cache: true) turns transformers'
        # packed-sequence detection off; (2) a plain attention mask lets each token see the earlier conversations.
        for leaky in ({k: v for k, v in batch.items() if k != "use_cache"},
                      {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}):
            t, _ = token_nll(model(**leaky).logits, batch["labels"])
            assert abs(float(t.sum()) - float(one_by_one)) > 1e-2  # a hundred times the tolerance above


def test_packing_is_refused_for_a_task_that_does_not_pack():
    problems = RunConfig.from_dict({"data": {"packing": True}}).validate()
    assert any("data.packing" in p and "text-classification" in p for p in problems)
    assert RunConfig.from_dict({"task": "causal-lm-sft", "data": {"packing": True}}).validate() == []


def test_a_tiny_packed_run_trains_and_scores_one_conversation_per_row(tiny_llama, tmp_path):
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(tmp_path / "runs"), "name": "packed",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(_chat_file(tmp_path / "chat.jsonl", 120)), "max_length": 64, "packing": True},
        "training": {"num_train_epochs": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 4,
                     "logging_steps": 2, "save_strategy": "no"},
        "peft": {"method": "full"}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    rep = json.loads(run.report_file.read_text())
    p = rep["details"]["packing"]
    assert p == run.status()["packing"]
    assert p["rows"] == rep["split_sizes"]["train"] and p["packed_rows"] < p["rows"] / 3 and 0.5 < p["fill"] <= 1
    steps = -(-p["packed_rows"] // 4) * 6  # packed rows, not conversations, make the batches
    assert run.status()["step"] == steps
    summary = run.metrics().query("kind == 'summary'").iloc[-1]
    assert summary["real_tokens"] == p["tokens"] * 6  # tokens/s counts real tokens, not padding
    ev = run.evaluation()
    assert ev["after"]["loss"] < ev["before"]["loss"] - 1.0, ev
    assert "eval_perplexity" in run.metrics()  # validation: one conversation per row, as ever
    assert len(run.predictions("after")) == rep["split_sizes"]["test"]
    from workbench.data.report import DataReport, format_report
    assert f"packing: {p['rows']} training conversations -> {p['packed_rows']} rows of up to 64 tokens" in \
        format_report(DataReport.from_dict(rep))
