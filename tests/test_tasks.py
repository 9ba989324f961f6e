"""Traps fixed with the task seam: collator fields, head swap, tied embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.errors import ModelError


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
