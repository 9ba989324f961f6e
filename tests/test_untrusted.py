"""Issue 12: a run directory someone sends you is untrusted input.

The critical case: a shared run whose `model/workbench_model.json` (or `config.yaml`) sets
`trust_remote_code` / `allow_pickle` and names a model folder *inside the run* whose config.json has an
`auto_map` pointing at an `evil.py`. Loading that run from the CLI or the dashboard must run no code:
the marker file `evil.py` writes on import must never appear. Also: pickled LoRA adapters are refused
with the pickle message, the "next:" hints quote paths, and the transformers private APIs we rely on
are pinned by pyproject's bounds.
"""

from __future__ import annotations

import json
import pickle
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_sentiment_frame

ROOT = Path(__file__).resolve().parent.parent
TEXT = "a good film"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert) -> Path:
    """A completed tiny LoRA run (two steps, one checkpoint), trained once for this module."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("lora-src")
    csv = root / "s.csv"
    make_sentiment_frame(60).to_csv(csv, index=False)
    cfg = RunConfig.from_dict({"name": "x", "output_dir": str(root / "runs"), "model": {"name_or_path": str(tiny_bert)},
                               "data": {"source": str(csv)}, "peft": {"method": "lora"},
                               "training": {"max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1,
                                            "save_strategy": "steps", "save_steps": 2}})
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    assert (run.model_dir / "adapter_model.safetensors").exists()
    return run.path


def _copy(lora_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / "x"
    shutil.copytree(lora_run, dst)
    return dst


def _evil_base(run: Path, tiny_bert: Path, marker: Path) -> Path:
    """The base model copied into the run, with an auto_map to an evil.py that writes `marker` on import."""
    base = run / "model" / "base"
    shutil.copytree(tiny_bert, base)
    conf = json.loads((base / "config.json").read_text())
    conf["auto_map"] = {"AutoConfig": "evil.C", "AutoModelForSequenceClassification": "evil.M"}
    (base / "config.json").write_text(json.dumps(conf))
    (base / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                  "from transformers import BertConfig as C, BertForSequenceClassification as M\n")
    return base


def _poison(run: Path, tiny_bert: Path, marker: Path, *, trust: bool = True,
           files: tuple[str, ...] = ("json",)) -> Path:
    """The reproduction of issue 12, in model/workbench_model.json ("json") and/or config.yaml ("yaml")."""
    base = _evil_base(run, tiny_bert, marker)
    flags = {"name_or_path": str(base), "trust_remote_code": trust, "allow_pickle": trust}
    if "json" in files:
        meta_file = run / "model" / "workbench_model.json"
        meta = json.loads(meta_file.read_text())
        meta["model"].update(flags)
        meta_file.write_text(json.dumps(meta))
    if "yaml" in files:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"].update(flags)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return base


def _refused(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "trust_remote_code" in err and "--trust-remote-code" in err, err
    assert "Traceback" not in err


# --- critical: no code from a run directory ---------------------------------------------------------
@pytest.mark.parametrize("command, poisoned", [
    ("predict", "json"), ("eval", "json"), ("attention", "json"), ("attention-base", "json"), ("errors", "json"),
    ("resume", "yaml"), ("predict", "yaml"), ("eval", "yaml")])
def test_i12_critical_no_code_from_run_dir_cli(lora_run, tiny_bert, tmp_path, capsys, command, poisoned):
    from workbench.cli import main

    run = _copy(lora_run, tmp_path)
    marker = tmp_path / "MARKER"
    _poison(run, tiny_bert, marker, files=(poisoned,))
    csv = tmp_path / "more.csv"
    make_sentiment_frame(20, seed=3).to_csv(csv, index=False)
    if command == "resume":  # a stopped run, so resume goes as far as loading the model
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "state": "stopped", "step": 1}))
    argv = {"predict": ["predict", str(run), TEXT], "eval": ["eval", str(run), "--data", str(csv)],
            "attention": ["attention", str(run), TEXT, "--out", str(tmp_path / "a.html")],
            "attention-base": ["attention", str(run), TEXT, "--base", "--out", str(tmp_path / "a.html")],
            "resume": ["resume", str(run)], "errors": ["errors", str(run)]}[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists(), f"`workbench {command}` ran code from the run directory"
    if command == "errors":  # reads predictions only: nothing to refuse
        assert rc == 0, err
    else:
        _refused(rc, err)
        assert "allow_pickle" in err and "--allow-pickle" in err


def test_i12_critical_resume_detached_refused(lora_run, tiny_bert, tmp_path):
    """`resume --detach` / the dashboard's Resume button refuse before a worker is started."""
    from workbench.errors import WorkbenchError
    from workbench.launch import resume

    run = _copy(lora_run, tmp_path)
    marker = tmp_path / "MARKER"
    _poison(run, tiny_bert, marker, files=("yaml",))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    with pytest.raises(WorkbenchError, match="--trust-remote-code"):
        h = resume(run)
        h.wait(120)  # unfixed: the worker trains with the run's model (and writes the marker)
    assert not marker.exists()
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"  # nothing was started


def test_i12_critical_auto_map_without_trust_loads_safely(lora_run, tiny_bert, tmp_path, capsys):
    """A run may name a bundled base folder; its auto_map is ignored (built-in BERT), nothing runs."""
    from workbench.cli import main

    run = _copy(lora_run, tmp_path)
    marker = tmp_path / "MARKER"
    _poison(run, tiny_bert, marker, trust=False)
    assert main(["predict", str(run), TEXT]) == 0
    assert not marker.exists()
    assert capsys.readouterr().out.split("\t")[0] in ("neg", "pos")


def test_i12_critical_run_cannot_point_at_a_file(lora_run, tmp_path, capsys):
    """A run's base model must be a built-in, a hub id or a folder: not a file (or a device) to read."""
    from workbench.cli import main

    run = _copy(lora_run, tmp_path)
    meta_file = run / "model" / "workbench_model.json"
    meta = json.loads(meta_file.read_text())
    meta["model"]["name_or_path"] = str(run / "config.yaml")
    meta_file.write_text(json.dumps(meta))
    assert main(["predict", str(run), TEXT]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "workbench_model.json" in err


def test_i12_critical_dashboard_attention(lora_run, tiny_bert, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    run = _copy(lora_run, tmp_path)
    marker = tmp_path / "MARKER"
    _poison(run, tiny_bert, marker)
    monkeypatch.setenv("WORKBENCH_RUNS", str(run.parent))
    at = AppTest.from_string("from dashboard import attention\nattention.page()", default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not marker.exists(), "opening the Attention page ran code from the newest run"
    errors = [e.value for e in at.error]
    assert any("trust_remote_code" in e for e in errors), errors


# --- pickled LoRA adapters ----------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize("keep_other_safetensors", [True, False], ids=["other-safetensors", "only-bin"])
def test_i12_adapter_bin_pickle_refused(lora_run, tmp_path, capsys, keep_other_safetensors):
    from workbench.cli import main
    from workbench.errors import ModelError
    from workbench.models import load_trained

    run = _copy(lora_run, tmp_path)
    adapter = run / "model" / "adapter_model.safetensors"
    if keep_other_safetensors:  # any safetensors file used to be enough to get past the check
        adapter.rename(adapter.with_name("extra.safetensors"))
    else:
        adapter.unlink()
    (run / "model" / "adapter_model.bin").write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(ModelError, match=r"pickle-based weights \(adapter_model\.bin\)"):
        load_trained(run / "model")
    assert main(["predict", str(run), TEXT]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.bin" in err and "can run code when loaded" in err and "safetensors" in err
    assert "Traceback" not in err


# --- 9: hints quote paths -------------------------------------------------------------------------------
def _commands(text: str) -> list[list[str]]:
    """Every `workbench ...` command in a message (backticked, or after next:/continue with:/watch:)."""
    found = re.findall(r"`(workbench [^`]*)`", text)
    for line in text.splitlines():
        for part in re.split(r"\s{3}\|\s{3}|\s{3}(?=stop:)", line):
            part = re.sub(r"^.*?(?:next|continue with|watch|stop): ", "", part)
            if part.startswith("workbench "):
                found.append(part)
    return [shlex.split(c) for c in found]


def test_i12_9_hints_quoted(tmp_path, tiny_bert, capsys, monkeypatch):
    from workbench import cli
    from workbench.attention import load_for_attention
    from workbench.config import RunConfig
    from workbench.errors import WorkbenchError
    from workbench.rundir import RunDir, new_run_dir

    out_dir = tmp_path / "a b;touch PWNED $(touch PWNED2)"
    cfg = RunConfig.from_dict({"name": "r", "output_dir": str(out_dir), "model": {"name_or_path": str(tiny_bert)}})
    run = new_run_dir(cfg)
    p = str(run.path)

    run.update_status(state="completed")
    cli._print_result(run, run.status())
    run.update_status(state="stopped", step=3)
    cli._print_result(run, run.status())
    printed = capsys.readouterr().out
    cmds = _commands(printed)
    assert ["workbench", "eval", p] in cmds and ["workbench", "predict", p, "some text"] in cmds
    assert ["workbench", "resume", p] in cmds

    class Handle:  # `train --detach` without starting a process
        def __init__(self, run):
            self.run, self.pid, self.path = run, 1, run.path

    import importlib
    monkeypatch.setattr(importlib.import_module("workbench.launch"), "launch", lambda cfg: Handle(run))
    conf = tmp_path / "c.yaml"
    conf.write_text(cfg.to_yaml())
    assert cli.main(["train", str(conf), "--detach"]) == 0
    cmds = _commands(capsys.readouterr().out)
    assert ["workbench", "status", p] in cmds and ["workbench", "stop", p] in cmds

    run.update_status(state="running", pid=2**22 + 12345)  # a pid that is not alive
    assert _commands(RunDir(p).status()["error"]) == [["workbench", "resume", p]]
    with pytest.raises(WorkbenchError) as e:
        new_run_dir(cfg)  # the same name again
    assert ["workbench", "resume", p] in _commands(str(e.value))
    with pytest.raises(WorkbenchError) as e:
        load_for_attention(p)  # no final model yet
    assert _commands(str(e.value)) == [["workbench", "resume", p]]


# --- 12: private transformers APIs and the version bounds that keep them ------------------------------
def test_i12_12_private_apis_present():
    """The private APIs we use exist with the shape we call, and pyproject bounds every version we tested.

    A dependency bump past the bounds fails here (the installed version is outside the bounds) before
    it fails in training."""
    import inspect
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("transformers", "peft", "accelerate", "datasets", "torch"):
        spec = deps[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no upper bound in pyproject.toml: {spec}"
        installed = Version(version(name).split("+")[0])
        assert installed in spec, f"installed {name} {installed} is outside pyproject's {spec}: re-test and re-bound"
    # transformers' private APIs change between minor releases: its bound is the next minor, not the next major.
    tf = Version(version("transformers"))
    tf_upper = min(Version(s.version) for s in deps["transformers"].specifier if s.operator == "<")
    assert tf_upper <= Version(f"{tf.major}.{tf.minor + 1}"), f"transformers bound {tf_upper}: use <next minor"

    from transformers import AttentionInterface, Trainer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    from transformers.trainer_utils import rotate_checkpoints
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    # workbench/trainer.py: atomic checkpoints override _save_checkpoint(model, trial) and rotate themselves.
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert "self._save_checkpoint(" in inspect.getsource(Trainer)
    assert {"output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"} <= set(
        inspect.signature(rotate_checkpoints).parameters)
    # WorkbenchTrainer._load_best_model wraps the trainer's own (AdaLoRA's mask set aside while it loads), and
    # peft_methods saves/restores peft's AdaLoRA allocator state (rank_pattern, the score EMAs) across checkpoints.
    assert list(inspect.signature(Trainer._load_best_model).parameters) == ["self"]
    assert "self._load_best_model()" in inspect.getsource(Trainer)
    from peft.tuners.adalora.layer import RankAllocator
    from peft.tuners.adalora.model import AdaLoraModel
    assert all(f"self.{n} = {{}}" in inspect.getsource(RankAllocator.reset_ipt)
               for n in ("ipt", "exp_avg_ipt", "exp_avg_unc"))
    assert "self.rankallocator" in inspect.getsource(AdaLoraModel.__init__)
    assert "lora_config.rank_pattern" in inspect.getsource(AdaLoraModel.update_and_allocate)
    # WorkbenchTrainer.evaluate relies on eval loaders being rebuilt (cached only with persistent workers).
    assert "dataloader_persistent_workers" in inspect.getsource(Trainer.get_eval_dataloader)
    # workbench/speed.py: the CPU training attention hands back to transformers' SDPA function.
    assert list(inspect.signature(sdpa_attention_forward).parameters)[:5] == [
        "module", "query", "key", "value", "attention_mask"]
    assert callable(sdpa_mask) and hasattr(ALL_MASK_ATTENTION_FUNCTIONS, "register")
    assert hasattr(AttentionInterface, "register")
    # workbench/attention.py and models.py: architecture tables.
    assert "llama" in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "bert" in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    assert "bert" in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
