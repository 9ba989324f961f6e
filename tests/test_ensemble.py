"""Ensembles of classification runs (`workbench.ensemble`, `workbench ensemble`, the Runs page's Ensemble
section): three tiny BERT runs that differ only in their seed, on a fixed test split, averaged; and every
way a user can pick runs that cannot be averaged, each a message, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_sentiment_frame
from workbench.cli import main
from workbench.errors import RunError
from workbench.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py
    sys.path.insert(0, str(ROOT))

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_bert):
    """Three completed runs (seeds 1, 2, 3) of one config with a split column: the same 40 test rows each.
    Trained briefly so they disagree on some examples (~3 s each)."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("ens")
    df = make_sentiment_frame(200)
    df["split"] = ["test" if i % 5 == 0 else "validation" if i % 5 == 1 else "train" for i in range(len(df))]
    df.to_csv(root / "data.csv", index=False)
    df[df["split"] == "test"].drop(columns="split").to_csv(root / "test.csv", index=False)
    runs = []
    for seed in SEEDS:
        cfg = RunConfig.from_dict({
            "name": f"seed{seed}", "output_dir": str(root / "runs"), "model": {"name_or_path": str(tiny_bert)},
            "data": {"source": str(root / "data.csv"), "split_column": "split"},
            "training": {"num_train_epochs": 4, "learning_rate": 3e-3, "per_device_train_batch_size": 8,
                         "logging_steps": 5, "save_strategy": "no", "seed": seed},
            "peft": {"freeze_embeddings": False}})
        runs.append(run_training(cfg, new_run_dir(cfg), progress=False))
    return runs


def _probs(run: RunDir) -> pd.DataFrame:
    """A run's stored probabilities, by hand: predictions.jsonl's p_ columns indexed by row."""
    rows = [json.loads(line) for line in run.predictions_file.read_text().splitlines()]
    return pd.DataFrame(rows).set_index("row")[["p_neg", "p_pos"]]


def _copy(run: RunDir, dest: Path, name: str) -> RunDir:
    shutil.copytree(run.path, dest / name)
    return RunDir(dest / name)


def _rewrite_predictions(run: RunDir, change) -> None:
    pred = pd.read_json(run.predictions_file, lines=True, dtype=False)
    change(pred).to_json(run.predictions_file, orient="records", lines=True)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the ensemble ----------------------------------------------------------------------------------
def test_ensemble_probabilities_are_the_mean_of_the_members(members):
    from workbench.ensemble import ensemble_runs

    ens = ensemble_runs(members)
    by_hand = sum(_probs(r) for r in members) / 3
    got = ens.predictions.set_index("row")[["p_neg", "p_pos"]]
    np.testing.assert_allclose(got.to_numpy(), by_hand.loc[got.index].to_numpy(), atol=1e-6)
    assert (ens.predictions.set_index("row")["predicted"] == by_hand.loc[got.index].idxmax(axis=1).str[2:]).all()
    weighted = ensemble_runs(members, weights=[2, 1, 1])
    by_hand = (2 * _probs(members[0]) + _probs(members[1]) + _probs(members[2])) / 4
    got = weighted.predictions.set_index("row")[["p_neg", "p_pos"]]
    np.testing.assert_allclose(got.to_numpy(), by_hand.loc[got.index].to_numpy(), atol=1e-6)
    assert weighted.weights == [0.5, 0.25, 0.25]


def test_report_scores_best_member_and_disagreement_table(members, tmp_path):
    from workbench.ensemble import ensemble_runs, filter_table, write_ensemble

    ens = ensemble_runs(members)
    acc = {r.name: r.evaluation()["after"]["accuracy"] for r in members}
    scores = ens.scores.set_index("model")
    assert list(scores.index) == ["seed1", "seed2", "seed3", "ensemble"]
    for name, a in acc.items():  # each member scored as its own run scored itself
        assert scores.loc[name, "accuracy"] == pytest.approx(a)
    assert ens.best == max(acc, key=acc.get) and scores.loc[ens.best, "role"] == "best member"
    assert scores.loc["ensemble", "accuracy"] == pytest.approx(ens.predictions["correct"].mean())
    assert "f1_macro" in scores and ens.metrics["ensemble"]["confusion_matrix"]  # the task's own metrics

    t = ens.table.set_index("row")
    votes = pd.DataFrame({r.name: pd.read_json(r.predictions_file, lines=True, dtype=False).set_index("row")
                          ["predicted"] for r in members}).loc[t.index]
    assert (t["n_disagreeing"] == votes.ne(t["ensemble"], axis=0).sum(axis=1)).all()
    assert (t["members_agree"] == (votes.nunique(axis=1) == 1)).all()
    assert 0 < (~t["members_agree"]).sum() < len(t), "the seeds should disagree on some examples, not all"
    best_right = votes[ens.best] == t["gold"]
    assert ((t["change"] == "fixed") == (~best_right & t["ensemble_correct"])).all()
    assert ((t["change"] == "broken") == (best_right & ~t["ensemble_correct"])).all()
    c = ens.comparison
    assert (c["fixed"], c["broken"]) == ((t["change"] == "fixed").sum(), (t["change"] == "broken").sum())
    assert 0 <= c["mcnemar_p"] <= 1 and c["bootstrap_low"] <= c["accuracy_difference"] <= c["bootstrap_high"]
    assert {"predicted_seed1", "confidence_seed3", "text", "gold"} <= set(t.columns)
    assert len(filter_table(ens.table, "disagree")) == (~t["members_agree"]).sum()
    assert not filter_table(ens.table, "ensemble wrong")["ensemble_correct"].any()

    before = {r.name: sorted(p.name for p in r.path.rglob("*")) for r in members}
    out = write_ensemble(ens, tmp_path / "ens")
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["best_member"] == ens.best and saved["split_fingerprint"] == ens.fingerprint
    assert [m["name"] for m in json.loads((out / "members.json").read_text())] == ["seed1", "seed2", "seed3"]
    assert len((out / "disagreements.jsonl").read_text().splitlines()) == len(ens.table)
    assert before == {r.name: sorted(p.name for p in r.path.rglob("*")) for r in members}  # members untouched
    with pytest.raises(RunError, match="inside the member run seed1"):
        write_ensemble(ens, members[0].path / "ens")


def test_run_without_stored_probabilities_is_rescored_or_says_how(members, tmp_path):
    from workbench.ensemble import load_member

    old = _copy(members[0], tmp_path, "old")
    _rewrite_predictions(old, lambda p: p.drop(columns=["p_neg", "p_pos"]))
    with pytest.raises(RunError, match="no class probabilities.*workbench ensemble"):
        load_member(old, recompute=False)
    m = load_member(old)  # loads the run's model and scores its test texts again
    assert "re-scored" in m.source
    stored = _probs(members[0]).loc[m.pred["row"]]
    np.testing.assert_allclose(m.probs, stored.to_numpy(), atol=2e-4)  # re-scored in other batches: float noise only


def test_split_file_scores_every_member_on_one_file(members, tmp_path):
    from workbench.ensemble import ensemble_runs

    stored = ensemble_runs(members)
    ens = ensemble_runs(members, split_file=members[0].path.parent.parent / "test.csv")
    assert all("scored on" in m.source for m in ens.members) and len(ens.table) == len(stored.table)
    # The same 40 texts scored again by the same models: the same averaged probabilities, text by text.
    a = ens.predictions.set_index("text")["p_pos"]
    np.testing.assert_allclose(a.to_numpy(), stored.predictions.set_index("text")["p_pos"].loc[a.index].to_numpy(),
                               atol=2e-4)  # re-scored in other batches: float noise only


def test_classes_in_another_order_are_matched_by_name(members, tmp_path):
    from workbench.ensemble import ensemble_runs

    flipped = _copy(members[1], tmp_path, "flipped")
    flipped.labels_file.write_text(json.dumps(["pos", "neg"]))
    plain, ens = ensemble_runs(members[:2]), ensemble_runs([members[0], flipped])
    np.testing.assert_allclose(ens.predictions[["p_neg", "p_pos"]], plain.predictions[["p_neg", "p_pos"]])
    assert any("another order" in n and "matched" in n for n in ens.notes)
    twin = _copy(members[1], tmp_path / "elsewhere", members[1].name)  # same name, another folder
    ens = ensemble_runs([members[1], twin])
    assert list(ens.scores["model"])[:2] == [f"runs/{members[1].name}", f"elsewhere/{members[1].name}"]


def test_relation_extraction_runs_are_scored_by_their_task(members, tmp_path):
    """A relation-extraction run stores the same p_<relation> columns; the ensemble uses that task's metrics."""
    from workbench.ensemble import ensemble_runs

    runs = [_copy(r, tmp_path, f"re{i}") for i, r in enumerate(members[:2])]
    for r in runs:
        r.config_file.write_text(r.config_file.read_text().replace("task: text-classification",
                                                                   "task: relation-extraction"))
    ens = ensemble_runs(runs)
    assert ens.task == "relation-extraction" and ens.headline == "f1"
    assert "per_relation" in ens.metrics["ensemble"] and "f1" in ens.scores


# --- what cannot be averaged ------------------------------------------------------------------------
def test_messages_for_runs_that_cannot_be_averaged(members, tmp_path, capsys):
    a, b = str(members[0].path), str(members[1].path)

    other = _copy(members[1], tmp_path, "other-labels")  # a run of another data set: classes ham/spam
    other.labels_file.write_text(json.dumps(["ham", "spam"]))
    _rewrite_predictions(other, lambda p: p.rename(columns={"p_neg": "p_ham", "p_pos": "p_spam"}).assign(
        gold=p["gold"].map({"neg": "ham", "pos": "spam"})))
    code, out, err = _cli(capsys, "ensemble", a, other.path)
    assert code == 2 and "different classes" in err and "'ham'" in err and "'neg'" in err

    shifted = _copy(members[1], tmp_path, "other-split")  # three test rows replaced by other examples
    _rewrite_predictions(shifted, lambda p: p.assign(row=[r + 1000 if i < 3 else r for i, r in enumerate(p["row"])]))
    code, out, err = _cli(capsys, "ensemble", a, shifted.path)
    assert code == 2 and "different examples: 6 of 43 test rows differ" in err
    assert "3 only in seed1" in err and "--split-file" in err and "training.seed" in err

    texts = _copy(members[1], tmp_path, "other-texts")  # same row numbers, another text in one
    _rewrite_predictions(texts, lambda p: p.assign(text=["changed"] + p["text"].tolist()[1:]))
    code, out, err = _cli(capsys, "ensemble", a, texts.path)
    assert code == 2 and "1 of 40 test rows differ" in err and "another text" in err

    damaged = _copy(members[1], tmp_path, "damaged")  # an untrusted file: a probability that is not one
    _rewrite_predictions(damaged, lambda p: p.assign(p_pos=["lots"] + p["p_pos"].tolist()[1:]))
    code, out, err = _cli(capsys, "ensemble", a, damaged.path)
    assert code == 2 and "is damaged: column p_pos holds 'lots'" in err

    running = _copy(members[1], tmp_path, "running")
    running.update_status(state="queued")
    failed = _copy(members[1], tmp_path, "failed")
    failed.update_status(state="failed", error="the training loss became nan at step 3")
    failed.predictions_file.unlink()
    for run, expected in ((running, "still queued"), (failed, "failed (the training loss became nan")):
        code, out, err = _cli(capsys, "ensemble", a, run.path)
        assert code == 2 and expected in err and "Traceback" not in err

    ner = _copy(members[1], tmp_path, "ner")
    ner.config_file.write_text(ner.config_file.read_text().replace("task: text-classification",
                                                                   "task: token-classification"))
    code, out, err = _cli(capsys, "ensemble", a, ner.path)
    assert code == 2 and "token-classification run" in err

    code, out, err = _cli(capsys, "ensemble", a, a)
    assert code == 2 and "given twice" in err
    code, out, err = _cli(capsys, "ensemble", a)
    assert code == 2 and "at least 2 runs; got 1" in err
    code, out, err = _cli(capsys, "ensemble", a, b, "--weights", "1")
    assert code == 2 and "1 weight(s) for 2 runs" in err
    code, out, err = _cli(capsys, "ensemble", a, b, "--out", Path(a) / "inside")
    assert code == 2 and "inside the member run" in err and not (Path(a) / "inside").exists()


def test_cli_prints_the_report_and_writes_the_folder(members, capsys):
    code, out, err = _cli(capsys, "ensemble", *[r.path for r in members], "--n", "2")
    assert code == 0, err
    assert "3 runs, 40 test examples" in out and "best member" in out and "McNemar exact p" in out
    assert "members disagree on" in out
    folder = members[0].path.parent / "ensembles" / "seed1+seed2+seed3"
    assert {p.name for p in folder.iterdir()} == {"ensemble.json", "members.json", "disagreements.jsonl"}


def test_scores_figure_has_a_bar_per_model(members):
    from workbench.ensemble import ensemble_runs
    from workbench.figures.ensemble import ensemble_scores_figure

    ens = ensemble_runs(members)
    fig = ensemble_scores_figure(ens.scores)
    assert [t.name for t in fig.data] == [f"{n} (best member)" if n == ens.best else n for n in
                                          ("seed1", "seed2", "seed3", "ensemble")]
    assert list(fig.data[-1].y) == pytest.approx([ens.metrics["ensemble"]["accuracy"],
                                                  ens.metrics["ensemble"]["f1_macro"]])


# --- the dashboard ---------------------------------------------------------------------------------
def _frame(at, *columns: str) -> pd.DataFrame:
    """The first table shown with these columns."""
    return next(d.value for d in at.dataframe if all(c in d.value.columns for c in columns))


def test_runs_page_ensemble_section(members):
    from streamlit.testing.v1 import AppTest

    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(members[0].path.parent)
    try:
        at = AppTest.from_string("from dashboard import runs\nruns.page()", default_timeout=120).run()
        assert not at.exception
        at.multiselect(key="ens_runs").set_value(["seed1"]).run()
        assert any("at least 2 runs; got 1" in i.value for i in at.info)
        at.multiselect(key="ens_runs").set_value(["seed1", "seed2", "seed3"]).run()
        assert not at.exception, [e.value for e in at.exception]
        labels = {m.label for m in at.metric}
        assert "Ensemble accuracy" in labels and any(lab.startswith("Best member (") for lab in labels)
        scores = _frame(at, "model", "role")
        assert list(scores["model"]) == ["seed1", "seed2", "seed3", "ensemble"]
        table = _frame(at, "n_disagreeing")
        assert len(table) and not table["members_agree"].any()  # default view: members disagree
        at.radio(key="ens_show").set_value("ensemble wrong").run()
        table = _frame(at, "n_disagreeing")
        assert not at.exception and not table["ensemble_correct"].any()
        at.text_input(key="ens_weights").input("1, 2").run()
        assert any("2 weight(s) for 3 runs" in e.value for e in at.error)
        at.text_input(key="ens_weights").input("").run()
        at.button(key="ens_save").click().run()
        assert any("Saved" in s.value for s in at.success)
        assert (members[0].path.parent / "ensembles" / "seed1+seed2+seed3" / "ensemble.json").exists()
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_RUNS", None)
        else:
            os.environ["WORKBENCH_RUNS"] = old


def test_an_ensemble_name_cannot_leave_the_ensembles_folder(tmp_path):
    from types import SimpleNamespace

    from workbench.data.report import augmentation_line
    from workbench.ensemble import default_folder
    members = [SimpleNamespace(path=str(tmp_path / "runs" / n), name=n) for n in ("a", "b")]
    assert default_folder(members, "mine") == (tmp_path / "runs" / "ensembles" / "mine").resolve()
    for name in ("../../x", "a/b", "..", "c\\d"):
        with pytest.raises(RunError, match="cannot hold path separators"):
            default_folder(members, name)
    # a damaged augmentation record in a shared run's data report reads as damaged, not as a traceback
    assert "unreadable" in augmentation_line({"added": {"swap": 3}})
