"""Issue 13, items 4-6: numbers a user can trust.

4. the majority-class baseline beside before -> after (eval.json, CLI, dashboard, `workbench runs`);
5. `training.class_weights` (a weighted cross-entropy, recorded in the run);
6. time estimates from the median seconds per token of several runs, with a range.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_sentiment_frame
from workbench import cli
from workbench.config import RunConfig
from workbench.errors import ConfigError
from workbench.rundir import new_run_dir

TIMEOUT = 60


def _imbalanced_csv(folder: Path, n_pos: int = 150, n_neg: int = 50) -> Path:
    """The toy sentiment task with three positive examples for every negative one."""
    frame = make_sentiment_frame(2 * max(n_pos, n_neg), seed=3)
    frame = pd.concat([frame[frame["label"] == "pos"].head(n_pos), frame[frame["label"] == "neg"].head(n_neg)])
    p = folder / "imbalanced.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(p, index=False)
    return p


def _tiny_cfg(model: Path, data: Path, out: Path, **training) -> RunConfig:
    t = {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 16, "logging_steps": 1,
         "eval_strategy": "no", "save_strategy": "no", **training}
    return RunConfig.from_dict({"output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "peft": {"freeze_embeddings": False}})


def _fake_run(folder: Path, name: str, ev: dict, **status) -> Path:
    """A finished classification run directory (config, status, eval.json) without training."""
    run = new_run_dir(RunConfig.from_dict({"name": name, "output_dir": str(folder),
                                           "model": {"name_or_path": "minilm"}}))
    run.update_status(state="completed", **status)
    run.eval_file.write_text(json.dumps(ev))
    return run.path


def _scores(acc: float, f1: float, n: int = 100) -> dict:
    return {"accuracy": acc, "f1_macro": f1, "f1_weighted": f1, "f1_micro": acc, "n": n, "labels": ["neg", "pos"],
            "per_class": {k: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": n // 2} for k in ("neg", "pos")},
            "confusion_matrix": [[25, 25], [25, 25]]}


BASE = {"kind": "majority", "label": "pos", "train_share": 0.75, "accuracy": 0.49, "f1_macro": 0.329, "n": 100}


# --- item 4: the majority-class baseline --------------------------------------------------------------
def test_i13_4_majority_baseline_uses_the_training_majority_scored_on_test():
    from workbench.baseline import majority_baseline

    # "b" is the most frequent class in training, but only 2 of 5 test rows: the baseline is scored on test.
    b = majority_baseline(["a", "b", "b", "c", "b"], ["a", "a", "b", "c", "b"], ["a", "b", "c"])
    assert b["label"] == "b" and b["train_share"] == pytest.approx(0.6)
    assert b["accuracy"] == pytest.approx(0.4)
    # macro F1 over the classes seen in gold or predicted (a, b, c): F1(b) = 2*0.4*1/(1.4), the others 0
    assert b["f1_macro"] == pytest.approx((2 * 0.4 / 1.4) / 3)
    assert majority_baseline(["x", "y"], ["y"], ["x", "y"])["label"] == "x"  # a tie: the first label


def test_i13_4_flag_only_when_after_is_not_above_the_baseline():
    from workbench.baseline import baseline_line, baseline_warning

    ev = {"baseline": BASE, "before": _scores(0.14, 0.1), "after": _scores(0.47, 0.3)}
    warn = baseline_warning(ev)
    assert "after 0.470 accuracy is not above the majority baseline 0.490" in warn and "'pos'" in warn
    assert baseline_warning({**ev, "after": _scores(0.49, 0.3)})  # equal is not above
    assert baseline_warning({**ev, "after": _scores(0.8, 0.8)}) is None
    assert baseline_warning({"after": _scores(0.3, 0.3)}) is None  # an older run: no baseline, no flag
    assert baseline_line(ev) == "majority baseline (always 'pos', 75% of training rows): accuracy 0.490, macro F1 0.329"


def test_i13_4_cli_eval_and_runs_show_the_baseline_and_flag(tmp_path, capsys):
    bad = _fake_run(tmp_path, "learned-nothing", {"baseline": BASE, "before": _scores(0.14, 0.1),
                                                   "after": _scores(0.47, 0.3)})
    _fake_run(tmp_path, "learned", {"baseline": BASE, "before": _scores(0.14, 0.1), "after": _scores(0.9, 0.9)})
    assert cli.main(["eval", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "majority baseline (always 'pos', 75% of training rows): accuracy 0.490" in out
    assert "warning: after 0.470 accuracy is not above the majority baseline 0.490" in out

    assert cli.main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[6:9] == ["accuracy_baseline", "accuracy_before", "accuracy"]
    row = next(r for r in rows if r.startswith("learned-nothing")).split()
    assert row[6:9] == ["0.490", "0.140", "0.470"]
    assert "warning for learned-nothing: after 0.470 accuracy is not above" in out
    assert "warning for learned:" not in out


def test_i13_4_train_result_lines_show_the_baseline(tmp_path, capsys):
    from workbench.rundir import RunDir

    run = RunDir(_fake_run(tmp_path, "r", {"baseline": BASE, "before": _scores(0.14, 0.1),
                                           "after": _scores(0.47, 0.3)}))
    cli._print_result(run, run.status())
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("test accuracy before fine-tuning: 0.140")
    assert lines[1].startswith("test accuracy after fine-tuning:  0.470")
    assert lines[2] == "test majority baseline (always 'pos', 75% of training rows): accuracy 0.490, macro F1 0.329"
    assert lines[3].startswith("warning: after 0.470 accuracy is not above the majority baseline 0.490")


def test_i13_4_evaluate_and_runs_pages_show_the_baseline(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _fake_run(tmp_path, "learned-nothing", {"baseline": BASE, "before": _scores(0.14, 0.1),
                                            "after": _scores(0.47, 0.3)})
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    at = AppTest.from_string("from dashboard import evaluate\nevaluate.page()", default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Score to beat: majority baseline (always 'pos'" in c.value for c in at.caption)
    assert any("is not above the majority baseline 0.490" in w.value for w in at.warning)

    at = AppTest.from_string("from dashboard import runs\nruns.page()", default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert table.loc[0, "accuracy_baseline"] == pytest.approx(0.49) and "baseline_warning" not in table
    assert any("learned-nothing: after 0.470 accuracy is not above" in w.value for w in at.warning)


# --- item 5: class weights --------------------------------------------------------------------------
def test_i13_5_config_accepts_none_balanced_or_a_map():
    assert RunConfig().training.class_weights == "none"
    cfg = RunConfig.from_yaml("training:\n  class_weights: {rotten: 2, 1: 0.5}\n")
    assert cfg.training.class_weights == {"rotten": 2.0, "1": 0.5}  # YAML's integer key becomes the label "1"
    assert RunConfig.from_yaml(cfg.to_yaml()).training.class_weights == {"rotten": 2.0, "1": 0.5}
    with pytest.raises(ConfigError, match="class_weights.*expected one of 'none', 'balanced' or a map"):
        RunConfig.from_dict({"training": {"class_weights": "balance"}})
    bad = RunConfig.from_dict({"training": {"class_weights": {"rotten": 0}}}).validate()
    assert bad == ["training.class_weights['rotten']=0.0: a weight must be a number > 0."]


def test_i13_5_weights_balanced_and_map_and_unknown_label_names_the_labels():
    from sklearn.utils.class_weight import compute_class_weight

    from workbench.tasks.classification import class_weight_vector

    ids = [0] * 30 + [1] * 10
    assert class_weight_vector("none", ids, ["fresh", "rotten"]) is None
    w = class_weight_vector("balanced", ids, ["fresh", "rotten"])
    sklearn_w = compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(ids))
    assert w == pytest.approx(list(sklearn_w)) and w == pytest.approx([40 / 60, 40 / 20])
    assert class_weight_vector("balanced", ids, ["fresh", "rotten", "plot"])[2] == 1.0  # absent from training
    assert class_weight_vector({"rotten": 3.0}, ids, ["fresh", "rotten"]) == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"names 'Rotten', not a label of this data\. The labels are: 'fresh', "
                                          r"'rotten'"):
        class_weight_vector({"Rotten": 3.0}, ids, ["fresh", "rotten"])


def test_i13_5_weighted_loss_matches_a_hand_computed_batch(tiny_bert, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from workbench.trainer import WorkbenchTrainer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)  # the new head's initial weights: seeded, so the weighted/unweighted gap is the same each run
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    texts = ["good film", "awful plot", "great cast", "dull", "superb music", "lovely"]
    labels = torch.tensor([1, 0, 1, 0, 1, 1])
    batch = {**tok(texts, padding=True, return_tensors="pt"), "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    weights = [2.0, 0.5]
    weighted = WorkbenchTrainer(model=model, args=args, class_weights=weights)
    plain = WorkbenchTrainer(model=model, args=args)
    model.eval()
    with torch.no_grad():
        got = weighted.compute_loss(model, dict(batch))
        unweighted = plain.compute_loss(model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_example = -torch.log_softmax(logits, dim=-1)[torch.arange(6), labels]
    w = torch.tensor(weights)[labels]
    assert got.item() == pytest.approx(float((w * per_example).sum() / w.sum()), rel=1e-5)
    assert unweighted.item() == pytest.approx(float(per_example.mean()), rel=1e-5)
    assert abs(got.item() - unweighted.item()) > 1e-3
    assert weighted.loss_is_scaled_for_ga is False  # a per-batch mean: divided for gradient accumulation


def test_i13_5_balanced_run_records_weights_and_changes_the_loss(tiny_bert, tmp_path):
    from workbench.training import run_training

    data = _imbalanced_csv(tmp_path)
    losses = {}
    for spec in ("none", "balanced"):
        cfg = _tiny_cfg(tiny_bert, data, tmp_path / "runs", class_weights=spec).override({"name": spec})
        run = run_training(cfg, new_run_dir(cfg), progress=False)
        assert run.status()["state"] == "completed"
        losses[spec] = run.metrics().query("kind == 'train'")["loss"].iloc[0]
        if spec == "none":
            assert "class_weights" not in run.status()
    recorded = run.status()["class_weights"]
    counts = json.loads(run.report_file.read_text())["class_balance"]["train"]
    n = sum(counts.values())
    assert recorded == pytest.approx({"neg": n / (2 * counts["neg"]), "pos": n / (2 * counts["pos"])})
    assert recorded["neg"] > 1.0 > recorded["pos"]
    assert losses["none"] != pytest.approx(losses["balanced"], rel=1e-4)  # same seed: same first batch
    ev = run.evaluation()
    assert ev["baseline"]["label"] == "pos" and ev["baseline"]["n"] == ev["after"]["n"]
    assert ev["baseline"]["accuracy"] == pytest.approx((pd.Series(run.predictions()["gold"]) == "pos").mean())


def test_i13_5_unknown_label_in_the_map_fails_before_the_model_loads(tiny_bert, tmp_path):
    from workbench.training import run_training

    data = _imbalanced_csv(tmp_path)
    cfg = _tiny_cfg(tiny_bert, data, tmp_path / "runs", class_weights={"negative": 2.0})
    run = new_run_dir(cfg)
    with pytest.raises(ConfigError, match="'negative', not a label of this data. The labels are: 'neg', 'pos'"):
        run_training(cfg, run, progress=False)
    assert run.status()["state"] == "failed" and "not a label of this data" in run.status()["error"]
    assert not run.metrics().size


def test_i13_5_train_page_has_the_class_weights_box(monkeypatch):
    from streamlit.testing.v1 import AppTest

    import workbench.storage
    from workbench.config import field_help

    # The page's default data is the newest upload; earlier tests in the session upload files with problems
    # on purpose (one class, ...), whose errors are not this test's business: start from the built-ins.
    monkeypatch.setattr(workbench.storage, "list_uploads", lambda: [])
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="t.training.class_weights")
    assert box.options == ["none", "balanced"] and box.value == "none"
    assert field_help()["training.class_weights"] in box.help
    box.set_value("balanced").run()
    assert not at.exception and not at.error


# --- item 6: time estimates from several runs, with a range --------------------------------------------
def _timed_run(root: Path, model: Path, name: str, step_s: float, *, method: str = "full", precision: str = "fp32",
               state: str = "completed", created: float = 0.0, bursts: tuple[float, ...] = ()) -> None:
    """A finished run directory whose metrics.jsonl says each 8-example step of 100 real tokens took `step_s`
    seconds (`bursts`: extra logged intervals that ran this many times slower, e.g. while another process
    used the CPU). No training."""
    cfg = RunConfig.from_dict({"name": name, "output_dir": str(root), "model": {"name_or_path": str(model)},
                               "peft": {"method": method}})
    run = new_run_dir(cfg)
    run.update_status(state=state, precision=precision, created=created)
    tps = 100 / step_s
    for i, slow in enumerate([1.0] * 6 + list(bursts)):
        run.append_metrics({"kind": "train", "step": 10 * (i + 1), "loss": 0.5, "tokens_per_second": tps / slow})
    steps = 10 * (6 + len(bursts))
    runtime = steps * step_s * (6 + sum(bursts)) / (6 + len(bursts))
    run.append_metrics({"kind": "summary", "step": steps, "train_runtime": runtime, "real_tokens": 100 * steps,
                        "train_steps_per_second": steps / runtime})


def _est_cfg(model: Path) -> RunConfig:
    return RunConfig.from_dict({"model": {"name_or_path": str(model)}, "data": {"max_length": 64},
                                "evaluate_before": False,
                                "training": {"max_steps": 300, "per_device_train_batch_size": 8, "bf16": False,
                                             "eval_strategy": "no"}})


def test_i13_6_median_of_several_runs_not_the_newest_contended_one(tiny_bert, tmp_path):
    from workbench.estimate import estimate_run, format_estimate

    root = tmp_path / "runs"
    for i, s in enumerate([0.9, 1.0, 1.0, 1.1]):
        _timed_run(root, tiny_bert, f"normal-{i}", s, created=100 + i)
    _timed_run(root, tiny_bert, "newest-while-busy", 3.0, created=200)  # 3x slower: another process used the CPU
    _timed_run(root, tiny_bert, "other-precision", 0.2, precision="bf16", created=300)
    _timed_run(root, tiny_bert, "lora", 0.3, method="lora", created=301)
    _timed_run(root, tiny_bert, "still-running", 0.1, state="running", created=302)
    est = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=10, runs_root=root)  # 88 tokens < 100 measured
    assert est.step_seconds == pytest.approx(1.0)  # the median, not the newest run's 3.0
    assert est.time_source.startswith("measured: median 1.00 s per step over the last 5 runs")
    assert "other-precision" not in est.time_source and "lora" not in est.time_source
    # the middle half of the five runs: 1.0 to 1.1 s per step, plus the fixed start-up time
    assert est.low_seconds == pytest.approx(15 + 300 * 1.0) and est.high_seconds == pytest.approx(15 + 300 * 1.1)
    assert format_estimate(est) == "about 5 min (5-6 min)"
    # with only the busy run and one normal run, the range spans both
    root2 = tmp_path / "runs2"
    _timed_run(root2, tiny_bert, "normal", 1.0, created=1)
    _timed_run(root2, tiny_bert, "busy", 3.0, created=2)
    est2 = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=10, runs_root=root2)
    assert est2.step_seconds == pytest.approx(2.0)
    assert (est2.low_seconds, est2.high_seconds) == pytest.approx((15 + 300, 15 + 900))
    assert format_estimate(est2) == "about 10 min (5-15 min)"


def test_i13_6_a_burst_inside_one_run_does_not_move_its_step_time(tiny_bert, tmp_path):
    from workbench.estimate import estimate_run

    root = tmp_path / "runs"
    _timed_run(root, tiny_bert, "bursty", 1.0, bursts=(5.0, 5.0))  # 2 of 8 intervals ran 5x slower
    est = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=10, runs_root=root)
    assert est.step_seconds == pytest.approx(1.0)  # the whole-run average would say 2.0
    assert est.low_seconds is None and "in run 'bursty'" in est.time_source


def test_i13_6_longer_batches_scale_the_measured_time_by_tokens(tiny_bert, tmp_path):
    from workbench.estimate import estimate_run

    root = tmp_path / "runs"
    _timed_run(root, tiny_bert, "r", 1.0)  # 100 real tokens per step
    est = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=50, runs_root=root)  # 8 x 50 x 1.1 = 440 tokens
    assert est.step_seconds == pytest.approx(4.4) and "scaled up for longer batches" in est.time_source


def test_i13_6_probe_times_a_few_steps_when_nothing_was_measured(tiny_bert, tmp_path):
    from workbench.estimate import estimate_run

    est = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=10, runs_root=tmp_path / "none")
    assert est.time_source.startswith("tabulated")
    est = estimate_run(_est_cfg(tiny_bert), 2400, mean_tokens=10, runs_root=tmp_path / "none", probe=True)
    assert est.time_source.startswith("a probe:") and est.step_seconds > 0
    assert est.total_seconds == pytest.approx(15 + 300 * est.step_seconds)


def test_i13_6_train_page_panel_shows_the_range(tiny_bert, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "runs"
    for i, s in enumerate([1.0, 1.0, 3.0]):
        _timed_run(root, tiny_bert, f"r{i}", s, created=i)
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    script = (f"from workbench.config import RunConfig\nfrom dashboard import estimate_panel\n"
              f"cfg = RunConfig.from_yaml({_est_cfg(tiny_bert).to_yaml()!r})\n"
              f"estimate_panel._estimate(cfg, {{'labels': ['a', 'b'], 'token_lengths': {{'mean': 10, 'p99': 20}}, "
              f"'split_sizes': {{'train': 2400}}}}, 2400)\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    time_metric = next(m for m in at.metric if m.label == "Time")
    assert time_metric.value == "about 5 min (5-15 min)"
    assert any("median 1.00 s per step over the last 3 runs" in c.value for c in at.caption)
