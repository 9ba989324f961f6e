"""The CPU training speed-ups (workbench/speed.py) keep the maths, and full fine-tuning keeps the input
embeddings fixed by default (peft.freeze_embeddings)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from workbench.config import RunConfig
from workbench.models import load_classifier, load_tokenizer
from workbench.rundir import new_run_dir
from workbench.speed import (ATTENTION, FastDropout, dropout_mask, restore_attention, speed_up_dropout,
                             use_cpu_training_attention)
from workbench.training import run_training

from conftest import make_sentiment_frame


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_keeps_the_right_share(p):
    torch.manual_seed(0)
    keep = dropout_mask(torch.Size([1000, 1000]), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.002
    # no structure: the four 16-bit pieces of each 64-bit draw are independent
    pieces = keep.flatten()[:999_996].view(-1, 4).float()
    assert (pieces.mean(0) - (1 - p)).abs().max() < 0.005


def test_fast_dropout_matches_dropout_semantics():
    x = torch.randn(64, 300, requires_grad=True)
    d = FastDropout(0.25)
    torch.manual_seed(1)
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)  # the backward pass uses the same mask
    torch.manual_seed(1)
    assert torch.equal(d(x.detach()), y.detach())  # seeded: the same mask again
    d.eval()
    assert d(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_speed_up_dropout_swaps_every_dropout(tiny_bert):
    model = load_classifier(RunConfig.from_dict({"model": {"name_or_path": str(tiny_bert)}}).model, ["a", "b"])
    before = [m.p for m in model.modules() if type(m) is nn.Dropout]
    assert speed_up_dropout(model) == len(before) > 0
    assert [m.p for m in model.modules() if isinstance(m, FastDropout)] == before
    assert not [m for m in model.modules() if type(m) is nn.Dropout]


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_cpu_training_attention_equals_sdpa(kind, tiny_bert, tiny_llama):
    """Outputs and gradients match SDPA in training mode (dropout off), with padding in the batch."""
    folder = tiny_bert if kind == "bert" else tiny_llama
    cfg = RunConfig.from_dict({"model": {"name_or_path": str(folder)}}).model
    tok = load_tokenizer(folder, cfg)
    batch = tok(["the film was good", "a really dull and boring story with weak acting"], padding=True,
                return_tensors="pt")
    results = []
    for swap in (False, True):
        torch.manual_seed(0)
        model = load_classifier(cfg, ["a", "b"], tokenizer=tok)
        for m in model.modules():  # no dropout, so both paths compute the same function
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        for name in ("attention_probs_dropout_prob", "attention_dropout"):
            if hasattr(model.config, name):
                setattr(model.config, name, 0.0)
        for m in model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = 0.0
        if swap:
            assert use_cpu_training_attention(model) and model.config._attn_implementation == ATTENTION
        model.train()
        out = model(**batch, labels=torch.tensor([1, 0]))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logits.detach(), grads))
        if swap:
            restore_attention(model)
            assert model.config._attn_implementation == "sdpa"
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-5)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5, rtol=1e-4), n


def test_full_fine_tuning_keeps_input_embeddings_fixed_by_default(tiny_bert, tmp_path):
    data = tmp_path / "d.csv"
    make_sentiment_frame(80).to_csv(data, index=False)
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(tiny_bert)},
                               "data": {"source": str(data)},
                               "training": {"max_steps": 6, "learning_rate": 3e-3, "save_strategy": "no",
                                            "eval_strategy": "no", "per_device_train_batch_size": 8}})
    assert cfg.peft.method == "full" and cfg.peft.freeze_embeddings is True
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    before, after = load_file(tiny_bert / "model.safetensors"), load_file(run.model_dir / "model.safetensors")
    emb = next(k for k in after if k.endswith("word_embeddings.weight"))
    other = next(k for k in after if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(before[next(k for k in before if k.endswith("word_embeddings.weight"))], after[emb])
    assert not torch.equal(before[next(k for k in before if k.endswith("layer.0.attention.self.query.weight"))],
                           after[other])
    params = run.status()["parameters"]
    assert params["total"] - params["trainable"] == after[emb].numel()
    # the saved config names a standard attention implementation (or none), never the training-only one
    assert ATTENTION not in (run.model_dir / "config.json").read_text()
    assert json.loads((run.model_dir / "config.json").read_text()).get("attn_implementation") in (None, "sdpa")



class _Seen(Exception):
    """Stops a run at its first `train()` call, once the model it would train has been looked at."""


@pytest.mark.parametrize("switch, fast_dropout, attention", [
    (True, True, ATTENTION), (False, False, "sdpa"), (["dropout"], True, "sdpa"), ("attention", False, ATTENTION)])
def test_i12_13_cpu_speedups_switch(switch, fast_dropout, attention, tiny_bert, tmp_path, monkeypatch):
    """`training.cpu_speedups` decides which modules CPU training runs: off gives the stock ones."""
    from workbench.trainer import WorkbenchTrainer

    data = tmp_path / "d.csv"
    make_sentiment_frame(40).to_csv(data, index=False)
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path / "runs"), "evaluate_before": False,
                               "model": {"name_or_path": str(tiny_bert)}, "data": {"source": str(data)},
                               "training": {"use_cpu": True, "cpu_speedups": switch}})
    seen = {}

    def train(self, *a, **k):
        seen["dropout"] = {type(m) for m in self.model.modules() if isinstance(m, nn.Dropout)}
        seen["attention"] = self.model.config._attn_implementation
        raise _Seen

    monkeypatch.setattr(WorkbenchTrainer, "train", train)
    with pytest.raises(_Seen):
        run_training(cfg, new_run_dir(cfg), progress=False)
    assert seen["dropout"] == ({FastDropout} if fast_dropout else {nn.Dropout})
    assert seen["attention"] == attention


def test_i12_13_cpu_speedups_names_are_checked():
    assert RunConfig.from_dict({"training": {"cpu_speedups": False}}).training.cpu_speedups is False
    assert RunConfig.from_dict({}).training.cpu_speedups is True
    problems = RunConfig.from_dict({"training": {"cpu_speedups": ["dropuot"]}}).validate()
    assert len(problems) == 1 and "training.cpu_speedups" in problems[0] and "'dropout'" in problems[0]
