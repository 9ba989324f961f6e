"""Evaluation numbers checked against values computed by hand."""

import pytest

from workbench.evaluate import classification_metrics


def test_metrics_match_hand_computation():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    m = classification_metrics(gold, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # per class: a: P=1/2 R=1/2 F=1/2; b: P=2/3 R=1 F=0.8; c: P=0 R=0 F=0
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == 0
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["f1_micro"] == pytest.approx(0.6)  # single-label: micro F1 = accuracy
    assert m["f1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1 * 0) / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_predictions_frame_loss_and_margin():
    import numpy as np
    import pandas as pd
    from workbench.tasks.classification import predictions_frame
    df = pd.DataFrame({"text": ["x", "y"], "label": [0, 1], "label_name": ["neg", "pos"], "src": ["a", "b"]},
                      index=[7, 9])
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    out = predictions_frame(df, probs, ["neg", "pos"])
    assert out["row"].tolist() == [7, 9]
    assert out["predicted"].tolist() == ["neg", "neg"] and out["correct"].tolist() == [True, False]
    assert out["loss"].tolist() == pytest.approx([-np.log(0.9), -np.log(0.4)])
    assert out["margin"].tolist() == pytest.approx([0.8, 0.2])
    assert out["src"].tolist() == ["a", "b"]
