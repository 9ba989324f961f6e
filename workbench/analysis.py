"""Error analysis: pure functions over a run's per-example predictions table.

Input is the DataFrame in predictions.jsonl (`RunDir.predictions()`): row, text, [text_pair], gold,
predicted, confidence, margin, loss, correct, p_<label>..., plus the user's own columns. Every function
returns a DataFrame (or a Series/dict), so the CLI prints it, the dashboard draws it with
`workbench.figures` and a notebook can do either. Nothing here imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from .errors import DataError, RunError

# Columns written by `predictions_frame`; everything else is the user's and may be worth slicing by.
PREDICTION_COLUMNS = ("row", "text", "text_pair", "gold", "predicted", "confidence", "margin", "loss", "correct")
MAX_SLICE_VALUES = 50
CHANGES = ("fixed", "broken", "both wrong", "both right")


def _correct(pred: pd.DataFrame) -> pd.Series:
    """The `correct` column, or gold == predicted for tables that lack it (e.g. hand-made ones)."""
    if "correct" in pred:
        return pred["correct"].astype(bool)
    return pred["gold"].astype(str) == pred["predicted"].astype(str)


def _texts(pred: pd.DataFrame) -> pd.Series:
    """Text plus text_pair (pair tasks), as one string per example."""
    text = pred["text"].fillna("").astype(str)
    if "text_pair" in pred:
        text = text + " " + pred["text_pair"].fillna("").astype(str)
    return text


def confident_mistakes(pred: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """Wrong predictions, most confident first (ties: higher loss first).

    These are the first rows to read: label noise and systematic blind spots show up here.
    """
    wrong = pred[~_correct(pred)]
    keys, asc = ["confidence"], [False]
    if "loss" in wrong:
        keys, asc = keys + ["loss"], asc + [False]
    out = wrong.sort_values(keys, ascending=asc, kind="stable")
    return out.head(n) if n is not None else out


def uncertain_examples(pred: pd.DataFrame, n: int | None = None, max_margin: float | None = None) -> pd.DataFrame:
    """Examples the model could barely decide on: lowest margin (top-1 minus top-2 probability) first."""
    out = pred if max_margin is None else pred[pred["margin"] <= max_margin]
    out = out.sort_values("margin", kind="stable")
    return out.head(n) if n is not None else out


def length_bucket(pred: pd.DataFrame, edges: Sequence[int] | None = None) -> pd.Series:
    """Text length in words, bucketed: an ordered categorical like "≤12 words", "13–20 words", ">20 words".

    `edges` are inclusive upper bounds of all but the last bucket. By default they are the quartiles of
    this table's lengths, so each bucket holds about a quarter of the examples whatever the data set.
    """
    words = _texts(pred).str.split().str.len().fillna(0).astype(int)
    if edges is None:
        edges = np.unique(np.percentile(words, [25, 50, 75]).round().astype(int)).tolist() if len(words) else []
    edges = sorted({int(e) for e in edges})
    if not edges:
        names = ["all lengths"]
        return pd.Series(pd.Categorical([names[0]] * len(pred), categories=names, ordered=True),
                         index=pred.index, name="length")
    names = [f"≤{_words(edges[0])}"]
    names += [f"{lo + 1}–{hi} words" if hi > lo + 1 else _words(hi) for lo, hi in zip(edges, edges[1:])]
    names.append(f">{_words(edges[-1])}")
    codes = np.searchsorted(np.asarray(edges), words.to_numpy(), side="left")
    return pd.Series(pd.Categorical.from_codes(codes, categories=names, ordered=True), index=pred.index,
                     name="length")


def _words(n: int) -> str:
    return f"{n} word" if n == 1 else f"{n} words"


def slice_metrics(pred: pd.DataFrame, by: str | pd.Series, name: str | None = None,
                  labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-slice n, accuracy, macro F1, errors and error rate.

    `by` is a column name or a Series aligned with `pred` (boolean, categorical, anything hashable);
    missing values form their own slice, "(missing)". Macro F1 averages over `labels`, or by default
    over the classes among the slice's gold labels: a class no example of the slice belongs to has no
    F1 to speak of, and counting it as 0 would halve the score of every one-class slice.
    """
    if isinstance(by, str):
        if by not in pred:
            raise DataError(f"no column {by!r} to slice by; columns: {', '.join(map(str, pred.columns))}.")
        key, name = pred[by], name or by
    else:
        key, name = by.reindex(pred.index), name or (str(by.name) if by.name is not None else "slice")
    correct = _correct(pred)
    gold, predicted = pred["gold"].astype(str), pred["predicted"].astype(str)
    rows = []
    # observed=True keeps empty categorical buckets out; dropna=False keeps missing values as a slice.
    for value, idx in key.groupby(key, observed=True, dropna=False, sort=True).groups.items():
        n = len(idx)
        if n == 0:
            continue
        c = correct.loc[idx]
        g = gold.loc[idx]
        f1 = f1_score(g, predicted.loc[idx], labels=list(labels) if labels else sorted(g.unique()),
                      average="macro", zero_division=0)
        rows.append({"feature": name, "slice": "(missing)" if _isna(value) else value, "n": n,
                     "accuracy": float(c.mean()), "f1_macro": float(f1), "errors": int((~c).sum()),
                     "error_rate": float((~c).mean())})
    return pd.DataFrame(rows, columns=["feature", "slice", "n", "accuracy", "f1_macro", "errors", "error_rate"])


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def pattern_mask(pred: pd.DataFrame, pattern: str) -> pd.Series:
    """Which examples contain `pattern`: a plain word matches as a whole word, anything else as a regex.

    Both are case-insensitive, so "not" finds "Not" but not "nothing"; use "not|n't" for a regex.
    """
    rx = rf"\b{pattern}\b" if re.fullmatch(r"\w+", pattern) else pattern
    try:
        compiled = re.compile(rx, re.IGNORECASE)
    except re.error as e:
        raise DataError(f"pattern {pattern!r} is not a valid regular expression ({e}). Fix: escape special "
                        f"characters with a backslash, or give a plain word.") from None
    # Typographic apostrophes ("wasn’t") are common in scraped reviews; match them as plain ones.
    return _texts(pred).str.replace("\u2019", "'", regex=False).str.contains(compiled, regex=True)


def slice_columns(pred: pd.DataFrame, max_values: int = MAX_SLICE_VALUES) -> list[str]:
    """The user's extra columns worth slicing by: categorical-looking, 2..max_values distinct values."""
    out = []
    for c in pred.columns:
        if c in PREDICTION_COLUMNS or str(c).startswith("p_"):
            continue
        col = pred[c]
        if pd.api.types.is_float_dtype(col) and not col.dropna().apply(float.is_integer).all():
            continue  # a continuous score: would need binning, not one slice per value
        try:
            k = col.nunique(dropna=True)
        except TypeError:  # unhashable cells (lists, dicts)
            continue
        if 2 <= k <= max_values:
            out.append(str(c))
    return out


def worst_slices(pred: pd.DataFrame, columns: Sequence[str] | None = None, patterns: Sequence[str] | None = None,
                 min_size: int = 5, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Every slice in one table, worst first (lowest accuracy, ties: bigger slice first).

    Slices: gold label, predicted label, text-length bucket, contains / lacks each of `patterns`, and each
    value of the user's extra columns (`columns`, or those `slice_columns` picks). Slices smaller than
    `min_size` are dropped: an accuracy over three examples is noise. `delta_accuracy` is the slice's
    accuracy minus the whole table's.
    """
    if columns is not None:
        missing = [c for c in columns if c not in pred]
        if missing:
            raise DataError(f"no column(s) {missing} in the predictions; columns: {', '.join(map(str, pred.columns))}.")
    # Within a gold-label slice accuracy is that class's recall, within a predicted-label slice its
    # precision; macro F1 there only restates them with one side fixed, so it is left empty.
    parts = [slice_metrics(pred, "gold", "gold label").assign(f1_macro=np.nan),
             slice_metrics(pred, "predicted", "predicted label").assign(f1_macro=np.nan),
             slice_metrics(pred, length_bucket(pred), "length", labels)]
    for p in patterns or []:
        has = pattern_mask(pred, p).map({True: f'contains "{p}"', False: f'no "{p}"'})
        parts.append(slice_metrics(pred, has, f"pattern {p}", labels))
    for c in slice_columns(pred) if columns is None else columns:
        parts.append(slice_metrics(pred, c, c, labels))
    parts = [p for p in parts if len(p)]
    if not parts:
        return slice_metrics(pred, "gold").assign(delta_accuracy=np.nan)
    out = pd.concat(parts, ignore_index=True)
    out["slice"] = out["slice"].astype(str)
    out["delta_accuracy"] = out["accuracy"] - float(_correct(pred).mean()) if len(pred) else np.nan
    out = out[out["n"] >= min_size]
    return out.sort_values(["accuracy", "n"], ascending=[True, False], kind="stable").reset_index(drop=True)


# --- comparing two runs -----------------------------------------------------------------------------
def compare_predictions(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """Example-level diff of two runs scored on the same test examples, matched on `row`.

    `change` is "fixed" (A wrong, B right), "broken" (A right, B wrong), "both wrong" or "both right".
    Columns: row, text, gold, predicted_a/_b, confidence_a/_b, correct_a/_b, change, plus A's extra
    columns. Raises RunError when the two tables are not the same test set.
    """
    for which, p in (("A", pred_a), ("B", pred_b)):
        missing = [c for c in ("row", "text", "gold", "predicted") if c not in p]
        if missing:
            raise RunError(f"run {which}'s predictions lack column(s) {missing}: not a predictions table.")
        if p["row"].duplicated().any():
            raise RunError(f"run {which}'s predictions repeat row numbers "
                           f"{p.loc[p['row'].duplicated(), 'row'].head(5).tolist()}: not one test set.")
    rows_a, rows_b = set(pred_a["row"]), set(pred_b["row"])
    if rows_a != rows_b:
        raise RunError(f"the runs were tested on different examples: A has {len(rows_a)} test rows, B has "
                       f"{len(rows_b)}; {len(rows_a - rows_b)} only in A, {len(rows_b - rows_a)} only in B. "
                       f"Fix: compare runs with the same data source, seed, test_size and max_eval_samples.")
    b = pred_b.set_index("row").loc[pred_a["row"]]
    for col, what in (("text", "texts"), ("gold", "gold labels")):
        differ = pred_a[col].astype(str).to_numpy() != b[col].astype(str).to_numpy()
        if differ.any():
            raise RunError(f"the runs' test sets share row numbers but not {what}: {int(differ.sum())} row(s) "
                           f"differ (e.g. row {pred_a['row'].to_numpy()[differ][0]}). They were made from "
                           f"different data files; compare runs trained on the same data.")
    ca, cb = _correct(pred_a).to_numpy(), _correct(b).to_numpy()
    out = pred_a[["row", "text"] + (["text_pair"] if "text_pair" in pred_a else []) + ["gold"]].copy()
    out["predicted_a"], out["predicted_b"] = pred_a["predicted"].to_numpy(), b["predicted"].to_numpy()
    out["confidence_a"] = pred_a["confidence"].to_numpy() if "confidence" in pred_a else np.nan
    out["confidence_b"] = b["confidence"].to_numpy() if "confidence" in b else np.nan
    out["correct_a"], out["correct_b"] = ca, cb
    out["change"] = np.select([~ca & cb, ca & ~cb, ~ca & ~cb], CHANGES[:3], default=CHANGES[3])
    for c in pred_a.columns:  # keep the user's columns (e.g. `movie`) for slicing the diff
        if c not in PREDICTION_COLUMNS and not str(c).startswith("p_") and c not in out:
            out[c] = pred_a[c].to_numpy()
    return out.reset_index(drop=True)


def compare_summary(diff: pd.DataFrame) -> dict[str, Any]:
    """Counts of each change, both accuracies and the net gain of B over A (fixed - broken)."""
    counts = diff["change"].value_counts()
    n = len(diff)
    out: dict[str, Any] = {"n": n}
    out.update({c.replace(" ", "_"): int(counts.get(c, 0)) for c in CHANGES})
    out["accuracy_a"] = float(diff["correct_a"].mean()) if n else None
    out["accuracy_b"] = float(diff["correct_b"].mean()) if n else None
    out["net"] = out["fixed"] - out["broken"]
    return out


def compare_runs(run_a: str | Path | Any, run_b: str | Path | Any, which_a: str = "after",
                 which_b: str = "after") -> pd.DataFrame:
    """`compare_predictions` on two run directories (paths or RunDir).

    `which_a="before", which_b="after"` on the same run shows what fine-tuning fixed and broke.
    """
    from .rundir import RunDir

    a = run_a if isinstance(run_a, RunDir) else RunDir(run_a)
    b = run_b if isinstance(run_b, RunDir) else RunDir(run_b)
    return compare_predictions(a.require().predictions(which_a), b.require().predictions(which_b))


def row_meaning(row_kind: str | None) -> tuple[str, str]:
    """(column label, explanation) for a predictions table's `row`: where the example is in the data file.

    `row_kind` is the data report's: "line" for CSV/TSV/JSONL (file line numbers), "row" for JSON,
    Parquet and tables given in memory (1-based record numbers); None when the report is missing.
    """
    if row_kind == "line":
        return "line in file", ("The example's line number in the data file: the header is line 1, and a text "
                                "that spans several lines takes several, so it can be larger than the number of "
                                "examples. Open the file at this line to see the example.")
    if row_kind == "row":
        return "record in file", "The example's record number in the data file (the first record is 1)."
    return "line/record in file", ("Where the example is in the data file: its line number for CSV, TSV and JSONL "
                                   "(header and multi-line texts counted), its record number for JSON and Parquet.")


def run_row_kind(run: Any) -> str | None:
    """The data report's `row_kind` of a run directory, or None when its report is missing or damaged."""
    from .errors import WorkbenchError

    try:
        kind = run.data_report().get("row_kind")
    except (WorkbenchError, OSError):
        return None
    return kind if kind in ("line", "row") else None
