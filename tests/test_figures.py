"""Every figure builds from a REAL run's outputs (tiny BERT trained for a few seconds) and shows
the numbers in the run directory, not just "a Figure"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_sentiment_frame
from workbench.analysis import compare_runs, compare_summary, worst_slices
from workbench.cli import main
from workbench.config import RunConfig
from workbench.figures import data as D
from workbench.figures import evaluation as E
from workbench.figures import training as T


@pytest.fixture(scope="module")
def run(tiny_bert, tmp_path_factory):
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    tmp = tmp_path_factory.mktemp("figures")
    csv = tmp / "sentiment.csv"
    make_sentiment_frame(200).to_csv(csv, index=False)
    cfg = RunConfig.from_dict({
        "output_dir": str(tmp / "runs"), "model": {"name_or_path": str(tiny_bert)},
        # max_length 12 truncates the longest toy texts, so the length chart has something to mark.
        "data": {"source": str(csv), "max_length": 12},
        "training": {"num_train_epochs": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"}})
    r = new_run_dir(cfg)
    run_training(cfg, r, progress=False)
    assert r.status()["state"] == "completed"
    return r


def test_loss_figure_shows_logged_losses(run):
    m = run.metrics()
    fig = T.loss_figure(run)
    assert [t.name for t in fig.data] == ["train loss", "validation loss"]
    train = m[m["kind"] == "train"]
    assert list(fig.data[0].y) == pytest.approx(train["loss"].tolist())
    assert list(fig.data[1].x) == m.loc[m["kind"] == "eval", "step"].tolist() and len(fig.data[1].x) == 8
    assert fig.data[0].line.color == fig.data[1].line.color and fig.data[1].line.dash == "dash"
    assert fig.data[0].y[-1] < fig.data[0].y[0]  # it learned


def test_runs_overlay_one_colour_per_run(run):
    fig = T.loss_figure({"a": run, "b": run.metrics()}, x="epoch")
    assert [t.legendgroup for t in fig.data] == ["a", "a", "b", "b"]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color == fig.data[3].line.color
    assert fig.layout.xaxis.title.text == "epoch" and max(fig.data[1].x) == pytest.approx(8)  # one validation per epoch
    two = T.loss_figure([run, run.path])
    assert [t.legendgroup for t in two.data][::2] == [run.name, f"{run.name} (2)"]
    assert [t.legendgroup for t in T.loss_figure([run.metrics(), run.metrics()]).data][::2] == ["run 1", "run 2"]


def test_metric_curves(run):
    m = run.metrics()
    ev = m[m["kind"] == "eval"]
    fig = T.metric_figure(run)
    assert [t.name for t in fig.data] == ["accuracy", "f1 macro"]
    assert list(fig.data[0].y) == pytest.approx(ev["eval_accuracy"].tolist())
    assert all(0 <= v <= 1 for t in fig.data for v in t.y)
    lr = T.learning_rate_figure(run)
    assert len(lr.data) == 1 and len(lr.data[0].y) == (m["kind"] == "train").sum()
    assert len(T.throughput_figure(run).data[0].y) == (m["kind"] == "train").sum()  # summary row left out
    empty = T.loss_figure(pd.DataFrame())
    assert not empty.data and "no loss" in empty.layout.annotations[0].text


def test_confusion_matrix_counts_and_normalised(run):
    after = run.evaluation()["after"]
    fig = E.confusion_matrix_figure(after)
    hm = fig.data[0]
    assert [list(r) for r in hm.z] == after["confusion_matrix"]
    assert list(hm.x) == list(hm.y) == after["labels"]
    norm = E.confusion_matrix_figure(after, normalize=True).data[0]
    cm = np.array(after["confusion_matrix"], dtype=float)
    assert np.allclose(np.array(norm.z), cm / cm.sum(axis=1, keepdims=True))
    assert norm.zmax == 1 and f"({int(cm[0, 0])})" in norm.text[0][0]


def test_per_class_and_before_after(run):
    ev = run.evaluation()
    fig = E.per_class_figure(ev["after"])
    assert [t.name for t in fig.data] == ["precision", "recall", "f1"]
    assert list(fig.data[1].x) == ev["after"]["labels"]
    assert list(fig.data[1].y) == [ev["after"]["per_class"][lab]["recall"] for lab in ev["after"]["labels"]]
    ba = E.before_after_figure(ev)
    assert [t.name for t in ba.data] == ["before fine-tuning", "after fine-tuning"]
    assert ba.data[0].y[0] == ev["before"]["accuracy"] and ba.data[1].y[0] == ev["after"]["accuracy"]
    assert len(E.before_after_figure({"after": ev["after"]}).data) == 1


def test_slice_and_confidence_figures(run):
    pred = run.predictions()
    slices = worst_slices(pred, patterns=["good", "not"], min_size=3)
    assert "source" in set(slices["feature"])  # the user's extra column is sliced
    fig = E.slice_figure(slices, top=6)
    assert sum(len(t.y) for t in fig.data) == min(6, len(slices))
    worst = f"{slices.loc[0, 'feature']}: {slices.loc[0, 'slice']} (n={slices.loc[0, 'n']})"
    assert fig.layout.yaxis.categoryarray[-1] == worst  # drawn at the top
    assert fig.layout.shapes[0].x0 == pytest.approx(run.evaluation()["after"]["accuracy"])
    conf = E.confidence_figure(pred)
    assert sum(len(t.x) for t in conf.data) == len(pred)
    assert conf.data[1].name == f"wrong ({int((~pred['correct']).sum())})"
    assert "no slices" in E.slice_figure(slices.iloc[:0]).layout.annotations[0].text


def test_data_figures(run):
    rep = run.data_report()
    fig = D.class_balance_figure(rep)
    assert [t.name.split()[0] for t in fig.data] == ["train", "validation", "test"]
    for t in fig.data:
        split = t.name.split()[0]
        assert sum(t.y) == rep["split_sizes"][split]
        assert list(t.x) == rep["labels"]
    share = D.class_balance_figure(rep, share=True)
    assert all(sum(t.y) == pytest.approx(1) for t in share.data)
    tl = D.token_length_figure(rep)
    t = rep["token_lengths"]
    assert list(tl.data[0].y) == t["histogram"] and t["truncated"] > 0
    assert tl.layout.shapes[0].x0 == 12
    assert tl.layout.annotations[0].text == f"max_length 12: {t['truncated']} truncated"
    assert "no token lengths" in D.token_length_figure({}).layout.annotations[0].text


def test_compare_before_after_matches_eval(run):
    ev = run.evaluation()
    s = compare_summary(compare_runs(run, run, which_a="before", which_b="after"))
    assert s["accuracy_a"] == pytest.approx(ev["before"]["accuracy"])
    assert s["accuracy_b"] == pytest.approx(ev["after"]["accuracy"])
    assert s["fixed"] + s["broken"] + s["both_wrong"] + s["both_right"] == ev["after"]["n"]


def test_cli_errors_and_compare_on_real_run(run, capsys):
    assert main(["errors", str(run.path), "--n", "3", "--pattern", "not"]) == 0
    out = capsys.readouterr().out
    acc = run.evaluation()["after"]["accuracy"]
    assert f"(accuracy {acc:.3f})" in out and "worst slices" in out and 'pattern not' in out
    assert main(["compare", str(run.path), str(run.path)]) == 0
    assert "fixed by B: 0   broken by B: 0" in capsys.readouterr().out
