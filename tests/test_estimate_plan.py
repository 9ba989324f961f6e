"""Memory per device for every strategy (`memory_plan`), what to change when it does not fit (`suggest_plan`), and
`workbench estimate`."""

from __future__ import annotations

import pytest

from workbench.config import RunConfig
from workbench.estimate import (GB, HOST, PLAN_ORDER, Units, device_total, estimate_run, host_total, memory_plan,
                                plan_choice, suggest_plan)

P, T, A = 1_000_000_000, 1_000_000_000, 2.0 * GB  # a 1B model, everything trained
UNITS = Units(largest_layer=30_000_000, embeddings=50_000_000, rest=1_000_000)


def _cfg(**distributed) -> RunConfig:
    return RunConfig.from_dict({"training": {"per_device_train_batch_size": 16}, "distributed": distributed})


def _plan(n: int = 4, mixed: bool = True) -> dict[str, dict[str, float]]:
    return memory_plan(_cfg(), P, T, A, n, mixed=mixed, units=UNITS)


def test_every_strategy_has_a_row_and_sharding_saves_memory_in_order():
    plan = _plan(4)
    assert list(plan) == list(PLAN_ORDER)
    tot = {k: device_total(v) for k, v in plan.items()}
    assert tot["zero3"] < tot["zero2"] < tot["ddp"]
    assert tot["fsdp FULL_SHARD"] < tot["fsdp SHARD_GRAD_OP"] < tot["ddp"]
    assert tot["fsdp FULL_SHARD + cpu_offload"] < tot["fsdp FULL_SHARD"]
    assert tot["zero3 + offload"] < tot["zero3"]
    assert tot["zero2 + offload_optimizer"] < tot["zero2"]


def test_one_process_is_16_bytes_per_parameter_and_ddp_adds_its_gradient_buckets():
    one = _plan()["one process"]
    assert one["weights"] + one["gradients"] + one["optimizer"] == 16 * P  # ZeRO paper, mixed-precision Adam
    ddp = _plan()["ddp"]
    assert ddp["gradient buckets"] == 4 * T
    assert device_total(ddp) == pytest.approx(device_total(one) + 4 * T)


def test_full_shard_on_two_processes_halves_weights_gradients_and_optimizer():
    one, fs = _plan(2)["one process"], _plan(2)["fsdp FULL_SHARD"]
    for part in ("weights", "gradients", "optimizer"):
        assert fs[part] == pytest.approx(one[part] / 2), part
    assert fs["activations"] == one["activations"]  # per-device batch: not divided
    assert fs["gathered layer"] == pytest.approx(2 * 2 * UNITS.largest + 4 * UNITS.largest)  # bf16 gather, fp32 grad
    lora = memory_plan(_cfg(), P, P // 1000, A, 2, mixed=True, units=UNITS)["fsdp FULL_SHARD"]
    assert lora["gathered layer"] == pytest.approx(2 * 2 * UNITS.largest + 4 * UNITS.largest / 1000)  # frozen: no grad


def test_zero_stages_follow_the_zero_paper():
    n = 8
    plan = memory_plan(_cfg(), P, T, 0.0, n, mixed=True, units=UNITS)
    z2, z3 = plan["zero2"], plan["zero3"]
    assert z2["weights"] == 2 * P  # bf16 weights whole on every device
    assert z2["optimizer"] == pytest.approx(12 * T / n)  # fp32 master copy + Adam moments, partitioned
    assert z3["weights"] == pytest.approx(2 * P / n)
    off = plan["zero3 + offload"]
    assert off.get("weights", 0) == 0 and off.get("optimizer", 0) == 0
    assert off[HOST + "optimizer"] == pytest.approx(16 * T / n) and off[HOST + "weights"] == pytest.approx(2 * P / n)
    assert host_total(off) > 0 and host_total(z3) == 0


def test_lora_trains_few_parameters_so_gradients_and_optimizer_shrink():
    plan = memory_plan(_cfg(), P, 1_000_000, A, 2, units=UNITS)
    assert plan["one process"]["optimizer"] == 8_000_000 and plan["ddp"]["gradient buckets"] == 4_000_000


def test_plan_choice_follows_the_distributed_section():
    assert plan_choice(_cfg()) == "one process"
    assert plan_choice(_cfg(strategy="ddp", nproc_per_node=2)) == "ddp"
    assert plan_choice(_cfg(strategy="fsdp", nproc_per_node=2)) == "fsdp FULL_SHARD"
    assert plan_choice(_cfg(strategy="fsdp", nproc_per_node=2, fsdp={"sharding_strategy": "SHARD_GRAD_OP"})) == \
        "fsdp SHARD_GRAD_OP"
    assert plan_choice(_cfg(strategy="fsdp", nproc_per_node=2, fsdp={"cpu_offload": True})) == \
        "fsdp FULL_SHARD + cpu_offload"
    assert plan_choice(_cfg(strategy="deepspeed", nproc_per_node=2, deepspeed={"zero_stage": 3})) == "zero3"


def test_no_suggestion_when_the_chosen_strategy_fits_or_no_budget_is_known():
    cfg = _cfg(strategy="ddp", nproc_per_node=4)
    plan = memory_plan(cfg, P, T, A, mixed=True, units=UNITS)
    assert suggest_plan(cfg, plan, device_total(plan["ddp"]) + 1) is None
    assert suggest_plan(cfg, plan, None) is None


def test_suggestion_picks_fsdp_when_ddp_does_not_fit():
    cfg = _cfg(strategy="ddp", nproc_per_node=4)
    plan = memory_plan(cfg, P, T, A, mixed=True, units=UNITS)
    budget = (device_total(plan["fsdp SHARD_GRAD_OP"]) + device_total(plan["ddp"])) / 2
    s = suggest_plan(cfg, plan, budget)
    assert s["fits"] and s["strategy"] == "fsdp SHARD_GRAD_OP" and s["batch"] == 16
    assert s["set"]["distributed.strategy"] == "fsdp"
    assert "ddp needs" in s["message"] and "fsdp SHARD_GRAD_OP" in s["message"]
    tighter = suggest_plan(cfg, plan, device_total(plan["fsdp FULL_SHARD"]) + 1)
    assert tighter["strategy"] == "fsdp FULL_SHARD" and tighter["batch"] == 16


def test_suggestion_halves_the_batch_when_no_strategy_fits_it():
    cfg = _cfg(strategy="ddp", nproc_per_node=4)
    plan = memory_plan(cfg, P, T, 64.0 * GB, mixed=True, units=UNITS)  # activations dominate at batch 16
    budget = device_total(plan["fsdp FULL_SHARD + cpu_offload"]) - 60 * GB  # 4 GB of activations fit: batch 1
    s = suggest_plan(cfg, plan, budget)
    assert s["fits"] and s["batch"] == 1 and s["gradient_accumulation_steps"] == 16
    assert s["set"]["training.per_device_train_batch_size"] == 1
    budget = device_total(plan["fsdp FULL_SHARD"]) - 30 * GB  # 34 GB of activations: batch 8
    half = suggest_plan(cfg, plan, budget)
    assert half["batch"] == 8 and half["gradient_accumulation_steps"] == 2 and half["device_bytes"] <= budget
    assert half["strategy"] == "fsdp SHARD_GRAD_OP"  # the cheapest that fits batch 8 (it gathers the 1B weights)


def test_nothing_fits_says_so_with_a_fix():
    cfg = _cfg(strategy="ddp", nproc_per_node=2)
    plan = memory_plan(cfg, P, T, A, mixed=True, units=UNITS)
    s = suggest_plan(cfg, plan, 0.1 * GB)
    assert not s["fits"] and "nothing fits" in s["message"] and "Fix:" in s["message"]


def test_estimate_run_carries_the_plan_and_keeps_its_single_process_memory(tiny_bert):
    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert)}, "training": {"bf16": False},
                               "distributed": {"strategy": "fsdp", "nproc_per_node": 2}})
    est = estimate_run(cfg, 100, max_tokens=32, memory_budget=1.0)
    assert set(est.memory) == {"weights", "gradients", "optimizer (AdamW)", "activations", "runtime overhead"}
    assert est.plan_choice == "fsdp FULL_SHARD" and list(est.plan) == list(PLAN_ORDER)
    one = est.plan["one process"]
    assert one["weights"] == est.memory["weights"] and one["optimizer"] == est.memory["optimizer (AdamW)"]
    assert est.plan["fsdp FULL_SHARD"]["gathered layer"] > 0  # the model's units were sized
    assert est.suggestion is not None and not est.suggestion["fits"]  # 1 byte per device: nothing fits
    assert estimate_run(cfg, 100, max_tokens=32).suggestion is None  # no budget, no GPU here: no suggestion


def test_fsdp_does_not_wrap_the_embeddings_class_a_bert_declares():
    import torch
    import transformers

    from workbench.distributed import auto_wrap_classes

    conf = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(conf)
    assert auto_wrap_classes(_cfg(strategy="fsdp", nproc_per_node=2), model) == ["BertLayer"]


def test_cli_estimate_prints_every_strategy_and_a_suggestion(tiny_bert, tmp_path, capsys):
    from workbench.cli import main

    cfg = tmp_path / "c.yaml"
    RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert)}, "training": {"bf16": False}}).to_yaml(cfg)
    est = estimate_run(RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert)}, "training": {"bf16": False},
                                            "distributed": {"strategy": "ddp", "nproc_per_node": 2}}), 100)
    ddp = est.plan["ddp"]
    budget_gb = (device_total(ddp) - ddp["activations"] / 4) / GB  # too small for batch 16, enough for batch 8
    assert main(["estimate", str(cfg), "--nproc", "2", "--memory-gb", repr(budget_gb)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "ddp (chosen)" in out
    for row in PLAN_ORDER:
        assert row in out, row
    assert "does not fit" in out and "suggestion:" in out and "--set distributed.strategy=" in out
    assert "--set training.per_device_train_batch_size=8" in out
    assert main(["estimate", str(cfg), "--memory-gb", "100"]) == 0
    assert "fits: one process needs" in capsys.readouterr().out


def test_cli_estimate_of_a_model_not_on_disk_is_a_message_not_a_traceback(tmp_path, capsys):
    from workbench.cli import main

    cfg = tmp_path / "c.yaml"
    RunConfig.from_dict({"model": {"name_or_path": "someone/not-downloaded"}}).to_yaml(cfg)
    assert main(["estimate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no config.json for 'someone/not-downloaded'") and "Traceback" not in err
    assert main(["estimate", str(cfg), "--memory-gb", "-1"]) == 2
    assert "--memory-gb" in capsys.readouterr().err


def test_dashboard_estimate_panel_shows_the_strategy_table(tiny_bert, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert)}, "training": {"bf16": False},
                               "distributed": {"strategy": "fsdp", "nproc_per_node": 2}})
    script = (f"from workbench.config import RunConfig\nfrom dashboard import estimate_panel\n"
              f"cfg = RunConfig.from_yaml({cfg.to_yaml()!r})\n"
              f"estimate_panel._estimate(cfg, {{'labels': ['a', 'b'], 'token_lengths': {{'mean': 10, 'p99': 20}}, "
              f"'split_sizes': {{'train': 100}}}}, 100)\n")
    at = AppTest.from_string(script, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Memory per device by strategy (2 process(es); yours: fsdp FULL_SHARD)" in e.label for e in at.expander)
    table = at.dataframe[-1].value
    assert list(table["strategy"])[3] == "fsdp FULL_SHARD (chosen)" and len(table) == len(PLAN_ORDER)
