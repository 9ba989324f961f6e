"""What a run directory may decide, and what only the person running the workbench can.

Run directories get shared (a colleague's run, a course's solution, a download), so every file in one
is untrusted input. A run records which model it started from (`config.yaml`,
`model/workbench_model.json`); every loader reads that record through `model_config_from_run`, which
lets the record name a model but never grant it more than the caller did:

- `trust_remote_code` and `allow_pickle` come from the caller (an explicit `--trust-remote-code` /
  `--allow-pickle` flag or argument), never from the file. A file that asks for either is refused
  with how to grant it, rather than silently loaded differently than it says.
- `name_or_path` may be a built-in, a hub id or a model folder (the run's own bundled base model
  too): with remote code off, an `auto_map` in its config.json is ignored by transformers (it imports
  that code only when `trust_remote_code=True`), and with pickle off only safetensors are read. It may
  not be a file or a device, which the loaders would read as a config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelConfig, RunConfig
from .errors import ConfigError, ModelError
from .gguf_files import is_gguf

# What each grant lets a model do, and the flag that grants it.
GRANTS = {
    "trust_remote_code": ("run Python files that come with the model", "--trust-remote-code"),
    "allow_pickle": ("unpickle weight files, which can run code", "--allow-pickle"),
}


def model_config_from_run(raw: Any, where: str | Path, *, trust_remote_code: bool = False,
                          allow_pickle: bool = False) -> ModelConfig:
    """The `ModelConfig` a run directory records (a dict or a `ModelConfig`), safe to load from.

    `where` names the file it came from, for the messages. Raises `ModelError` when the record is
    damaged, asks for a grant the caller did not give, or names something that is not a model.
    """
    if isinstance(raw, ModelConfig):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: its `model` entry is {type(raw).__name__}, not a mapping; the file is damaged. "
                         f"Fix: restore it from the run's config.yaml, or retrain.")
    try:
        cfg = RunConfig.from_dict({"model": raw}).model
    except ConfigError as e:
        raise ModelError(f"{where} records an invalid model: {'; '.join(e.problems)}") from None
    granted = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    asked = [k for k in GRANTS if getattr(cfg, k) and not granted[k]]
    if asked:
        what = " and ".join(f"model.{k}: true (to {GRANTS[k][0]})" for k in asked)
        flags = " ".join(GRANTS[k][1] for k in asked)
        args = ", ".join(f"{k}=True" for k in asked)
        raise ModelError(f"{where} asks for {what}. A run directory cannot turn that on by itself: anyone could have "
                         f"written this file, and the model it names is {cfg.name_or_path!r}. Fix: only if you trust "
                         f"this run and that model, grant it yourself with {flags} on the command line ({args} in "
                         f"Python); otherwise set it to false in that file.")
    p = Path(cfg.name_or_path).expanduser()
    if p.exists() and not p.is_dir() and not (p.suffix.lower() == ".gguf" and is_gguf(p)):
        raise ModelError(f"{where} names {cfg.name_or_path!r} as its model, which is not a model folder (a file or a "
                         f"device). Fix: set model.name_or_path there to a built-in name, a hub id or a folder with "
                         f"config.json and model.safetensors, or a .gguf file.")
    return cfg


@dataclass(frozen=True)
class RunModel:
    """What `model/workbench_model.json` records about a run's final model."""

    base: ModelConfig  # the pretrained model it started from (a LoRA adapter's base)
    labels: list[str]
    method: str
    task: str = "text-classification"  # a name looked up in the task registry, never code


def read_run_model(model_dir: str | Path, *, trust_remote_code: bool = False,
                   allow_pickle: bool = False) -> RunModel | None:
    """`model_dir/workbench_model.json` read as untrusted input (see `model_config_from_run`); None when absent."""
    f = Path(model_dir) / "workbench_model.json"
    if not f.exists():
        return None
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{f} cannot be read ({type(e).__name__}: {str(e)[:120]}); the run's model record is "
                         f"damaged. Fix: retrain the run, or restore that file.") from None
    if not isinstance(meta, dict):
        meta = {}
    labels = meta.get("labels")
    task = str(meta.get("task") or "text-classification")
    from .tasks import TASKS

    # A task without classes (a causal LM writes text) records an empty list; any other needs its labels.
    needs = getattr(TASKS.get(task), "needs_labels", True)
    if not isinstance(labels, list) or (needs and not labels) or not all(isinstance(x, (str, int)) for x in labels):
        raise ModelError(f"{f} has no valid `labels` list (class names in id order); the file is damaged. "
                         f"Fix: retrain the run, or restore that file.")
    base = model_config_from_run(meta.get("model"), f, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return RunModel(base=base, labels=[str(x) for x in labels], method=str(meta.get("method", "")),
                    task=task)
