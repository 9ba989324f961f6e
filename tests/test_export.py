"""`workbench export`: a finished run as a folder plain transformers loads, with its card and reference profile;
ONNX checked against torch; every refusal a message, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from workbench.cli import main
from workbench.deploy import export_run, read_manifest
from workbench.errors import ModelError, RunError, WorkbenchError
from workbench.rundir import RunDir

# Runs in a fresh interpreter that never imports workbench: the folder must stand on transformers alone.
PLAIN_LOAD = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    probs = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1)
print(json.dumps({"labels": [model.config.id2label[int(i)] for i in probs.argmax(-1)], "probs": probs.tolist(),
                  "workbench": "workbench" in sys.modules}))
"""


def plain_predict(folder: Path, texts: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(folder), json.dumps(texts)], capture_output=True,
                         text=True, cwd=folder, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                     "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(deploy_bert_run, tmp_path_factory):
    return export_run(deploy_bert_run, tmp_path_factory.mktemp("exp") / "bert-export")


def test_export_loads_with_plain_transformers_and_predicts_like_the_run(deploy_bert_run, exported):
    from workbench.predict import Predictor

    files = set(exported.files)
    assert {"config.json", "model.safetensors", "README.md", "workbench_export.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    stored = deploy_bert_run.predictions()
    texts = stored["text"].tolist()[:20]
    got = plain_predict(exported.path, texts)
    assert got["workbench"] is False
    want = Predictor.from_run(deploy_bert_run, bf16=False).predict(texts)
    assert got["labels"] == want["predicted"].tolist()
    assert np.allclose(np.asarray(got["probs"])[:, 1], want["p_pos"].to_numpy(), atol=1e-5)
    cfg = json.loads((exported.path / "config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}


def test_model_card_and_manifest(deploy_bert_run, exported):
    card = (exported.path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    ev = deploy_bert_run.evaluation()
    assert f"| accuracy | {ev['before']['accuracy']:.4f} | {ev['after']['accuracy']:.4f} |" in card
    assert "```yaml" in card and "AutoModelForSequenceClassification.from_pretrained" in card
    meta = read_manifest(exported.path)
    assert meta["source_run_name"] == deploy_bert_run.name and meta["task"] == "text-classification"
    assert meta["labels"] == ["neg", "pos"] and meta["max_length"] == 256 and meta["exported"]
    ref = meta["reference"]
    pred = deploy_bert_run.predictions()
    assert ref["n"] == len(pred) == sum(ref["confidence"]["histogram"]["counts"]) and ref["split"] == "test"
    assert ref["label_distribution"]["pos"] == pytest.approx((pred["predicted"] == "pos").mean())
    assert ref["confidence"]["mean"] == pytest.approx(pred["confidence"].mean())
    assert ref["input_length"]["p50"] == pytest.approx(pred["text"].str.len().median(), abs=1)
    assert ref["input_tokens"]["mean"] > 0
    # what `workbench serve` reads from an export: the same reference as from the run itself
    from workbench.deploy.monitor import reference_from_predictions
    from workbench.deploy.served import load_served
    served = load_served(exported.path)
    assert served.reference is not None and served.reference.label_shares == pytest.approx(
        reference_from_predictions(pred, "text-classification")["label_distribution"])


def test_the_model_card_hides_passwords_in_urls(deploy_bert_run):
    from workbench.deploy.export import model_card

    cfg = deploy_bert_run.config().override({"search.storage": "postgresql://alice:s3cr%40t/x@db.example.org/optuna"})
    card = model_card(deploy_bert_run, cfg, "AutoModelForSequenceClassification", ["neg", "pos"])
    assert "s3cr" not in card
    assert "postgresql://alice:***@db.example.org/optuna" in card and "learning_rate:" in card


def test_lora_adapter_only_run_exports_merged(deploy_lora_run, tmp_path):
    from workbench.predict import Predictor

    assert not (deploy_lora_run.model_dir / "merged").exists()  # the adapter alone: merged on export
    res = export_run(deploy_lora_run, tmp_path / "lora-export")
    assert not (res.path / "adapter_config.json").exists() and "lora adapter merged" in res.notes[0]
    texts = deploy_lora_run.predictions()["text"].tolist()[:12]
    got = plain_predict(res.path, texts)
    want = Predictor.from_run(deploy_lora_run, bf16=False).predict(texts)
    assert np.allclose(np.asarray(got["probs"])[:, 1], want["p_pos"].to_numpy(), atol=1e-5)


def test_onnx_export_matches_torch(deploy_bert_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workbench.deploy.onnx_io import session

    res = export_run(deploy_bert_run, tmp_path / "with-onnx", onnx=True)
    assert (res.path / "onnx" / "model.onnx").is_file() and any("match torch" in n for n in res.notes)
    assert read_manifest(res.path / "onnx")["kind"] == "onnx"
    tok = AutoTokenizer.from_pretrained(res.path / "onnx")
    model = AutoModelForSequenceClassification.from_pretrained(res.path).eval()
    sess = session(res.path / "onnx" / "model.onnx")
    texts = deploy_bert_run.predictions()["text"].tolist()
    for batch in (texts[:1], texts[:7]):  # batch and sequence axes are dynamic
        enc = tok(batch, padding=True, return_tensors="np")
        got = sess.run(None, {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()})[0]
        import torch
        with torch.no_grad():
            want = model(**tok(batch, padding=True, return_tensors="pt")).logits.numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_refusals(deploy_bert_run, exported, tmp_path):
    with pytest.raises(RunError, match="already exists.*--overwrite"):
        export_run(deploy_bert_run, exported.path)
    again = export_run(deploy_bert_run, exported.path, overwrite=True)  # replaced in place
    assert again.path == exported.path and (exported.path / "model.safetensors").is_file()
    someone = tmp_path / "notes"
    someone.mkdir()
    (someone / "mine.txt").write_text("keep me")
    with pytest.raises(RunError, match="not written by the workbench"):
        export_run(deploy_bert_run, someone, overwrite=True)
    assert (someone / "mine.txt").read_text() == "keep me"
    with pytest.raises(RunError, match="not a run"):
        export_run(tmp_path)
    with pytest.raises(RunError, match="already a model folder"):
        export_run(exported.path, tmp_path / "x")


GOOD_MANIFEST = {"kind": "export", "task": "text-classification", "labels": ["neg", "pos"], "max_length": 64}
DAMAGED_MANIFESTS = {
    "task is a list": json.dumps({**GOOD_MANIFEST, "task": []}),
    "a 5000-digit number": '{"max_length": ' + "7" * 5000 + "}",
    "nested 100000 deep": "[" * 100_000,
}


@pytest.mark.parametrize("text", DAMAGED_MANIFESTS.values(), ids=DAMAGED_MANIFESTS.keys())
def test_a_damaged_manifest_is_a_message_not_a_traceback(tmp_path, text):
    (tmp_path / "workbench_export.json").write_text(text)
    with pytest.raises(ModelError, match="workbench_export.json.*Fix: export the run again"):
        read_manifest(tmp_path)


def _fake_run(tmp_path: Path, source: RunDir, name: str, status: dict, model: bool = False,
              peft: dict | None = None) -> Path:
    """A copy of a run's config with another status (and no model unless asked)."""
    import shutil
    d = tmp_path / name
    d.mkdir()
    cfg = yaml.safe_load(source.config_file.read_text())
    cfg["peft"].update(peft or {})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "status.json").write_text(json.dumps(status))
    shutil.copy(source.labels_file, d / "labels.json")
    if model:
        shutil.copytree(source.model_dir, d / "model")
    return d


def test_refuses_runs_without_a_final_model(deploy_bert_run, tmp_path):
    import os
    running = _fake_run(tmp_path, deploy_bert_run, "running", {"state": "running", "pid": os.getpid()})
    with pytest.raises(RunError, match="still running.*wait for it to complete"):
        export_run(running)
    queued = _fake_run(tmp_path, deploy_bert_run, "queued", {"state": "queued", "created": time.time()})
    with pytest.raises(RunError, match="still queued"):
        export_run(queued)
    failed = _fake_run(tmp_path, deploy_bert_run, "failed", {"state": "failed", "error": "NaN loss at step 3"})
    with pytest.raises(RunError, match="failed \\(NaN loss at step 3\\) and saved no final model.*resume"):
        export_run(failed)
    stopped = _fake_run(tmp_path, deploy_bert_run, "stopped", {"state": "stopped"})
    with pytest.raises(RunError, match="stopped and saved no final model"):
        export_run(stopped)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_refuses_prompt_learning_runs(deploy_bert_run, tmp_path, method):
    d = _fake_run(tmp_path, deploy_bert_run, method, {"state": "completed"}, model=True, peft={"method": method})
    with pytest.raises(ModelError, match=f"{method} tuning.*virtual tokens.*nothing to merge.*lora"):
        export_run(d)


def test_cli_prints_messages_not_tracebacks(deploy_bert_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "does not exist" in err
    assert main(["export", str(deploy_bert_run.path), "--out", str(tmp_path / "cli-export")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cli-export'}" in out and (tmp_path / "cli-export" / "model.safetensors").is_file()


def test_missing_onnx_extra_names_the_install(monkeypatch, deploy_bert_run, tmp_path):
    import builtins
    real = builtins.__import__

    def no_onnx(name, *a, **kw):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(WorkbenchError, match=r"pip install 'workbench\[deploy\]'"):
        export_run(deploy_bert_run, tmp_path / "o", onnx=True)
    assert not (tmp_path / "o").exists()
