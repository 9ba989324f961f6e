"""The search space: `search.space` read into Optuna parameters, and every problem with it.

Each key is a config field by its dotted name; its value a list of choices (checked against the field's
type and bounds) or a `{low, high, log, step}` range (numeric fields; integers for int fields and for
whole-number bounds). Imports nothing heavy: `RunConfig.validate` calls `space_problems`.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, _bounds_text, _describe, _type_ok, leaf_fields

FORBIDDEN = ("name", "output_dir", "search")  # what a trial may not change: its folder, or the search itself
RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched field: `kind` categorical (choices) or int/float (low, high, step, log)."""

    key: str
    kind: typing.Literal["categorical", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False


def _fields() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every leaf config field: dotted name -> (type hint, metadata)."""
    return leaf_fields()


def _numeric(hint: Any) -> type | None:
    """int or float for a (possibly optional) numeric field, else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    if typing.get_origin(hint) not in (None, typing.Union) and str(typing.get_origin(hint)) != \
            "<class 'types.UnionType'>":
        return None
    for t in (float, int):
        if t in args:
            return t
    return None


def _out_of_bounds(value: float, meta: dict[str, Any]) -> bool:
    return ("lo" in meta and value < meta["lo"]) or ("gt" in meta and value <= meta["gt"]) or \
        ("hi" in meta and value > meta["hi"]) or ("lt" in meta and value >= meta["lt"])


def _bounds(meta: dict[str, Any]) -> str:
    return _bounds_text(meta) + (f" ({meta['hint']})" if "hint" in meta else "")


def _number(x: Any) -> float | int | None:
    """A YAML number (`1e-5` reads as text in YAML 1.1), or None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return None
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def parse_space(space: dict[str, Any]) -> tuple[list[Param], list[str]]:
    """The searched parameters, and every problem with the space (each naming its key and the fix)."""
    fields = _fields()
    params: list[Param] = []
    problems: list[str] = []
    for key, spec in space.items():
        where = f"search.space.{key}"
        if key.split(".")[0] in FORBIDDEN:
            problems.append(f"{where}: a trial cannot change `{key}` (each trial's name, folder and search settings "
                            f"are the search's). Remove it from the space.")
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            problems.append(f"{where}: `{key}` is not a config field"
                            f"{f'; did you mean `{close[0]}`?' if close else '.'} Keys are dotted config names, "
                            f"e.g. training.learning_rate, peft.lora.r (`workbench config --explain` lists them).")
            continue
        hint, meta = fields[key]
        if isinstance(spec, list):
            p = _choices(key, spec, hint, meta, problems)
        elif isinstance(spec, dict):
            p = _range(key, spec, hint, meta, problems)
        else:
            problems.append(f"{where} = {spec!r}: give a list of choices (`[lora, full]`) or a range "
                            f"(`{{low: 1e-5, high: 1e-3, log: true}}`).")
            p = None
        if p is not None:
            params.append(p)
    return params, problems


def _choices(key: str, spec: list[Any], hint: Any, meta: dict[str, Any], problems: list[str]) -> Param | None:
    where = f"search.space.{key}"
    if not spec:
        problems.append(f"{where} is an empty list of choices: give at least one value, e.g. [{_example(hint)}].")
        return None
    values, bad = [], []
    for v in spec:
        ok, coerced = _type_ok(v, hint)
        if isinstance(v, (list, dict)):
            problems.append(f"{where}: the choice {v!r} is not a single value; Optuna's choices are numbers, text, "
                            f"true/false or null. A list field takes comma-separated text, e.g. \"query,value\".")
            return None
        if not ok or (_number(coerced) is not None and not isinstance(coerced, str) and _out_of_bounds(coerced, meta)):
            bad.append(v)
        values.append(v if isinstance(v, str) and isinstance(coerced, list) else coerced)
    if bad:
        expected = _describe(hint) + (f", {_bounds(meta)}" if any(k in meta for k in ("lo", "gt", "hi", "lt")) else "")
        problems.append(f"{where}: {', '.join(repr(b) for b in bad)} {'is' if len(bad) == 1 else 'are'} not "
                        f"{'a value' if len(bad) == 1 else 'values'} of `{key}`: expected {expected}.")
        return None
    if len(set(map(repr, values))) < len(values):
        problems.append(f"{where}: a choice appears twice in {spec!r}: list each once.")
        return None
    return Param(key, "categorical", choices=tuple(values))


def _range(key: str, spec: dict[str, Any], hint: Any, meta: dict[str, Any], problems: list[str]) -> Param | None:
    where = f"search.space.{key}"
    kind = _numeric(hint)
    if kind is None:
        problems.append(f"{where}: `{key}` is {_describe(hint)}, not a number: give a list of choices instead of a "
                        f"range, e.g. [{_example(hint)}].")
        return None
    unknown = sorted(set(map(str, spec)) - RANGE_KEYS)
    if unknown:
        problems.append(f"{where}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not range settings; "
                        f"a range has low, high and optionally log (true/false) and step.")
        return None
    low, high, step, log = _number(spec.get("low")), _number(spec.get("high")), spec.get("step"), spec.get("log", False)
    if low is None or high is None:
        problems.append(f"{where}: a range needs numbers `low` and `high`, e.g. {{low: 1e-5, high: 1e-3, log: true}}.")
        return None
    if not isinstance(log, bool):
        problems.append(f"{where}: log={log!r} must be true or false.")
        return None
    if step is not None and (_number(step) is None or _number(step) <= 0):
        problems.append(f"{where}: step={step!r} must be a number > 0.")
        return None
    step = _number(step)
    # Integers for int fields, and for a float field given whole-number bounds (`num_train_epochs: {low: 1, high: 4}`).
    as_int = kind is int or (isinstance(low, int) and isinstance(high, int) and not isinstance(step, float))
    if kind is int and not all(float(x).is_integer() for x in (low, high, step or 1)):
        problems.append(f"{where}: `{key}` is a whole number: give whole-number low/high"
                        f"{'/step' if step is not None else ''} (got low={low}, high={high}"
                        f"{f', step={step}' if step is not None else ''}).")
        return None
    if low >= high:
        problems.append(f"{where}: the range is empty (low={low:g} {'=' if low == high else '>'} high={high:g}): "
                        f"make low < high, or give one value as a list of choices ([{low:g}]).")
        return None
    if log and low <= 0:
        problems.append(f"{where}: log=true needs low > 0 (got low={low:g}): raise low, or set log: false.")
        return None
    if step is not None and step > high - low:
        problems.append(f"{where}: step={step:g} is larger than the range {low:g} to {high:g}: only low could be "
                        f"drawn. Fix: a smaller step, or a list of choices.")
        return None
    if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-9:
        problems.append(f"{where}: the range {low:g} to {high:g} is not a whole number of steps of {step:g} (Optuna "
                        f"would silently cut high down). Fix: make high - low a multiple of step.")
        return None
    if log and step is not None and not (as_int and step == 1):
        problems.append(f"{where}: log and step cannot be combined (Optuna samples a log range without a step): "
                        f"drop one.")
        return None
    for name, v in (("low", low), ("high", high)):
        if _out_of_bounds(v, meta):
            problems.append(f"{where}: {name}={v:g} is outside what `{key}` allows ({_bounds(meta)}).")
            return None
    if as_int:
        return Param(key, "int", low=int(low), high=int(high), step=int(step or 1), log=log)
    return Param(key, "float", low=float(low), high=float(high), step=step, log=log)


def _example(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(map(str, args[:2]))
    kind = _numeric(hint)
    if kind is not None:
        return "8, 16" if kind is int else "0.1, 0.2"
    return "true, false" if hint is bool else "value1, value2"


def search_metric(cfg: RunConfig) -> str:
    """The validation metric trials are compared on: search.metric, else training.metric_for_best_model, else
    the task's headline as a validation pass computes it (without the Trainer's `eval_` prefix)."""
    from ..tasks import TASKS

    task = TASKS.get(cfg.task)
    name = cfg.search.metric or cfg.training.metric_for_best_model
    if not name and task is not None:
        name = getattr(task, "validation_headline", task.headline)
    return (name or "loss").removeprefix("eval_")


def space_problems(cfg: RunConfig) -> list[str]:
    """What is wrong with `cfg.search` when it holds a space (called by `RunConfig.validate`); [] without one."""
    s = cfg.search
    if not isinstance(s.space, dict) or not s.space:
        return []
    _, problems = parse_space(s.space)
    from ..tasks import TASKS, greater_is_better

    task = TASKS.get(cfg.task)
    metric = search_metric(cfg)
    if task is not None:
        known = getattr(task, "validation_metrics", None)
        try:
            greater_is_better(task, metric)
        except KeyError:
            problems.append(f"search.metric={metric!r} is not a metric of {cfg.task}; use one of "
                            f"{', '.join(known or task.directions)}.")
        else:
            if known is not None and metric not in known:
                problems.append(f"search.metric={metric!r} is scored on the test split only, not in validation "
                                f"passes, so trials cannot be compared on it; use one of {', '.join(known)}.")
    if cfg.training.eval_strategy == "no":
        problems.append("search needs validation scores to compare and prune trials, but training.eval_strategy is "
                        "'no': set it to 'epoch' (or 'steps' with training.eval_steps).")
    return problems
