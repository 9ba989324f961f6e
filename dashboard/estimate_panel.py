"""The Train page's "before you launch" panel: the data check and the memory/time estimate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from workbench.assets import BUILTIN_DATASETS
from workbench.config import RunConfig
from workbench.errors import WorkbenchError
from workbench.estimate import (device_memory_budget, estimate_run, format_bytes, format_estimate, gpu_memory_note,
                                local_model_dir, plan_table)
from workbench.paths import assets_dir

from . import widgets


def show(cfg: RunConfig) -> list[str]:
    """Draw the data check and the estimate for `cfg`; return the data problems (they block Launch)."""
    source = cfg.data.source
    cached = source in BUILTIN_DATASETS and (assets_dir() / "datasets" / BUILTIN_DATASETS[source].cache_name).exists()
    if source in BUILTIN_DATASETS and not cached:
        st.info(f"{source} is not downloaded yet: the run fetches it first. Open it on the Data page to see "
                f"its report and a time estimate before launching.", icon=":material/download:")
        report, train_rows = None, None
    elif source not in BUILTIN_DATASETS and not Path(source).is_file():
        st.error(f"Data file {source} no longer exists: upload it again on the Data page.", icon=":material/error:")
        return ["missing data file"]
    else:
        tok_dir = local_model_dir(cfg.model.name_or_path)
        d = cfg.data
        report, train_rows = widgets.data_report(source, widgets.file_stamp(source),
                                                 (d.text_column, d.label_column, d.text_pair_column), d.max_length,
                                                 str(tok_dir) if tok_dir else None, cfg.task)
        for p in report["problems"]:
            st.error(f"Data: {p}", icon=":material/block:")
        if report["problems"]:
            return report["problems"]
        if cfg.data.max_train_samples:
            train_rows = min(train_rows, cfg.data.max_train_samples)
        st.caption(f"Data: {train_rows:,} training rows" + (f", labels {', '.join(report['labels'])}"
                                                            if report["labels"] else "")
                   + (f"; {len(report['warnings'])} warning(s) on the Data page" if report["warnings"] else "") + ".")
        if cfg.data.augment.operations:
            rows = _augmentation(cfg, widgets.file_stamp(source), train_rows)
            if rows is None:
                return ["augmentation"]
            train_rows = rows
    if train_rows is not None:
        try:
            _estimate(cfg, report, train_rows)
        except WorkbenchError as e:  # a model that cannot do this task: say so, and keep Launch off
            st.error(f"Model: {e}", icon=":material/block:")
            return [str(e)]
    return []


def _augmentation(cfg: RunConfig, stamp: float, train_rows: int) -> int | None:
    """Show what `data.augment` adds (the cheap operations made here, paraphrases counted at most); the training
    rows the estimate should count, or None when augmentation cannot run (the message is shown)."""
    from workbench.data.report import augmentation_line

    try:
        summary = _augment_summary(cfg.to_yaml(), stamp)
    except WorkbenchError as e:
        st.error(f"Augmentation: {e}", icon=":material/block:")
        return None
    if not summary:  # the data has problems (shown above) or nothing to augment
        return train_rows
    line = augmentation_line(summary)
    st.caption(line[0].upper() + line[1:] + ".")
    para = summary.get("paraphrase") or {}
    return summary["train_rows_after"] + para.get("sources", 0) * summary["copies"]


@st.cache_data(ttl=300, max_entries=8, show_spinner="Augmenting the training split...")
def _augment_summary(cfg_yaml: str, stamp: float) -> dict:
    from workbench.augment import augment_training_split
    from workbench.tasks import get_task

    cfg = RunConfig.from_yaml(cfg_yaml)
    task = get_task(cfg.task)
    prep = task.prepare(cfg.data, cfg.split_seed, raise_on_problems=False)
    if not prep.report.ok:
        return {}
    prep = augment_training_split(task, prep, cfg.data.augment, cfg.training.seed, paraphrase=False)
    return prep.report.details.get("augmentation") or {}


def _estimate(cfg: RunConfig, report: dict, train_rows: int) -> None:
    tl = report.get("token_lengths") or {}
    eval_rows = sum(v for k, v in report.get("split_sizes", {}).items() if k != "train")
    if cfg.data.max_eval_samples:
        eval_rows = min(eval_rows, 2 * cfg.data.max_eval_samples)
    budget = device_memory_budget()  # a GPU's free memory; None on a CPU machine (no suggestion then)
    budget = round(budget / 2**27) * 2**27 if budget else None  # steps of 128 MB: the cache survives small changes
    est = _cached_estimate(cfg.to_yaml(), train_rows, len(report["labels"]), tl.get("mean"), tl.get("p99"), eval_rows,
                           budget)
    st.markdown("**Estimate** (not a measurement)")
    c = st.columns(2)
    if est.total_params is not None:
        trainable = f"{_count(est.trainable_params)} trainable" if est.trainable_params is not None else None
        c[0].metric("Parameters", _count(est.total_params), help=trainable)
        c[1].metric("Peak memory", format_bytes(est.total_memory),
                    help=", ".join(f"{k} {format_bytes(v)}" for k, v in est.memory.items()))
    c = st.columns(2)
    c[0].metric("Time", format_estimate(est), help="process start, training and evaluation; the range is the "
                "spread of the last runs of this model (a busy machine shows as a wider range)")
    c[1].metric("Optimizer steps", f"{est.steps:,}")
    if est.memory:
        table = pd.DataFrame({"part": list(est.memory), "size": [format_bytes(v) for v in est.memory.values()]})
        with st.expander("Memory breakdown"):
            st.dataframe(table, hide_index=True)
    if est.plan:
        _plan(cfg, est)
    st.caption(f"Estimated, not measured: parameters are counted from the model's config; memory is weights + "
               f"gradients + AdamW state + a rough activation term for the longest batch; time is "
               f"{est.time_source}." + (" Expect ±50%." if est.low_seconds is None else "")
               + (" " + " ".join(est.notes) if est.notes else ""))
    note = gpu_memory_note(est.total_memory) if est.memory else None
    if note:
        st.warning(note, icon=":material/memory:")


def _plan(cfg: RunConfig, est) -> None:
    """Memory per device under every strategy (`workbench.estimate.memory_plan`), the configured one marked, and
    what to change when it does not fit the GPU's free memory."""
    d = cfg.distributed
    with st.expander(f"Memory per device by strategy ({d.world_size} process(es); yours: {est.plan_choice})"):
        table = plan_table(est)
        st.dataframe(table, hide_index=True,
                     column_config={c: st.column_config.NumberColumn(c, format="%.0f MB") for c in table.columns
                                    if c != "strategy"})
        st.caption("Per process: weights, gradients and AdamW state divided among the processes as each strategy "
                   "shards them, activations for the per-device batch, the layer FSDP/ZeRO-3 gathers whole while it "
                   "runs, DDP's gradient buckets; offloaded parts count in host memory. `workbench estimate CONFIG "
                   "--memory-gb GB` prints the same table for any memory size.")
    if est.suggestion:
        st.warning(f"Memory plan: {est.suggestion['message']}", icon=":material/memory:")


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


@st.cache_data(ttl=30, max_entries=32, show_spinner="Estimating...")
def _cached_estimate(cfg_yaml: str, train_rows: int, num_labels: int, mean_tokens: float | None,
                     max_tokens: int | None, eval_rows: int, memory_budget: float | None = None):
    return estimate_run(RunConfig.from_yaml(cfg_yaml), train_rows, num_labels=num_labels, mean_tokens=mean_tokens,
                        max_tokens=max_tokens, eval_rows=eval_rows, memory_budget=memory_budget)
