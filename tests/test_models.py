"""Model loading: local folders, built-in names, safetensors-only, remote code refused, clear errors."""

import json
import shutil

import pytest
import torch

from workbench.config import LoraSettings, ModelConfig, PeftConfig
from workbench.errors import ModelError
from workbench.models import apply_lora, check_model_dir, load_classifier, load_tokenizer, lora_targets


def test_local_folder_round_trip_gives_a_classifier(tiny_bert, tiny_llama):
    for folder, head in ((tiny_bert, "classifier"), (tiny_llama, "score")):
        tok = load_tokenizer(str(folder), ModelConfig(str(folder)))
        m = load_classifier(ModelConfig(str(folder)), ["x", "y", "z"], tokenizer=tok)
        assert m.config.num_labels == 3 and m.config.id2label == {0: "x", 1: "y", 2: "z"}
        assert hasattr(m, head)
        assert m.config.pad_token_id == tok.pad_token_id


def test_llama_without_pad_token_gets_one(tiny_llama, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_llama, folder)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = load_tokenizer(str(folder), ModelConfig(str(folder)))
    assert tok.pad_token is not None


def test_dropout_override(tiny_bert):
    m = load_classifier(ModelConfig(str(tiny_bert), dropout=0.3), ["a", "b"])
    assert m.config.hidden_dropout_prob == 0.3 and m.config.attention_probs_dropout_prob == 0.3


def test_pickle_only_folder_is_refused_naming_the_fix(tiny_bert, tmp_path):
    folder = tmp_path / "binonly"
    folder.mkdir()
    shutil.copy(tiny_bert / "config.json", folder)
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError) as e:
        check_model_dir(folder)
    assert "pytorch_model.bin" in str(e.value) and "allow_pickle" in str(e.value) and "safetensors" in str(e.value)
    check_model_dir(folder, allow_pickle=True)  # the explicit opt-in passes the check


def test_not_a_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="no config.json"):
        check_model_dir(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier(ModelConfig(str(tmp_path / "missing")), ["a", "b"])


def test_remote_code_model_is_refused_unless_trusted(tiny_bert, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    cfg["model_type"] = "evil-bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_classifier(ModelConfig(str(folder)), ["a", "b"])


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_classifier(ModelConfig("someone/not-a-cached-model"), ["a", "b"])
    assert "hub could not be reached" in str(e.value) and "built-in" in str(e.value)


def test_unknown_builtin_and_lora_targets(tiny_bert, tiny_llama):
    bert = load_classifier(ModelConfig(str(tiny_bert)), ["a", "b"])
    llama = load_classifier(ModelConfig(str(tiny_llama)), ["a", "b"])
    assert lora_targets(bert, PeftConfig(method="lora")) == ["query", "key", "value"]
    assert lora_targets(llama, PeftConfig(method="lora")) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_targets(llama, PeftConfig(method="lora", lora=LoraSettings(target_modules=["q_proj"]))) == ["q_proj"]
    with pytest.raises(ModelError, match="not modules"):
        apply_lora(llama, PeftConfig(method="lora", lora=LoraSettings(target_modules=["query"])))
    wrapped = apply_lora(llama, PeftConfig(method="lora"))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)


def test_pickled_adapter_is_refused(tmp_path):
    from workbench.models import load_trained
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "workbench_model.json").write_text(json.dumps({"labels": ["a", "b"], "model": {"name_or_path": "x"}}))
    torch.save({"w": torch.zeros(1)}, folder / "adapter_model.bin")
    with pytest.raises(ModelError, match="pickle-based"):
        load_trained(folder)
