"""A model the user brings as a GGUF file (issue 13 item 1): converted once and cached, or refused with a
message that says what is supported; `config --validate` checks the model path before any run exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.config import ModelConfig
from workbench.errors import ModelError
from workbench.models import load_classifier, load_tokenizer, model_source_problems, resolve_model_path


def write_tiny_gguf(path: Path, arch: str = "llama", hidden: int = 32, layers: int = 2) -> Path:
    """A tiny float32 GGUF file as llama.cpp writes one: Llama metadata, a byte-level BPE vocabulary, weights."""
    import gguf

    heads, kv, ff = 4, 2, 64
    rng = np.random.default_rng(0)
    tokens = ["<|endoftext|>", "<unk>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "Ġa", "th", "the"]
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test-model")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(["Ġ a", "t h", "th e"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ff)
    tensor("output_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8.gguf")


def _cli(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gguf_file_loads_as_a_classifier_and_is_converted_once(tiny_gguf):
    folder = Path(resolve_model_path(str(tiny_gguf)))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_path(str(tiny_gguf))) == folder  # cached: no second conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    cfg = ModelConfig(name_or_path=str(tiny_gguf))
    assert model_source_problems(cfg) == []
    tok = load_tokenizer(resolve_model_path(cfg.name_or_path), cfg)
    model = load_classifier(cfg, ["neg", "pos"], tokenizer=tok)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    # The converted weights are the file's weights (GGUF stores the embedding as written).
    import gguf
    emb = next(t for t in gguf.GGUFReader(tiny_gguf).tensors if t.name == "token_embd.weight")
    np.testing.assert_allclose(model.model.embed_tokens.weight.detach().numpy(),
                               np.asarray(emb.data).reshape(model.model.embed_tokens.weight.shape), rtol=1e-6)
    batch = tok(["the a", "th"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_a_folder_with_one_gguf_file_is_that_file(tiny_gguf, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / tiny_gguf.name).write_bytes(tiny_gguf.read_bytes())
    (folder / "README.md").write_text("downloaded from somewhere")
    out = Path(resolve_model_path(str(folder)))
    assert (out / "config.json").is_file() and out.parent.name == "gguf"
    (folder / "other.gguf").write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(ModelError, match="2 GGUF files.*other.gguf"):
        resolve_model_path(str(folder))


def test_bogus_gguf_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelError, match="not a GGUF file.*download it again"):
        resolve_model_path(str(bogus))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  name_or_path: {bogus}\n")
    code, out, err = _cli(capsys, "config", "--validate", cfg)
    assert code == 2 and "not a GGUF file" in err and str(bogus) in err and "Traceback" not in err


def test_unsupported_gguf_architecture_says_what_is_supported(tmp_path):
    f = write_tiny_gguf(tmp_path / "enc.gguf", arch="bert")
    problems = model_source_problems(ModelConfig(name_or_path=str(f)))
    assert len(problems) == 1 and "'bert'" in problems[0] and "llama" in problems[0] and "qwen2" in problems[0]
    with pytest.raises(ModelError, match="cannot load"):
        resolve_model_path(str(f))


def test_validate_and_train_refuse_a_missing_model_path(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "models" / "my-model.gguf"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  name_or_path: {missing}\noutput_dir: {tmp_path / 'runs'}\n")
    code, out, err = _cli(capsys, "config", "--validate", cfg)
    assert code == 2 and str(missing) in err and "does not exist" in err
    code, out, err = _cli(capsys, "train", cfg)
    assert code == 2 and str(missing) in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no failed run left behind


@pytest.mark.parametrize("name, ok", [("minilm", True), ("bert-base-uncased", True), ("org/model-1.5B", True),
                                      ("./no/such/folder", False), ("no such model!", False), ("x.gguf", False)])
def test_model_source_shapes(name, ok):
    assert (model_source_problems(ModelConfig(name_or_path=name)) == []) is ok


def test_a_non_model_file_is_refused(tmp_path):
    f = tmp_path / "weights.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ModelError, match="is a file, not a model"):
        resolve_model_path(str(f))


def test_estimates_and_the_data_page_find_the_cached_conversion(tiny_gguf):
    from workbench.estimate import local_model_dir
    folder = Path(resolve_model_path(str(tiny_gguf)))
    assert local_model_dir(str(tiny_gguf)) == folder
