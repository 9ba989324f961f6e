"""Search page: the Optuna studies under the runs folder, Optuna's own figures, the trials with links to
their runs, and the best config one click from a full run."""

from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from workbench.config import RunConfig
from workbench.launch import launch
from workbench.search import list_studies, load_study, trials_table
from workbench.untrusted import model_config_from_run

from . import widgets


def page() -> None:
    st.title("Search")
    folder = widgets.runs_folder()
    studies = list_studies(folder)
    if not studies:
        st.info(f"No searches in `{folder / 'searches'}` yet. Start one from a terminal (below).")
        _start_help(folder, None)
        return
    names = [p.name for p in studies]
    if st.session_state.get("study") not in names:
        st.session_state.pop("study", None)
    name = st.selectbox("Study", names, key="study", bind="query-params",
                        help="Searches under the runs folder (`searches/<study>/study.db`), newest first.")
    with widgets.shown_errors():
        study = load_study(folder / "searches" / name)
        _show(study, folder / "searches" / name)
    _start_help(folder, name)


def _show(study, where: Path) -> None:
    import optuna.visualization as vis

    table = trials_table(study)
    if table.empty:
        st.info("This study has no trials yet.")
        return
    counts = table["state"].value_counts().to_dict()
    metric = study.user_attrs.get("metric", "value")
    st.caption(f"{len(table)} trial(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + f". Trials are compared on the best validation {metric} ({study.direction.name.lower()}).")
    complete = int(counts.get("complete", 0))
    history, importance, parallel = st.tabs(["History", "Parameter importances", "Parallel coordinates"])
    with history:
        st.plotly_chart(vis.plot_optimization_history(study, target_name=metric), key="fig_history")
    with importance:
        if complete < 2:
            st.info(f"Parameter importances need at least 2 complete trials; this study has {complete}.")
        else:
            try:
                st.plotly_chart(vis.plot_param_importances(study, target_name=metric), key="fig_importance")
            except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same parameters
                st.info(f"Parameter importances cannot be computed yet: {e}")
    with parallel:
        st.plotly_chart(vis.plot_parallel_coordinate(study, target_name=metric), key="fig_parallel")

    st.subheader("Trials")
    # The Train page follows a run named in its address (`train?run=NAME`).
    table["open"] = [f"train?run={Path(r).name}" if isinstance(r, str) and r else None for r in table["run"]]
    table["run"] = [Path(r).name if isinstance(r, str) and r else None for r in table["run"]]
    st.dataframe(table, hide_index=True, key="trials", column_config={
        "value": st.column_config.NumberColumn(metric, format="%.4f"),
        "open": st.column_config.LinkColumn("watch", display_text="open run", help="The run on the Train page."),
        "seconds": st.column_config.NumberColumn(format="%.0f")})
    for _, row in table[table["state"] == "fail"].iterrows():
        st.error(f"trial {row['trial']} failed: {row['error'] or 'no message recorded'}", icon=":material/error:")
    _best(study, where)


def _best(study, where: Path) -> None:
    best_file = where / "best.yaml"
    st.subheader("Best trial")
    if not best_file.is_file():
        st.info("No trial has completed yet: the best config appears here after the first one.")
        return
    best = study.best_trial
    st.markdown(f"Trial **{best.number}**: validation {study.user_attrs.get('metric', 'value')} "
                f"**{best.value:.4f}**, run `{Path(best.user_attrs.get('run') or '?').name}`")
    st.json(best.params, expanded=True)
    cfg = RunConfig.from_yaml(best_file)  # a file in the runs folder: it may name a model, not grant it code
    cfg.model = model_config_from_run(cfg.model, best_file)
    t = cfg.training
    a, b, c = st.columns(3)
    epochs = a.number_input("Epochs", min_value=0.0, value=float(t.num_train_epochs), step=1.0, key="best_epochs",
                            help="Passes over the training data for the full run.")
    steps = b.number_input("Max steps", min_value=-1, value=int(t.max_steps), step=100, key="best_steps",
                           help="If > 0, stop after this many steps (overrides epochs); -1 trains for the epochs.")
    name = c.text_input("Run name", value=f"{study.study_name}-best", key="best_name")
    st.caption(f"Or from a terminal: `workbench train {shlex.quote(str(best_file))} --name "
               f"{shlex.quote(study.study_name + '-best')}`")
    if st.button("Train the best config fully", type="primary", icon=":material/rocket_launch:", key="best_train",
                 help="Starts a normal run with best.yaml in its own process; follow it on the Train page."):
        with widgets.shown_errors():
            handle = launch(cfg.override({"training.num_train_epochs": epochs, "training.max_steps": steps,
                                          "name": name.strip() or None, "output_dir": str(widgets.runs_folder())}))
            st.session_state["run"] = handle.run.name
            st.success(f"Started {handle.run.name}: [follow it on the Train page](train?run={handle.run.name}).",
                       icon=":material/rocket_launch:")


def _start_help(folder: Path, name: str | None) -> None:
    with st.expander("Start or resume a search", expanded=name is None):
        st.markdown("Add a `search` section to a run config, then run `workbench search` on it. Each trial is a "
                    "normal run in this runs folder; the study is kept in `searches/<study>/study.db`, so running "
                    "the same command again resumes it.")
        st.code("search:\n  n_trials: 12\n  space:\n    training.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}"
                "\n    training.num_train_epochs: {low: 1, high: 4}\n    peft.method: [lora, full]\n"
                "    peft.lora.r: [4, 8, 16]", language="yaml")
        study = f" --study {shlex.quote(name)}" if name else ""
        st.code(f"cd {shlex.quote(str(folder.parent))}\nWORKBENCH_RUNS={shlex.quote(str(folder))} "
                f"workbench search CONFIG.yaml{study}", language="bash")
        st.caption("Several machines: give each the same `--study NAME` and one shared database, "
                   "`--storage postgresql://user:password@host/db`, and run the command on each.")
