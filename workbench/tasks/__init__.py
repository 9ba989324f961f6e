"""Tasks: one module per task, found by name through this registry.

`RunConfig.task` names a registered task; the shared stages (data, training, evaluation, prediction,
the run summary, the CLI and the dashboard) look it up here with `get_task` and call through it (see
`workbench.tasks.base.Task`). A new task is one module that builds a task object and calls
`register_task`; a task defined outside the package (a notebook, a test) registers the same way.
"""

from __future__ import annotations

from .base import CONTRACT, DataRole, Task, greater_is_better

TASKS: dict[str, Task] = {}


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make `task` available as `RunConfig.task == task.name`; returns it (usable as a decorator on instances)."""
    missing = [m for m in Task.__annotations__ if not hasattr(task, m)]
    missing += [m for m in ("prepare", "encode", "collator", "load_model", "compute_metrics", "predict", "score",
                            "frame_from_predictions", "align_labels") if not callable(getattr(task, m, None))]
    if missing:
        raise TypeError(f"task {getattr(task, 'name', task)!r} lacks {sorted(set(missing))}: see "
                        f"workbench.tasks.base.Task.")
    if task.headline not in task.directions:
        raise TypeError(f"task {task.name!r}: headline metric {task.headline!r} has no direction in "
                        f"`directions`.")
    if task.name in TASKS and TASKS[task.name] is not task and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered; pass replace=True to override it.")
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    TASKS.pop(name, None)


def get_task(name: str) -> Task:
    """The registered task called `name`, or a `ConfigError` that lists the registered ones."""
    try:
        return TASKS[name]
    except KeyError:
        from ..errors import ConfigError
        raise ConfigError(f"task: {name!r} is not a registered task; use one of {', '.join(TASKS)}.") from None


from .classification import TASK as _classification  # noqa: E402 (registers after the registry exists)

from .token_classification import TASK as _token_classification  # noqa: E402

from .causal_lm_sft import TASK as _causal_lm_sft  # noqa: E402

from .seq2seq import TASK as _seq2seq  # noqa: E402

from .question_answering import TASK as _question_answering  # noqa: E402
from .relation_extraction import TASK as _relation_extraction  # noqa: E402
from .pretraining import CAUSAL_LM as _causal_lm, MASKED_LM as _masked_lm  # noqa: E402

register_task(_classification)
register_task(_token_classification)
register_task(_causal_lm_sft)
register_task(_seq2seq)
register_task(_question_answering)
register_task(_relation_extraction)
register_task(_masked_lm)
register_task(_causal_lm)

__all__ = [
    "CONTRACT",
    "TASKS",
    "DataRole",
    "Task",
    "get_task",
    "greater_is_better",
    "register_task",
    "unregister_task",
]
