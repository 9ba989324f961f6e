"""Token saliency on tiny in-memory models: IG completeness (BERT, Llama, LoRA), gradient x input, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.attention import load_for_attention
from workbench.errors import WorkbenchError
from workbench.saliency import integration_points, token_saliency

TEXT = "the movie was really good and the acting superb"


def _randomise(model, std: float, seed: int = 0):
    """Redraw every weight matrix with a larger spread, as in a trained model.

    Freshly initialised tiny models are nearly the identity (f(x) - f(baseline) ~ 1e-4) and have an
    all-zero pad embedding (padding_idx); with RMSNorm a zero input jumps to full scale as soon as the
    path leaves it, which no quadrature can integrate. Pretrained models have neither property.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std, generator=g)
    return model


@pytest.fixture(scope="module")
def bert(tiny_bert):
    from workbench.config import ModelConfig
    from workbench.models import load_classifier, load_tokenizer
    cfg = ModelConfig(name_or_path=str(tiny_bert))
    tok = load_tokenizer(str(tiny_bert), cfg)
    return _randomise(load_classifier(cfg, ["neg", "pos"], tokenizer=tok).eval(), 0.2), tok


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from workbench.config import ModelConfig
    from workbench.models import load_classifier, load_tokenizer
    cfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(str(tiny_llama), cfg)
    return _randomise(load_classifier(cfg, ["neg", "pos"], tokenizer=tok).eval(), 0.1), tok


@pytest.fixture(scope="module")
def lora_llama(llama):
    import copy

    from workbench.config import LoraSettings, PeftConfig
    from workbench.models import apply_lora
    model = apply_lora(copy.deepcopy(llama[0]), PeftConfig(lora=LoraSettings(r=4)))
    torch.manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # LoRA starts as the identity (B = 0); make the adapter actually change the model
            p.data.normal_(0, 0.05)
    return model.eval(), llama[1]


@pytest.mark.parametrize("which", ["bert", "llama", "lora_llama"])
def test_ig_completeness(which, request):
    model, tok = request.getfixturevalue(which)
    s = token_saliency(model, tok, TEXT, method="ig", n_steps=32, integration="gausslegendre")
    assert s.method == "ig" and s.scores.shape == (len(s.tokens),)
    assert abs(s.delta) > 0.05  # a meaningful amount to account for
    assert s.completeness_gap <= 1e-2 * abs(s.delta), (s.completeness_gap, s.delta)
    assert s.relative_gap is not None and s.relative_gap <= 1e-2
    if which == "lora_llama":  # the adapter really changes the model, and IG goes through the PEFT wrapper
        base = token_saliency(*request.getfixturevalue("llama"), TEXT, method="ig", n_steps=32)
        assert not np.allclose(base.scores, s.scores, atol=1e-3)
    special = np.array(s.special)
    assert special.any() and np.all(s.scores[special] == 0)  # kept in the baseline: nothing to attribute


def test_riemann_converges_and_zero_baseline(bert):
    s = token_saliency(*bert, TEXT, method="ig", n_steps=64, integration="riemann")
    assert s.completeness_gap <= 1e-2 * abs(s.delta)
    z = token_saliency(*bert, TEXT, method="ig", n_steps=32, baseline="zero")
    assert z.completeness_gap <= 1e-2 * abs(z.delta)
    assert not np.allclose(z.scores, s.scores)  # the baseline matters


def test_integration_points():
    for kind in ("gausslegendre", "riemann"):
        a, w = integration_points(10, kind)
        assert np.all((a > 0) & (a < 1)) and np.isclose(w.sum(), 1.0)
        assert np.isclose((w * a ** 2).sum(), 1 / 3, atol=1e-2)  # integral of a^2 over [0, 1]
    with pytest.raises(WorkbenchError):
        integration_points(8, "simpson")  # type: ignore[arg-type]


def test_grad_times_input_matches_finite_difference(llama):
    """sum(grad * x) is the derivative of f(t x) at t = 1 (x: every token's embedding)."""
    model, tok = llama
    s = token_saliency(model, tok, TEXT, method="grad")
    assert s.method == "grad" and s.completeness_gap is None
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        x = model.get_input_embeddings()(ids)
        f = [float(model(inputs_embeds=x * t).logits[0, s.target]) for t in (1 - 1e-2, 1 + 1e-2)]
    assert np.isclose(s.scores.sum(), (f[1] - f[0]) / 2e-2, rtol=2e-2, atol=1e-3)


def test_targets(bert):
    model, tok = bert
    s = token_saliency(model, tok, TEXT, method="grad")
    assert s.target == s.predicted and s.target_label == s.predicted_label
    other = 1 - s.predicted
    by_id = token_saliency(model, tok, TEXT, method="grad", target=other)
    by_name = token_saliency(model, tok, TEXT, method="grad", target=["neg", "pos"][other])
    assert by_id.target == by_name.target == other
    np.testing.assert_allclose(by_id.scores, by_name.scores)
    # Two classes: the other logit's attributions are not those of the predicted one.
    assert not np.allclose(by_id.scores, s.scores)
    with pytest.raises(WorkbenchError, match="not one of this model's labels"):
        token_saliency(model, tok, TEXT, target="maybe")
    with pytest.raises(WorkbenchError, match="does not exist"):
        token_saliency(model, tok, TEXT, target=5)
    with pytest.raises(WorkbenchError, match="method"):
        token_saliency(model, tok, TEXT, method="lime")  # type: ignore[arg-type]


def test_truncated_input_and_eager_model(tiny_bert):
    model, tok = load_for_attention(tiny_bert)  # eager attention has gradients too
    s = token_saliency(model, tok, " ".join(["good"] * 100), max_tokens=16, n_steps=8)
    assert s.truncated and len(s.tokens) == 16 and s.notice and np.isfinite(s.scores).all()
    assert all(p.grad is None for p in model.parameters())  # only the input gradient was computed
