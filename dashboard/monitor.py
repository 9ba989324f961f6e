"""Live view of one run, refreshed on a timer from its run directory alone.

Nothing here holds the run: the Streamlit session only reads status.json and metrics.jsonl, so a
closed or reloaded tab finds the run exactly where the run directory says it is.
"""

from __future__ import annotations

import streamlit as st

from workbench.adversarial import status_line
from workbench.errors import WorkbenchError
from workbench.estimate import format_seconds
from workbench.figures.training import loss_figure, metric_figure
from workbench.launch import attach, resume
from workbench.rundir import ACTIVE, RunDir

from . import widgets

REFRESH_SECONDS = 2.0
LOG_LINES = 25


def run_monitor(run: RunDir) -> None:
    """Progress, ETA, curves and Stop/Resume; re-drawn every few seconds while the run is active."""
    active = run.status().get("state") in ACTIVE
    live = st.fragment(_monitor, run_every=REFRESH_SECONDS if active else None)
    live(str(run.path), active)


def _monitor(path: str, was_active: bool) -> None:
    run = RunDir(path)
    s = run.status()
    state = s.get("state", "unknown")
    metrics = run.metrics()
    step, total = int(s.get("step") or 0), s.get("total_steps")
    if "step" in metrics and len(metrics):  # status.json is rewritten about once a second; logs can be ahead
        step = max(step, int(metrics["step"].max()))
    has_button = state in ACTIVE or state in ("stopped", "failed")
    # Without a button the bar takes the whole width: in a [4, 1] row a finished run's bar ended at 80%.
    bar, buttons = st.columns([4, 1], vertical_alignment="bottom") if has_button else (st.container(), st.empty())
    label = f"{widgets.STATE_ICONS.get(state, '')} **{state}** · step {step}" + (f"/{total}" if total else "")
    if state in ACTIVE:
        if s.get("eta_seconds") is not None and state == "running":
            label += f" · ETA {format_seconds(s['eta_seconds'])}"
        label += f" · {s['phase']}" if s.get("phase") else ""
    # A completed run is done whatever its last logged step says (the final step may not be logged).
    done = 1.0 if state == "completed" else min(step / total, 1.0) if total else 0.0
    bar.progress(done, text=label)
    with buttons:
        if state in ACTIVE:
            st.button("Stop", key=f"stop_{run.name}", icon=":material/stop_circle:", on_click=_act, args=("stop", path),
                      help="Checkpoint, then stop. Resume continues from that checkpoint.",
                      disabled=state == "stopping")
        elif state in ("stopped", "failed"):
            st.button("Resume", key=f"resume_{run.name}", icon=":material/play_circle:", on_click=_act,
                      args=("resume", path), help="Continue from the last complete checkpoint, in a new process.")
    if s.get("note"):  # e.g. an Apple GPU that could not be used, a batch halved after running out of memory
        st.info(s["note"], icon=":material/info:")
    if isinstance(s.get("adversarial"), dict):  # the method, its size and its cost so far
        st.caption(status_line(s["adversarial"]))
    world = s.get("world_size")
    if isinstance(world, int) and world > 1:  # a multi-process run: how it is spread, and where its launch is kept
        per_rank = s.get("peak_memory_per_rank") if isinstance(s.get("peak_memory_per_rank"), list) else []
        peaks = ", ".join(f"{float(p.get('cuda_mb') or p.get('rss_mb') or 0):,.0f}" for p in per_rank
                          if isinstance(p, dict) and isinstance(p.get("cuda_mb") or p.get("rss_mb") or 0, (int, float)))
        st.caption(f"{s['world_size']} processes · {s.get('strategy') or 'ddp'}"
                   + (f" · peak memory per process (MB): {peaks}" if peaks else "")
                   + f" · the exact launch: {run.path / 'launch' / 'torchrun.sh'}")
    if st.session_state.get("monitor_error"):
        st.error(st.session_state.pop("monitor_error"), icon=":material/error:")
    if state == "failed":
        st.error(f"Run failed: {s.get('error') or 'no message recorded'}", icon=":material/error:")
        _log_tail(run)
    elif state == "stopped":
        st.info(f"Stopped at step {step}" + (f"; checkpoint {s['checkpoint']}" if s.get("checkpoint") else
                                            "; no checkpoint was written, so Resume starts again from step 0") + ".")
    elif state == "completed":
        try:
            ev = run.evaluation()
        except WorkbenchError as e:  # a damaged eval.json: shown, and the curves below still drawn
            st.warning(str(e), icon=":material/warning:")
            ev = {}
        head = run.summary()["headline"]  # the task's headline metric (classification: accuracy)
        before, after = ev.get("before", {}).get(head), ev.get("after", {}).get(head)
        if after is not None:
            st.success(f"Completed: test {head} {after:.3f}" + (f" (before fine-tuning {before:.3f})"
                                                                  if before is not None else "") +
                       ". Details on the Evaluate page.", icon=":material/check_circle:")
    left, right = st.columns(2)
    left.plotly_chart(loss_figure({run.name: metrics}), key=f"loss_{run.name}")
    right.plotly_chart(metric_figure({run.name: metrics}, keys=_curve_keys(run)), key=f"metric_{run.name}")
    if was_active != (state in ACTIVE):
        st.rerun()  # the whole page: start or stop the timer, refresh the run lists


def _act(action: str, path: str) -> None:
    """Button callback: runs before the re-draw, so the page shows the new state at once."""
    try:
        if action == "stop":
            attach(path).stop(wait=False)
        else:
            resume(path)
    except WorkbenchError as e:
        st.session_state["monitor_error"] = str(e)


def _log_tail(run: RunDir) -> None:
    if run.log_file.exists():
        lines = run.log_file.read_text(errors="replace").splitlines()[-LOG_LINES:]
        with st.expander(f"Last {len(lines)} lines of {run.log_file.name}"):
            st.code("\n".join(lines), language=None)


def _curve_keys(run: RunDir) -> list[str]:
    """The task's first two validation metrics (classification: accuracy and macro F1)."""
    from workbench.tasks import TASKS
    task = TASKS.get(run.summary()["task"]) or TASKS["text-classification"]
    return [f"eval_{k}" for k in task.directions if k != "loss"][:2]
