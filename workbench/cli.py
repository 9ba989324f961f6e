"""The `workbench` command: a thin front door over the package.

Every subcommand builds the same `RunConfig` or reads the same run directory as the notebooks and
the dashboard do. Problems the user can fix print as one clear message (exit code 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import WorkbenchError

DEMO = {
    "name": None,
    "model": {"name_or_path": "minilm"},
    "data": {"source": "rotten_tomatoes", "max_train_samples": 3200, "max_eval_samples": 1000},
    "training": {"num_train_epochs": 1, "learning_rate": 1e-4, "per_device_train_batch_size": 16,
                 "logging_steps": 20, "save_strategy": "epoch", "save_total_limit": 1},
}


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import datasets
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs (VALUE read as YAML); every malformed one is reported as a config error."""
    from .errors import ConfigError
    out, problems = {}, []
    for p in pairs or []:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            problems.append(f"--set {p!r}: expected KEY=VALUE, e.g. --set training.learning_rate=2e-5")
            continue
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            problems.append(f"--set {p!r}: {v!r} is not a valid YAML value ({why}). Fix: quote text values, "
                            f"e.g. --set '{k.strip()}=\"...\"', and close brackets and quotes.")
    if problems:
        raise ConfigError(problems)
    return out


def _train_foreground(cfg: Any, run: Any = None, resume: bool = False) -> Any:
    """Run in this process with a progress bar; print the report, before/after and where the run is."""
    from .data import format_report
    from .rundir import RunDir
    from .training import new_run_dir_all_ranks, run_training, stop_signals

    _quiet_libraries()
    cfg.check()
    if run is None:
        run = new_run_dir_all_ranks(cfg)
    if os.environ.get("RANK", "0") != "0":  # other ranks of a torchrun job train silently
        run_training(cfg, run, resume=resume, progress=False)
        return run
    print(f"run directory: {run.path}")
    print("(Ctrl+C stops after saving a checkpoint; `workbench resume RUN` continues it)")
    watcher = _ProgressPrinter(run)
    watcher.start()
    try:
        with stop_signals():
            run_training(cfg, run, resume=resume, progress=False)
    finally:
        watcher.stop()
    rep = RunDir(run.path).data_report()
    st = run.status()
    if rep and not watcher.printed_report:
        from .data import DataReport
        print(format_report(DataReport.from_dict(rep)))
    _print_result(run, st)
    return run


class _ProgressPrinter:
    """Follows the run directory from a thread and shows progress (the same files the dashboard reads).

    On a terminal: a tqdm bar, closed as soon as the last step is reached. Into a file or a pipe (stderr
    not a TTY, e.g. `workbench train c.yaml > log 2>&1`), a redrawing bar would write a new copy every
    half second, so plain lines are printed instead: one every `LINE_EVERY` seconds and one at the end.
    """

    POLL = 0.5  # seconds between reads of status.json
    LINE_EVERY = 30.0  # seconds between progress lines when not on a terminal

    def __init__(self, run: Any):
        import threading
        self.run, self.printed_report = run, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loss(self) -> str:
        m = self.run.metrics()
        last = m["loss"].dropna() if len(m) and "loss" in m else []
        return f"{last.iloc[-1]:.4f}" if len(last) else ""

    def _loop(self) -> None:
        from tqdm import tqdm

        from .data import DataReport, format_report
        from .estimate import format_seconds
        tty = sys.stderr.isatty()  # where tqdm draws
        bar, phase, done = None, None, False
        last_line: tuple[int, float] = (-1, 0.0)  # (step, time) of the last progress line
        while True:
            stopping = self._stop.is_set()
            if not self.printed_report and self.run.report_file.exists():
                print(format_report(DataReport.from_dict(self.run.data_report())), flush=True)
                self.printed_report = True
            st = self.run.status()
            total, step = st.get("total_steps"), int(st.get("step") or 0)
            if st.get("phase") != phase and st.get("phase") not in (None, "training"):
                if bar is not None:  # training is over: close the bar before the next phase is announced
                    bar.close()
                    bar, done = None, True
                tqdm.write(f"... {st['phase']}")
            phase = st.get("phase")
            if total and phase == "training" and not done:
                loss = self._loss()
                if tty:
                    if bar is None:
                        bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)
                    bar.n = step
                    if loss:
                        bar.set_postfix(loss=loss, refresh=False)
                    bar.refresh()
                    if step >= total:
                        bar.close()
                        bar, done = None, True
                elif step != last_line[0] and (last_line[0] < 0 or step >= total or stopping
                                               or time.monotonic() - last_line[1] >= self.LINE_EVERY):
                    eta = st.get("eta_seconds")
                    print(f"training: step {step}/{total} ({step / total:.0%})" + (f", loss {loss}" if loss else "")
                          + (f", ETA {format_seconds(eta)}" if eta is not None and step < total else ""), flush=True)
                    last_line = (step, time.monotonic())
                    done = step >= total
            if stopping:
                break
            self._stop.wait(self.POLL)
        if bar is not None:
            bar.close()


def _print_result(run: Any, st: dict[str, Any]) -> None:
    path = shlex.quote(str(run.path))  # the hints are pasted into a shell: a `;` or `$(...)` in a path stays text
    ev = run.evaluation()
    b, a = ev.get("before", {}), ev.get("after", {})
    if st.get("state") == "stopped":
        print(f"stopped at step {st.get('step')} with a checkpoint; continue with: workbench resume {path}")
        return
    from .figures.evaluation import METRIC_NAMES
    from .generate import GENERATORS
    from .tasks import get_task

    task = get_task(run.config().task)
    head, second = task.headline, [k for k in task.directions if k not in (task.headline, "loss")][:1]
    for when, m in (("before", b), ("after", a)):
        if m.get(head) is not None:
            extra = "".join(f"{METRIC_NAMES.get(k, k)} {m[k]:.3f}, " for k in second if m.get(k) is not None)
            print(f"test {head} {when} fine-tuning:{' ' * (when == 'after')} {m[head]:.3f}   ({extra}n={m['n']})")
    _print_baseline(ev, head)
    print(f"run: {run.path}  (state: {st.get('state')})")
    verb = "generate" if task.auto_model in GENERATORS else "predict"  # a model that writes text
    verb = "fill-mask" if task.name == "masked-lm" else verb
    print(f"next: workbench eval {path}   |   workbench {verb} {path} \"some text\"")


def _print_baseline(ev: dict[str, Any], metric: str = "accuracy") -> None:
    """The majority-class line under before/after, and a warning when "after" does not beat it."""
    from .baseline import baseline_line, baseline_warning

    line = baseline_line(ev)
    if line:
        print(f"test {line}")
    warn = baseline_warning(ev, metric)
    if warn:
        print(f"warning: {warn}")


# --- subcommands ---------------------------------------------------------------------------------
def cmd_demo(a: argparse.Namespace) -> int:
    from .config import RunConfig
    raw = json.loads(json.dumps(DEMO))
    if a.quick:
        raw["data"].update(max_train_samples=400, max_eval_samples=200)
    if a.output_dir:
        raw["output_dir"] = a.output_dir
    cfg = RunConfig.from_dict(raw)
    print("workbench demo: fine-tune MiniLM (built-in) on Rotten Tomatoes (built-in), offline.")
    t0 = time.time()
    _train_foreground(cfg)
    print(f"total time: {time.time() - t0:.0f}s")
    return 0


def _distributed_sets(a: argparse.Namespace, sets: dict[str, Any], strategy: str) -> list[str]:
    """`--nproc`, `--nnodes`, `--master` as `distributed.*` settings; `--nproc` with `strategy: none` means DDP."""
    notes = []
    if a.nproc is not None:
        sets["distributed.nproc_per_node"] = a.nproc
    if a.nnodes is not None:
        sets["distributed.nnodes"] = a.nnodes
    if a.master:
        host, _, port = a.master.rpartition(":")
        if not host or not port.isdigit():
            from .errors import ConfigError
            raise ConfigError(f"--master {a.master!r}: expected HOST:PORT of machine 0, e.g. 10.0.0.1:29500")
        sets["distributed.master_addr"], sets["distributed.master_port"] = host, int(port)
    if (a.nproc or 1) * (a.nnodes or 1) > 1 and strategy == "none" and "distributed.strategy" not in sets:
        sets["distributed.strategy"] = "ddp"
        notes.append("several processes and distributed.strategy: none: training with ddp (each process holds the "
                     "whole model); set distributed.strategy to fsdp to shard it.")
    return notes


def _train_distributed(cfg: Any, run: Any, *, resume: bool = False, node_rank: int = 0,
                       grants: dict[str, bool] | None = None) -> int:
    """A multi-process run in the foreground: torchrun started and watched (`distributed.supervise`), progress
    from the run directory on machine 0, Ctrl+C a graceful stop of every rank."""
    from .distributed import supervise

    d = cfg.distributed
    print(f"run directory: {run.path}\n{d.world_size} processes ({d.nproc_per_node} per machine x {d.nnodes} "
          f"machine(s)), strategy {d.strategy}; the launch is in {run.path / 'launch'}")
    print("(Ctrl+C stops every process after saving a checkpoint; `workbench resume RUN` continues it)")
    watcher = _ProgressPrinter(run) if node_rank == 0 else None
    log = open(run.log_file, "a", encoding="utf-8") if node_rank == 0 else None
    if watcher:
        watcher.start()
    try:
        rc = supervise(cfg, run, node_rank=node_rank, resume=resume, log=log, **(grants or {}))
    finally:
        if watcher:
            watcher.stop()
        if log:
            log.close()
    if node_rank != 0:
        print(f"machine {node_rank}: " + ("done; machine 0 holds the run's status and results." if rc == 0 else
                                          f"the launcher ended with code {rc} (the reason is above)."))
        return 0 if rc == 0 else 2
    st = run.status()
    if st.get("state") == "failed":
        raise WorkbenchError(f"run {run.name} failed: {st.get('error')}")
    _print_result(run, st)
    return 0


def _file_strategy(path: str, sets: dict[str, Any]) -> str:
    """`distributed.strategy` as the file and `--set` give it, read before the config is checked (a config may be
    valid only with its `--set` overrides)."""
    if "distributed.strategy" in sets:
        return str(sets["distributed.strategy"])
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {}
        return str((raw.get("distributed") or {}).get("strategy", "none"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "none"  # load_config says what is wrong with the file


def _config_grants(cfg: Any) -> dict[str, bool]:
    """The grants of a config the user gave on this command line (their own choice, as `launch()` takes them)."""
    return {"trust_remote_code": cfg.model.trust_remote_code, "allow_pickle": cfg.model.allow_pickle}


def _distributed_config(a: argparse.Namespace) -> Any:
    """The config of `train`/`launch-cmd`: the file, then `--set`, `--name`, `--output-dir` and the distributed flags;
    its load notes printed."""
    from .config import load_config
    sets = _parse_sets(a.set)
    if a.name:
        sets["name"] = a.name
    if getattr(a, "output_dir", None):
        sets["output_dir"] = a.output_dir
    notes = _distributed_sets(a, sets, _file_strategy(a.config, sets))
    cfg = load_config(a.config, sets)
    for note in cfg.load_notes + notes:
        print(f"note: {note}", file=sys.stderr)
    return cfg


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _distributed_config(a)
    if not 0 <= a.node_rank < cfg.distributed.nnodes:
        from .errors import ConfigError
        raise ConfigError(f"--node-rank {a.node_rank}: machines are numbered 0 to distributed.nnodes - 1 "
                          f"({cfg.distributed.nnodes - 1} here); set --nnodes to the number of machines.")
    from .models import check_model_source
    check_model_source(cfg.model)  # before a run directory exists: no failed run for a wrong path
    if cfg.distributed.world_size > 1 and "WORLD_SIZE" not in os.environ:
        from .distributed import DistributedError, cpu_problem
        if (why := cpu_problem(cfg)) is not None:
            raise DistributedError(why)
        from .rundir import RunDir, new_run_dir
        _quiet_libraries()
        if cfg.distributed.nnodes > 1:
            if not cfg.name:
                from .errors import ConfigError
                raise ConfigError("several machines write one run directory: give it a name every machine uses "
                                  "(--name NAME, the same on each), on a filesystem they all see.")
            if a.node_rank:  # machine 0 creates the run directory; the others wait for the rendezvous
                root = Path(cfg.output_dir).expanduser() if cfg.output_dir else None
                from .paths import runs_root
                run = RunDir((root or runs_root()) / cfg.name)
                return _train_distributed(cfg, run, node_rank=a.node_rank, grants=_config_grants(cfg))
        if a.detach:
            from .launch import launch
            h = launch(cfg)
            print(f"started run {h.run.name} ({cfg.distributed.world_size} processes) under process {h.pid}\n"
                  f"run directory: {h.path}")
            return 0
        return _train_distributed(cfg, new_run_dir(cfg), grants=_config_grants(cfg))
    if a.detach:
        from .launch import launch
        h = launch(cfg)
        path = shlex.quote(str(h.path))
        print(f"started run {h.run.name} in process {h.pid}\nrun directory: {h.path}\n"
              f"watch: workbench status {path}   stop: workbench stop {path}")
        return 0
    _train_foreground(cfg)
    return 0


def cmd_launch_cmd(a: argparse.Namespace) -> int:
    from .distributed import accelerate_config, cluster_command, deepspeed_config
    cfg = _distributed_config(a)
    print(cluster_command(cfg, a.config))
    print("# accelerate's config file for the same launch (`accelerate launch --config_file F -m workbench.worker "
          "RUN --rank-process`; the run writes it as launch/accelerate_config.yaml):")
    print(yaml.safe_dump(accelerate_config(cfg), sort_keys=False).rstrip())
    if cfg.distributed.strategy == "deepspeed":
        print("# launch/deepspeed.json:")
        print(json.dumps(deepspeed_config(cfg), indent=2))
    return 0


def cmd_estimate(a: argparse.Namespace) -> int:
    """Parameters and per-device training memory of a config under every strategy, without loading weights."""
    from .config import load_config
    from .errors import ConfigError, ModelError
    from .estimate import (KNOWN_PARAMS, device_memory_budget, estimate_run, format_bytes, load_model_config,
                           plan_table)

    sets = _parse_sets(a.set)
    cfg = load_config(a.config)
    notes = _distributed_sets(a, sets, cfg.distributed.strategy)
    cfg = load_config(a.config, sets)
    for note in cfg.load_notes + notes:
        print(f"note: {note}", file=sys.stderr)
    if a.memory_gb is not None and a.memory_gb <= 0:
        raise ConfigError(f"--memory-gb {a.memory_gb}: give the memory of one device in GB, e.g. --memory-gb 24")
    name = cfg.model.name_or_path
    conf = load_model_config(name)
    if conf is None and name not in KNOWN_PARAMS:
        raise ModelError(f"no config.json for {name!r} on this machine (a hub id needs the network, a folder must "
                         f"hold config.json), so its size is unknown. Fix: `workbench download {name}` for a built-in "
                         f"model, or set model.name_or_path to a local model folder.")
    budget = a.memory_gb * 1024 ** 3 if a.memory_gb is not None else device_memory_budget()
    source = "stated (--memory-gb)" if a.memory_gb is not None else "free GPU memory" if budget else None
    t = cfg.training
    est = estimate_run(cfg, cfg.data.max_train_samples or 1000, model_config=conf, max_tokens=a.max_tokens,
                       memory_budget=budget)
    d = cfg.distributed
    print(f"model: {name}   task: {cfg.task}   method: {cfg.peft.method}")
    trainable = f"{est.trainable_params:,}" if est.trainable_params is not None else "unknown"
    print(f"parameters: {est.total_params:,} ({trainable} trainable)")
    print(f"per-device batch {t.per_device_train_batch_size} x {a.max_tokens or cfg.data.max_length} tokens "
          f"(the longest batch), {d.world_size} process(es) (nproc_per_node {d.nproc_per_node} x nnodes {d.nnodes}); "
          f"strategy {d.strategy} -> row {est.plan_choice!r}")
    table = plan_table(est)
    cols = [c for c in table.columns if c != "strategy"]
    width = max(len(s) for s in table["strategy"])
    print(f"\nmemory per device, MB (the runtime's fixed {format_bytes(est.memory.get('runtime overhead', 0))} per "
          f"process included in the device total):")
    print(f"  {'strategy':<{width}}  " + "  ".join(f"{c:>14}" for c in cols))
    for _, row in table.iterrows():
        print(f"  {row['strategy']:<{width}}  " + "  ".join(f"{row[c]:>14,.0f}" for c in cols))
    for note in est.notes:
        print(f"note: {note}")
    if "activations" not in est.memory:
        print("note: activations are unknown until the model's config.json is on disk: the rows leave them out.")
    if budget is None:
        print("\nno memory budget: give --memory-gb GB (per device) to check the plan against it (no GPU here to "
              "ask).")
    elif est.suggestion is None:
        print(f"\nfits: {est.plan_choice} needs {_plan_need(est)} per device, within {format_bytes(budget)} "
              f"({source}).")
    else:
        print(f"\ndoes not fit {format_bytes(budget)} per device ({source}).")
        print(f"suggestion: {est.suggestion['message']}")
    return 0


def _plan_need(est: Any) -> str:
    from .estimate import device_total, format_bytes
    return format_bytes(device_total(est.plan[est.plan_choice])) if est.plan_choice in est.plan else "?"


def cmd_search(a: argparse.Namespace) -> int:
    from .config import load_config
    from .search import run_search
    cfg = load_config(a.config, _parse_sets(a.set))
    for note in cfg.load_notes:
        print(f"note: {note}", file=sys.stderr)
    _quiet_libraries()
    run_search(cfg, n_trials=a.n_trials, storage=a.storage, study=a.study)
    return 0


def _grants(a: argparse.Namespace) -> dict[str, bool]:
    """What this command line grants the run's model: only explicit flags, never the run's own files."""
    return {"trust_remote_code": a.trust_remote_code, "allow_pickle": a.allow_pickle}


def cmd_resume(a: argparse.Namespace) -> int:
    from .launch import resume
    from .rundir import RunDir
    run = RunDir(a.run).require()
    cfg = run.config(**_grants(a))  # refuses a config.yaml that asks for code or pickle loading
    if a.node_rank == 0:  # machine 0 owns the run: the others only join it
        st = run.require_idle("stop it before resuming.")
        if st.get("state") == "completed":
            raise WorkbenchError(f"run {run.name} has already completed; start a new run to train further.")
        if a.nproc is not None and a.nproc != cfg.distributed.nproc_per_node:
            from .distributed import change_process_count
            cfg = change_process_count(run, cfg, a.nproc)
    elif not 0 < a.node_rank < cfg.distributed.nnodes:
        raise WorkbenchError(f"--node-rank {a.node_rank}: run {run.name} has distributed.nnodes = "
                             f"{cfg.distributed.nnodes} (ranks 0 to {cfg.distributed.nnodes - 1}).")
    if cfg.distributed.world_size > 1 and "WORLD_SIZE" not in os.environ and not a.detach:
        if a.node_rank == 0:
            run.update_status(state="queued", error=None)
        return _train_distributed(cfg, run, resume=True, node_rank=a.node_rank, grants=_grants(a))
    if a.detach:
        h = resume(run, **_grants(a))
        print(f"resumed {run.name} in process {h.pid}")
        return 0
    st = run.status()
    if st.get("state") == "completed":
        raise WorkbenchError(f"run {run.name} has already completed; start a new run to train further.")
    _train_foreground(cfg, run, resume=True)
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    from .launch import attach
    h = attach(a.run)
    st = h.stop(wait=not a.no_wait)
    print(f"{h.run.name}: {st.get('state')} at step {st.get('step')}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from .rundir import RunDir
    from .training import eta_text
    run = RunDir(a.run).require()
    st = run.status()
    print(f"{run.name}: {st.get('state')}  step {st.get('step')}/{st.get('total_steps')}  ETA {eta_text(st)}"
          + (f"  ({st['phase']})" if st.get("phase") else ""))
    if st.get("note"):
        print(f"note: {st['note']}")
    if st.get("error"):
        print(f"error: {st['error']}")
    if st.get("note"):
        print(f"note: {st['note']}")
    if isinstance(st.get("adversarial"), dict):
        from .adversarial import status_line
        print(status_line(st["adversarial"]))
    if (run.path / "tensorboard").is_dir():
        print(f"curves: workbench tensorboard {run.path}")
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    import pandas as pd

    from .paths import runs_root
    from .rundir import list_runs
    rows = [r.summary() for r in list_runs(a.dir)]
    if not rows:
        print(f"no runs in {Path(a.dir) if a.dir else runs_root()} yet: start one with `workbench demo` or "
              f"`workbench train CONFIG`")
        return 0
    heads = list(dict.fromkeys(r["headline"] for r in rows))  # each task's headline metric, before and after
    # The majority-class score beside before -> after (tasks without a baseline leave it empty).
    scores = [c for h in heads for c in (f"{h}_baseline", f"{h}_before", h)]
    df = pd.DataFrame(rows)[["run", "state", "model", "data", "method", "step"] + scores]
    df[scores] = df[scores].apply(pd.to_numeric, errors="coerce")  # a missing score prints "-", not None
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"))
    for r in rows:  # a damaged file blanks its own fields above; say what is wrong with it
        for problem in r["problems"]:
            print(f"problem in {r['run']}: {problem}")
        if r.get("baseline_warning"):
            print(f"warning for {r['run']}: {r['baseline_warning']}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_run
    from .rundir import RunDir
    run = RunDir(a.run).require()
    if a.data:
        _quiet_libraries()
        m = evaluate_run(run, split_file=a.data, **_grants(a))["metrics"]
        print(f"scored {a.data} with {run.name}")
        _print_metrics(m)
        return 0
    ev = run.evaluation()
    if "after" not in ev:
        raise WorkbenchError(f"run {run.name} has no test evaluation yet (state: {run.status().get('state')}).")
    for when in ("before", "after"):
        if when in ev:
            print(f"== {when} fine-tuning ==")
            _print_metrics(ev[when])
    if ev.get("baseline"):
        print("== baseline ==")
        _print_baseline(ev)
    if isinstance(ev.get("before_vs_after"), dict):
        d = ev["before_vs_after"]
        print(f"== tuned minus base, same {d['n']} test prompts ==")
        print(f"{d['metric']} {d['tuned']:.2f} - {d['base']:.2f} = {d['difference']:+.2f}, "
              f"{d['confidence']:.0%} paired bootstrap interval [{d['low']:+.2f}, {d['high']:+.2f}] "
              f"({d['n_resamples']} resamples): " + ("the interval excludes 0, the gain is not chance" if
                                                     d["excludes_zero"] and d["low"] > 0 else
                                                     "the interval excludes 0: the tuned model is worse" if
                                                     d["excludes_zero"] else "the interval contains 0: no clear "
                                                     "difference at this size"))
    return 0


def _print_metrics(m: dict[str, Any]) -> None:
    import pandas as pd
    if "per_class" not in m:  # a task other than classification: its scalar metrics
        print("   ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)) + f"   n={m.get('n')}")
        return
    print(f"accuracy {m['accuracy']:.4f}   macro F1 {m['f1_macro']:.4f}   weighted F1 {m['f1_weighted']:.4f}   "
          f"micro F1 {m['f1_micro']:.4f}   n={m['n']}")
    print(pd.DataFrame(m["per_class"]).T.to_string(float_format=lambda x: f"{x:.3f}"))
    cm = pd.DataFrame(m["confusion_matrix"], index=[f"gold {x}" for x in m["labels"]],
                      columns=[f"pred {x}" for x in m["labels"]])
    print(cm.to_string())


def cmd_predict(a: argparse.Namespace) -> int:
    from .predict import Predictor
    _quiet_libraries()
    texts = a.text if a.text != ["-"] else [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    from .errors import DataError
    for task, instead in (("masked-lm", 'fill-mask {run} "a text with [MASK] in it"'),
                          ("causal-lm", 'generate {run} "the beginning of a text"')):
        if _pretraining_base(a.run, task) is not None:
            raise DataError(f"a {task} run has no classes to predict: its model " + (
                "guesses masked tokens" if task == "masked-lm" else "continues text") + ". Use: workbench "
                + instead.format(run=a.run) + " (add --compare-base to see the base model next to it).")
    p = Predictor.from_run(a.run, **_grants(a))
    context = a.context
    if a.context_file:
        from .data.io import decode
        path = Path(a.context_file).expanduser()
        if not path.is_file():
            raise DataError(f"--context-file {a.context_file}: no such file. Give a text file holding the context.")
        context, _ = decode(path.read_bytes(), path.name)
    if context is not None:
        if p.task.name != "question-answering":
            raise DataError(f"--context is for question-answering runs; {a.run} is a {p.task.name} run.")
        out = p.predict(texts, contexts=[context] * len(texts))
        for _, row in out.iterrows():
            where = f"[{row['start']}:{row['end']}]" if row["start"] >= 0 else ""
            print(f"{row['predicted']}\t{where}\t{row['text'][:80]}")
        return 0
    out = p.predict(texts)
    if "p_" + p.labels[0] not in out:  # a task whose answer is not one class per text (e.g. entities)
        for _, row in out.iterrows():
            print(f"{row['predicted']}\t{row['text'][:80]}")
        return 0
    for _, row in out.iterrows():
        probs = "  ".join(f"{lab}={pr:.3f}" for lab, pr in shown_probabilities(row, p.labels))
        print(f"{row['predicted']}\t{probs}\t{row['text'][:80]}")
    return 0


def shown_probabilities(row: Any, labels: list[str], all_up_to: int = 4, top: int = 3) -> list[tuple[str, float]]:
    """The class probabilities `predict` prints for one row: every class, in label order, for a small label set
    (sentiment, NLI); else the `top` most probable, highest first (a relation model has ~18 classes)."""
    probs = [(lab, float(row[f"p_{lab}"])) for lab in labels]
    return probs if len(labels) <= all_up_to else sorted(probs, key=lambda x: -x[1])[:top]


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import as_conversation, generate_answers, load_generator
    _quiet_libraries()
    s = _sampling(a)
    prompts = a.prompt if a.prompt != ["-"] else [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    base = _pretraining_base(a.run, "causal-lm")
    if a.raw or base is not None or a.compare_base:  # a pre-trained LM continues a document: no chat template
        return _continue_texts(a, prompts, s, base)
    model, tok, max_length = load_generator(a.run, **_grants(a))
    answers = generate_answers(model, tok, [as_conversation(p, a.system) for p in prompts], sampling=s,
                               max_length=max_length, seed=a.seed)
    for p, ans in zip(prompts, answers):
        print(ans if len(prompts) == 1 else f"> {p}\n{ans}\n")
    return 0


def _pretraining_base(run_or_model: str, task: str) -> str | None:
    """The base model of a `task` (masked-lm / causal-lm) run directory, else None."""
    from .rundir import RunDir

    run = RunDir(run_or_model)
    if not run.exists():
        return None
    cfg = run.config()
    return cfg.model.name_or_path if cfg.task == task else None


def _side_by_side(a: argparse.Namespace, base: str | None) -> list[tuple[str, Any]]:
    """[(label, LanguageModel)]: the given model (a run's adapted one), and with --compare-base its base first."""
    from .errors import ConfigError
    from .playground import load_lm

    kind = "masked" if a.cmd == "fill-mask" else "causal"
    lms = [(f"adapted ({a.run})" if base else a.run, load_lm(a.run, kind))]
    if a.compare_base:
        if base is None:
            raise ConfigError(f"--compare-base compares a pre-training run with the model it started from; "
                              f"{a.run} is not a {'masked-lm' if kind == 'masked' else 'causal-lm'} run directory.")
        lms.insert(0, (f"base ({base})", load_lm(base, kind)))
    for _, lm in lms:
        if lm.note:
            print(f"note: {lm.note}")
    return lms


def _continue_texts(a: argparse.Namespace, prompts: list[str], s: Any, base: str | None) -> int:
    from .playground import continue_text

    lms = _side_by_side(a, base)
    for p in prompts:
        for label, lm in lms:
            out = continue_text(lm, p, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                seed=a.seed or 0)
            head = f"[{label}] " if len(lms) > 1 else ""
            print(f"{head}{p}{out}" if len(prompts) == 1 and len(lms) == 1 else f"{head}{p}|{out}\n")
    return 0


def cmd_fill_mask(a: argparse.Namespace) -> int:
    """The k most likely tokens for each [MASK], with probabilities; with --compare-base, the base model's too."""
    from .playground import fill_mask
    _quiet_libraries()
    texts = a.text if a.text != ["-"] else [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    lms = _side_by_side(a, _pretraining_base(a.run, "masked-lm"))
    for text in texts:
        print(f"> {text}")
        for label, lm in lms:
            for i, top in enumerate(fill_mask(lm, text, a.top_k)):
                where = f" mask {i + 1}" if text.count("[MASK]") > 1 else ""
                print(f"  {label}{where}: " + ", ".join(f"{t['text'] or t['token']} {t['probability']:.3f}"
                                                         for t in top))
    return 0


def _sampling(a: argparse.Namespace) -> Any:
    from .errors import ConfigError
    from .generate import Sampling
    s = Sampling(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                 repetition_penalty=a.repetition_penalty)
    if s.problems():
        raise ConfigError(s.problems())
    return s


CHAT_HELP = "/reset starts a new conversation, /exit (or Ctrl-D) ends"


def cmd_chat(a: argparse.Namespace) -> int:
    """Talk to a model in the terminal: each answer is streamed as it is written, the whole conversation so far
    goes through the model's chat template every turn (so the model sees the history)."""
    import torch

    from .generate import as_conversation, is_encoder_decoder, load_generator, stream_answer
    from .tasks.causal_lm_sft.encode import prompt_ids, template_kind
    _quiet_libraries()
    s = _sampling(a)
    model, tok, max_length = load_generator(a.run, **_grants(a))
    if a.seed is not None:
        torch.manual_seed(a.seed)
    how = "greedy" if s.temperature == 0 else f"sampling at temperature {s.temperature:g}"
    template = "its chat template" if template_kind(tok) == "model" else "the workbench's plain chat template " \
        "(the tokenizer has none)"
    # A text-to-text model maps one text to one text: it is not given the history, each message is answered
    # alone (as `workbench generate` would), so what it writes does not depend on what came before.
    single = is_encoder_decoder(model)
    if single:
        template = "an encoder-decoder: each message is answered alone, the conversation is not kept"
    print(f"chatting with {a.run} ({how}, at most {s.max_new_tokens} new tokens, {template}); {CHAT_HELP}.")
    tty = sys.stdin.isatty()
    history = as_conversation([], a.system)
    while True:
        if tty:
            print("you> ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:  # end of input (Ctrl-D, or the end of a piped file)
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd = text.split()[0].lower()
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                history = as_conversation([], a.system)
                print("(new conversation)")
            else:
                print(f"(unknown command {cmd}: {CHAT_HELP})")
            continue
        if single:
            history = as_conversation([], a.system)
        history.append({"role": "user", "content": text})
        n = len(tok(text)["input_ids"]) if single else len(prompt_ids(tok, history, 1 << 30))
        if n > max_length and single:
            print(f"(the message is {n} tokens, more than the {max_length} this model reads: its end is left out)")
        elif n > max_length:
            print(f"(the conversation is {n} tokens, more than the {max_length} this model reads: its oldest "
                  f"tokens are left out; /reset to start over)")
        print("model> " if tty else "", end="", flush=True)
        try:
            answer = stream_answer(model, tok, history, lambda piece: print(piece, end="", flush=True),
                                   sampling=s, max_length=max_length)
        except KeyboardInterrupt:  # stop this answer; the question is taken back
            history.pop()
            print("\n(interrupted)")
            continue
        print()
        history.append({"role": "assistant", "content": answer})
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    from .assets import BUILTIN_DATASETS
    from .paths import assets_dir
    for d in BUILTIN_DATASETS.values():
        cached = (assets_dir() / "datasets" / d.cache_name).exists()
        print(f"{d.name:18s} {'cached ' if cached else 'fetched on first use'}  {d.description}")
    print("\nOr give a file (CSV, TSV, JSON, JSONL, Parquet) as data.source, or `hub:NAME` when online; for "
          "masked-lm / causal-lm (continued pre-training) a .txt file or a folder of .txt files.")
    print("Fetch them ahead for offline use (a class, a train): `workbench download --all`.")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .assets import BUILTIN_MODELS
    from .paths import assets_dir
    for m in BUILTIN_MODELS.values():
        cached = (assets_dir() / "models" / m.name / "config.json").exists()
        print(f"{m.name:14s} {'cached ' if cached else 'fetched on first use'}  {m.description}")
    from .gguf_files import supported_architectures
    print("\nOr give a local folder (config.json + model.safetensors), a hub id when online, or a .gguf file\n"
          f"(converted once to safetensors; architectures: {', '.join(supported_architectures())}).")
    print("Fetch them ahead for offline use (a class, a train): `workbench download --all`.")
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from .assets import builtin_names, download
    from .estimate import format_bytes
    from .paths import assets_dir
    known = builtin_names()
    if a.all and a.names:
        raise WorkbenchError("give built-in names or --all, not both.")
    if not a.all and not a.names:
        raise WorkbenchError(f"name the built-ins to fetch, or --all. Built-ins: {', '.join(known)}.")
    unknown = [n for n in a.names if n not in known]
    if unknown:  # before fetching anything: a typo should not cost a 90 MB download first
        raise WorkbenchError(f"no built-in model or data set called {', '.join(map(repr, unknown))}. "
                             f"Built-ins: {', '.join(known)}.")
    names = known if a.all else list(dict.fromkeys(a.names))
    _quiet_libraries()
    print(f"fetching {len(names)} built-in(s) into {assets_dir()}")
    failed, total = [], 0
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}: ", end="", flush=True)
        try:
            f = download(name)
        except WorkbenchError as e:
            print("failed")
            failed.append(f"{name}: {e}")
            continue
        if f.already_cached:
            print(f"skipped, already cached ({f.kind}, {format_bytes(f.size)})")
            continue
        got = ", ".join(f"{arch} ({format_bytes(n)})" for arch, n in f.archives) or "package already downloaded"
        total += sum(n for _, n in f.archives)
        print(f"done: {got} -> {f.kind} {format_bytes(f.size)} at {f.path}")
    print(f"downloaded {format_bytes(total)}; {len(names) - len(failed)} of {len(names)} ready offline")
    if failed:
        raise WorkbenchError("could not fetch " + "\n".join(failed))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .config import DataConfig, RunConfig
    from .data import format_report
    from .models import load_model_config, load_tokenizer, resolve_model_path
    from .tasks import get_task
    from .tasks.classification import model_max_tokens
    _quiet_libraries()
    sets = _parse_sets(a.set)
    if a.source.endswith((".yaml", ".yml")):
        cfg = RunConfig.from_yaml(a.source)
    else:
        task = a.task or _source_task(a.source)
        cfg = RunConfig(task=task if task != "corpus" else "masked-lm",
                        data=DataConfig(source=a.source, text_column=a.text_column, label_column=a.label_column))
        if a.model:
            cfg.model.name_or_path = a.model
        if task == "corpus":  # text to pre-train on: the model's own objective
            cfg.task = _pretraining_task(load_model_config(cfg.model))
    if sets:
        cfg = cfg.override(sets).check()
    tok = load_tokenizer(resolve_model_path(cfg.model.name_or_path), cfg.model)
    prep = get_task(cfg.task).prepare(cfg.data, cfg.split_seed, tokenizer=tok, raise_on_problems=False,
                                      max_positions=model_max_tokens(load_model_config(cfg.model), tok))
    if cfg.data.augment.operations and prep.report.ok:  # the cheap operations; paraphrases come at training
        from .augment import augment_training_split
        prep = augment_training_split(get_task(cfg.task), prep, cfg.data.augment, cfg.training.seed,
                                      paraphrase=False)
    if cfg.task in ("masked-lm", "causal-lm") and not a.task and not a.source.endswith((".yaml", ".yml")):
        print(f"(read as a corpus for {cfg.task}, the pre-training objective of {cfg.model.name_or_path}; "
              f"--task to choose another)")
    print(format_report(prep.report))
    return 0 if prep.report.ok else 2


def _source_task(source: str) -> str:
    """The task a data source given to `report` is for, when --task does not say: a built-in's own; "corpus" for
    plain text (a .txt/.md file or a folder); token-classification for CoNLL files; else text-classification."""
    from .assets import BUILTIN_DATASETS
    from .tasks.pretraining.corpus import TEXT_SUFFIXES

    if source in BUILTIN_DATASETS and not Path(source).exists():
        return BUILTIN_DATASETS[source].task
    p = Path(source).expanduser()
    if p.is_dir() or p.suffix.lower() in TEXT_SUFFIXES:
        return "corpus"
    return "token-classification" if p.suffix.lower() in (".conll", ".bio", ".iob", ".bmes") else "text-classification"


def _pretraining_task(model_config: Any) -> str:
    """masked-lm for an encoder with a masked-LM head (BERT, MiniLM), causal-lm for a decoder."""
    from transformers.models.auto import modeling_auto as auto

    mtype = getattr(model_config, "model_type", "")
    encoder = mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(model_config, "is_decoder", False)
    return "masked-lm" if encoder else "causal-lm"


def cmd_config(a: argparse.Namespace) -> int:
    from .config import RunConfig, field_help, load_config
    if a.validate:
        from .models import check_model_source
        from .assets import language_advice
        cfg = load_config(a.validate, _parse_sets(a.set))
        for note in cfg.load_notes:
            print(f"note: {note}")
        check_model_source(cfg.model)
        advice = language_advice(cfg.model.name_or_path, cfg.data.source)
        if advice:
            print(f"warning: {advice}")
        print(f"{a.validate}: valid")
        return 0
    if a.explain:
        for k, v in field_help().items():
            print(f"{k:40s} {v}")
        return 0
    print(RunConfig().to_yaml(), end="")
    return 0


def cmd_app(a: argparse.Namespace) -> int:
    import importlib.util
    if importlib.util.find_spec("streamlit") is None:
        # The main install leaves the dashboard out (it is an extra): say which one, not "No module named".
        raise WorkbenchError('the dashboard needs Streamlit, which the main install leaves out. Fix: install the '
                             'app extra, `pip install -e ".[app]"` in a checkout of the repository (or '
                             '`pip install "workbench[app]"`), then run `workbench app` again.')
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.exists():
        raise WorkbenchError(f"app.py not found next to the package ({app}); run `streamlit run app.py` from a "
                             f"checkout of the repository.")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", a.address,
           "--server.port", str(a.port), "--server.enableXsrfProtection", "true", "--browser.gatherUsageStats", "false",
           "--client.showErrorDetails", "none"]
    # The dashboard runs from the repository root (so .streamlit/config.toml applies), not from here: it is
    # handed the runs folder resolved here, the one `workbench runs` lists from this directory.
    from .paths import home, runs_root
    runs = runs_root().resolve()
    env = {**os.environ, "WORKBENCH_RUNS": str(runs), "WORKBENCH_HOME": str(home().resolve())}
    print(f"dashboard reads runs from {runs}", flush=True)
    return _run_child(cmd, cwd=app.parent, env=env)


def cmd_tensorboard(a: argparse.Namespace) -> int:
    import importlib.util

    from . import tracking
    from .paths import runs_root
    if importlib.util.find_spec("tensorboard") is None:
        raise WorkbenchError(f"TensorBoard is not installed here. Fix: `{tracking.INSTALL['tensorboard']}`.")
    logdir = tracking.logdir_for(a.run or runs_root())
    port = tracking.choose_port(a.port)
    print(f"TensorBoard for {logdir}: http://127.0.0.1:{port}/  (Ctrl+C stops it)", flush=True)
    return _run_child(tracking.tensorboard_command(logdir, port), cwd=Path.cwd(), env=dict(os.environ))


def cmd_serve(a: argparse.Namespace) -> int:
    from .deploy.security import ServeSettings, api_key_from  # no FastAPI needed: settings are checked first
    _quiet_libraries()
    key = api_key_from(a.api_key_env, a.api_key_file)
    s = ServeSettings(host=a.host, port=a.port, api_key=key, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                      max_queue=a.max_queue, max_texts=a.max_texts, max_text_chars=a.max_text_chars,
                      max_body_bytes=a.max_body_bytes, max_concurrent_generations=a.max_concurrent_generations,
                      max_new_tokens=a.max_new_tokens, monitor_window=a.monitor_window, log_inputs=a.log_inputs,
                      metrics_need_key=not a.open_metrics).check()
    from .deploy.serve import serve  # the [deploy] extra: a clear message when it is missing
    try:
        serve(a.source, s, announce=lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # uvicorn stops gracefully on Ctrl+C, then raises it again
        print("server stopped", flush=True)
    return 0


def _run_child(cmd: list[str], cwd: Path, env: dict[str, str], grace: float = 10.0) -> int:
    """Run `cmd` until it exits; a SIGTERM/SIGINT to this process is passed on to it, and if it has not
    exited `grace` seconds later it is killed, so stopping `workbench app` never leaves a server behind."""
    import signal
    import subprocess
    import threading
    procs: list[subprocess.Popen] = []
    asked: list[tuple[float, int]] = []

    def forward(signum: int, _frame: Any) -> None:
        asked.append((time.monotonic(), signum))
        if procs and procs[0].poll() is None:
            procs[0].send_signal(signum)

    # Handlers first, so a signal that arrives while the child starts is forwarded too (not only after).
    main_thread = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env)
        procs.append(proc)
        if asked:
            proc.send_signal(asked[0][1])
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0][0] > grace:
                    proc.kill()
                    code = proc.wait()
                    break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # Stopped on request: the exit status of a process ended by that signal (130 for Ctrl+C, 143 for SIGTERM).
    return 128 + asked[0][1] if asked else code


def _clip(text: Any, width: int = 90) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[:width - 1] + "…"


def cmd_errors(a: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis import confident_mistakes, run_row_kind, worst_slices
    from .rundir import RunDir
    from .tasks import get_task
    run = RunDir(a.run).require()
    pred = run.predictions("before" if a.before else "after")
    task = get_task(run.config().task)
    if hasattr(task, "error_report"):  # the task's own error analysis (e.g. entity errors, typed)
        if "correct" in pred:
            wrong = int((~pred["correct"].astype(bool)).sum())
            print(f"{run.name}: {len(pred)} test examples, {wrong} with at least one error")
        else:  # no right or wrong (a language model's held-out documents): the task's tables say how well
            print(f"{run.name}: {len(pred)} test {'documents' if 'tokens' in pred else 'examples'}")
        for title, table in task.error_report(pred, a.n).items():
            print(f"\n== {title} ==")
            print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}", max_colwidth=60) if len(table)
                  else "(none)")
        return 0
    wrong = int((~pred["correct"].astype(bool)).sum())
    print(f"{run.name}: {len(pred)} test examples, {wrong} wrong (accuracy {1 - wrong / max(len(pred), 1):.3f})")
    top = confident_mistakes(pred, a.n)
    print(f"\n== {len(top)} most confident mistakes ==")
    if len(top):
        text = [_clip(x) for x in top["text"]]
        # `row` is a place in the data file (for a CSV its line number, which can pass the number of examples).
        where = {"line": "line", "row": "record"}.get(run_row_kind(run) or "", "line/record")
        t = pd.DataFrame({where: top["row"], "gold": top["gold"], "predicted": top["predicted"],
                          "confidence": top["confidence"], "text": text})
        left = f"{{:<{max(map(len, text))}}}".format  # pandas right-aligns strings; text reads better left
        print(t.to_string(index=False, float_format=lambda x: f"{x:.3f}", formatters={"text": left}, justify="left"))
    sl = worst_slices(pred, patterns=a.pattern, min_size=a.min_size)
    print(f"\n== worst slices (at least {a.min_size} examples) ==")
    t = sl[["feature", "slice", "n", "accuracy", "f1_macro", "errors"]].head(a.slices)
    t = t.assign(f1_macro=t["f1_macro"].map(lambda x: "-" if pd.isna(x) else f"{x:.3f}"),
                 vs_all=t.index.map(sl["delta_accuracy"].map("{:+.3f}".format)))
    print(t.to_string(index=False, float_format=lambda x: f"{x:.3f}") if len(t) else "(none)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .analysis import compare_runs, compare_summary
    from .rundir import RunDir
    ra, rb = RunDir(a.run_a).require(), RunDir(a.run_b).require()
    diff = compare_runs(ra, rb)
    s = compare_summary(diff)
    print(f"A: {ra.name}  accuracy {s['accuracy_a']:.3f}\nB: {rb.name}  accuracy {s['accuracy_b']:.3f}  "
          f"(n={s['n']})")
    print(f"fixed by B: {s['fixed']}   broken by B: {s['broken']}   both wrong: {s['both_wrong']}   "
          f"both right: {s['both_right']}   net: {s['net']:+d}")
    for change in ("fixed", "broken", "both wrong"):
        # The examples where B is most sure of itself: the clearest gains and the clearest regressions.
        part = diff[diff["change"] == change].sort_values("confidence_b", ascending=False).head(a.n)
        if not len(part):
            continue
        print(f"\n== {change} ({s[change.replace(' ', '_')]}) ==")
        for _, r in part.iterrows():
            print(f"  row {r['row']}  gold {r['gold']}  A: {r['predicted_a']} ({r['confidence_a']:.2f})  "
                  f"B: {r['predicted_b']} ({r['confidence_b']:.2f})  {_clip(r['text'], 80)}")
    return 0


def cmd_ensemble(a: argparse.Namespace) -> int:
    from . import ensemble as E
    if len(a.runs) < 2:
        raise WorkbenchError(E._too_few([Path(r).name for r in a.runs]))
    weights = E.parse_weights(a.weights, len(a.runs)) if a.weights else None
    if a.split_file or not all(_has_probs(r) for r in a.runs):
        _quiet_libraries()  # a model is loaded to score the split
    ens = E.ensemble_runs(a.runs, weights=weights, split_file=a.split_file, **_grants(a))
    for m in ens.members:
        if m.source != "predictions.jsonl":
            print(f"note: {m.name}: probabilities {m.source}")
    for note in ens.notes:
        print(f"note: {note}")
    print(f"{len(ens.members)} runs, {len(ens.predictions)} test examples (split {ens.fingerprint}), "
          f"{'weights ' + ', '.join(f'{w:.2f}' for w in ens.weights) if a.weights else 'equal weights'}")
    print(ens.scores.drop(columns=["weight"] if not a.weights else []).to_string(
        index=False, float_format=lambda x: f"{x:.4f}", na_rep="-"))
    c, h = ens.comparison, ens.headline
    d = ens.metrics["ensemble"][h] - ens.metrics[ens.best][h]
    print(f"\nensemble vs best member ({ens.best}): {h} {d:+.4f}; fixed {c['fixed']}, broken {c['broken']}, "
          f"both wrong {c['both_wrong']} (net {c['net']:+d})")
    if "bootstrap_low" in c:
        print(f"accuracy difference {c['accuracy_difference']:+.4f}, 95% paired bootstrap interval "
              f"[{c['bootstrap_low']:+.4f}, {c['bootstrap_high']:+.4f}]; McNemar exact p = {c['mcnemar_p']:.4g}"
              + (": unlikely to be chance" if c["mcnemar_p"] < 0.05 else ": could be chance at this size"))
    part = E.filter_table(ens.table, "disagree")
    print(f"\n== members disagree on {len(part)} of {len(ens.table)} examples"
          + (f"; the {min(a.n, len(part))} where the ensemble is least sure ==" if len(part) else " =="))
    if len(part):
        part = part.sort_values("ensemble_confidence").head(a.n)
        for _, r in part.iterrows():
            votes = "  ".join(f"{m.name}: {r[f'predicted_{m.name}']} ({r[f'confidence_{m.name}']:.2f})"
                              for m in ens.members)
            print(f"  row {r['row']}  gold {r['gold']}  ensemble {r['ensemble']} ({r['ensemble_confidence']:.2f}, "
                  f"{r['change']})  {votes}  {_clip(r['text'], 60)}")
    out = E.write_ensemble(ens, Path(a.out) if a.out else E.default_folder(ens.members, a.name))
    print(f"\nwrote {out}/ensemble.json, members.json, disagreements.jsonl")
    return 0


def _has_probs(run: str) -> bool:
    """Whether a run's predictions.jsonl has p_<class> columns (read on its first line only)."""
    try:
        with open(Path(run) / "predictions.jsonl", encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return True  # the member check says what is wrong with the file
    return isinstance(first, dict) and any(str(k).startswith("p_") for k in first)


def cmd_attention(a: argparse.Namespace) -> int:
    from . import attention as att
    from .figures import attention as figs
    _quiet_libraries()
    # Loads are cached: the base and the tuned model are each read once, whatever is asked for.
    model, tok = att.load_for_attention(a.run, base=a.base, **_grants(a))
    task = att.model_task(model)
    if att.readout_kind(task) == "answer":
        return _answer_attention(a, model, tok)
    if a.context is not None:
        raise WorkbenchError(att.NOT_QA)
    a.max_tokens = 128 if a.max_tokens is None else a.max_tokens
    windows = att.token_windows(tok, a.text, a.pair, max_tokens=a.max_tokens, task=task)
    index = 0 if a.window is None else a.window
    if a.token is not None and att.readout_kind(task) == "word":
        # The chosen word decides the window unless --window is given too; then they must agree.
        holds = att.word_window(windows, tok, a.text, a.token, task=task)
        if a.window is None:
            index = holds
        elif att.pick_window(windows, a.window) != windows[holds]:
            n, asked = windows[-1][1], att.pick_window(windows, a.window)
            raise WorkbenchError(f"word {a.token} is in window {holds} ({att.window_label(windows[holds], n)}), "
                                 f"not in window {a.window} ({att.window_label(asked, n)})."
                                 f" Fix: leave out --window (the window that holds the word is shown), or give "
                                 f"--window {holds}.")
    window = att.pick_window(windows, index)
    res = att.attention_maps(model, tok, a.text, a.pair, max_tokens=a.max_tokens, window=window, word=a.token)
    who = "base model (untrained head)" if a.base else "model"
    w = res.readout_word  # a token classifier's explained word; None for a text classifier

    def probs(labels: list[str], p: Any) -> str:
        return "  ".join(f"{lab}={v:.3f}" for lab, v in zip(labels, p))

    whole = att.whole_text_prediction(model, tok, a.text, a.pair, max_length=att.prediction_max_length(a.run),
                                      word=w)
    explaining = "" if w is None else f"explaining word {w} {res.words[w]!r} (token position {res.readout_index}): "
    verb = "predicts" if w is None else "tags it"
    if res.truncated or whole.truncated:
        if explaining:
            print(explaining.removesuffix(": "))
        what = "prediction" if w is None else "tag"
        print(f"{who} {f'{what} for this window' if res.truncated else f'{what} for the text as shown'} "
              f"({res.window_label}): {res.predicted}  ({probs(res.labels, res.probs)})")
        print(f"{who} {whole.label}: {whole.predicted}  ({probs(whole.labels, whole.probs)})")
    else:
        print(f"{explaining}{who} {verb} {res.predicted}  ({probs(res.labels, res.probs)})" if explaining
              else f"{who} {verb}: {res.predicted}  ({probs(res.labels, res.probs)})")
    if w is not None:
        tags = res.word_tags
        print(("tags of the words in this window: " if res.truncated else "tags: ")
              + "  ".join(f"{i}:{res.words[i]}/{tags[i]}" for i in res.shown_words))
    if res.virtual:
        print(f"note: {att.virtual_note(res, a.layer, a.head)}")
    if res.truncated:
        print(f"note: {res.notice}")
        listing = ", ".join(f"{i} = {att.window_label(win, res.n_tokens)}" for i, win in enumerate(windows))
        print(f"windows (--window N): {listing}")

    def show(title: str, weights: Any, fmt: str = ".3f") -> None:
        print(title)
        for i, t, v in att.top_tokens(weights, res.tokens, a.top, res.special):
            print(f"  {i:4d}  {t:20s} {v:{fmt}}")

    r = res.readout_index
    out = [figs.attention_heatmap(res, a.layer, a.head), figs.readout_bar(res, a.layer, a.head),
           figs.rollout_heatmap(res)]
    show(f"top tokens attended from {res.tokens[r]} (position {r}), layer {a.layer % res.n_layers}, "
         f"{'head average' if a.head is None else f'head {a.head}'}:",
         att.select(att.readout_attention(res), a.layer, a.head))
    show("top tokens by attention rollout (all layers):", att.attention_rollout(res.attentions)[r])
    if a.diff:
        other = att.attention_maps(*att.load_for_attention(a.run, base=not a.base, **_grants(a)), a.text, a.pair,
                                   max_tokens=a.max_tokens, window=window, word=w)
        out.append(_print_difference(*((res, other) if a.base else (other, res)), a))
    if a.saliency:
        from .saliency import token_saliency
        sal = token_saliency(*att.load_for_attention(a.run, **_grants(a)), a.text, a.pair, method=a.saliency,
                             max_tokens=a.max_tokens, window=window, word=w)
        out.append(figs.saliency_figure(sal))
        gap = f" (completeness gap {sal.completeness_gap:.2g})" if sal.completeness_gap is not None else ""
        what = f"class {sal.target_label}" if w is None else f"tag {sal.target_label} of word {w} {res.words[w]!r}"
        print(f"saliency ({a.saliency}) for {what}{gap}"
              + (" (positions in the text: the soft prompt is trained, not input, so it has no saliency):"
                 if res.virtual == "prompt" else ":"))
        for i, t, _ in att.top_tokens(abs(sal.scores), sal.tokens, a.top, sal.special):
            print(f"  {i:4d}  {t:20s} {float(sal.scores[i]):+.3f}")
    path = figs.write_figures_html(out, a.out, title=f"Attention: {Path(str(a.run)).name}")
    print(f"wrote {path}")
    return 0


def _answer_attention(a: argparse.Namespace, model: Any, tok: Any) -> int:
    """`workbench attention` for a question-answering run: the question (`text`) read in `--context` as
    prediction reads it; the attention and saliency from the predicted answer's start token."""
    from . import attention as att
    from .figures import attention as figs

    if a.context is None:
        raise WorkbenchError(f"{a.run} is a question-answering model: give the text to find the answer in, "
                             f"`workbench attention RUN \"question\" --context \"the text\"`.")
    if a.token is not None:
        raise WorkbenchError(att.ANSWER_READOUT)
    qa = att.qa_settings(a.run)
    # By default the run's own window: exactly what `workbench predict` reads.
    size = qa.max_length if a.max_tokens is None else a.max_tokens
    res = att.attention_maps(model, tok, a.text, a.pair, context=a.context, max_tokens=size, window=a.window, qa=qa)
    who = "base model (untrained head)" if a.base else "model"
    r = res.readout_index
    where = f"context characters {res.answer_span[0]}:{res.answer_span[1]}" if res.answer else "no span beat it"
    print(f"{who} answers: {res.predicted}  ({where})")
    if res.qa_windows > 1:
        print(f"note: {res.notice}")
    if size != qa.max_length:
        print(f"note: windows of {size} tokens (--max-tokens); prediction reads windows of {qa.max_length}.")
    start = "the answer's start token" if res.answer_tokens else \
        ("the null position (no answer)" if not res.answer else "this window's best start token")
    print(f"readout: {start} {res.tokens[r]!r} (position {r}, start probability {res.start_prob:.3f})")
    if res.virtual:
        print(f"note: {att.virtual_note(res, a.layer, a.head)}")

    def show(title: str, weights: Any, fmt: str = ".3f") -> None:
        print(title)
        for i, t, v in att.top_tokens(weights, res.tokens, a.top, res.special):
            print(f"  {i:4d}  {t:20s} {v:{fmt}}")

    out = [figs.attention_heatmap(res, a.layer, a.head), figs.readout_bar(res, a.layer, a.head),
           figs.rollout_heatmap(res)]
    show(f"top tokens attended from {res.tokens[r]} (position {r}), layer {a.layer % res.n_layers}, "
         f"{'head average' if a.head is None else f'head {a.head}'}:",
         att.select(att.readout_attention(res), a.layer, a.head))
    show("top tokens by attention rollout (all layers):", att.attention_rollout(res.attentions)[r])
    if a.diff:  # the other model on the same window, read out at the same token
        other = att.attention_maps(*att.load_for_attention(a.run, base=not a.base, **_grants(a)), a.text,
                                   context=a.context, max_tokens=size, window=res.qa_window, position=r, qa=qa)
        out.append(_print_difference(*((res, other) if a.base else (other, res)), a))
    if a.saliency:
        from .saliency import token_saliency
        sal = token_saliency(*att.load_for_attention(a.run, **_grants(a)), a.text, context=a.context,
                             method=a.saliency, max_tokens=size, window=res.qa_window, position=r, qa=qa)
        out.append(figs.saliency_figure(sal))
        gap = f" (completeness gap {sal.completeness_gap:.2g})" if sal.completeness_gap is not None else ""
        print(f"saliency ({a.saliency}) of the {sal.target_label}{gap}:")
        for i, t, _ in att.top_tokens(abs(sal.scores), sal.tokens, a.top, sal.special):
            print(f"  {i:4d}  {t:20s} {float(sal.scores[i]):+.3f}")
    path = figs.write_figures_html(out, a.out, title=f"Attention: {Path(str(a.run)).name}")
    print(f"wrote {path}")
    return 0


def _print_difference(base_res: Any, tuned_res: Any, a: argparse.Namespace) -> Any:
    """`attention --diff`: print the readout tokens fine-tuning made most attended; return the difference map."""
    from . import attention as att
    from . import figures as figs
    diff = att.attention_difference(base_res, tuned_res, a.layer, a.head)
    print("readout attention most increased by fine-tuning:")
    moved = att.readout_difference(base_res, tuned_res, a.layer, a.head)
    for i, t, v in att.top_tokens(moved, tuned_res.tokens, a.top, tuned_res.special):
        print(f"  {i:4d}  {t:20s} {v:+.3f}")
    if tuned_res.virtual == "prompt":
        print(f"  (the soft prompt [P1]–[P{tuned_res.n_virtual}], which the base model has not got, gained "
              f"{float(moved[:tuned_res.n_virtual].sum()):+.3f})")
    # Over the tuned model's tokens: a prompt-tuned one has its soft prompt [P1].. too, which the base has not.
    return figs.attention_difference_heatmap(diff, tuned_res.tokens)


def cmd_export(a: argparse.Namespace) -> int:
    from .deploy import export_run
    _quiet_libraries()
    res = export_run(a.run, a.out, onnx=a.onnx, overwrite=a.overwrite)
    print(f"wrote {res.path} ({res.size_mb:.2f} MB of weights, {len(res.files)} files)")
    for note in res.notes:
        print(f"note: {note}")
    print(f"load it with transformers alone: AutoModel...from_pretrained({str(res.path)!r})")
    return 0


def _compressed(a: argparse.Namespace, op: Callable[..., Any], **kw: Any) -> int:
    """Run a quantize/prune operation, then print what it wrote and its size/latency/score against the original."""
    from .deploy.compress import comparison_line, measure
    from .deploy.folder import open_source
    _quiet_libraries()
    src = open_source(a.source, "compress")  # refusals (a running run, a missing folder) before the original is timed
    new = op(a.source, a.out, overwrite=a.overwrite, **kw)
    base = measure(src.path if src.kind != "run" else src.run, write=False, score=False) if not a.no_compare else None
    print(f"wrote {new.folder}")
    for key in ("heads_pruned", "target_sparsity"):
        if key in new.compression:
            print(f"{key.replace('_', ' ')}: {new.compression[key]:.4g}" if isinstance(new.compression[key], float)
                  else f"{key.replace('_', ' ')}: {new.compression[key]} of {new.compression.get('heads_total')}")
    print(comparison_line(new, base))
    for note in new.notes + ([new.compression["note"]] if new.compression.get("note") else []):
        print(f"note: {note}")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from .deploy import quantize
    return _compressed(a, quantize, method=a.method)


def cmd_prune(a: argparse.Namespace) -> int:
    from .deploy import prune
    return _compressed(a, prune, sparsity=a.sparsity, kind=a.kind, scope=a.scope)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbench", description="Fine-tune, evaluate and look inside transformer "
                                 "language models.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    def grant_flags(p: argparse.ArgumentParser) -> None:
        # A run directory may come from anyone: its files cannot turn these on, only this command line.
        p.add_argument("--trust-remote-code", action="store_true", help="run Python code that comes with the "
                       "run's model; only for a run and model you trust")
        p.add_argument("--allow-pickle", action="store_true", help="allow pickle-based weights of the run's base "
                       "model (pickle can run code); only for a run and model you trust")

    def distributed_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nproc", type=int, help="processes on this machine (one per GPU); more than 1 starts torchrun "
                       "(sets distributed.nproc_per_node; with strategy none, ddp)")
        p.add_argument("--nnodes", type=int, help="machines taking part (distributed.nnodes)")
        p.add_argument("--node-rank", type=int, default=0, help="this machine's rank, 0 to nnodes-1 (0 creates the "
                       "run directory and hosts the rendezvous)")
        p.add_argument("--master", metavar="HOST:PORT", help="machine 0's address for the rendezvous "
                       "(distributed.master_addr/master_port)")

    def generation_flags(p: argparse.ArgumentParser, what: str) -> None:
        """How `generate` and `chat` pick tokens (`workbench.generate.Sampling`), and the model grants."""
        p.add_argument("--system", help=f"a system message before {what}")
        p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to write (default 128); it stops "
                       "earlier at the end of the model's turn")
        p.add_argument("--temperature", type=float, default=0.0, help="0: greedy, the most likely token each time "
                       "(default); above 0: sample, higher is more varied")
        p.add_argument("--top-p", type=float, default=1.0, help="sampling: keep the smallest set of tokens whose "
                       "probabilities add up to this (default 1: all)")
        p.add_argument("--top-k", type=int, default=0, help="sampling: keep only the k most likely tokens (default 0: "
                       "no limit)")
        p.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 makes tokens already in the "
                       "text less likely (default 1: off)")
        p.add_argument("--seed", type=int, help="seed for sampling, for a repeatable answer")
        grant_flags(p)

    p = add("demo", cmd_demo, "Fine-tune MiniLM on Rotten Tomatoes offline and show before/after accuracy.")
    p.add_argument("--quick", action="store_true", help="a smaller subset (seconds, for smoke tests)")
    p.add_argument("--output-dir", help="folder for run directories (default $WORKBENCH_RUNS, else ./runs)")
    p = add("train", cmd_train, "Train from a YAML config file.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. training.learning_rate=2e-5")
    p.add_argument("--name", help="run name")
    p.add_argument("--output-dir", help="folder for run directories")
    p.add_argument("--detach", action="store_true", help="start in the background and return")
    distributed_flags(p)
    p = add("launch-cmd", cmd_launch_cmd, "Print the command each machine of a cluster runs for this config (torchrun; "
            "a Slurm srun line when distributed.nnodes > 1), and the accelerate/DeepSpeed files it implies.")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field first")
    p.add_argument("--name", help="run name (every machine must use the same)")
    distributed_flags(p)
    p = add("estimate", cmd_estimate, "Parameters and training memory per device of a config, for every strategy "
            "(one process, DDP, FSDP, DeepSpeed ZeRO-2/3, with offload; the configured one marked), counted from the "
            "model's config.json without loading weights; with --memory-gb (or a GPU's free memory), what to change "
            "when the configured strategy does not fit.")
    p.add_argument("config")
    p.add_argument("--memory-gb", type=float, metavar="GB", help="memory of one device (GPU) in GB to plan for "
                   "(default: the free memory of this machine's GPU, none without one)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens in the longest batch (default "
                   "data.max_length: the worst case)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field first, e.g. "
                   "distributed.strategy=fsdp")
    p.add_argument("--nproc", type=int, help="processes per machine to plan for (distributed.nproc_per_node)")
    p.add_argument("--nnodes", type=int, help="machines (distributed.nnodes)")
    p.set_defaults(master=None)
    p = add("search", cmd_search, "Hyper-parameter search with Optuna over the config's `search.space`: each trial "
            "is a normal run (<study>-trial-<n>) in its own process, unpromising trials are stopped from their "
            "validation scores, and the best config is written as <runs>/searches/<study>/best.yaml. The study "
            "is kept in <runs>/searches/<study>/study.db: run the same command again to resume a search that was "
            "stopped (only the missing trials run). Several machines: give each the same --study and a shared "
            "--storage database URL (e.g. postgresql://user:password@host/db) and run the command on each.")
    p.add_argument("config")
    p.add_argument("--n-trials", type=int, help="trials in all, complete or pruned (default search.n_trials)")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study's database (default "
                   "sqlite:///<runs>/searches/<study>/study.db); a shared postgresql:// or mysql:// database lets "
                   "several machines work on one study")
    p.add_argument("--study", metavar="NAME", help="study name (default search.study_name, else the run name, else "
                   "search-<model>-<data>); the same name resumes the same study")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field first")
    p = add("resume", cmd_resume, "Continue a stopped or failed run from its last checkpoint.")
    p.add_argument("run")
    p.add_argument("--detach", action="store_true")
    p.add_argument("--nproc", type=int, help="resume with this many processes per machine (DDP and FSDP can change "
                   "it; DeepSpeed cannot)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's rank, for a run on several machines")
    grant_flags(p)
    p = add("stop", cmd_stop, "Ask a running run to checkpoint and stop.")
    p.add_argument("run")
    p.add_argument("--no-wait", action="store_true")
    p = add("status", cmd_status, "Show a run's state, step and ETA.")
    p.add_argument("run")
    p = add("runs", cmd_runs, "List runs with their state and test accuracy.")
    p.add_argument("--dir", help="folder of run directories (default $WORKBENCH_RUNS, else ./runs)")
    p = add("eval", cmd_eval, "Show a run's test metrics before and after, or score another labelled file.")
    p.add_argument("run")
    p.add_argument("--data", help="a labelled file to score instead of the stored test split")
    grant_flags(p)
    p = add("predict", cmd_predict, "Classify texts with a run's fine-tuned model ('-' reads lines from stdin); "
            "for a question-answering run, the texts are questions about --context; for relation-extraction, "
            "sentences with the two entities marked: 'the <S>movie</S> was <O>good</O>'. Prints the predicted "
            "class and the probabilities: all of them up to 4 classes, else the 3 most probable.")
    p.add_argument("run")
    p.add_argument("text", nargs="+")
    p.add_argument("--context", help="question-answering: the text to find the answers in")
    p.add_argument("--context-file", help="question-answering: a text file holding the context")
    grant_flags(p)
    p = add("generate", cmd_generate, "Write a model's answer to a prompt: a causal-lm-sft or seq2seq run's model, "
            "or a base model (built-in name, folder, GGUF file, hub id; an encoder-decoder such as T5 reads the "
            "prompt as it is, no chat template). Greedy unless --temperature > 0.")
    p.add_argument("run", metavar="RUN_OR_MODEL", help="a causal-lm-sft or seq2seq run directory, or a model")
    p.add_argument("prompt", nargs="+", help="one user turn each ('-' reads one prompt per line from stdin)")
    generation_flags(p, "each prompt")
    p.add_argument("--raw", action="store_true", help="continue the text as it is (no chat template): what a "
                   "pre-trained, not instruction-tuned, model does; the default for a causal-lm run")
    p.add_argument("--compare-base", action="store_true", help="for a causal-lm run: the base model's "
                   "continuation first, then the adapted run's")
    p = add("fill-mask", cmd_fill_mask, "Guess the [MASK] tokens of a text with an encoder: a masked-lm run's "
            "model or a base model (built-in name, folder, hub id); prints the top-k tokens with probabilities.")
    p.add_argument("run", metavar="RUN_OR_MODEL", help="a masked-lm run directory, or a model")
    p.add_argument("text", nargs="+", help="texts with [MASK] where a token should be guessed ('-' reads stdin)")
    p.add_argument("--top-k", type=int, default=5, help="tokens to show per mask (default 5)")
    p.add_argument("--compare-base", action="store_true", help="for a masked-lm run: the base model's guesses too")
    p = add("chat", cmd_chat, "Talk to a causal LM in the terminal, several turns, each answer streamed as it is "
            "written: a causal-lm-sft run's model, or a base model (built-in name, folder, GGUF file, hub id); a "
            "seq2seq model (T5, BART, Marian) answers each message alone. " + CHAT_HELP + ".")
    p.add_argument("run", metavar="RUN_OR_MODEL", help="a causal-lm-sft or seq2seq run directory, or a model")
    generation_flags(p, "the conversation")
    add("datasets", cmd_datasets, "List built-in data sets.")
    add("models", cmd_models, "List built-in models.")
    p = add("download", cmd_download, "Fetch built-in models and data sets now, so later runs work offline.")
    p.add_argument("names", nargs="*", metavar="NAME", help="built-in models or data sets (see `workbench models`, "
                   "`workbench datasets`)")
    p.add_argument("--all", action="store_true", help="every built-in model and data set")
    p = add("report", cmd_report, "Show the data report for a file or a config, without training.")
    p.add_argument("source", help="a data file, a built-in data set, or a YAML config")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--model", help="tokenizer to measure token lengths with (default minilm)")
    p.add_argument("--task", help="the task the data is for (default: the built-in's task; for a .txt/.md file, a "
                   "folder or a built-in corpus the model's pre-training objective, masked-lm or causal-lm; "
                   "token-classification for .conll/.bio files; else text-classification)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field first, e.g. "
                   "data.encoding=gbk or data.document_split=line")
    p = add("config", cmd_config, "Print the default config, explain every field, or validate a file.")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--validate", metavar="FILE")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --validate: override a field first")
    p = add("app", cmd_app, "Start the dashboard (binds to 127.0.0.1).")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p = add("tensorboard", cmd_tensorboard, "Open runs' TensorBoard event files (training.report_to) in TensorBoard, "
            "bound to 127.0.0.1.")
    p.add_argument("run", nargs="?", metavar="RUN_OR_RUNS_FOLDER", help="a run directory, or a folder of runs to "
                   "compare (default $WORKBENCH_RUNS, else ./runs)")
    p.add_argument("--port", type=int, help="port to serve on (default 6006, or a free one if that is taken)")
    p = add("serve", cmd_serve, "Serve a completed run's model (or an exported folder) over HTTP: prediction, "
            "health, Prometheus metrics, drift monitor. Bound to 127.0.0.1 unless --host; any other address needs "
            "an API key.")
    p.add_argument("source", metavar="RUN_OR_EXPORT", help="a completed run directory, or a folder written by "
                   "`workbench export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "0.0.0.0: every network, needs an API key)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (default "
                   "WORKBENCH_API_KEY; when it is set, every request but /healthz and /readyz needs the key)")
    p.add_argument("--api-key-file", metavar="PATH", help="file holding the API key (read once at start-up)")
    p.add_argument("--max-batch", type=int, default=16, help="texts per forward pass (default 16; 1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests "
                   "(default 10)")
    p.add_argument("--max-queue", type=int, default=256, help="texts waiting at most; more answer 429 (default 256)")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request at most (default 64)")
    p.add_argument("--max-text-chars", type=int, default=5000, help="characters per text at most (default 5000)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body at most (default 1000000)")
    p.add_argument("--max-concurrent-generations", type=int, default=2, help="generations at once; more answer 429 "
                   "(default 2)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the most tokens a generation may ask for "
                   "(default 256)")
    p.add_argument("--monitor-window", type=int, default=1000, help="predictions the drift monitor keeps "
                   "(default 1000)")
    p.add_argument("--log-inputs", action="store_true", help="write the request texts into the log (off: only "
                   "their count and lengths)")
    p.add_argument("--open-metrics", action="store_true", help="let /metrics be read without the API key (for a "
                   "Prometheus scraper without it)")
    p = add("errors", cmd_errors, "Show a run's most confident test mistakes and its worst slices.")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=10, help="mistakes to show (default 10)")
    p.add_argument("--pattern", action="extend", nargs="+", metavar="WORD", default=[],
                   help="also slice by texts containing WORD (a whole word, or a regex such as \"not|n't\")")
    p.add_argument("--min-size", type=int, default=5, help="smallest slice to report (default 5)")
    p.add_argument("--slices", type=int, default=15, help="slices to show (default 15)")
    p.add_argument("--before", action="store_true", help="analyse the predictions before fine-tuning")
    p = add("compare", cmd_compare, "Compare two runs' test predictions: what B fixed and broke relative to A.")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--n", type=int, default=3, help="examples to show per change (default 3)")
    p = add("ensemble", cmd_ensemble, "Average the class probabilities of several finished classification runs "
            "on the same test split; report the ensemble against each member and the best one, the examples "
            "where members disagree, and write ensembles/<name> in the runs folder (ensemble.json, "
            "members.json, disagreements.jsonl).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more finished text-classification (or "
                   "relation-extraction) runs scored on the same test split")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per run, in order (default: "
                   "equal); they are normalised to sum 1")
    p.add_argument("--split-file", help="score every member's model on this labelled file instead of the stored "
                   "test predictions (for runs tested on different splits)")
    p.add_argument("--name", help="name of the result folder under ensembles/ (default: the run names joined by +)")
    p.add_argument("--out", help="write the result into this folder instead (never a run directory)")
    p.add_argument("--n", type=int, default=10, help="disagreements to show (default 10)")
    grant_flags(p)
    p = add("attention", cmd_attention, "Attention maps (and optionally saliency) of a run's model for one text, "
            "written as an offline HTML page.")
    p.add_argument("run", help="a run directory, a model folder, or a built-in model name")
    p.add_argument("text")
    p.add_argument("--pair", help="second text, for pair tasks")
    p.add_argument("--layer", type=int, default=-1, help="layer to show, 0-based (default -1: the last)")
    p.add_argument("--head", type=int, default=None, help="head to show (default: the average of all heads)")
    p.add_argument("--out", default="attention.html", help="HTML file to write (default attention.html)")
    p.add_argument("--base", action="store_true", help="show the run's pretrained base model instead")
    p.add_argument("--diff", action="store_true", help="add the change in attention (fine-tuned minus base)")
    p.add_argument("--saliency", choices=["ig", "grad"], help="add token saliency of the fine-tuned model's "
                   "prediction: integrated gradients or gradient x input")
    p.add_argument("--max-tokens", type=int, default=None, help="show at most this many tokens at once (default "
                   "128; a question-answering run: its data.max_length, the window prediction reads); a longer "
                   "text is split into windows of this size")
    p.add_argument("--window", type=int, help="which window of a longer text to show, 0-based "
                   "(default 0: the start, or with --token the window that holds that word, or for a "
                   "question-answering run the window holding the predicted answer; -1: the end); "
                   "the output lists them")
    p.add_argument("--context", help="question-answering runs: the text to find the answer to the question "
                   "(`text`) in; the attention is read from the predicted answer's start token")
    p.add_argument("--top", type=int, default=5, help="tokens to list (default 5)")
    p.add_argument("--token", type=int, metavar="N", help="token-classification (NER) models: the word to explain, "
                   "0-based (default: the first word predicted as an entity, else the first word)")
    grant_flags(p)
    p = add("export", cmd_export, "Write a finished run as a model folder plain transformers loads "
            "(AutoModelFor<Task>.from_pretrained): adapters merged into safetensors weights, tokenizer, id2label, a "
            "model card (README.md) and workbench_export.json (source, labels, a reference profile for drift checks).")
    p.add_argument("run", help="a finished run directory")
    p.add_argument("--out", help="folder to write (default RUN/export)")
    p.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (torch.onnx.export, checked "
                   "against torch with onnxruntime; needs pip install 'workbench[deploy]')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    def compress_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("source", metavar="RUN_OR_FOLDER", help="a finished run, or a folder written by export, "
                       "quantize or prune")
        p.add_argument("--out", help="folder to write (default RUN/compressed/<what>, or FOLDER-<what> beside a "
                       "folder)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
        p.add_argument("--no-compare", action="store_true", help="do not time the original for the comparison")

    p = add("quantize", cmd_quantize, "Write a quantised copy of a run's model, re-score it on the run's test split "
            "and print size, p50 latency, throughput and score against the original (compression.json).")
    compress_flags(p)
    p.add_argument("--method", required=True, choices=["int8-dynamic", "bf16", "onnx-int8"],
                   help="int8-dynamic: torch int8 Linear layers (saved without pickle); bf16: a bfloat16 copy; "
                   "onnx-int8: onnxruntime int8 of the ONNX graph (pip install 'workbench[deploy]')")
    p = add("prune", cmd_prune, "Write a pruned copy of a run's model (zeros in dense safetensors: the file does not "
            "shrink and latency does not drop without sparse kernels), re-score it and print the comparison.")
    compress_flags(p)
    p.add_argument("--sparsity", type=float, required=True, help="fraction to remove, between 0 and 1: of the "
                   "weights (magnitude) or of the attention heads (heads)")
    p.add_argument("--kind", choices=["magnitude", "heads"], default="magnitude", help="magnitude: smallest weights "
                   "of the layers' Linear matrices (default); heads: whole attention heads of a BERT-family encoder, "
                   "smallest weight norm first")
    p.add_argument("--scope", choices=["layer", "global"], default="layer", help="magnitude: the same share of "
                   "every matrix (default), or the smallest weights over all of them")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
