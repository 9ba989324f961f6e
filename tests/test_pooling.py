"""Issue 13, item 3: what makes SmolLM2 learn Chinese review sentiment. `model.pooling: mean` (the head reads the
mean of a decoder's final hidden states, not the last token's) and `training.head_learning_rate` (the fresh
head's own peak rate), on tiny models."""

from __future__ import annotations

import pytest
import torch

from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.errors import ModelError
from workbench.rundir import new_run_dir


def _mean_logits(model, enc) -> torch.Tensor:
    """The mean-pooled head by hand: the backbone's last hidden states averaged over the real tokens."""
    h = model.model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return model.score((h * m).sum(1) / m.sum(1))


def test_mean_pooling_reads_the_mean_of_the_real_tokens_whatever_the_padding(tiny_llama):
    from workbench.models import load_classifier, load_tokenizer

    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_llama), "pooling": "mean"}}).model
    tok = load_tokenizer(str(tiny_llama), cfg)
    model = load_classifier(cfg, ["neg", "pos"], tokenizer=tok).eval()
    texts = ["the movie was good", "bad"]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        out = model(**enc, labels=torch.tensor([1, 0]))
        assert torch.allclose(out.logits, _mean_logits(model, enc), atol=1e-5)
        alone = model(**tok(["bad"], return_tensors="pt")).logits  # no padding at all
        assert torch.allclose(out.logits[1], alone[0], atol=1e-5)
        want = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0]))
        assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
        # and it is not what the stock head reads (the last token)
        stock = load_classifier(RunConfig.from_dict({"model": {"name_or_path": str(tiny_llama)}}).model,
                                ["neg", "pos"], tokenizer=tok)
        stock.score.load_state_dict(model.score.state_dict())
        assert not torch.allclose(stock.eval()(**enc).logits, out.logits, atol=1e-3)
        # a copy (nn.DataParallel's replicas, deepcopy) reads its own weights, not the original's
        import copy

        twin = copy.deepcopy(model)
        twin.score.weight.mul_(2)
        assert torch.allclose(twin(**enc).logits, _mean_logits(twin, enc), atol=1e-5)
        assert torch.allclose(twin(**enc).logits, 2 * out.logits, atol=1e-5)


def test_mean_pooling_is_refused_for_an_encoder_and_for_other_tasks(tiny_bert):
    from workbench.models import load_classifier

    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert), "pooling": "mean"}}).model
    with pytest.raises(ModelError, match="decoder classifiers.*Fix: set model.pooling to auto"):
        load_classifier(cfg, ["neg", "pos"])
    bad = RunConfig.from_dict({"task": "token-classification", "model": {"pooling": "mean"}}).validate()
    assert any("model.pooling='mean'" in p and "set it to auto" in p for p in bad)
    assert any("head_learning_rate is for a task with a new head" in p for p in RunConfig.from_dict(
        {"task": "causal-lm-sft", "training": {"head_learning_rate": 1e-2}}).validate())
    assert RunConfig.from_dict({"training": {"head_learning_rate": 1e-2}, "model": {"pooling": "mean"}}).validate() \
        == []


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_mean_pooled_run_is_read_back_mean_pooled(tiny_llama, tmp_path, method):
    """The run records the pooling; its saved model (LoRA adapter or full weights) is loaded the same way, so
    `predict`, `eval` and the dashboard score what was trained."""
    from workbench.models import load_trained
    from workbench.training import run_training

    data = tmp_path / "d.csv"
    make_sentiment_frame(120, seed=1).to_csv(data, index=False)
    cfg = RunConfig.from_dict({
        "output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(tiny_llama), "pooling": "mean"},
        "data": {"source": str(data), "max_length": 32},
        "training": {"max_steps": 3, "learning_rate": 1e-3, "head_learning_rate": 1e-2, "eval_strategy": "no",
                     "save_strategy": "no", "logging_steps": 1},
        "peft": {"method": method, "merge_adapter": method == "lora"}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    if method == "lora":  # the merged export is read back mean-pooled too, giving the adapter's logits
        merged, mtok = load_trained(run.model_dir / "merged")
        adapter, _ = load_trained(run.model_dir)
        enc = mtok(["the movie was good", "awful"], padding=True, return_tensors="pt")
        with torch.no_grad():
            assert merged.workbench_pooling == "mean"
            assert torch.allclose(merged(**enc).logits, adapter(**enc).logits, atol=1e-4)
    model, tok = load_trained(run.model_dir)
    inner = model.get_base_model() if method == "lora" else model
    assert inner.workbench_pooling == "mean" and type(inner).__name__ == "LlamaForSequenceClassification"
    enc = tok(["the movie was good", "awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = model(**enc).logits
        h = inner.model(**enc).last_hidden_state  # LoRA's adapters act inside the backbone
        m = enc["attention_mask"].unsqueeze(-1).float()
        # the trained head: PEFT's copy of `score` for a LoRA run (the original stays as initialised)
        head = inner.score.modules_to_save["default"] if method == "lora" else inner.score
        assert torch.allclose(got, head((h * m).sum(1) / m.sum(1)), atol=1e-5)
        if method == "lora":
            assert not torch.equal(inner.score.original_module.weight, head.weight)


def test_the_head_gets_its_own_learning_rate(tiny_llama, tmp_path):
    from transformers import TrainingArguments

    from workbench.models import apply_lora, load_classifier
    from workbench.trainer import WorkbenchTrainer, is_head_parameter

    cfg = RunConfig.from_dict({"model": {"name_or_path": str(tiny_llama)}, "peft": {"method": "lora"}})
    model = apply_lora(load_classifier(cfg.model, ["neg", "pos"]), cfg.peft)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3,
                             weight_decay=0.01)
    trainer = WorkbenchTrainer(model=model, args=args, head_learning_rate=2e-2)
    opt = trainer.create_optimizer()
    by_id = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for g in opt.param_groups:
        for p in g["params"]:
            assert g["lr"] == (2e-2 if is_head_parameter(by_id[id(p)]) else 1e-3), by_id[id(p)]
            seen += 1
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert seen == len(trainable) and any(is_head_parameter(n) for n in trainable)
    decay = set(trainer.get_decay_parameter_names(model))  # biases and norms get no decay, as stock
    assert all(g["weight_decay"] == (0.01 if by_id[id(p)] in decay else 0.0) for g in opt.param_groups
               for p in g["params"])
    # without it, the stock optimizer: one rate for all
    plain = WorkbenchTrainer(model=model, args=args).create_optimizer()
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


def test_train_page_offers_pooling_for_a_decoder_and_mean_for_chinese_builtins(tiny_llama, tiny_bert, tmp_path,
                                                                               monkeypatch):
    from streamlit.testing.v1 import AppTest

    import dashboard.train

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    csv = tmp_path / "s.csv"
    make_sentiment_frame(60).to_csv(csv, index=False)
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=120)
    at.session_state["data_choice"] = {"source": str(csv), "task": "text-classification", "text_column": "text",
                                       "label_column": "label", "text_pair_column": None}
    at.run()
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    at.run()
    assert not at.exception and "t.model.pooling" not in [r.key for r in at.radio]  # an encoder reads [CLS]
    at.text_input(key="train_folder").input(str(tiny_llama))
    at.run()
    pooling = at.radio(key="t.model.pooling")
    assert pooling.value == "auto" and pooling.help.startswith("How a decoder classifier")  # an English file
    pooling.set_value("mean")
    at.text_input(key="train_name").input("pooled")
    at.run()
    [b for b in at.button if b.label == "Launch"][0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert launched[0].model.pooling == "mean" and launched[0].validate() == []
    at.text_input(key="train_folder").input(str(tiny_bert))  # the radio is not drawn for one rerun...
    at.run()
    at.text_input(key="train_folder").input(str(tiny_llama))
    at.run()
    assert at.radio(key="t.model.pooling").value == "mean"  # ...and the choice is still there
    at.selectbox(key="train_source").set_value("chinese_reviews")  # a Chinese built-in: mean is preselected
    at.run()
    assert at.radio(key="t.model.pooling").value == "mean"
