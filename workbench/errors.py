"""The workbench's own exception types.

Every problem a person can fix (a bad config field, a missing column, a model folder without
safetensors) is raised as a `WorkbenchError` subclass whose message says what was found, where,
and what to do. Front ends (CLI, dashboard, notebooks) show the message, never a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: a problem the user can act on. `str(err)` is the full message."""


class ConfigError(WorkbenchError):
    """The run configuration is invalid. `problems` lists every problem found, each with its fix."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "The run configuration has a problem:" if n == 1 else f"The run configuration has {n} problems:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataError(WorkbenchError):
    """A data file or table cannot be used as given."""


class ModelError(WorkbenchError):
    """A model cannot be found or loaded safely."""


class RunError(WorkbenchError):
    """A run directory is missing, incomplete, or in the wrong state for what was asked."""


class TrainingHalted(WorkbenchError):
    """Training stopped on its own because of a fault (NaN loss, out of memory at batch size 1)."""

    step: int | None = None

    @classmethod
    def at_step(cls, step: int, message: str) -> "TrainingHalted":
        err = cls(message)
        err.step = step
        return err
