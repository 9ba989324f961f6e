"""Error analysis on hand-made prediction tables, where every number can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench import analysis as A
from workbench.cli import main
from workbench.config import RunConfig
from workbench.errors import DataError, RunError

# text, gold, predicted, confidence, source
ROWS = [
    ("good film", "pos", "pos", 0.90, "web"),
    ("not good at all", "pos", "neg", 0.80, "web"),
    ("bad", "neg", "neg", 0.95, "web"),
    ("not bad really quite", "pos", "neg", 0.60, "mail"),
    ("awful plot and weak acting", "neg", "pos", 0.97, "mail"),
    ("great", "pos", "pos", 0.55, "mail"),
    ("dull dull", "neg", "neg", 0.70, "web"),
    ("it was not terrible", "pos", "pos", 0.65, "web"),
    ("boring movie", "neg", "pos", 0.51, "mail"),
    ("lovely cast and a fine story", "pos", "pos", 0.99, "web"),
]


def make_pred(rows=ROWS, row_ids=None) -> pd.DataFrame:
    """A predictions table shaped like predictions.jsonl (two classes, pos/neg)."""
    text, gold, predicted, conf, source = map(list, zip(*rows))
    conf = np.array(conf)
    p_pos = np.where(np.array(predicted) == "pos", conf, 1 - conf)
    p_gold = np.where(np.array(gold) == "pos", p_pos, 1 - p_pos)
    return pd.DataFrame({"row": row_ids if row_ids is not None else range(len(rows)), "text": text, "gold": gold,
                         "predicted": predicted, "confidence": conf, "margin": np.abs(2 * conf - 1),
                         "loss": -np.log(p_gold), "correct": np.array(gold) == np.array(predicted),
                         "p_neg": 1 - p_pos, "p_pos": p_pos, "source": source})


def test_confident_mistakes_order_and_n():
    pred = make_pred()
    assert A.confident_mistakes(pred)["row"].tolist() == [4, 1, 3, 8]
    assert A.confident_mistakes(pred, n=2)["row"].tolist() == [4, 1]
    # Works without a `correct` column (hand-made tables).
    assert A.confident_mistakes(pred.drop(columns="correct"), n=1)["row"].tolist() == [4]


def test_uncertain_examples():
    pred = make_pred()
    assert A.uncertain_examples(pred, n=3)["row"].tolist() == [8, 5, 3]  # margins 0.02, 0.10, 0.20
    assert A.uncertain_examples(pred, max_margin=0.25)["row"].tolist() == [8, 5, 3]


def test_length_bucket_edges_and_default_quartiles():
    pred = make_pred()  # word counts 2 4 1 4 5 1 2 4 2 6
    b = A.length_bucket(pred, edges=[2, 4])
    assert list(b.cat.categories) == ["≤2 words", "3–4 words", ">4 words"]
    assert b.tolist() == ["≤2 words", "3–4 words", "≤2 words", "3–4 words", ">4 words", "≤2 words", "≤2 words",
                          "3–4 words", "≤2 words", ">4 words"]
    # Default edges are the quartiles 2, 3, 4: names stay readable for one-value buckets.
    assert list(A.length_bucket(pred).cat.categories) == ["≤2 words", "3 words", "4 words", ">4 words"]


def test_slice_metrics_by_column_exact():
    s = A.slice_metrics(make_pred(), "source").set_index("slice")
    # mail: rows 3 4 5 8, only 5 right. pos: P=1/3 R=1/2 -> F1 0.4; neg: no true positive -> 0.
    assert s.loc["mail", "n"] == 4 and s.loc["mail", "errors"] == 3
    assert s.loc["mail", "accuracy"] == pytest.approx(0.25)
    assert s.loc["mail", "f1_macro"] == pytest.approx(0.2)
    # web: rows 0 1 2 6 7 9, only 1 wrong. pos F1 = 6/7, neg F1 = 0.8.
    assert s.loc["web", "accuracy"] == pytest.approx(5 / 6)
    assert s.loc["web", "error_rate"] == pytest.approx(1 / 6)
    assert s.loc["web", "f1_macro"] == pytest.approx((6 / 7 + 0.8) / 2)


def test_slice_metrics_by_series_and_missing_values():
    pred = make_pred()
    s = A.slice_metrics(pred, pred["text"].str.contains("not"), name="has not").set_index("slice")
    assert s.loc[True, "n"] == 3 and s.loc[True, "accuracy"] == pytest.approx(1 / 3)
    assert s["feature"].unique().tolist() == ["has not"]
    pred.loc[[0, 1], "source"] = None
    m = A.slice_metrics(pred, "source").set_index("slice")
    assert m.loc["(missing)", "n"] == 2 and m.loc["(missing)", "accuracy"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="no column 'nope'"):
        A.slice_metrics(pred, "nope")


def test_worst_slices_table_exact():
    w = A.worst_slices(make_pred(), patterns=["not"], min_size=4)
    got = [(f, s, n, round(a, 4)) for f, s, n, a in w[["feature", "slice", "n", "accuracy"]].itertuples(index=False)]
    # Ties (0.5, 4/6) keep the table's order: gold label, predicted label, length, patterns, user columns.
    assert got == [
        ("source", "mail", 4, 0.25),
        ("gold label", "neg", 4, 0.5),
        ("predicted label", "neg", 4, 0.5),
        ("gold label", "pos", 6, round(4 / 6, 4)),
        ("predicted label", "pos", 6, round(4 / 6, 4)),
        ("pattern not", 'no "not"', 7, round(5 / 7, 4)),
        ("length", "≤2 words", 5, 0.8),
        ("source", "web", 6, round(5 / 6, 4)),
    ]
    assert w.loc[0, "errors"] == 3 and w.loc[0, "delta_accuracy"] == pytest.approx(0.25 - 0.6)
    assert w[w["feature"] == "gold label"]["f1_macro"].isna().all()  # restates accuracy: left empty
    # min_size drops small slices; lowering it brings back 'contains "not"' (rows 1, 3, 7: one right).
    small = A.worst_slices(make_pred(), patterns=["not"], min_size=1).set_index(["feature", "slice"])
    assert small.loc[("pattern not", 'contains "not"'), "accuracy"] == pytest.approx(1 / 3)


def test_patterns_whole_word_regex_and_errors():
    pred = make_pred()
    assert A.pattern_mask(pred, "not").tolist() == [False, True, False, True] + [False] * 3 + [True, False, False]
    assert A.pattern_mask(pred, "NOT").sum() == 3  # case-insensitive
    assert A.pattern_mask(pred, "dul").sum() == 0  # a plain word matches whole words only
    assert A.pattern_mask(pred, "dul+").sum() == 1  # anything else is a regex
    pred.loc[0, "text"] = "wasn’t good"
    assert A.pattern_mask(pred, "n't")[0]  # typographic apostrophe matches
    with pytest.raises(DataError, match="not a valid regular expression"):
        A.pattern_mask(pred, "(unclosed")


def test_slice_columns_picks_categorical_user_columns():
    pred = pd.concat([make_pred()] * 6, ignore_index=True)
    pred["row"] = range(len(pred))
    pred["uid"] = [f"id{i}" for i in range(len(pred))]  # 60 distinct: an id, not a category
    pred["score"] = np.linspace(0, 1, len(pred))  # continuous
    pred["const"] = "x"  # one value: the whole table, not a slice
    pred["stars"] = [1.0, 2.0, 3.0] * 20  # whole-number floats: categories
    assert A.slice_columns(pred) == ["source", "stars"]
    assert set(A.worst_slices(pred)["feature"]) == {"gold label", "predicted label", "length", "source", "stars"}
    with pytest.raises(DataError, match="no column"):
        A.worst_slices(pred, columns=["nope"])


def test_compare_predictions_constructed():
    a = make_pred(ROWS[:5])  # correct: T F T F F
    b_rows = [(t, g, g if i in (0, 1, 3) else ("neg" if g == "pos" else "pos"), 0.9, s)
              for i, (t, g, p, c, s) in enumerate(ROWS[:5])]  # correct: T T F T F
    b = make_pred(b_rows).sample(frac=1, random_state=0)  # order must not matter
    diff = A.compare_predictions(a, b)
    assert diff["change"].tolist() == ["both right", "fixed", "broken", "fixed", "both wrong"]
    assert diff["predicted_b"].tolist() == ["pos", "pos", "pos", "pos", "pos"]
    assert diff["confidence_a"].tolist() == [0.90, 0.80, 0.95, 0.60, 0.97]
    assert "source" in diff
    s = A.compare_summary(diff)
    assert s == {"n": 5, "fixed": 2, "broken": 1, "both_wrong": 1, "both_right": 1,
                 "accuracy_a": pytest.approx(0.4), "accuracy_b": pytest.approx(0.6), "net": 1}


def test_compare_predictions_refuses_different_test_sets():
    a = make_pred()
    with pytest.raises(RunError, match="different examples: A has 10 test rows, B has 9"):
        A.compare_predictions(a, a.iloc[1:])
    other = a.copy()
    other.loc[3, "text"] = "something else"
    with pytest.raises(RunError, match="not texts: 1 row"):
        A.compare_predictions(a, other)
    with pytest.raises(RunError, match="repeat row numbers"):
        A.compare_predictions(a, a.assign(row=0))


def _fake_run(path, pred: pd.DataFrame):
    path.mkdir(parents=True)
    RunConfig(name=path.name).to_yaml(path / "config.yaml")
    pred.to_json(path / "predictions.jsonl", orient="records", lines=True)
    return path


def test_compare_runs_reads_run_dirs(tmp_path):
    a = _fake_run(tmp_path / "a", make_pred())
    b = _fake_run(tmp_path / "b", make_pred().assign(predicted=lambda d: d["gold"], correct=True))
    s = A.compare_summary(A.compare_runs(a, b))
    assert (s["fixed"], s["broken"], s["both_right"], s["accuracy_b"]) == (4, 0, 6, 1.0)
    with pytest.raises(RunError, match="not a run directory"):
        A.compare_runs(a, tmp_path / "missing")


def test_cli_errors(tmp_path, capsys):
    run = _fake_run(tmp_path / "r", make_pred())
    assert main(["errors", str(run), "--n", "2", "--pattern", "not", "--min-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "10 test examples, 4 wrong (accuracy 0.600)" in out
    assert "2 most confident mistakes" in out
    assert out.index("awful plot") < out.index("not good at all")  # 0.97 before 0.80
    assert "boring movie" not in out  # only --n 2
    worst = out.split("worst slices")[1].splitlines()[2].split()
    assert worst[:4] == ["source", "mail", "4", "0.250"] and worst[-1] == "-0.350"


def test_cli_compare(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", make_pred())
    b = _fake_run(tmp_path / "b", make_pred().assign(predicted=lambda d: d["gold"], correct=True))
    assert main(["compare", str(a), str(b), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "A: a  accuracy 0.600" in out and "B: b  accuracy 1.000" in out
    assert "fixed by B: 4   broken by B: 0   both wrong: 0   both right: 6   net: +4" in out
    assert "== fixed (4) ==" in out and out.count("  row ") == 1
    c = _fake_run(tmp_path / "c", make_pred().iloc[:5])
    assert main(["compare", str(a), str(c)]) == 2
    assert "different examples" in capsys.readouterr().err


def test_empty_table_is_not_an_error():
    pred = make_pred().iloc[:0]
    assert len(A.confident_mistakes(pred)) == 0
    assert list(A.worst_slices(pred).columns)[:4] == ["feature", "slice", "n", "accuracy"]
    assert not math.isnan(A.slice_metrics(make_pred(), "gold")["accuracy"].sum())
