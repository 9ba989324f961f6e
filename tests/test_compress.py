"""Quantisation and pruning as run-to-run operations: int8 saved and loaded without pickle, bf16, ONNX int8,
exact magnitude sparsity, whole attention heads zeroed, the refusals, and the measurement written beside them.
(No timing assertions: sizes and latencies of tiny models mean nothing.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.deploy import load_compressed, measure, prune, quantize
from workbench.deploy.compress import attention_heads, prunable_linears
from workbench.errors import WorkbenchError

PICKLE = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _probs(model, tok, texts):
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        return torch.softmax(model(**enc).logits.float(), -1).numpy()


@pytest.fixture(scope="module")
def int8(deploy_bert_run, tmp_path_factory):
    return quantize(deploy_bert_run, tmp_path_factory.mktemp("q") / "int8", "int8-dynamic")


def test_int8_reloads_without_pickle_and_predicts_close_to_fp32(deploy_bert_run, int8, monkeypatch):
    from workbench.deploy.export import load_run_model

    folder = Path(int8.folder)
    files = [p.name for p in folder.rglob("*")]
    assert "model.int8.safetensors" in files and "quantization.json" in files
    assert not [f for f in files if f.endswith(PICKLE)] and "model.safetensors" not in files

    def no_pickle(*a, **kw):
        raise AssertionError("torch.load called")
    monkeypatch.setattr(torch, "load", no_pickle)
    model, tok, meta = load_compressed(folder)
    assert meta["kind"] == "int8-dynamic"
    qlinear = [m for m in model.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    assert len(qlinear) == json.loads((folder / "quantization.json").read_text())["modules"].__len__() > 0
    monkeypatch.undo()
    fp32, _ = load_run_model(deploy_bert_run)
    texts = deploy_bert_run.predictions()["text"].tolist()
    p8, p32 = _probs(model, tok, texts), _probs(fp32, tok, texts)
    assert np.abs(p8 - p32).max() < 0.05 and (p8.argmax(1) == p32.argmax(1)).mean() >= 0.9
    # the measurement: re-scored on the run's test split, written beside the model
    assert int8.metric == "accuracy" and int8.score is not None and abs(int8.score - int8.source_score) <= 0.1
    saved = json.loads((folder / "compression.json").read_text())
    assert saved["score"] == int8.score and saved["size_mb"] > 0 and saved["compression"]["method"] == "int8-dynamic"


def test_quantising_a_quantised_folder_or_pruning_it_is_refused(int8, tmp_path):
    with pytest.raises(WorkbenchError, match="already quantised \\(int8-dynamic\\); quantising it again"):
        quantize(int8.folder, tmp_path / "again", "int8-dynamic")
    with pytest.raises(WorkbenchError, match="already quantised.*prune the fp32 model first"):
        prune(int8.folder, tmp_path / "p", 0.3)
    with pytest.raises(WorkbenchError, match="not one of int8-dynamic, bf16, onnx-int8"):
        quantize(int8.folder, tmp_path / "x", "int4")
    assert not (tmp_path / "again").exists() and not (tmp_path / "p").exists()


def test_bf16_copy_loads_with_plain_transformers(deploy_bert_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    m = quantize(deploy_bert_run, tmp_path / "bf16", "bf16", runs=3)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert m.score is not None and m.agreement >= 0.9


@pytest.fixture(scope="module")
def onnx_int8(deploy_bert_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return quantize(deploy_bert_run, tmp_path_factory.mktemp("oq") / "oq", "onnx-int8", runs=3)


def test_onnx_int8(onnx_int8):
    m, folder = onnx_int8, Path(onnx_int8.folder)
    assert (folder / "model.onnx").is_file() and not (folder / "fp32").exists()
    model, tok, meta = load_compressed(folder)
    assert meta["kind"] == "onnx-int8"
    assert m.score is not None and m.agreement >= 0.9


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_hits_the_sparsity_exactly_on_the_targeted_weights(deploy_bert_run, tmp_path, scope):
    m = prune(deploy_bert_run, tmp_path / "p", 0.3, "magnitude", scope=scope, runs=3)
    model, _, meta = load_compressed(tmp_path / "p")
    targets = prunable_linears(model)
    assert sorted(targets) == meta["compression"]["targets"] and len(targets) == 2 * 6  # q k v o, up, down
    assert not any("embeddings" in n or "classifier" in n or "pooler" in n for n in targets)
    if scope == "layer":
        for w in (t.weight for t in targets.values()):
            assert int((w == 0).sum()) == round(0.3 * w.numel())
    total = sum(t.weight.numel() for t in targets.values())
    assert sum(int((t.weight == 0).sum()) for t in targets.values()) == (
        round(0.3 * total) if scope == "global" else sum(round(0.3 * t.weight.numel()) for t in targets.values()))
    from workbench.deploy.export import load_run_model
    fp32 = dict(load_run_model(deploy_bert_run)[0].named_parameters())
    for name, p in model.named_parameters():  # everything else (embeddings, pooler, head, biases) untouched
        if name.removesuffix(".weight") not in targets:
            assert torch.equal(p, fp32[name]), name
    assert m.compression["zeroed"] == meta["compression"]["zeroed"] and m.score is not None


def test_head_pruning_zeroes_whole_heads(deploy_bert_run, tmp_path):
    m = prune(deploy_bert_run, tmp_path / "h", 0.5, "heads", runs=3)
    model, _, _ = load_compressed(tmp_path / "h")
    heads = {(h["layer"], h["head"]) for h in m.compression["heads"]}
    assert len(heads) == m.compression["heads_pruned"] == 4 and m.compression["heads_total"] == 8
    for layer, att, outp, d in attention_heads(model):
        for h in range(4):
            s = slice(h * d, (h + 1) * d)
            parts = [att.query.weight[s], att.key.weight[s], att.value.weight[s], att.query.bias[s],
                     att.value.bias[s], outp.weight[:, s]]
            zero = [bool((p == 0).all()) for p in parts]
            assert all(zero) if (layer, h) in heads else not any(zero)
        assert sum((layer, h) in heads for h in range(4)) < 4  # every layer keeps a head


def test_pruning_refusals(deploy_bert_run, tmp_path):
    for bad in (0, 1, 1.5, -0.1, "0.3"):
        with pytest.raises(WorkbenchError, match="strictly between 0 and 1"):
            prune(deploy_bert_run, tmp_path / "p", bad)
    with pytest.raises(WorkbenchError, match="not one of magnitude, heads"):
        prune(deploy_bert_run, tmp_path / "p", 0.3, "channels")


def test_head_pruning_refused_on_a_decoder(tiny_llama, tmp_path):
    from conftest import train_tiny_run

    run = train_tiny_run(tiny_llama, tmp_path, "llama", num_train_epochs=1)
    with pytest.raises(WorkbenchError, match="head pruning supports BERT-family encoders.*decoder.*--kind magnitude"):
        prune(run, tmp_path / "h", 0.3, "heads")
    m = prune(run, tmp_path / "m", 0.3, "magnitude", runs=2)  # magnitude pruning works on a decoder
    assert m.compression["zeroed"] > 0 and m.score is not None


def test_measure_a_run_and_the_cli_line(deploy_bert_run, tmp_path, capsys):
    base = measure(deploy_bert_run, runs=3, write=False)
    assert base.kind == "run" and base.score == base.source_score and base.agreement == 1.0
    assert base.size_mb > 0 and base.latency_ms_p50 > 0 and base.throughput > 0
    assert not (deploy_bert_run.path / "compression.json").exists()
    assert main(["prune", str(deploy_bert_run.path), "--sparsity", "0.3", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'c'}" in out and "(was " in out and "accuracy" in out and "sparse kernels" in out
    assert main(["quantize", str(tmp_path / "c"), "--method", "bf16", "--no-compare"]) == 0  # a pruned folder
    assert (tmp_path / "c-bf16" / "model.safetensors").is_file()
    assert main(["prune", str(deploy_bert_run.path), "--sparsity", "2"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_workbench_serve_answers_with_the_int8_model(int8):
    """A quantised folder is servable as it is: the server loads it with the deploy loader (no pickle), answers what
    the int8 model predicts, and compares traffic with the run's test-split reference carried in the manifest."""
    pytest.importorskip("fastapi")
    model, tok, _ = load_compressed(int8.folder)
    texts = ["a great and lovely film", "dull boring plot", "the cast was fine"]
    want = _probs(model, tok, texts)
    got, info, monitor = _serve_and_classify(int8.folder, texts)
    labels = json.loads((Path(int8.folder) / "workbench_export.json").read_text())["labels"]
    assert [r["label"] for r in got["predictions"]] == [labels[i] for i in want.argmax(1)]
    assert any("int8-dynamic" in n for n in info["notes"])
    assert monitor["reference"]["label_distribution"]


def test_workbench_serve_answers_with_the_onnx_int8_model(onnx_int8):
    """An ONNX folder has no .safetensors: the server loads it with the deploy loader, not the plain-export check."""
    pytest.importorskip("fastapi")
    model, tok, _ = load_compressed(onnx_int8.folder)
    texts = ["a great and lovely film", "dull boring plot", "the cast was fine"]
    want = _probs(model, tok, texts)
    got, info, _ = _serve_and_classify(onnx_int8.folder, texts)
    labels = json.loads((Path(onnx_int8.folder) / "workbench_export.json").read_text())["labels"]
    assert [r["label"] for r in got["predictions"]] == [labels[i] for i in want.argmax(1)]
    assert any("onnx-int8" in n for n in info["notes"])


def _serve_and_classify(folder, texts):
    """/v1/classify's answer for `texts`, /v1/info and /v1/monitor of a server of `folder`."""
    from fastapi.testclient import TestClient

    from workbench.deploy.serve import ServeSettings, create_app

    app = create_app(folder, ServeSettings())
    with TestClient(app) as c:
        for _ in range(600):  # waiting for the warm-up, not a timing assertion
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.02)
        return (c.post("/v1/classify", json={"texts": texts}).json(), c.get("/v1/info").json(),
                c.get("/v1/monitor").json())


def _damaged_int8(int8, tmp_path, edit):
    """A copy of the int8 folder with `edit(folder, tensors)` applied to it (tensors: its int8 safetensors)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    shutil.copytree(int8.folder, folder)
    tensors = load_file(str(folder / "model.int8.safetensors"))
    if edit(folder, tensors) is not False:
        save_file(tensors, str(folder / "model.int8.safetensors"))
    return folder


def _first_quantised(folder):
    return json.loads((folder / "quantization.json").read_text())["modules"][0]


def _drop_weight(folder, t):
    del t[f"{_first_quantised(folder)}.weight_int8"]


def _drop_scale(folder, t):
    del t[f"{_first_quantised(folder)}.weight_scale"]


def _float_weight(folder, t):
    name = f"{_first_quantised(folder)}.weight_int8"
    t[name] = t[name].float()


def _narrowed_weight(folder, t):
    name = f"{_first_quantised(folder)}.weight_int8"
    t[name] = t[name][:, :-1].contiguous()


def _garbage_file(folder, t):
    (folder / "model.int8.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    return False


def _broken_tokenizer(folder, t):
    for f in folder.glob("tokenizer*"):
        f.write_text("{")
    (folder / "vocab.txt").unlink(missing_ok=True)
    return False


def _broken_config(folder, t):
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return False


@pytest.mark.parametrize("edit, found", [
    (_drop_weight, "model.int8.safetensors"), (_drop_scale, "model.int8.safetensors"),
    (_float_weight, "model.int8.safetensors"), (_narrowed_weight, "model.int8.safetensors"),
    (_garbage_file, "model.int8.safetensors"), (_broken_tokenizer, "tokenizer"), (_broken_config, "config.json")])
def test_a_damaged_int8_folder_is_a_message_naming_the_file(int8, tmp_path, edit, found):
    folder = _damaged_int8(int8, tmp_path, edit)
    with pytest.raises(WorkbenchError, match=found) as e:
        load_compressed(folder)
    assert "Fix:" in str(e.value)
