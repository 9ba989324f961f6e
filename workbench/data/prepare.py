"""From a loaded table to train/validation/test frames: columns, labels, cleaning, splits, report.

Every frame has the columns `text`, optional `text_pair`, `label` (int id), `label_name`, and the
user's other columns (for error-analysis slices); the index keeps the source row/line number.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ..config import DataConfig
from ..errors import DataError
from .io import Table, read_table
from .report import UNKNOWN_WARN, DataReport, format_report, token_length_stats, unknown_token_stats

TEXT_NAMES = ["text", "sentence", "review", "content", "body", "message", "sms", "document", "tweet", "comment",
              "utterance", "question", "sentence1", "premise", "excerpt", "description", "title"]
PAIR_NAMES = ["text_pair", "sentence2", "hypothesis", "text2", "question2", "second_text"]
LABEL_NAMES = ["label", "labels", "class", "category", "target", "sentiment", "y", "intent", "gold", "tag",
               "polarity", "class_label", "spam"]
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "validation"}
_INT = re.compile(r"[+-]?\d+(\.0*)?")
RESERVED = ("text", "text_pair", "label", "label_name")
# What pandas' `read_csv` reads as "no value" by default (its `na_values`): the spellings spreadsheets,
# R and database exports write for a missing cell. A label spelled like this is missing, not a class.
MISSING_LABELS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                            "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
_MISSING_LOWER = {m.lower() for m in MISSING_LABELS} | {"nil"}


@dataclass
class PreparedData:
    """The three splits, the label names (index = class id) and the report that describes them."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    report: DataReport
    extra_columns: list[str] = field(default_factory=list)
    max_length: int | None = None  # tokens per text actually used: data.max_length, capped at the model's limit


# --- columns -------------------------------------------------------------------------------------
def guess_columns(df: pd.DataFrame) -> dict[str, str | None]:
    """Guess text / text_pair / label columns from common names, then from content."""
    lower = {str(c).lower().strip(): c for c in df.columns}

    def by_name(names: list[str], taken: set) -> str | None:
        for n in names:
            if n in lower and lower[n] not in taken:
                return lower[n]
        return None

    text = by_name(TEXT_NAMES, set())
    label = by_name(LABEL_NAMES, {text})
    pair = by_name(PAIR_NAMES, {text, label})
    if text is None:  # the string column with the longest values
        lengths = {c: df[c].dropna().astype(str).str.len().mean() for c in df.columns
                   if c != label and df[c].dtype == object or pd.api.types.is_string_dtype(df[c])}
        lengths = {c: v for c, v in lengths.items() if c != label and v == v}
        text = max(lengths, key=lengths.get) if lengths else None
    # The label is guessed by name only: a wrong guess from content (say, a `source` column) would
    # train a model on the wrong target without anyone noticing.
    return {"text": text, "text_pair": pair, "label": label}


def normalize_label(v: Any) -> str | None:
    """One spelling per label: 1, 1.0 and "1" are the same class; surrounding spaces are ignored.

    Missing (None): empty cells, NaN, and the usual written spellings of a missing value (`MISSING_LABELS`:
    "NaN", "NA", "N/A", "null", "None", ...).
    """
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else str(float(v))
    if isinstance(v, (list, dict, tuple, np.ndarray)):
        raise TypeError(type(v).__name__)
    s = str(v).strip()
    if s in MISSING_LABELS:
        return None
    if _INT.fullmatch(s):
        return str(int(float(s)))
    return s or None


def order_labels(names: set[str] | list[str]) -> list[str]:
    """Integers sort numerically (so label 2 is class 2), anything else alphabetically."""
    names = list(set(names))
    try:
        return sorted(names, key=lambda s: int(s))
    except ValueError:
        return sorted(names)


# --- the whole preparation -----------------------------------------------------------------------
def cap_max_length(cfg: Any, max_positions: int | None, cut: str) -> tuple[Any, list[str]]:
    """`cfg` with `max_length` lowered to the model's `max_positions` when it asks for more, and the warning
    that says so (`cut` ends it, with `{n}` for the new length), as a list (empty when nothing changed)."""
    if max_positions is None or cfg.max_length <= max_positions:
        return cfg, []
    note = (f"data.max_length={cfg.max_length} is more than this model takes ({max_positions} tokens): "
            + cut.format(n=max_positions))
    return dataclasses.replace(cfg, max_length=max_positions), [note]


def prepare_data(cfg: DataConfig, seed: int = 42, tokenizer: Any = None, *,
                 table: Table | pd.DataFrame | None = None, raise_on_problems: bool = True,
                 max_positions: int | None = None, model_name: str | None = None) -> PreparedData:
    """Load, clean, map labels, split and report. With `raise_on_problems`, fatal problems raise
    `DataError` (all of them in one message); otherwise they are left in `report.problems`.

    `max_positions` is the longest input the model takes (`tasks.classification.model_max_tokens`): a
    larger `data.max_length` is lowered to it, with a warning (`PreparedData.max_length` is the result).
    `model_name` (`model.name_or_path`) names the model in the advice when it cannot read the text.
    """
    cfg, capped_list = cap_max_length(cfg, max_positions, "texts are cut at {n} tokens instead. Fix: set "
                                      "data.max_length to {n} or less.")
    capped = capped_list[0] if capped_list else None
    if table is None:
        table = read_table(cfg.source, delimiter=cfg.delimiter, encoding=cfg.encoding)
    elif isinstance(table, pd.DataFrame):
        table = read_table(table)
    rep = DataReport(source=table.source, format=table.format, columns_found=[str(c) for c in table.df.columns],
                     rows_read=len(table.df), row_kind=table.row_kind,
                     warnings=list(table.warnings) + ([capped] if capped else []))
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)

    given_splits: dict[str, pd.DataFrame] = dict(table.splits or {})
    if not given_splits:
        given_splits["train"] = table.df
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other = read_table(src, delimiter=cfg.delimiter, encoding=cfg.encoding)
            rep.warnings += other.warnings
            rep.rows_read += len(other.df)
            given_splits[role] = other.df
    given_splits = {SPLIT_ALIASES.get(k, k): v for k, v in given_splits.items() if SPLIT_ALIASES.get(k, k) in
                    ("train", "validation", "test")}

    df0 = given_splits["train"]
    if len(df0) == 0:
        rep.problems.append(f"{table.source} has a header but no data rows. Fix: add examples below the header.")
        return _finish(empty, raise_on_problems)
    cols = _resolve_columns(cfg, df0, rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)

    frames: dict[str, pd.DataFrame] = {}
    for split, raw in given_splits.items():
        missing = [c for c in (cols["text"], cols["label"], cols["text_pair"]) if c and c not in raw.columns]
        if missing:
            rep.problems.append(f"the {split} file lacks column(s) {missing}; it has {list(map(str, raw.columns))}.")
            continue
        frames[split] = _clean(raw, cols, split, rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)

    if cfg.split_column:
        train_all = frames.pop("train")
        sc = train_all.pop(cfg.split_column) if cfg.split_column in train_all else None
        if sc is None:
            rep.problems.append(f"data.split_column {cfg.split_column!r} not found; columns found: "
                                f"{rep.columns_found}.")
            return _finish(empty, raise_on_problems)
        mapped = sc.astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        bad = sorted(set(sc[mapped.isna()].astype(str)))
        if bad:
            rep.problems.append(f"column {cfg.split_column!r} has values {bad[:5]} that are not train/validation/test.")
            return _finish(empty, raise_on_problems)
        for s in ("train", "validation", "test"):
            if (mapped == s).any():
                frames[s] = train_all[mapped == s]

    rep.rows_used = sum(len(f) for f in frames.values())
    if rep.rows_used == 0:
        counts = "; ".join(f"{len(v)} {k}" for k, v in rep.dropped.items())
        rep.problems.append(f"every row was dropped ({counts}). Fix: check that data.text_column "
                            f"({cols['text']!r}) and data.label_column ({cols['label']!r}) are the right columns.")
        return _finish(empty, raise_on_problems)

    train = frames["train"]
    counts = train["label_name"].value_counts()
    regression = _looks_like_regression(counts, cols["label"])
    if regression:
        rep.problems.append(regression)
        return _finish(empty, raise_on_problems)
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        rep.problems.append(f"only one class ({only!r}) in column {cols['label']!r}: a classifier needs at least two. "
                            f"Fix: add examples of the other class(es), or pick another label column.")
        return _finish(empty, raise_on_problems)

    need_val, need_test = "validation" not in frames, "test" not in frames
    n_splits = int(need_val and cfg.validation_size > 0) + int(need_test and cfg.test_size > 0)
    if n_splits:
        small = counts[counts < n_splits + 1]
        if len(small):
            rep.problems.append(
                "class(es) too small to split into train/" + ("validation/" if need_val else "") + "test: " +
                ", ".join(f"{k!r} has {v} row(s)" for k, v in small.head(10).items()) +
                (f" and {len(small) - 10} more" if len(small) > 10 else "") +
                f". Fix: give each class at least {n_splits + 1} rows (better 20+), or remove it.")
            return _finish(empty, raise_on_problems)
        try:
            if need_test and cfg.test_size > 0:
                train, frames["test"] = _split(train, cfg.test_size, seed)
            if need_val and cfg.validation_size > 0:
                frac = cfg.validation_size / (1 - (cfg.test_size if need_test else 0))
                train, frames["validation"] = _split(train, frac, seed)
        except ValueError as e:
            rep.problems.append(f"cannot make a stratified split of {len(frames['train'])} rows with "
                                f"{len(counts)} classes ({e}). Fix: add rows, or lower data.test_size/validation_size.")
            return _finish(empty, raise_on_problems)
    frames["train"] = train
    for s in ("validation", "test"):
        frames.setdefault(s, train.iloc[:0])

    labels = order_labels(set(frames["train"]["label_name"]))
    for s in ("validation", "test"):
        unseen = sorted(set(frames[s]["label_name"]) - set(labels))
        if unseen:
            rep.problems.append(f"label(s) {unseen} appear in {s} but never in train, so the model cannot learn "
                                f"them. Fix: add training examples of them, or remove those rows.")
    if rep.problems:
        return _finish(empty, raise_on_problems)

    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = _subset(frames["train"], cfg.max_train_samples, seed)
    for s in ("validation", "test"):
        if cfg.max_eval_samples and len(frames[s]) > cfg.max_eval_samples:
            frames[s] = _subset(frames[s], cfg.max_eval_samples, seed)

    l2i = {name: i for i, name in enumerate(labels)}
    for s, f in frames.items():
        f = f.copy()
        f.insert(0, "label", f["label_name"].map(l2i).astype("int64"))
        frames[s] = f
    _describe(rep, frames, labels, cfg, tokenizer)
    _check_readable(rep, frames["train"], cfg, tokenizer, model_name)
    extras = [c for c in frames["train"].columns if c not in RESERVED]
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], labels, rep, extras,
                                cfg.max_length), raise_on_problems)


def _finish(prep: PreparedData, raise_on_problems: bool) -> PreparedData:
    if raise_on_problems and prep.report.problems:
        raise DataError("The data cannot be used as given:\n" + "\n".join(f"  - {p}" for p in prep.report.problems)
                        + "\n" + format_report(prep.report))
    return prep


def _resolve_columns(cfg: DataConfig, df: pd.DataFrame, rep: DataReport) -> dict[str, str | None]:
    found = [str(c) for c in df.columns]
    guess = guess_columns(df)
    cols: dict[str, str | None] = {}
    for role, given in (("text", cfg.text_column), ("label", cfg.label_column), ("text_pair", cfg.text_pair_column)):
        if given:
            if given in df.columns:
                cols[role] = given
                continue
            close = difflib.get_close_matches(given, found, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            rep.problems.append(f"{role} column {given!r} not found. Columns found: {found}.{hint} "
                                f"Fix: set data.{role}_column to one of them.")
            cols[role] = None
        else:
            cols[role] = guess[role]
            if guess[role] is not None:
                rep.guessed.append(role)
            elif role != "text_pair":
                common = ", ".join((TEXT_NAMES if role == "text" else LABEL_NAMES)[:5])
                plain = str(cfg.source).lower().endswith((".txt", ".text", ".md"))  # a corpus, not a table?
                rep.problems.append(f"no {role} column found among {found}. Fix: set data.{role}_column "
                                    f"(common names: {common})." + (
                                        " If this is plain text to pre-train on, not labelled examples, set task: "
                                        "masked-lm (an encoder such as minilm) or causal-lm (a decoder such as "
                                        "smollm2-135m)." if plain else ""))
    if cols.get("text") and cols.get("text") == cols.get("label"):
        rep.problems.append(f"text and label would both be column {cols['text']!r}; set data.text_column and "
                            f"data.label_column explicitly.")
    rep.columns = cols
    return cols


def _clean(raw: pd.DataFrame, cols: dict[str, str | None], split: str, rep: DataReport) -> pd.DataFrame:
    """Drop rows without text or label (recording their numbers); map labels to one spelling."""
    tcol, lcol, pcol = cols["text"], cols["label"], cols["text_pair"]
    for role, c in (("text", tcol), ("text_pair", pcol)):
        if c and raw[c].map(lambda v: isinstance(v, (list, dict, tuple, np.ndarray))).any():
            rep.problems.append(f"column {c!r} ({role}) holds lists or objects, not text. Fix: choose a column of "
                                f"plain strings (a Parquet schema with a string column).")
            return raw.iloc[:0]
    try:
        names = raw[lcol].map(normalize_label)
    except TypeError as e:
        rep.problems.append(f"label column {lcol!r} holds {e} values, not single labels. Fix: one label per row.")
        return raw.iloc[:0]
    text = raw[tcol].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    empty_text = text.isna() | (text.fillna("").str.strip() == "")
    no_label = names.isna() & ~empty_text
    where = "" if split == "train" else f" in {split}"
    if empty_text.any():
        rep.dropped.setdefault(f"empty or missing text{where}", []).extend(int(i) for i in raw.index[empty_text])
    if no_label.any():
        rep.dropped.setdefault(f"missing label{where}", []).extend(int(i) for i in raw.index[no_label])
        spelled = raw[lcol].map(lambda v: isinstance(v, str) and v.strip() in MISSING_LABELS and bool(v.strip()))
        spelled &= no_label
        if spelled.any():
            kinds = ", ".join(repr(k) for k in sorted(set(raw.loc[spelled, lcol].str.strip()))[:6])
            rows = [int(i) for i in raw.index[spelled]]
            rep.warnings.append(f"{len(rows)} label(s){where} written as a missing value ({kinds}) were read as "
                                f"missing and their rows dropped: {rep.row_kind}s {_first(rows)}. Fix: label "
                                f"them, or leave them out on purpose.")
    lookalike = sorted({n for n in names.dropna().unique() if n.lower() in _MISSING_LOWER})
    if lookalike:
        rep.warnings.append(f"label(s) {lookalike}{where} look like a missing value but are kept as a class. "
                            f"If they mean 'no label', remove those rows or leave their label cell empty.")
    if pcol:
        pair = raw[pcol].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    keep = ~(empty_text | no_label)
    out = pd.DataFrame({"text": text[keep].astype(object)}, index=raw.index[keep])
    if pcol:
        out["text_pair"] = pair[keep].astype(object)
    out["label_name"] = names[keep].astype(object)
    for c in raw.columns:
        if c in (tcol, lcol, pcol):
            continue
        out[f"{c}_original" if c in RESERVED else c] = raw.loc[keep, c]
    return out


def _looks_like_regression(counts: pd.Series, column: Any) -> str | None:
    """A problem message when the labels are many distinct numbers (a score to predict, not classes)."""
    try:
        values = np.array([float(k) for k in counts.index])
    except ValueError:
        return None
    if not np.isfinite(values).all():
        return None
    fractional = not all(v.is_integer() for v in values)
    # Star ratings (1-5) or class ids are few integers; a score has many values, often fractional,
    # and most of them occur once.
    if len(values) < 20 or not (fractional or len(values) > 0.5 * counts.sum()):
        return None
    shown = ", ".join(f"{v:g}" for v in np.sort(values)[np.linspace(0, len(values) - 1, 6).astype(int)])
    return (f"label column {column!r} looks like a regression target, not classes: {len(values)} distinct numeric "
            f"values from {values.min():g} to {values.max():g} (e.g. {shown}). The workbench trains classifiers. "
            f"Fix: choose the column that holds class names, or bin the numbers into a few classes (say low / "
            f"medium / high) in a new column.")


def _first(rows: list[int], n: int = 8) -> str:
    return ", ".join(map(str, rows[:n])) + (f" and {len(rows) - n} more" if len(rows) > n else "")


def _split(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n_test = max(int(round(size * len(df))), df["label_name"].nunique())
    a, b = train_test_split(df, test_size=n_test, random_state=seed, stratify=df["label_name"])
    return a, b


def _subset(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    counts = df["label_name"].value_counts()
    if counts.min() >= 2 and n >= len(counts):
        keep, _ = train_test_split(df, train_size=n, random_state=seed, stratify=df["label_name"])
        return keep
    return df.sample(n=n, random_state=seed)


def _describe(rep: DataReport, frames: dict[str, pd.DataFrame], labels: list[str], cfg: DataConfig,
              tokenizer: Any) -> None:
    rep.labels = labels
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    rep.class_balance = {s: {lab: int((f["label_name"] == lab).sum()) for lab in labels} for s, f in frames.items()}
    train = frames["train"]
    key = train["text"] + ("\x00" + train["text_pair"] if "text_pair" in train else "")
    dup = key.duplicated()
    rep.duplicates = int(dup.sum())
    rep.conflicting_duplicates = int((train.assign(_k=key).groupby("_k")["label_name"].nunique() > 1).sum())
    if rep.duplicates:
        rep.warnings.append(f"{rep.duplicates} training row(s) repeat an earlier text"
                            + (f"; {rep.conflicting_duplicates} text(s) carry conflicting labels" if
                               rep.conflicting_duplicates else "") + ".")
    seen = set(key)
    for s in ("validation", "test"):
        f = frames[s]
        k = f["text"] + ("\x00" + f["text_pair"] if "text_pair" in f else "")
        rep.leakage[s] = int(k.isin(seen).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"leakage: {rep.leakage[s]} {s} row(s) also appear in train; their scores will "
                                f"look better than the model really is. Remove them or de-duplicate first.")
    tr = rep.class_balance["train"]
    if tr and min(tr.values()) * 10 < max(tr.values()):
        rep.warnings.append(f"class imbalance: {max(tr, key=tr.get)!r} has {max(tr.values())} training rows, "
                            f"{min(tr, key=tr.get)!r} only {min(tr.values())}; watch per-class recall and macro F1, "
                            f"not just accuracy.")
    if tokenizer is not None and len(train):
        sample = train.sample(n=min(len(train), 5000), random_state=0)
        enc = tokenizer(sample["text"].tolist(), *( [sample["text_pair"].tolist()] if "text_pair" in sample else []),
                        add_special_tokens=True, truncation=False)
        lengths = [len(x) for x in enc["input_ids"]]
        from ..assets import model_display_name  # a built-in is named as the user named it, not by its cache path
        rep.token_lengths = token_length_stats(lengths, cfg.max_length,
                                               model_display_name(getattr(tokenizer, "name_or_path", "")))
        if rep.token_lengths["truncated_share"] > 0.05:
            rep.warnings.append(f"{rep.token_lengths['truncated_share']:.0%} of training texts are longer than "
                                f"data.max_length={cfg.max_length} tokens and will be cut; raise it if the end "
                                f"matters.")


def _check_readable(rep: DataReport, train: pd.DataFrame, cfg: DataConfig, tokenizer: Any,
                    model_name: str | None) -> None:
    """Warn when the model cannot read the text: measured (unknown-token share) with a tokenizer, else from
    the built-in data set's language tag and the built-in model's languages."""
    from ..assets import language_advice, models_reading, reader_hint

    name = model_name or _tokenizer_name(tokenizer)
    if tokenizer is not None and len(train):
        texts = train["text"].sample(n=min(len(train), 2000), random_state=0).astype(str).tolist()
        rep.unknown_tokens = unknown_token_stats(tokenizer, texts)
    u = rep.unknown_tokens
    if u and u["share"] > UNKNOWN_WARN:
        lost = f"; {u['chars_lost_share']:.0%} of the characters are lost" if u["chars_lost_share"] is not None \
            else ""
        seen = f" (most often {' '.join(u['examples'][:8])})" if u["examples"] else ""
        fit = [m for m in models_reading("any") if m != name]
        fix = f"use a model whose vocabulary covers this text, e.g. the built-in {reader_hint(fit[0])}" if fit else \
            "use a model whose vocabulary covers this text"
        rep.warnings.append(f"{u['share']:.0%} of the tokens are {u['token']} for {name or 'this tokenizer'}{lost}"
                            f"{seen}: this model cannot read this text and would learn from what is left. Fix: {fix}.")
    elif not u and model_name:
        advice = language_advice(model_name, cfg.source)
        if advice:
            rep.warnings.append(advice[0].upper() + advice[1:])


def _tokenizer_name(tokenizer: Any) -> str:
    """A built-in's name for a tokenizer loaded from its cache folder, else the folder's or hub id's name."""
    raw = str(getattr(tokenizer, "name_or_path", "") or "")
    return raw.rstrip("/").rsplit("/", 1)[-1] if raw else ""
