"""Experiment tracking (`training.report_to`): TensorBoard event files in every run, MLflow and Weights & Biases
when the user has installed them, and `workbench tensorboard` to read the event files.

The trackers are transformers' own callbacks (`TrainingArguments.report_to`); what this module adds is where
they write and that they never reach for the network on their own:
- TensorBoard: the run directory's `tensorboard/` folder (transformers 5 has no `logging_dir` argument; its
  callback reads `TENSORBOARD_LOGGING_DIR` or writes under the checkpoints folder, so the folder is set on the
  callback itself instead of in the process's environment).
- MLflow: a local store beside the run directories (`mlflow.db`, SQLite; `mlruns/` before MLflow 3), unless
  `MLFLOW_TRACKING_URI` says otherwise.
- Weights & Biases: offline (files under the run directory, `wandb sync` uploads them later) unless the user
  chose a mode (`WANDB_MODE`) or gave a key (`WANDB_API_KEY`): a training process never stops at a login
  prompt.
Only the main process reports (rank 0 of a torchrun job). Event files are data that TensorBoard parses; the
workbench never loads or runs anything from them.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any

from .errors import WorkbenchError

TENSORBOARD_DIR = "tensorboard"  # inside a run directory
INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install mlflow", "wandb": "pip install wandb"}
# What this process set itself, so that a later run in it (a notebook) may move it; a user's setting, never.
_MLFLOW_SET: list[str] = []
_WANDB_SET: list[str] = []


def missing_trackers(report_to: list[str]) -> list[str]:
    """The trackers in `report_to` whose package is not installed (unknown names are left to config checks)."""
    return [name for name in report_to if name in INSTALL and importlib.util.find_spec(name) is None]


def missing_message(name: str) -> str:
    return (f"training.report_to lists {name!r}, which is not installed here. Fix: `{INSTALL[name]}`, or take "
            f"{name!r} out of report_to (the run's metrics.jsonl is written either way).")


def tensorboard_dir(run_path: str | Path) -> Path:
    return Path(run_path) / TENSORBOARD_DIR


def prepare(report_to: list[str], run_path: Path, main: bool) -> list[str]:
    """The `report_to` list to give `TrainingArguments` on this process, after pointing MLflow and W&B at
    local, non-interactive stores. Other ranks report nothing."""
    if not main:
        return []
    trackers = [t for t in dict.fromkeys(report_to) if t in INSTALL]
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        uri = local_mlflow_uri(run_path.parent, mlflow.__version__)
        if not mlflow.is_tracking_uri_set() or (_MLFLOW_SET and mlflow.get_tracking_uri() == _MLFLOW_SET[-1]):
            mlflow.set_tracking_uri(uri)
            _MLFLOW_SET.append(uri)
    user_wandb = (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")) and not _WANDB_SET
    if "wandb" in trackers and not user_wandb:
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_DIR"] = str(run_path)
        _WANDB_SET.append(str(run_path))
    return trackers


def local_mlflow_uri(runs_folder: Path, mlflow_version: str) -> str:
    """Where MLflow stores runs when `MLFLOW_TRACKING_URI` is unset: beside the run directories. MLflow 3 refuses
    a plain-folder store (`./mlruns`: "maintenance mode", an exception unless MLFLOW_ALLOW_FILE_STORE is set), so
    from 3 on it is a SQLite file, `mlflow.db`; `mlflow ui --backend-store-uri <that URI>` shows it."""
    if int(mlflow_version.split(".")[0]) >= 3:
        return "sqlite:///" + str((runs_folder / "mlflow.db").resolve())
    return (runs_folder / "mlruns").resolve().as_uri()


def place_tensorboard(trainer: Any, run_path: Path) -> None:
    """Point the trainer's TensorBoard callback (if any) at the run directory's `tensorboard/` folder."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(tensorboard_dir(run_path))


def event_files(folder: str | Path) -> list[Path]:
    """TensorBoard event files anywhere under `folder`."""
    return sorted(Path(folder).rglob("events.out.tfevents.*"))


def logdir_for(target: str | Path) -> Path:
    """The folder `workbench tensorboard` serves: a run directory's `tensorboard/` folder, or a folder of runs
    (each run then shows as `RUN/tensorboard`). Raises when there are no event files to show."""
    path = Path(target).expanduser()
    if not path.is_dir():
        raise WorkbenchError(f"{path} is not a folder. Fix: give a run directory or a folder of runs (default "
                             f"the runs folder; list them with `workbench runs`).")
    folder = tensorboard_dir(path) if (path / "config.yaml").exists() else path
    if not event_files(folder):
        raise WorkbenchError(f"no TensorBoard event files under {folder}. Runs write them when "
                             f"training.report_to includes tensorboard (the default) and have logged at least one "
                             f"step; runs from before that setting have only metrics.jsonl (the dashboard's Train "
                             f"and Runs pages draw it).")
    return folder


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(asked: int | None, host: str = "127.0.0.1", default: int = 6006) -> int:
    """`asked` if free (else an error naming it), or TensorBoard's usual 6006, or any free port."""
    if asked is not None:
        if not port_free(asked, host):
            raise WorkbenchError(f"port {asked} on {host} is taken (another TensorBoard, or another program). Fix: "
                                 f"leave out --port to get a free one, or stop what is using it.")
        return asked
    if port_free(default, host):
        return default
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tensorboard_command(logdir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The TensorBoard server command, bound to `host` only."""
    import sys

    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host, "--port", str(port),
            "--reload_interval", "5"]
