"""The task seam: a task registered from outside the package runs end to end (train, eval, predict,
errors), and the traps fixed with it (metric direction, collator fields, head swap, tied embeddings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_sentiment_frame

from workbench.config import RunConfig
from workbench.errors import ConfigError, ModelError


# --- a toy task, defined here and nowhere in the package -----------------------------------------
class TextRegression:
    """Predict a number per text (here: 1.0 for a positive review, 0.0 for a negative one) with a
    one-output head and mean squared error; metrics MAE (lower is better) and R² (higher is better)."""

    name = "toy-text-regression"
    description = "A number per text."
    roles = ()
    model_inputs = ("input_ids", "attention_mask", "labels")
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    directions: ClassVar[dict[str, bool]] = {"mae": False, "r2": True, "loss": False}
    headline = "mae"
    freeze_embeddings_ok = True

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        from workbench.data.prepare import PreparedData
        from workbench.data.report import DataReport

        df = pd.read_csv(cfg.source)
        df = pd.DataFrame({"text": df["text"], "label": (df["label"] == "pos").astype("float32")})
        df = df.sample(frac=1.0, random_state=seed)
        n_test, n_val = int(len(df) * cfg.test_size), int(len(df) * cfg.validation_size)
        test, val, train = df.iloc[:n_test], df.iloc[n_test:n_test + n_val], df.iloc[n_test + n_val:]
        rep = DataReport(source=cfg.source, rows_read=len(df), rows_used=len(df),
                         split_sizes={"train": len(train), "validation": len(val), "test": len(test)})
        return PreparedData(train, val, test, ["score"], rep)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        import datasets

        enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
        return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                           "labels": frame["label"].astype("float32").tolist(),
                                           "length": [len(x) for x in enc["input_ids"]]})

    def collator(self, tokenizer: Any) -> Any:
        from workbench.tasks.classification import PaddingCollator
        return PaddingCollator(tokenizer, keep=self.model_inputs)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: Any = None,
                   dtype: Any = None) -> Any:
        from workbench.models import load_classifier
        model = load_classifier(cfg, labels, tokenizer=tokenizer, attn_implementation=attn_implementation)
        model.config.problem_type = "regression"
        return model

    def compute_metrics(self, eval_pred: Any, labels: Any = ()) -> dict[str, float]:
        p = np.asarray(eval_pred.predictions).reshape(-1)
        return _scores(p, np.asarray(eval_pred.label_ids).reshape(-1))

    @torch.inference_mode()
    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        model.eval()
        texts = frame["text"].astype(str).tolist()
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            out.append(model(**batch).logits[:, 0].float().numpy())
        pred = np.concatenate(out) if out else np.zeros(0)
        table = pd.DataFrame({"row": frame.index.to_numpy(), "text": texts, "predicted": pred})
        if "label" in frame:
            gold = frame["label"].to_numpy(dtype=float)
            table["gold"] = gold
            table["loss"] = (pred - gold) ** 2
            table["correct"] = np.abs(pred - gold) < 0.5
            table["confidence"] = 1 - np.minimum(np.abs(pred - gold), 1)
        return table

    def score(self, pred: pd.DataFrame, labels: Any) -> dict[str, Any]:
        return {"n": len(pred), **_scores(pred["predicted"].to_numpy(), pred["gold"].to_numpy()),
                "loss": float(pred["loss"].mean())}

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"text": pred["text"].to_numpy(), "label": pred["gold"].to_numpy()},
                            index=pred["row"].to_numpy())

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        return frame


def _scores(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    var = float(((g - g.mean()) ** 2).sum())
    return {"mae": float(np.abs(p - g).mean()), "r2": 1 - float(((p - g) ** 2).sum()) / var if var else 0.0}


@pytest.fixture
def toy_task():
    from workbench.tasks import TASKS, register_task, unregister_task

    task = register_task(TextRegression())
    assert TASKS["toy-text-regression"] is task
    yield task
    unregister_task(task.name)


def _cfg(model: Path, data: Path, out: Path, task: str = "toy-text-regression", **training: Any) -> RunConfig:
    t = {"num_train_epochs": 3, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 2,
         "save_total_limit": 1, "metric_for_best_model": "r2", "load_best_model_at_end": True, "bf16": False,
         **training}
    return RunConfig.from_dict({"task": task, "output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "peft": {"freeze_embeddings": False}})


def test_a_task_registered_from_a_test_module_runs_end_to_end(toy_task, tiny_bert, tmp_path):
    from workbench import analysis
    from workbench.evaluate import evaluate_run
    from workbench.predict import Predictor
    from workbench.rundir import new_run_dir
    from workbench.training import run_training, training_arguments

    data = tmp_path / "s.csv"
    make_sentiment_frame(160).to_csv(data, index=False)
    cfg = _cfg(tiny_bert, data, tmp_path / "runs")
    run = new_run_dir(cfg)
    assert training_arguments(cfg, run, True, False).greater_is_better is True  # r2: higher is better
    run_training(cfg, run, progress=False)

    assert run.status()["state"] == "completed"
    ev = run.evaluation()
    assert set(ev) == {"before", "after"} and {"mae", "r2", "n"} <= set(ev["after"])
    evals = run.metrics().query("kind == 'eval'")
    assert "eval_r2" in evals and evals["eval_r2"].notna().all()  # the task's metrics reached the trainer
    meta = json.loads((run.model_dir / "workbench_model.json").read_text())
    assert meta["task"] == "toy-text-regression"

    pred = run.predictions("after")
    assert {"row", "text", "gold", "predicted", "loss", "correct"} <= set(pred.columns)
    assert pred["predicted"].dtype.kind == "f"  # the toy's own table, not a classifier's labels
    again = evaluate_run(run)  # reloads through the task's auto_model and predict
    assert again["metrics"]["mae"] == pytest.approx(ev["after"]["mae"], abs=1e-5)

    out = Predictor.from_run(run).predict(["a truly superb film", "a dull plot"])
    assert list(out["text"]) == ["a truly superb film", "a dull plot"] and out["predicted"].dtype.kind == "f"

    assert len(analysis.confident_mistakes(pred)) == int((~pred["correct"]).sum())
    assert not analysis.worst_slices(pred, min_size=1).empty

    s = run.summary()
    assert s["headline"] == "mae" and s["mae"] == ev["after"]["mae"] and s["mae_before"] == ev["before"]["mae"]


def test_config_names_only_registered_tasks_and_their_metrics(toy_task):
    with pytest.raises(ConfigError, match="not a registered task; use one of text-classification, "):
        RunConfig.from_dict({"task": "no-such-task"}).check()
    RunConfig.from_dict({"task": "toy-text-regression", "training": {"metric_for_best_model": "mae"}}).check()
    RunConfig.from_dict({"task": "toy-text-regression"}).check()  # empty: the task's headline metric
    with pytest.raises(ConfigError, match="'accuracy' is not a metric of toy-text-regression; use one of mae, r2"):
        RunConfig.from_dict({"task": "toy-text-regression", "training": {"metric_for_best_model": "accuracy"}}).check()
    from workbench.config import field_help
    assert "toy-text-regression" in field_help()["task"]


def test_registering_an_incomplete_task_says_what_is_missing():
    from workbench.tasks import register_task

    class Half:
        name, headline, directions = "half", "x", {"x": True}

    with pytest.raises(TypeError, match="lacks .*'collator'.*'encode'"):
        register_task(Half())


def test_greater_is_better_comes_from_the_task(toy_task, tiny_bert, tmp_path):
    from workbench.rundir import RunDir
    from workbench.training import training_arguments

    run = RunDir(tmp_path / "r")
    for task, metric, want in (("toy-text-regression", "mae", False), ("toy-text-regression", "r2", True),
                               ("toy-text-regression", "eval_loss", False), ("text-classification", "accuracy", True),
                               ("text-classification", "f1_macro", True), ("text-classification", "loss", False)):
        cfg = _cfg(tiny_bert, tmp_path / "x.csv", tmp_path, task=task, metric_for_best_model=metric)
        assert training_arguments(cfg, run, True, False).greater_is_better is want, (task, metric)


def test_collator_keeps_the_fields_the_task_names(tiny_bert):
    from transformers import AutoTokenizer

    from workbench.tasks.classification import PaddingCollator

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    feats = [{"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1], "labels": 1, "weight": 0.5, "length": 3},
             {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": 0, "weight": 2.0, "length": 2}]
    batch = PaddingCollator(tok, keep=("input_ids", "attention_mask", "labels", "weight"))(feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weight"}  # `length` dropped, `weight` kept
    assert batch["input_ids"].shape == (2, 3) and batch["weight"].tolist() == [0.5, 2.0]


def _classifier_folder(tiny_bert: Path, folder: Path, labels: int) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=labels)
    torch.nn.init.normal_(m.classifier.weight, std=1.0)
    m.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


def test_head_is_swapped_only_when_the_label_count_differs(tiny_bert, tmp_path):
    from workbench.config import ModelConfig
    from workbench.models import load_classifier

    folder = _classifier_folder(tiny_bert, tmp_path / "three", 3)
    saved = load_classifier(ModelConfig(str(folder)), ["a", "b", "c"]).classifier.weight
    from safetensors.torch import load_file
    on_disk = load_file(str(folder / "model.safetensors"))["classifier.weight"]
    torch.testing.assert_close(saved, on_disk)  # same label count: the trained head is kept
    two = load_classifier(ModelConfig(str(folder)), ["a", "b"])
    assert two.classifier.weight.shape == (2, on_disk.shape[1])  # other label count: a fresh head

    conf = json.loads((folder / "config.json").read_text())
    conf["max_position_embeddings"] = 64  # weights hold 128 positions
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ModelError, match=r"position_embeddings\.weight: \(128, 32\) in the checkpoint, \(64, 32\)"):
        load_classifier(ModelConfig(str(folder)), ["a", "b", "c"])


@pytest.mark.parametrize("tied", [True, False])
def test_freezing_input_embeddings_never_freezes_a_tied_output_layer(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.estimate import count_parameters
    from workbench.models import freeze_input_embeddings

    conf = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    model = LlamaForCausalLM(conf)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is tied
    frozen = freeze_input_embeddings(model)
    assert model.lm_head.weight.requires_grad  # the output layer always trains
    assert frozen == (0 if tied else 64 * 32)
    assert model.get_input_embeddings().weight.requires_grad is tied

    class Causal:  # what a causal-LM task would declare
        auto_model, freeze_embeddings_ok = "AutoModelForCausalLM", True

    from workbench.config import PeftConfig
    total, trainable = count_parameters(conf, 2, PeftConfig(freeze_embeddings=True), Causal())
    assert total - trainable == frozen  # the estimate agrees with what training freezes


def test_train_page_offers_registered_tasks_and_the_data_they_need(toy_task, tiny_bert):
    import sys

    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="train_task")
    assert box.options[0] == "text-classification" and "toy-text-regression" in box.options  # + built-in tasks
    assert any("text: the text to classify" in c.value for c in at.caption)  # the roles of the chosen task
    box.set_value("toy-text-regression")
    at.run()
    assert not at.exception and any("A number per text." in c.value for c in at.caption)
