"""Hyper-parameter search with Optuna: `workbench search CONFIG`.

The config's `search.space` names config fields (`training.learning_rate`, `peft.lora.r`, ...) with a list
of choices or a `{low, high, log, step}` range. Each trial is a normal run: the base config with the
trial's values applied, named `<study>-trial-<n>`, started in its own process by `workbench.launch`
like `workbench train --detach`. This process (the search's "parent") follows the run's metrics.jsonl,
reports each validation score to Optuna, and asks the run to stop (the STOP file, as `workbench stop`
does) when the pruner says the trial is not promising.

The study lives in an SQLite file under `<runs>/searches/<study>/study.db` unless `search.storage`
names another database; a search that was killed is resumed by running the same command again: trials
its old parent left RUNNING are settled from their run directories (a finished run gives its value, a
live one is followed to its end, a dead one is marked failed and its parameters queued again), and only
the trials still missing are run. Several machines share a study through one database URL
(`--storage postgresql://...`): each runs `workbench search` with the same study name.

The space and its checks are in `space.py`. Nothing here imports Optuna until a search runs, so
`RunConfig.validate` can call `space_problems`.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig, SearchConfig
from ..errors import WorkbenchError
from .space import Param, parse_space, search_metric, space_problems

__all__ = ["Param", "SearchError", "SearchResult", "list_studies", "load_study", "parse_space", "run_search",
           "search_metric", "space_problems", "trials_table"]
INSTALL = "pip install optuna  (or: pip install 'workbench[search]')"


class SearchError(WorkbenchError):
    """A search that cannot start or go on; the message says why and what to do."""


# --- the study ---------------------------------------------------------------------------------
def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SearchError(f"hyper-parameter search needs Optuna, which is not installed: {INSTALL}.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens, per trial
    return optuna


def study_name(cfg: RunConfig) -> str:
    """search.study_name, else the run name, else `search-<model>-<data>` (the same each time, so that
    running the command again resumes the study)."""
    from ..rundir import _slug
    return cfg.search.study_name or cfg.name or \
        f"search-{_slug(Path(cfg.model.name_or_path).name)}-{_slug(Path(cfg.data.source).stem)}"


def runs_folder(cfg: RunConfig) -> Path:
    from ..paths import runs_root
    return (Path(cfg.output_dir).expanduser() if cfg.output_dir else runs_root()).resolve()


def study_folder(cfg: RunConfig, name: str | None = None) -> Path:
    return runs_folder(cfg) / "searches" / (name or study_name(cfg))


def default_storage(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


def _sampler(optuna: Any, kind: str, seed: int) -> Any:
    """The sampler, seeded by `seed` (see `sampler_seed`)."""
    return optuna.samplers.RandomSampler(seed=seed) if kind == "random" else optuna.samplers.TPESampler(seed=seed)


def sampler_seed(seed: int, trials_so_far: int, local: bool) -> int:
    """The seed of this process's sampler: training.seed for a new study (the same seed, the same trials), moved
    on by the trials the study already holds when it is resumed. A resumed search makes a new sampler, and seeded
    as the first process's was it draws the first process's values again (its random start-up trials are the
    same draws), re-running trials that were already run. A shared database (several machines, possibly starting
    together on a new study) also mixes in the process id, so that two workers do not draw in lockstep."""
    return (seed + trials_so_far + (0 if local else os.getpid())) % 2**32


def _pruner(optuna: Any, kind: str) -> Any:
    # Intermediate steps are validation passes (1st, 2nd, ...), so pruning waits for the first one to compare.
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def trial_config(base: RunConfig, params: dict[str, Any], name: str | None) -> RunConfig:
    """The base config with a trial's values applied, as a plain run (no search section)."""
    cfg = base.override({**params, "name": name})
    cfg.search = SearchConfig()
    return cfg


@dataclass
class SearchResult:
    study: str
    storage: str
    folder: Path
    best: Any  # optuna FrozenTrial, or None when no trial completed
    best_config: Path | None
    command: str | None
    counts: dict[str, int]


def run_search(cfg: RunConfig, *, n_trials: int | None = None, storage: str | None = None, study: str | None = None,
               pruner: Any = None, poll: float = 1.0, say: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume) the search `cfg.search` describes until `n_trials` trials are complete or pruned.

    `pruner` (an Optuna pruner object) replaces `cfg.search.pruner`, for notebooks and tests.
    """
    optuna = _optuna()
    from ..tasks import get_task, greater_is_better

    cfg.check()
    if not cfg.search.space:
        raise SearchError("search.space is empty: name the fields to search, e.g.\n  search:\n    space:\n"
                          "      training.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}\n"
                          "      peft.method: [lora, full]")
    from ..models import check_model_source
    check_model_source(cfg.model)  # a wrong model path is one message, not n failed trials
    params, _ = parse_space(cfg.search.space)
    name = study or study_name(cfg)
    from ..config import _name_problems
    if _name_problems(name):
        raise SearchError("study name: " + " ".join(_name_problems(name)).replace("run name", "study name"))
    folder = study_folder(cfg, name)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or cfg.search.storage or default_storage(folder)
    metric = search_metric(cfg)
    direction = "maximize" if greater_is_better(get_task(cfg.task), metric) else "minimize"
    total = n_trials if n_trials is not None else cfg.search.n_trials
    if not isinstance(total, int) or total < 1:
        raise SearchError(f"n_trials={total!r}: give a whole number of trials >= 1.")
    try:
        for attempt in range(4):
            try:
                st = optuna.create_study(study_name=name, storage=url, load_if_exists=True, direction=direction,
                                         sampler=_sampler(optuna, cfg.search.sampler, cfg.training.seed),
                                         pruner=pruner or _pruner(optuna, cfg.search.pruner))
                break
            except Exception as e:  # noqa: BLE001 - another process creating the same new database's tables
                if attempt == 3 or "IntegrityError" not in type(e).__name__ and \
                        "already exists" not in str(e):
                    raise
                time.sleep(0.5)
    except (ImportError, ModuleNotFoundError) as e:
        raise SearchError(f"the storage {url!r} needs a database driver that is not installed ({e}); install it "
                          f"(e.g. pip install psycopg2-binary for postgresql://).") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL or an unreachable server
        raise SearchError(f"cannot open the study {name!r} in {url!r}: {str(e).splitlines()[0]}. Fix the URL "
                          f"(e.g. sqlite:///path/study.db, postgresql://user:password@host/db).") from None
    if st.direction.name.lower() != direction:
        raise SearchError(f"study {name!r} in {url} was made to {st.direction.name.lower()} its metric, but "
                          f"{metric} is to {direction}: choose another study name (--study).")
    if st.user_attrs.get("metric", metric) != metric:
        raise SearchError(f"study {name!r} compares trials on {st.user_attrs['metric']!r}, this config on "
                          f"{metric!r}: set search.metric to {st.user_attrs['metric']!r} or choose another study "
                          f"name (--study).")
    st.set_user_attr("metric", metric)
    so_far = len(st.get_trials(deepcopy=False))
    if so_far or not url.startswith("sqlite:"):
        st.sampler = _sampler(optuna, cfg.search.sampler, sampler_seed(cfg.training.seed, so_far,
                                                                        url.startswith("sqlite:")))
    base = RunConfig.from_dict({**cfg.to_dict(), "output_dir": str(runs_folder(cfg))})
    base.to_yaml(folder / "search.yaml")
    say(f"study {name} ({direction} validation {metric}) in {url}: {total} trials")
    ctx = _Context(optuna, st, base, metric, direction == "maximize", params, poll, say)
    ctx.local = url.startswith("sqlite:")
    ctx.recover()
    failures = 0
    while True:
        trials = st.get_trials(deepcopy=False)
        done = sum(t.state in (ctx.TS.COMPLETE, ctx.TS.PRUNED) for t in trials)
        elsewhere = sum(t.state == ctx.TS.RUNNING for t in trials)  # other machines' (or processes') trials
        if done + elsewhere >= total:
            break
        state = ctx.run_trial(st.ask())
        failures = failures + 1 if state == ctx.TS.FAIL else 0
        if failures >= 3:
            say("3 trials in a row failed: stopping the search (see the errors above; fix them and run the same "
                "command again to go on).")
            break
    return ctx.finish(url, folder)


class _Context:
    """One search process: runs trials, settles trials a killed process left RUNNING, writes best.yaml."""

    def __init__(self, optuna: Any, study: Any, base: RunConfig, metric: str, greater: bool, params: list[Param],
                 poll: float, say: Callable[[str], None]):
        self.optuna, self.study, self.base, self.metric, self.greater = optuna, study, base, metric, greater
        self.params, self.poll, self.say = params, poll, say
        self.TS = optuna.trial.TrialState
        self.host = socket.gethostname()
        self.local = True  # the study is in a local SQLite file (run_search sets it from the storage URL)

    def run_name(self, number: int) -> str:
        return f"{self.study.study_name}-trial-{number}"

    def run_path(self, t: Any) -> Path:
        """The trial's run directory: in this search's runs folder under the trial's own name. The path the study
        recorded is used only when it is there too (a shared study.db is untrusted: a path it names elsewhere is
        never followed, stopped or signalled)."""
        folder = runs_folder(self.base).resolve()
        recorded = t.user_attrs.get("run")
        if isinstance(recorded, str):
            p = Path(recorded).resolve()
            if p.parent == folder and p.name.startswith(self.run_name(t.number)):
                return p
        return folder / self.run_name(t.number)

    def suggest(self, trial: Any) -> dict[str, Any]:
        out = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.kind == "int":
                out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        return out

    def run_trial(self, trial: Any) -> Any:
        from ..errors import RunError
        from ..launch import launch

        trial.set_user_attr("host", self.host)
        trial.set_user_attr("pid", os.getpid())
        values = self.suggest(trial)
        # A trial queued again after a dead run may carry parameters no longer in the space: keep them too.
        values.update({k: v for k, v in trial.params.items() if k not in values})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        try:
            handle = launch(trial_config(self.base, values, self.run_name(trial.number)))
        except RunError as e:  # the run folder is taken: every later trial would fail the same way
            self.study.tell(trial, state=self.TS.FAIL)
            raise SearchError(f"{e} (trial {trial.number} of study {self.study.study_name}): delete that folder, or "
                              f"choose another study name (--study).") from None
        except WorkbenchError as e:  # these values make no valid run (adalora target_r > init_r, a missing model)
            return self._fail(trial, f"the trial's config cannot run: {e}", shown)
        trial.set_user_attr("run", str(handle.path))
        self.say(f"trial {trial.number}: {shown} -> run {handle.path}")
        return self.follow(trial, handle)

    def follow(self, trial: Any, handle: Any, reported: int = 0) -> Any:
        """Report each new validation score (after the first `reported`); stop the run when pruned; settle the
        trial when the run ends."""
        try:
            while True:
                running = handle.is_running()  # before reading: when it has ended, every row is written
                scores = eval_scores(handle.run, self.metric)
                for i in range(reported, len(scores)):
                    trial.report(scores[i], i)
                    reported = i + 1
                    if running and trial.should_prune():
                        trial.set_user_attr("pruned_at", i)
                        self.say(f"trial {trial.number}: pruned after validation pass {i + 1} ({self.metric} "
                                 f"{scores[i]:.4g}); stopping its run")
                        handle.stop(wait=False)
                        while handle.is_running():  # it saves a checkpoint first, however long that takes
                            time.sleep(self.poll)
                        return self.settle(trial, handle.run, scores[: i + 1])
                if not running:
                    return self.settle(trial, handle.run, scores)
                time.sleep(self.poll)
        except KeyboardInterrupt:
            self.say(f"search interrupted: trial {trial.number}'s run {handle.path} goes on in its own process. Run "
                     f"the same command again to resume the search (it follows that run), or stop the run with "
                     f"`workbench stop {shlex.quote(str(handle.path))}`.")
            raise

    def settle(self, trial: Any, run: Any, scores: list[float]) -> Any:
        st = run.status()
        state = st.get("state")
        if state == "stopped":
            self.study.tell(trial, state=self.TS.PRUNED)
            return self.TS.PRUNED
        if state != "completed":
            return self._fail(trial, st.get("error") or f"the run ended {state} (see {run.log_file})")
        if not scores:
            return self._fail(trial, f"the run finished without a validation {self.metric} (no validation split?)")
        value = max(scores) if self.greater else min(scores)
        self.study.tell(trial, value)
        best = self.study.best_trial
        self.say(f"trial {trial.number}: complete, best validation {self.metric} {value:.4g}"
                 + (" (best so far)" if best.number == trial.number else f" (best: trial {best.number}, "
                    f"{best.value:.4g})"))
        self.write_best()
        return self.TS.COMPLETE

    def _fail(self, trial: Any, error: str, shown: str | None = None) -> Any:
        trial.set_user_attr("error", error[:2000])
        self.study.tell(trial, state=self.TS.FAIL)
        self.say(f"trial {trial.number}{f' ({shown})' if shown else ''}: failed: {error}")
        return self.TS.FAIL

    def recover(self) -> None:
        """Settle the trials a killed search process on this machine left RUNNING."""
        from ..launch import attach
        from ..rundir import ACTIVE, RunDir, pid_alive

        for t in self.study.get_trials(deepcopy=False, states=(self.TS.RUNNING,)):
            # Another machine's trial is left alone (in a local SQLite file every trial is this machine's, even
            # when its name changed, as a container's does on restart), and so is a search process still alive.
            pid = t.user_attrs.get("pid")
            pid = pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None
            if (t.user_attrs.get("host") != self.host and not self.local) or pid_alive(pid):
                continue
            trial = self.optuna.trial.Trial(self.study, t._trial_id)
            run = RunDir(self.run_path(t))
            st = run.status() if run.exists() else {"state": "missing"}
            alive = st.get("state") in ACTIVE and pid_alive(st.get("pid"))
            if run.exists() and (alive or st.get("state") in ("completed", "stopped")):
                trial.set_user_attr("pid", os.getpid())
                trial.set_user_attr("run", str(run.path))
                self.say(f"trial {t.number}: left running by a search that was stopped; "
                         f"{'following' if alive else 'reading'} its run {run.path}")
                self.follow(trial, attach(run.path), reported=len(t.intermediate_values))
                continue
            why = (st.get("error") or f"its run ended {st.get('state')}") if run.exists() else "its run never started"
            self._fail(trial, f"the search process was stopped and {why}; its parameters are queued to run again")
            self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})

    def best_config(self) -> RunConfig | None:
        try:
            best = self.study.best_trial
        except ValueError:
            return None
        return trial_config(self.base, best.params, None)

    def write_best(self) -> Path | None:
        cfg = self.best_config()
        if cfg is None:
            return None
        cfg.output_dir = self.base.output_dir
        path = study_folder(self.base, self.study.study_name) / "best.yaml"
        raw = cfg.to_dict()
        del raw["search"]  # a plain run: `workbench train best.yaml`
        import yaml
        path.write_text(f"# the best trial ({self.study.best_trial.number}) of study {self.study.study_name}\n"
                        + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    def finish(self, url: str, folder: Path) -> SearchResult:
        counts = {s.name.lower(): 0 for s in (self.TS.COMPLETE, self.TS.PRUNED, self.TS.FAIL, self.TS.RUNNING)}
        for t in self.study.get_trials(deepcopy=False):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        self.say("trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
        path = self.write_best()
        if path is None:
            self.say("no trial completed, so there is no best config yet.")
            return SearchResult(self.study.study_name, url, folder, None, None, None, counts)
        best = self.study.best_trial
        command = f"workbench train {shlex.quote(str(path))} --name {shlex.quote(self.study.study_name + '-best')}"
        self.say(f"best: trial {best.number}, validation {self.metric} {best.value:.4g}, run "
                 f"{best.user_attrs.get('run')}")
        for k, v in best.params.items():
            self.say(f"  {k}: {_fmt(v)}")
        self.say(f"best config: {path}")
        self.say(f"train it fully: {command}")
        self.say("  (add --set training.num_train_epochs=N or --set data.max_train_samples=null to train longer "
                 "than the trials did)")
        return SearchResult(self.study.study_name, url, folder, best, path, command, counts)


def eval_scores(run: Any, metric: str) -> list[float]:
    """The run's validation scores of `metric` in order (metrics.jsonl rows of kind "eval")."""
    m = run.metrics()
    col = f"eval_{metric}"
    if not len(m) or "kind" not in m or col not in m:
        return []
    vals = m.loc[m["kind"] == "eval", col].dropna()
    return [float(v) for v in vals if math.isfinite(float(v))]


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --- reading studies back (the dashboard, notebooks) -------------------------------------------------
def list_studies(root: str | Path) -> list[Path]:
    """Study folders under `<root>/searches` that hold an SQLite study, newest first."""
    found = [p.parent for p in Path(root).glob("searches/*/study.db") if p.is_file()]
    return sorted(found, key=lambda p: (p / "study.db").stat().st_mtime, reverse=True)


def load_study(folder: str | Path) -> Any:
    """The Optuna study kept in `folder/study.db` (its name is the folder's)."""
    optuna = _optuna()
    import sqlalchemy.exc as sqlalchemy_exc  # optuna's storage layer

    folder = Path(folder)
    if not (folder / "study.db").is_file():
        raise SearchError(f"{folder} holds no study.db: not a search folder.")
    for attempt in range(4):
        try:
            return optuna.load_study(study_name=folder.name, storage=default_storage(folder.resolve()))
        except KeyError:
            raise SearchError(f"{folder / 'study.db'} holds no study named {folder.name!r}.") from None
        except sqlalchemy_exc.SQLAlchemyError as e:  # another process creating the file's tables at this moment
            if attempt == 3:
                raise SearchError(f"{folder / 'study.db'} is being written by another process (a search starting "
                                  f"up): {str(e).splitlines()[0][:160]}. Try again in a moment.") from None
            time.sleep(0.5)


def trials_table(study: Any) -> Any:
    """One row per trial: number, state, value, parameters, run path, error."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     **{f"{k}": v for k, v in t.params.items()}, "run": t.user_attrs.get("run"),
                     "error": t.user_attrs.get("error"),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None})
    return pd.DataFrame(rows)
