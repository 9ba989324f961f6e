"""Ensembles of classification runs: average the class probabilities of finished runs on one test split.

    members = [load_member(r) for r in runs]        # each run's test predictions with p_<class> columns
    ens = build_ensemble(members, weights=None)     # checks, averaged probabilities, scores, per-example table
    write_ensemble(ens, folder)                     # ensemble.json, members.json, disagreements.jsonl

Every member must be a finished run of a task whose test table stores one probability per class
(`p_<class>`: text classification, relation extraction), scored on the same test examples (row, text and
gold label) with the same classes. The probabilities come from the run's predictions.jsonl, read as
untrusted input (numbers in [0, 1], one per class, summing to 1); a run written before they were stored is
re-scored by loading its model (`evaluate_run`, the caller's grants only), never silently dropped.
Nothing is written into a member's run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import RunError
from .rundir import ACTIVE, RunDir

# Tasks whose predictions table holds a probability per class (`p_<class>`), so members can be averaged.
ENSEMBLE_TASKS = ("text-classification", "relation-extraction")
CHANGES = ("fixed", "broken", "both wrong", "both right")  # the ensemble against the best member, per example
SHOW = {"all": "every example", "disagree": "members disagree", "ensemble wrong": "the ensemble is wrong",
        "fixed": "the ensemble fixed the best member", "broken": "the ensemble broke the best member"}
_SPLIT_FIX = ("Fix: ensemble runs scored on the same test split: the same data.source, data.test_size, "
              "data.max_eval_samples and split seed (data.split_seed, else training.seed draws the split: to vary "
              "only the training seed, fix data.split_seed), or a fixed test split (data.test_source or "
              "data.split_column); or score every member on one labelled file with `workbench ensemble RUN RUN ... "
              "--split-file FILE`.")


@dataclass
class Member:
    """One run's test predictions, checked: `probs[i, j]` is the probability of `labels[j]` for `pred` row i."""

    name: str
    path: str
    task: str
    labels: list[str]
    pred: pd.DataFrame  # row, text, gold, predicted, confidence, ... as the run wrote them (or re-scored)
    probs: np.ndarray
    source: str  # where the probabilities came from: predictions.jsonl, re-scored, or the split file
    headline: str = "accuracy"


@dataclass
class Ensemble:
    """What `build_ensemble` returns: the members, the averaged predictions and how they compare."""

    members: list[Member]
    weights: list[float]
    labels: list[str]
    task: str
    headline: str
    predictions: pd.DataFrame  # the ensemble's predictions table (same columns as a run's)
    scores: pd.DataFrame  # one row per member and one for the ensemble: the task's metrics
    metrics: dict[str, dict[str, Any]]  # the task's full metrics per member name and "ensemble"
    best: str  # the best member by the task's headline metric
    table: pd.DataFrame  # per example: each member's answer, the ensemble's, disagreement, change vs best
    comparison: dict[str, Any]  # counts of CHANGES, McNemar's exact test and a bootstrap interval vs best
    fingerprint: str  # a hash of the test split (row, text, gold)
    notes: list[str] = field(default_factory=list)


# --- reading members -------------------------------------------------------------------------------
def check_member_run(run: RunDir) -> tuple[str, str]:
    """(task, headline metric) of a finished run whose probabilities can be averaged; else a `RunError`
    saying what the run is and what to do."""
    from .config import RunConfig
    from .tasks import TASKS

    run.require()
    st = run.status()
    state = st.get("state")
    if state in ACTIVE:
        raise RunError(f"run {run.name} is still {state}: an ensemble needs finished runs. Fix: wait until it "
                       f"completes (`workbench status {run.path}`), then run the ensemble again.")
    if state == "failed":
        raise RunError(f"run {run.name} failed ({st.get('error') or 'no message recorded'}), so it has no final "
                       f"test predictions. Fix: resume it (`workbench resume {run.path}`) or leave it out.")
    if state != "completed" or not run.predictions_file.exists():
        raise RunError(f"run {run.name} has not finished (state: {state}) and has no {run.predictions_file.name}: "
                       f"an ensemble needs the test predictions of finished runs. Fix: resume or finish it, or "
                       f"leave it out.")
    try:
        task = RunConfig.from_yaml(run.config_file).task  # only the task's name is read; nothing is loaded
    except Exception as e:  # noqa: BLE001 - a damaged config.yaml is reported, not raised as a traceback
        raise RunError(f"run {run.name}: config.yaml cannot be read ({str(e).splitlines()[0] if str(e) else e!r})."
                       ) from None
    if task not in ENSEMBLE_TASKS:
        raise RunError(f"run {run.name} is a {task} run: an ensemble averages class probabilities, which only "
                       f"{' and '.join(ENSEMBLE_TASKS)} runs store per example. Fix: leave it out.")
    return task, getattr(TASKS.get(task), "headline", "accuracy")


def stored_probs(pred: pd.DataFrame, labels: Sequence[str], where: str) -> np.ndarray | None:
    """The `p_<class>` columns of a predictions table as an (n, classes) array in `labels` order; None when
    any is missing (a table written before probabilities were stored). Values are untrusted: a `RunError`
    names the first bad one (not a number, outside [0, 1], or rows not summing to 1)."""
    cols = [f"p_{lab}" for lab in labels]
    if not labels or any(c not in pred for c in cols):
        return None
    probs = np.zeros((len(pred), len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        v = pd.to_numeric(pred[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v) | (v < 0) | (v > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RunError(f"{where} is damaged: column {c} holds {pred[c].iloc[i]!r} at row {pred['row'].iloc[i]!r}, "
                           f"not a probability between 0 and 1. Fix: re-score the run (`workbench eval` on a copy) "
                           f"or leave it out.")
        probs[:, j] = v
    total = probs.sum(axis=1)
    off = np.abs(total - 1) > 0.01  # float32 softmax written as text (bf16 scoring too) sums to 1 within this
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise RunError(f"{where} is damaged: the class probabilities of row {pred['row'].iloc[i]!r} add up to "
                       f"{total[i]:.4f}, not 1. Fix: re-score the run or leave it out.")
    return probs / total[:, None]


def _labels_of(run: RunDir, pred: pd.DataFrame) -> list[str]:
    """labels.json, else eval.json's labels, else the `p_` columns in file order."""
    labels = run.labels()
    if not labels:
        after = run.evaluation().get("after") or {}
        labels = [str(x) for x in after.get("labels") or []]
    return labels or [str(c)[2:] for c in pred.columns if str(c).startswith("p_")]


def _check_table(pred: pd.DataFrame, where: str) -> None:
    missing = [c for c in ("row", "text", "gold", "predicted") if c not in pred]
    if missing:
        raise RunError(f"{where} lacks column(s) {missing}: not a predictions table. Fix: re-score the run.")
    if pred["row"].duplicated().any():
        raise RunError(f"{where} repeats row numbers {pred.loc[pred['row'].duplicated(), 'row'].head(5).tolist()}: "
                       f"not one test split. Fix: re-score the run.")


def load_member(run: str | Path | RunDir, *, split_file: str | Path | None = None, recompute: bool = True,
                trust_remote_code: bool = False, allow_pickle: bool = False) -> Member:
    """A finished run as an ensemble member: its stored test predictions with their probabilities.

    Without stored probabilities, `recompute=True` re-scores the run's model on its own test texts
    (`evaluate_run`); `recompute=False` raises a `RunError` saying how to get them. With `split_file`, the
    run's model scores that labelled file instead (every member then sees exactly the same examples).
    The grants are the caller's: a run's files cannot turn on remote code or pickle loading.
    """
    r = run if isinstance(run, RunDir) else RunDir(run)
    task, headline = check_member_run(r)
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    source = r.predictions_file.name
    if split_file is not None:
        from .evaluate import evaluate_run

        pred, source = evaluate_run(r, split_file=split_file, **grants)["predictions"], f"scored on {split_file}"
    else:
        pred = r.predictions("after")
    where = f"{r.predictions_file}" if split_file is None else f"run {r.name}'s scores of {split_file}"
    _check_table(pred, where)
    labels = _labels_of(r, pred)
    unknown = sorted(set(pred["gold"].astype(str)) - set(labels))
    if unknown:
        raise RunError(f"{where} is damaged: gold label(s) {unknown[:5]} are not among the run's classes {labels}. "
                       f"Fix: re-score the run or leave it out.")
    probs = stored_probs(pred, labels, where)
    if probs is None:
        if not recompute:
            raise RunError(f"{r.predictions_file} has no class probabilities (p_<class> columns): the run was scored "
                           f"by an older workbench. Fix: run `workbench ensemble` on the command line, which "
                           f"re-scores its model on the same test split, or re-score it with `workbench eval`.")
        from .evaluate import evaluate_run

        pred = evaluate_run(r, **grants)["predictions"]
        source = "re-scored by loading its model (no probabilities in predictions.jsonl)"
        _check_table(pred, f"run {r.name}'s re-scored predictions")
        probs = stored_probs(pred, labels, f"run {r.name}'s re-scored predictions")
        if probs is None:
            raise RunError(f"run {r.name}'s model gives no probability for each of its classes {labels}.")
    return Member(name=r.name, path=str(r.path), task=task, labels=list(labels), pred=pred.reset_index(drop=True),
                  probs=probs, source=source, headline=headline)


# --- checks ----------------------------------------------------------------------------------------
def split_fingerprint(pred: pd.DataFrame) -> str:
    """A short hash of a test split: its rows' numbers, texts (and second texts) and gold labels, in row order."""
    cols = ["row", "text"] + (["text_pair"] if "text_pair" in pred else []) + ["gold"]
    rows = pred[cols].astype(str).sort_values("row", key=lambda s: s.map(_row_key), kind="stable")
    text = json.dumps(rows.to_numpy().tolist(), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _row_key(v: str) -> tuple[int, Any]:
    try:
        return (0, int(v))
    except ValueError:
        return (1, v)


def _too_few(names: Sequence[str]) -> str:
    return (f"an ensemble needs at least 2 runs; got {len(names)}" + (f" ({names[0]})" if names else "") +
            ". Fix: name two or more finished classification runs trained on the same data, e.g. with different "
            "seeds.")


def check_members(members: Sequence[Member]) -> list[str]:
    """A `RunError` when the members cannot be averaged (fewer than two, another task, other classes, another
    test split); otherwise notes (e.g. classes in another order, aligned by name)."""
    if len(members) < 2:
        raise RunError(_too_few([m.name for m in members]))
    paths = [str(Path(m.path).resolve()) for m in members]
    twice = sorted({m.name for m, p in zip(members, paths) if paths.count(p) > 1})
    if twice:
        raise RunError(f"run {twice[0]} is given twice: each member must be a different run.")
    first, notes = members[0], []
    for m in members[1:]:
        if m.task != first.task:
            raise RunError(f"run {first.name} is {first.task} and run {m.name} is {m.task}: the members of an "
                           f"ensemble must do the same task. Fix: ensemble runs of one task.")
        if set(m.labels) != set(first.labels):
            only_a = [x for x in first.labels if x not in m.labels]
            only_b = [x for x in m.labels if x not in first.labels]
            raise RunError(f"the runs have different classes: {first.name} has {first.labels}, {m.name} has "
                           f"{m.labels} (only in {first.name}: {only_a or 'none'}; only in {m.name}: "
                           f"{only_b or 'none'}). An ensemble averages each class's probability, so every member "
                           f"needs the same classes. Fix: ensemble runs trained on the same data and label column.")
        if m.labels != first.labels:
            notes.append(f"{m.name} lists the classes in another order ({m.labels}); its probabilities were "
                         f"matched to {first.labels} by name.")
        _check_same_split(first, m)
    return notes


def _check_same_split(a: Member, b: Member) -> None:
    if split_fingerprint(a.pred) == split_fingerprint(b.pred):
        return
    ra, rb = set(a.pred["row"].astype(str)), set(b.pred["row"].astype(str))
    shared = sorted(ra & rb, key=_row_key)
    ia = a.pred.assign(_r=a.pred["row"].astype(str)).set_index("_r").loc[shared]
    ib = b.pred.assign(_r=b.pred["row"].astype(str)).set_index("_r").loc[shared]
    cols = ["text"] + (["text_pair"] if "text_pair" in a.pred or "text_pair" in b.pred else [])
    text_diff = np.zeros(len(shared), dtype=bool)
    for c in cols:
        text_diff |= (ia[c].astype(str).to_numpy() if c in ia else "") != (ib[c].astype(str).to_numpy() if c in ib
                                                                            else "")
    gold_diff = ia["gold"].astype(str).to_numpy() != ib["gold"].astype(str).to_numpy()
    n_diff = len(ra - rb) + len(rb - ra) + int((text_diff | gold_diff).sum())
    parts = [f"{len(ra - rb)} only in {a.name}", f"{len(rb - ra)} only in {b.name}"]
    if text_diff.any():
        parts.append(f"{int(text_diff.sum())} with the same row number but another text (e.g. row "
                     f"{shared[int(np.flatnonzero(text_diff)[0])]})")
    if gold_diff.any():
        parts.append(f"{int((gold_diff & ~text_diff).sum())} with another gold label")
    raise RunError(f"runs {a.name} and {b.name} were tested on different examples: {n_diff} of "
                   f"{len(ra | rb)} test rows differ ({'; '.join(parts)}); {a.name} has {len(ra)} test rows, "
                   f"{b.name} has {len(rb)}. " + _SPLIT_FIX)


def parse_weights(weights: Sequence[float] | str | None, n: int) -> list[float]:
    """One non-negative weight per member, normalised to sum 1 (None: equal weights). A string may be
    comma- or space-separated ("2,1,1")."""
    if weights is None or (isinstance(weights, str) and not weights.strip()):
        return [1.0 / n] * n
    if isinstance(weights, str):
        parts = weights.replace(",", " ").split()
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            raise RunError(f"weights {weights!r}: give one number per run, e.g. 2,1,1.") from None
    w = [float(x) for x in weights]
    if len(w) != n:
        raise RunError(f"{len(w)} weight(s) for {n} runs: give one weight per run, in the order of the runs.")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise RunError(f"weights {w}: each must be a number >= 0 and at least one above 0.")
    return [x / sum(w) for x in w]


# --- the ensemble ----------------------------------------------------------------------------------
def average_probs(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The (weighted) mean of several (n, classes) probability arrays: soft voting."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    w = np.asarray(parse_weights(weights, len(stack)), dtype=np.float64)
    return np.tensordot(w, stack, axes=1)


def _aligned(members: Sequence[Member]) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Each member's table and probabilities in the first member's row and class order."""
    first = members[0]
    order = first.pred["row"].astype(str).tolist()
    out = []
    for m in members:
        pos = pd.Series(np.arange(len(m.pred)), index=m.pred["row"].astype(str)).loc[order].to_numpy()
        cols = [m.labels.index(lab) for lab in first.labels]
        out.append((m.pred.iloc[pos].reset_index(drop=True), m.probs[pos][:, cols]))
    return out


def predictions_table(base: pd.DataFrame, probs: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """A predictions table (the columns a run writes) for `probs` on `base`'s examples: what `Task.score`
    reads (gold, predicted, loss) and the error tables show."""
    l2i = {lab: i for i, lab in enumerate(labels)}
    gold = base["gold"].astype(str).map(l2i).to_numpy()
    pred = probs.argmax(axis=1)
    out = base[[c for c in ("row", "text", "text_pair") if c in base]].copy()
    out["gold"] = base["gold"].astype(str).to_numpy()
    out["predicted"] = [labels[i] for i in pred]
    out["confidence"] = probs.max(axis=1)
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.c_[np.zeros(len(probs)), probs]
    out["margin"] = top2[:, 1] - top2[:, 0]
    known = ~pd.isna(gold)
    p_gold = np.where(known, probs[np.arange(len(probs)), np.where(known, gold, 0).astype(int)], np.nan)
    out["loss"] = -np.log(np.clip(p_gold, 1e-12, 1.0))
    out["correct"] = out["predicted"].to_numpy() == out["gold"].to_numpy()
    for i, lab in enumerate(labels):
        out[f"p_{lab}"] = probs[:, i]
    return out


def mcnemar(best_correct: np.ndarray, ens_correct: np.ndarray, *, n_resamples: int = 2000,
            seed: int = 0) -> dict[str, Any]:
    """The ensemble against the best member on the same examples: counts of each change, McNemar's exact
    test on the examples where exactly one is right (scipy's binomial test), and a paired bootstrap 95%
    interval of the accuracy difference (ensemble minus best)."""
    from scipy.stats import binomtest

    b, e = np.asarray(best_correct, bool), np.asarray(ens_correct, bool)
    fixed, broken = int((~b & e).sum()), int((b & ~e).sum())
    out: dict[str, Any] = {"fixed": fixed, "broken": broken, "both_wrong": int((~b & ~e).sum()),
                           "both_right": int((b & e).sum()), "net": fixed - broken, "n": int(len(b))}
    out["mcnemar_p"] = float(binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue) if fixed + broken else 1.0
    diff = e.astype(float) - b.astype(float)
    out["accuracy_difference"] = float(diff.mean()) if len(diff) else 0.0
    if len(diff):
        idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_resamples, len(diff)))
        means = diff[idx].mean(axis=1)
        out["bootstrap_low"], out["bootstrap_high"] = (float(np.quantile(means, 0.025)),
                                                       float(np.quantile(means, 0.975)))
    out["n_resamples"] = n_resamples
    return out


def _score(task_name: str, pred: pd.DataFrame, labels: list[str]) -> dict[str, Any]:
    from .tasks import get_task

    return get_task(task_name).score(pred, labels)


def build_ensemble(members: Sequence[Member], weights: Sequence[float] | str | None = None) -> Ensemble:
    """Average the members' probabilities and compare the ensemble with each member and the best one.

    Raises `RunError` (`check_members`) when they cannot be averaged. The best member is the one with the
    highest headline metric of the task (accuracy for text classification), the first on a tie.
    """
    members = list(members)
    notes = check_members(members)
    # Runs of the same name in two folders (or one named like the ensemble's row) are told apart by folder.
    names = [m.name for m in members]
    members = [replace(m, name=f"{Path(m.path).parent.name}/{m.name}")
               if names.count(m.name) > 1 or m.name == "ensemble" else m for m in members]
    w = parse_weights(weights, len(members))
    first = members[0]
    labels, task = list(first.labels), first.task
    aligned = _aligned(members)
    probs = average_probs([p for _, p in aligned], w)
    base = aligned[0][0]
    ens_pred = predictions_table(base, probs, labels)
    member_preds = [predictions_table(t, p, labels) for t, p in aligned]  # scored alike, from the probabilities
    metrics = {m.name: _score(task, mp, labels) for m, mp in zip(members, member_preds)}
    metrics["ensemble"] = _score(task, ens_pred, labels)
    headline = first.headline
    best = max(members, key=lambda m: (metrics[m.name].get(headline) or 0.0)).name
    from .tasks import get_task

    keys = [k for k in dict.fromkeys(["accuracy", "f1_macro", headline, *get_task(task).directions]) if
            any(isinstance(metrics[n].get(k), (int, float)) for n in metrics)]
    scores = pd.DataFrame([{"model": n, "weight": (w[i] if i < len(w) else None),
                            "role": "ensemble" if n == "ensemble" else ("best member" if n == best else "member"),
                            **{k: metrics[n].get(k) for k in keys}}
                           for i, n in enumerate([m.name for m in members] + ["ensemble"])])
    scores.loc[scores["model"] == "ensemble", "weight"] = None
    best_pred = member_preds[[m.name for m in members].index(best)]
    table = disagreement_table(members, member_preds, ens_pred, best)
    comparison = mcnemar(best_pred["correct"].to_numpy(), ens_pred["correct"].to_numpy())
    return Ensemble(members=members, weights=w, labels=labels, task=task, headline=headline, predictions=ens_pred,
                    scores=scores, metrics=metrics, best=best, table=table, comparison=comparison,
                    fingerprint=split_fingerprint(first.pred), notes=notes)


def disagreement_table(members: Sequence[Member], member_preds: Sequence[pd.DataFrame], ens_pred: pd.DataFrame,
                       best: str) -> pd.DataFrame:
    """Per example: row, text, gold, each member's prediction and confidence (`predicted_<run>`,
    `confidence_<run>`), the ensemble's, how many members disagree with the ensemble's answer, whether all
    members agree, and what the ensemble did to the best member's answer (`change`: one of CHANGES)."""
    out = ens_pred[[c for c in ("row", "text", "text_pair", "gold") if c in ens_pred]].copy()
    ens = ens_pred["predicted"].to_numpy()
    votes = []
    for m, mp in zip(members, member_preds):
        out[f"predicted_{m.name}"] = mp["predicted"].to_numpy()
        out[f"confidence_{m.name}"] = mp["confidence"].to_numpy()
        votes.append(mp["predicted"].to_numpy())
    out["ensemble"] = ens
    out["ensemble_confidence"] = ens_pred["confidence"].to_numpy()
    out["ensemble_correct"] = ens_pred["correct"].to_numpy()
    v = np.stack(votes)
    out["n_disagreeing"] = (v != ens[None, :]).sum(axis=0)
    out["members_agree"] = (v == v[0][None, :]).all(axis=0)
    b = member_preds[[m.name for m in members].index(best)]["correct"].to_numpy(dtype=bool)
    e = out["ensemble_correct"].to_numpy(dtype=bool)
    out["change"] = np.select([~b & e, b & ~e, ~b & ~e], CHANGES[:3], default=CHANGES[3])
    return out.reset_index(drop=True)


def filter_table(table: pd.DataFrame, show: str = "all") -> pd.DataFrame:
    """Rows of a `disagreement_table` for one view of `SHOW`: "disagree" (members do not all agree),
    "ensemble wrong", "fixed" / "broken" (the ensemble against the best member), or "all"."""
    if show not in SHOW:
        raise RunError(f"unknown view {show!r}: choose one of {', '.join(SHOW)}.")
    keep = {"all": pd.Series(True, index=table.index), "disagree": ~table["members_agree"].astype(bool),
            "ensemble wrong": ~table["ensemble_correct"].astype(bool), "fixed": table["change"] == "fixed",
            "broken": table["change"] == "broken"}[show]
    return table[keep]


# --- the result folder -----------------------------------------------------------------------------
def default_folder(members: Sequence[Member], name: str | None = None) -> Path:
    """`ensembles/<name>` in the members' runs folder (their common parent; else `$WORKBENCH_RUNS`)."""
    from .paths import runs_root

    parents = {Path(m.path).resolve().parent for m in members}
    root = parents.pop() if len(parents) == 1 else runs_root()
    if not name:
        joined = "+".join(m.name.replace("/", "_") for m in members)
        name = joined if len(joined) <= 80 else (f"{members[0].name[:30]}+{len(members) - 1}-more-"
                                                  + hashlib.sha256(joined.encode()).hexdigest()[:8])
    bad = [c for c in ("/", "\\", "\0") if c in name] or ([name] if name.strip() in ("", ".", "..") else [])
    if bad:
        raise RunError(f"ensemble name {name[:60]!r} cannot hold path separators or be '.'/'..' (it names a folder "
                       f"under {root / 'ensembles'}). Fix: a plain name, or --out DIR for another folder.")
    return root / "ensembles" / name


def write_ensemble(ens: Ensemble, folder: str | Path) -> Path:
    """Write `ensemble.json` (scores, best member, comparison, notes), `members.json` and `disagreements.jsonl`
    (the per-example table, every row) into `folder`; never into a run directory or inside a member's."""
    from .rundir import clean_floats, write_json_atomic

    folder = Path(folder).expanduser()
    resolved = folder.resolve()
    for m in ens.members:
        mp = Path(m.path).resolve()
        if resolved == mp or mp in resolved.parents:
            raise RunError(f"{folder} is inside the member run {m.name}: an ensemble is written beside the runs, "
                           f"never into one. Fix: choose another --out folder (default: the runs folder's "
                           f"ensembles/).")
    if RunDir(folder).exists() or any(RunDir(p).exists() for p in resolved.parents):
        raise RunError(f"{folder} is (inside) a run directory: write the ensemble elsewhere (--out).")
    folder.mkdir(parents=True, exist_ok=True)
    members = [{"name": m.name, "path": m.path, "weight": w, "probabilities": m.source, "labels": m.labels,
                "n": len(m.pred)} for m, w in zip(ens.members, ens.weights)]
    summary = {"task": ens.task, "labels": ens.labels, "n": len(ens.predictions), "headline": ens.headline,
               "best_member": ens.best, "split_fingerprint": ens.fingerprint,
               "members": [m["name"] for m in members], "weights": ens.weights,
               "scores": ens.scores.to_dict(orient="records"), "metrics": ens.metrics,
               "ensemble_vs_best": ens.comparison, "notes": ens.notes}
    write_json_atomic(folder / "ensemble.json", clean_floats(summary))
    write_json_atomic(folder / "members.json", clean_floats(members))
    tmp = folder / ".disagreements.jsonl.tmp"
    ens.table.to_json(tmp, orient="records", lines=True, force_ascii=False)
    tmp.replace(folder / "disagreements.jsonl")
    return folder


def ensemble_runs(runs: Sequence[str | Path | RunDir], *, weights: Sequence[float] | str | None = None,
                  split_file: str | Path | None = None, recompute: bool = True, trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> Ensemble:
    """`load_member` on each run, then `build_ensemble` (the CLI, the dashboard and notebooks call this)."""
    if len(runs) < 2:
        raise RunError(_too_few([RunDir(r).name for r in runs]))
    parse_weights(weights, len(runs))  # a wrong weight count is said before any model is loaded
    members = [load_member(r, split_file=split_file, recompute=recompute, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle) for r in runs]
    return build_ensemble(members, weights)
