"""Adversarial training (`training.adversarial`: FGM, PGD) on tiny models: the embeddings come out of a step
exactly as they went in, the push has the size asked for, the gradient is the clean one plus the adversarial
one (checked by hand), frozen embeddings and LoRA work, and whole runs complete."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_sentiment_frame
from workbench.adversarial import EmbeddingAdversary, per_example_unit, project


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval()  # no dropout: passes repeat exactly


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # one padded example
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def passes(model, inputs):
    def train_pass():
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach()

    return train_pass, lambda: model(**inputs).loss


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_the_embeddings_are_bit_for_bit_the_same_after_a_step_and_the_hook_is_gone(method):
    model, inputs = tiny_classifier(), batch()
    weight = model.get_input_embeddings().weight
    before = weight.detach().clone()
    with torch.no_grad():
        logits_before = model(**inputs).logits
    adv = EmbeddingAdversary(model.get_input_embeddings(), method, epsilon=0.5, steps=3, alpha=0.2)
    adv.step(*passes(model, inputs))
    assert adv.last_push and adv.last_loss is not None  # an adversarial pass really ran
    assert torch.equal(weight.detach(), before)
    assert not model.get_input_embeddings()._forward_hooks  # evaluation after the step sees no push
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits_before)


def test_fgm_push_has_norm_epsilon_per_example_and_points_along_the_gradient():
    model, inputs = tiny_classifier(), batch()
    adv = EmbeddingAdversary(model.get_input_embeddings(), "fgm", epsilon=0.7)
    adv.step(*passes(model, inputs))
    (push,) = adv.last_push
    assert push.shape == (4, 9, 32)
    norms = push.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((4,), 0.7), atol=1e-5)
    # padded positions of example 2 have no gradient, hence no push
    assert push[2, 6:].abs().max() == 0


def test_pgd_pushes_stay_within_epsilon_and_reach_it_when_the_steps_add_up_to_more():
    model, inputs = tiny_classifier(), batch()
    adv = EmbeddingAdversary(model.get_input_embeddings(), "pgd", epsilon=0.5, steps=4, alpha=0.3)
    adv.step(*passes(model, inputs))
    norms = adv.last_push[0].flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all()
    assert torch.allclose(norms, torch.full((4,), 0.5), atol=1e-4)  # 4 x 0.3 > 0.5: projected onto the sphere
    small = EmbeddingAdversary(model.get_input_embeddings(), "pgd", epsilon=5.0, steps=2, alpha=0.3)
    model.zero_grad()
    small.step(*passes(model, inputs))
    inside = small.last_push[0].flatten(1).norm(dim=1)
    assert (inside <= 0.6 + 1e-5).all() and (inside > 0.3).all()  # two pushes of 0.3, not projected


def test_project_and_unit_by_hand():
    r = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert torch.allclose(project(r, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    assert torch.allclose(per_example_unit(r), torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]]))


def test_fgm_gradient_is_the_clean_plus_the_adversarial_gradient_computed_by_hand():
    eps = 0.8
    model, inputs = tiny_classifier(), batch()
    emb = model.get_input_embeddings()
    # by hand: the clean loss through inputs_embeds, its gradient there, the push, the loss at the pushed input
    x = emb(inputs["input_ids"]).detach().requires_grad_()
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    clean = model(inputs_embeds=x, **rest).loss
    g = torch.autograd.grad(clean, x)[0]
    r = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    model.zero_grad()
    clean_only = model(**inputs).loss
    clean_only.backward()
    plain = grads(model)
    adv_loss = model(inputs_embeds=emb(inputs["input_ids"]) + r, **rest).loss
    adv_loss.backward()
    expected = grads(model)
    model.zero_grad()
    adv = EmbeddingAdversary(emb, "fgm", epsilon=eps)
    loss = adv.step(*passes(model, inputs))
    got = grads(model)
    assert torch.allclose(loss, clean_only.detach())
    assert adv.last_loss == pytest.approx(adv_loss.item(), rel=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-4), name
    differs = [n for n in plain if not torch.allclose(got[n], plain[n], atol=1e-6, rtol=1e-4)]
    assert "classifier.weight" in differs and "bert.embeddings.word_embeddings.weight" in differs


def test_frozen_embeddings_still_get_pushed_and_change_the_other_gradients():
    model, inputs = tiny_classifier(), batch()
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)  # peft.freeze_embeddings
    train_pass, _ = passes(model, inputs)
    train_pass()
    plain = grads(model)
    model.zero_grad()
    adv = EmbeddingAdversary(model.get_input_embeddings(), "fgm", epsilon=1.0)
    adv.step(*passes(model, inputs))
    assert weight.grad is None
    assert torch.allclose(adv.last_push[0].flatten(1).norm(dim=1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(grads(model)["classifier.weight"], plain["classifier.weight"])


def test_through_a_lora_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_classifier(), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    inputs = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adv = EmbeddingAdversary(model.get_input_embeddings(), "pgd", epsilon=0.5, steps=2, alpha=0.3)
    adv.step(*passes(model, inputs))
    assert adv.last_loss is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_a_model_without_input_embeddings_is_refused_with_a_message():
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="training.adversarial to none"):
        EmbeddingAdversary(None, "fgm")  # type: ignore[arg-type]


# --- whole runs --------------------------------------------------------------------------------------------
def _run(cfg):
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    return run_training(cfg, new_run_dir(cfg), progress=False)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    p = tmp_path_factory.mktemp("adv-data") / "sentiment.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


def _cfg(model, data, out, **training):
    from workbench.config import RunConfig

    t = {"num_train_epochs": 2, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 2,
         "bf16": False, "save_strategy": "no", "eval_strategy": "no", "report_to": [], **training}
    return RunConfig.from_dict({"output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "peft": {"freeze_embeddings": False},
                                "evaluate_before": False})


def test_a_classification_run_with_fgm_and_gradient_accumulation_completes(tiny_bert, sentiment, tmp_path, capsys):
    run = _run(_cfg(tiny_bert, sentiment, tmp_path, adversarial="fgm", adversarial_epsilon=0.5,
                    gradient_accumulation_steps=2, per_device_train_batch_size=8))
    st = run.status()
    assert st["state"] == "completed"
    assert st["adversarial"]["method"] == "fgm" and st["adversarial"]["epsilon"] == 0.5
    assert st["adversarial"]["seconds"] > 0
    train = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    train = [r for r in train if r.get("kind") == "train"]
    assert train and all(r["adversarial_loss"] > 0 and r["adversarial_seconds"] >= 0 for r in train)
    assert "accuracy" in run.evaluation()["after"]
    from workbench.cli import main
    assert main(["status", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "adversarial training: fgm, epsilon 0.5; its extra passes took" in out


def test_a_decoder_run_with_pgd_and_frozen_embeddings_completes(tiny_llama, tmp_path):
    from test_pretraining import cfg_for, write_corpus

    corpus = write_corpus(tmp_path / "corpus.txt", n=40)
    cfg = cfg_for("causal-lm", tiny_llama, corpus, **{
        "output_dir": str(tmp_path / "runs"), "training.adversarial": "pgd", "training.adversarial_steps": 2,
        "training.adversarial_alpha": 0.2, "training.adversarial_epsilon": 0.3, "training.report_to": [],
        "training.logging_steps": 1, "peft.method": "lora"})
    run = _run(cfg)
    st = run.status()
    assert st["state"] == "completed", st.get("error")
    assert st["adversarial"] == {**st["adversarial"], "method": "pgd", "steps": 2, "alpha": 0.2, "epsilon": 0.3}
    train = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert any(r.get("adversarial_loss") for r in train if r.get("kind") == "train")


def test_train_page_has_the_adversarial_and_tracking_knobs(tiny_bert, sentiment, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from test_app import no_crash, page, texts

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = page("train")
    at.session_state["data_choice"] = {"source": str(sentiment), "text_column": "text", "label_column": "label",
                                       "text_pair_column": None}
    at.run()
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    no_crash(at.run())
    keys = {w.key for w in at.number_input}
    assert "t.training.adversarial_epsilon" not in keys  # off by default: no size to set
    assert at.multiselect(key="t.training.report_to").value == ["tensorboard"]
    at.selectbox(key="t.training.adversarial").set_value("pgd")
    no_crash(at.run())
    assert {"t.training.adversarial_epsilon", "t.training.adversarial_steps", "t.training.adversarial_alpha"} <= \
        {w.key for w in at.number_input}
    at.number_input(key="t.training.adversarial_alpha").set_value(2.0)  # above epsilon 1.0: refused, with the fix
    no_crash(at.run())
    assert any("adversarial_alpha=2 is above adversarial_epsilon=1" in e for e in texts(at.error)), texts(at.error)
