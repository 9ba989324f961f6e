"""workbench: fine-tune, evaluate and look inside transformer language models.

The spine: config -> data -> model -> train -> run directory -> evaluate.

    from workbench import RunConfig, launch
    handle = launch(RunConfig.from_yaml("configs/minilm-rotten-tomatoes.yaml"))
    handle.wait(); print(handle.run.evaluation()["after"]["accuracy"])

Heavy libraries (torch, transformers) load on first use of a name that needs them, so
`import workbench` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (AdaLoraSettings, AugmentConfig, DataConfig, IA3Settings, LoraSettings, ModelConfig, PeftConfig,
                     PrefixSettings, PromptSettings, RunConfig, SearchConfig, TrainingConfig, load_config)
from .errors import ConfigError, DataError, ModelError, RunError, TrainingHalted, WorkbenchError

__version__ = "0.1.0"

_LAZY = {
    "launch": "launch", "resume": "launch", "attach": "launch", "RunHandle": "launch",
    "RunDir": "rundir", "list_runs": "rundir", "new_run_dir": "rundir",
    "run_training": "training",
    "read_table": "data", "prepare_data": "data", "format_report": "data", "DataReport": "data",
    "classification_metrics": "evaluate", "evaluate_run": "evaluate",
    "Predictor": "predict",
    "load_classifier": "models", "load_trained": "models",
    "Task": "tasks", "get_task": "tasks", "register_task": "tasks",
    "BUILTIN_DATASETS": "assets", "BUILTIN_MODELS": "assets", "load_builtin_dataset": "assets",
}

__all__ = ["AdaLoraSettings", "AugmentConfig", "ConfigError", "DataConfig", "DataError", "IA3Settings", "LoraSettings",
           "ModelConfig", "ModelError", "PeftConfig", "PrefixSettings", "PromptSettings", "RunConfig", "RunError",
           "SearchConfig", "TrainingConfig", "TrainingHalted", "WorkbenchError", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
