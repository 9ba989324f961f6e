"""Page sections per task, found by task name: the dashboard's side of the task registry.

The pages (Data, Train, Evaluate) draw what every task shares — picking a file or a run, its state,
errors — and hand the task-specific part to the section module registered for the task
(`workbench.tasks.TASKS` names the tasks). A new task adds one module here and one `register_sections`
line; no page changes. A section module may define any of these hooks; a missing one falls back to
text classification's:

- `evaluate(run, runs, ev)`: the Evaluate page for a run of this task (`ev` is its eval.json).
- `data_view(source)`: the Data page once a file or built-in data set is chosen: preview and data report.
- `train_data(task)`: the Train page's data section; returns the `data.*` overrides for the RunConfig.
- `claims(source) -> bool`: whether an uploaded file holds this task's data (picks the Data page's view).
- `train_defaults(model) -> dict`: dotted settings the Train page switches to when the task or the model is
  chosen (causal-lm-sft: LoRA); no fallback.
- `data_kind` (a string, not a hook): the kind of data several tasks read alike. A built-in data set whose
  `task` is a kind rather than a task (`"corpus"`: `aclsum_papers`, `msra_text`), and an upload claimed by one of
  those tasks, is offered to every task whose sections declare that kind (masked-lm and causal-lm share one).

A task with no section module of its own is offered on the Train page only when its data roles are table
columns (`trainable_tasks`); its runs get the task-independent Evaluate view of `generic` (scores
before -> after, examples side by side).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from workbench.assets import BUILTIN_DATASETS

from . import (causal_lm_sft, classification, generic, pretraining, question_answering, relation_extraction,
               seq2seq, token_classification)

DEFAULT = "text-classification"
SECTIONS: dict[str, ModuleType | Any] = {}


def register_sections(task: str, sections: ModuleType | Any, *, replace: bool = False) -> None:
    """Use `sections` (a module or any object with some of the hooks above) for runs and data of `task`."""
    if task in SECTIONS and SECTIONS[task] is not sections and not replace:
        raise ValueError(f"page sections for {task!r} are already registered; pass replace=True to override them.")
    SECTIONS[task] = sections


def hook(task: str, name: str) -> Callable[..., Any]:
    """The task's `name` hook, else text classification's (a task without sections: the generic Evaluate)."""
    if task not in SECTIONS and name == "evaluate":
        return generic.evaluate
    found = getattr(SECTIONS.get(task), name, None)
    return found if callable(found) else getattr(SECTIONS[DEFAULT], name)


def trainable_tasks(registered: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(tasks the Train page offers, tasks left to the CLI and notebooks). Offered: a task with page sections
    of its own, or one whose data roles are all table columns (`DataRole.config_field`), which text
    classification's column pickers can map. A task reading its own file format without sections is not."""
    def offered(name: str, task: Any) -> bool:
        return name in SECTIONS or all(r.config_field for r in getattr(task, "roles", ()) if r.required)

    return ([n for n, t in registered.items() if offered(n, t)],
            [n for n, t in registered.items() if not offered(n, t)])


def kind_tasks(kind: str | None) -> list[str]:
    """The tasks whose sections read data of `kind` (their `data_kind`), in registration order."""
    return [t for t, s in SECTIONS.items() if kind and getattr(s, "data_kind", None) == kind]


def same_data(task: str) -> set[str]:
    """`task` and the tasks that read the same data (sharing its sections' `data_kind`)."""
    return {task, *kind_tasks(getattr(SECTIONS.get(task), "data_kind", None))}


def task_for_source(source: str) -> str:
    """Which task a data source is for: a built-in data set says so (a kind of data, such as "corpus": the
    first task reading that kind); a file is offered to each task's `claims` hook (text classification, which
    reads any table, is the fallback)."""
    if source in BUILTIN_DATASETS:
        named = BUILTIN_DATASETS[source].task
        return named if named in SECTIONS or not kind_tasks(named) else kind_tasks(named)[0]
    for task, sections in SECTIONS.items():
        claims = getattr(sections, "claims", None)
        if task != DEFAULT and callable(claims) and claims(source):
            return task
    return DEFAULT


def data_sources(task: str) -> list[str]:
    """Uploaded files that hold `task`'s data (newest first), then the task's built-in data sets. A task
    whose sections claim no files of their own reads tables, so it is offered the table uploads."""
    from workbench.storage import list_uploads

    own = callable(getattr(SECTIONS.get(task), "claims", None))
    wanted = same_data(task) if own else {DEFAULT}
    kind = getattr(SECTIONS.get(task), "data_kind", None)
    return ([str(p) for p in list_uploads() if task_for_source(str(p)) in wanted]
            + [name for name, b in BUILTIN_DATASETS.items() if b.task == task or (kind and b.task == kind)])


def pick_source(task: str, empty: str) -> str | None:
    """The Train page's data-set picker for a task that reads its own files: the task's uploads and built-ins, the
    Data page's choice first; None (after saying `empty`) when there is nothing to pick."""
    from pathlib import Path

    import streamlit as st

    from workbench.config import field_help

    choice = st.session_state.get("data_choice") or {}
    options = data_sources(task)
    ours = choice.get("task") in same_data(task)  # the Data page checked this task's data (or a sibling's)
    if ours and choice.get("source") and choice["source"] not in options:
        options.insert(0, choice["source"])
    if not options:
        st.info(empty, icon=":material/upload_file:")
        return None
    if st.session_state.get("train_source") not in options:
        mine = ours and choice.get("source")
        st.session_state["train_source"] = choice["source"] if mine else options[0]
    return st.selectbox("Data set", options, key="train_source", format_func=lambda s: Path(s).name,
                        help=field_help()["data.source"])


register_sections(DEFAULT, classification)
register_sections("token-classification", token_classification)
register_sections("causal-lm-sft", causal_lm_sft)
register_sections("seq2seq", seq2seq)
register_sections("question-answering", question_answering)
register_sections("relation-extraction", relation_extraction)
register_sections("masked-lm", pretraining)
register_sections("causal-lm", pretraining)

__all__ = ["DEFAULT", "SECTIONS", "data_sources", "hook", "kind_tasks", "pick_source", "register_sections",
           "same_data", "task_for_source", "trainable_tasks"]
