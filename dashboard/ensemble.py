"""Runs page section "Ensemble": pick 2+ finished classification runs, see the ensemble against each member
and the best one, and the examples where they disagree. Built on `workbench.ensemble` (the CLI's
`workbench ensemble`); nothing here loads a model: runs without stored probabilities are sent to the CLI."""

from __future__ import annotations

from typing import Any

import streamlit as st

from workbench import ensemble as E
from workbench.figures.ensemble import ensemble_scores_figure
from workbench.rundir import RunDir

from . import widgets


@st.cache_data(max_entries=8, show_spinner="Averaging the members' probabilities...")
def _build(paths: tuple[str, ...], stamps: tuple[float, ...], weights: str) -> E.Ensemble:
    """The ensemble of these runs (`stamps`: their predictions files' times, so a re-scored run is re-read)."""
    return E.ensemble_runs(list(paths), weights=weights or None, recompute=False)


def _eligible(runs: list[RunDir]) -> list[RunDir]:
    out = []
    for r in runs:
        if r.status().get("state") == "completed" and r.predictions_file.exists() and \
                r.summary().get("task") in E.ENSEMBLE_TASKS:
            out.append(r)
    return out


def section(runs: list[RunDir]) -> None:
    st.subheader("Ensemble")
    usable = _eligible(runs)
    st.caption("Averages the class probabilities of several runs tested on the same examples (soft voting) and "
               "compares the result with each member. Offered: completed "
               f"{' and '.join(E.ENSEMBLE_TASKS)} runs with test predictions ({len(usable)} here).")
    if len(usable) < 2:
        st.info(f"An ensemble needs at least 2 finished classification runs; this folder has {len(usable)}. "
                f"Train the same config with different `training.seed` values and a fixed `data.split_seed` "
                f"(so every run is tested on the same examples) to make some.")
        return
    by_name = {r.name: r for r in usable}
    chosen = st.multiselect("Runs to ensemble", list(by_name), key="ens_runs",
                            placeholder="choose 2 or more runs")
    if len(chosen) < 2:
        if chosen:
            st.info(E._too_few(chosen))
        return
    weights = st.text_input("Weights (optional)", key="ens_weights", placeholder="equal; or e.g. 2, 1, 1",
                            help="One number per chosen run, in the order chosen; normalised to sum 1.").strip()
    with widgets.shown_errors():
        paths = tuple(str(by_name[n].path) for n in chosen)
        stamps = tuple(by_name[n].predictions_file.stat().st_mtime for n in chosen)
        _show(_build(paths, stamps, weights))


def _show(ens: E.Ensemble) -> None:
    h, c = ens.headline, ens.comparison
    best, mine = ens.metrics[ens.best].get(h), ens.metrics["ensemble"].get(h)
    cols = st.columns(4)
    cols[0].metric(f"Best member ({ens.best})", f"{best:.3f}" if best is not None else "-", help=f"By {h}.")
    cols[1].metric(f"Ensemble {h}", f"{mine:.3f}" if mine is not None else "-",
                   delta=f"{mine - best:+.3f} vs best" if best is not None and mine is not None else None)
    cols[2].metric("Fixed / broken vs best", f"{c['fixed']} / {c['broken']}",
                   help="Examples the best member got wrong and the ensemble right (fixed), and the reverse.")
    cols[3].metric("McNemar p", f"{c['mcnemar_p']:.3g}",
                   help="Exact McNemar test on the examples where exactly one of the two is right: below 0.05 the "
                        "difference is unlikely to be chance. "
                        + (f"95% paired bootstrap interval of the accuracy difference: [{c['bootstrap_low']:+.3f}, "
                           f"{c['bootstrap_high']:+.3f}]." if "bootstrap_low" in c else ""))
    for note in ens.notes:
        st.caption(note)
    a, b = st.columns([2, 3])
    score = st.column_config.NumberColumn(format="%.3f")
    a.dataframe(ens.scores, hide_index=True, key="ens_scores",
                column_config={k: score for k in ens.scores.columns if k not in ("model", "role")})
    b.plotly_chart(ensemble_scores_figure(ens.scores, keys=list(dict.fromkeys([h, "accuracy", "f1_macro"]))),
                   key="ens_fig")
    show = st.radio("Examples", list(E.SHOW), format_func=lambda v: E.SHOW[v], key="ens_show", horizontal=True,
                    index=1)
    part = E.filter_table(ens.table, show)
    st.caption(f"{len(part)} of {len(ens.table)} test examples. `n_disagreeing`: members whose answer differs "
               f"from the ensemble's; `change`: the ensemble against the best member ({ens.best}).")
    conf = {col: st.column_config.NumberColumn(format="%.2f") for col in part.columns if "confidence" in col}
    st.dataframe(part, hide_index=True, key="ens_table", column_config=conf)
    _save(ens)


def _save(ens: E.Ensemble) -> Any:
    folder = E.default_folder(ens.members)
    if st.button(f"Save to {folder.parent.name}/{folder.name}", key="ens_save", icon=":material/save:",
                 help=f"Writes ensemble.json, members.json and disagreements.jsonl into {folder}."):
        with widgets.shown_errors():
            st.success(f"Saved {E.write_ensemble(ens, folder)}")
