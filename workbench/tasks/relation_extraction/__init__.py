"""Relation extraction: a sentence with a marked subject and object -> the relation between them (or `no_relation`).

The "entity marker" method of Baldini Soares et al. (2019): the two entities are wrapped in typed markers
(`<S:人物>李柏光</S:人物>从<O:学校>北京大学</O:学校>毕业`, untyped `<S>`/`<O>` when the data has no types), each
marker is one new special token of the tokenizer (`encode`), and the model's embeddings grow to hold them.

Readout: the pooled output of a standard `AutoModelForSequenceClassification` ([CLS] for an encoder, the last
token for a decoder, or for a decoder with `model.pooling: mean` the mean over every token, the markers' own
states included), not the marker positions. Baldini Soares et al. found "entity start" (the hidden states
at `<S>` and `<O>`, concatenated) a few F1 points better, but it needs a custom head; the pooled output keeps a
run an ordinary transformers folder, so prediction, attention maps, the merged export and `workbench predict`
work unchanged, and the markers still steer it: every token attends to them in an encoder, and a decoder's last
token comes after (so sees) both marked entities. The classification machinery is text classification's
(`predict_proba`, `predictions_frame`, the padding collator, class weights); what differs is here: the data
(`formats`), the markers and the window that keeps them when a sentence is too long (`encode`), and the scores
over positive relations only (`scoring`, the TACRED/DuIE convention).

Under LoRA the markers' embedding rows are trained and saved with the adapter (peft's
`trainable_token_indices`, set by `models.apply_lora` from the ids `load_model` leaves on the model); with a
full fine-tune the embeddings are never frozen (`freeze_embeddings_ok = False`) for the same reason.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from ...errors import DataError
from ..base import DataRole
from ..classification import MODEL_INPUTS, PaddingCollator, class_weight_vector, model_max_tokens, \
    predict_proba, predictions_frame, tokenize_frame
from .encode import add_markers, fit_window, mark, marker_ids, marker_tokens, marker_types, parse_marked, \
    resize_embeddings
from .formats import NO_RELATION, RelationData, expand_duie, read_pairs
from .scoring import ERROR_KINDS, error_kind, relation_scores, score_table


# --- data ----------------------------------------------------------------------------------------
def read_relations(source: str, cfg: Any, seed: int, keep: Sequence[str] = ()) -> tuple[RelationData, Any]:
    """Examples from a file or built-in (`formats.read_pairs`) and the loaded table."""
    from ...assets import BUILTIN_DATASETS
    from ...data.io import read_table

    if source in BUILTIN_DATASETS and BUILTIN_DATASETS[source].task != "relation-extraction":
        ok = ", ".join(k for k, v in BUILTIN_DATASETS.items() if v.task == "relation-extraction")
        raise DataError(f"{source} is a built-in data set for {BUILTIN_DATASETS[source].task}, not relations. "
                        f"Relation built-ins: {ok}.")
    table = read_table(source, delimiter=cfg.delimiter, encoding=cfg.encoding)
    data = read_pairs(table.df, text_column=cfg.text_column, label_column=cfg.label_column, row_kind=table.row_kind,
                      negative_ratio=cfg.negative_ratio, seed=seed, keep=keep)
    data.warnings[:0] = table.warnings
    return data, table


def relation_labels(names: pd.Series) -> list[str]:
    """`no_relation` first (id 0) when present, then the relations alphabetically."""
    rels = sorted(set(names) - {NO_RELATION})
    return ([NO_RELATION] if NO_RELATION in set(names) else []) + rels


def _by_sentence(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out `size` of the sentences with all their pairs, so no sentence is in two splits."""
    sents = df["sentence"].drop_duplicates().to_numpy()
    n = max(1, int(round(size * len(sents)))) if len(sents) > 1 else 0
    held = set(np.random.default_rng(seed).permutation(sents)[:n].tolist())
    out = df["sentence"].isin(held)
    return df[~out], df[out]


def prepare_relations(cfg: Any, seed: int = 42, tokenizer: Any = None, *, raise_on_problems: bool = True,
                      max_positions: int | None = None) -> Any:
    """Read, check, split, mark and report (the `Task.prepare` of relation extraction). With a tokenizer, the
    data's entity markers are added to it (so it must be the one the model is then loaded with)."""
    from ...data.prepare import SPLIT_ALIASES, PreparedData, _finish, cap_max_length
    from ...data.report import DataReport

    cfg, capped = cap_max_length(cfg, max_positions, "longer sentences keep a window of {n} tokens around the two "
                                 "entities.")
    split_col = cfg.split_column or "split"
    data, table = read_relations(cfg.source, cfg, seed, keep=[split_col])
    shape = "DuIE sentences" if data.format == "duie" else "relation table"
    rep = DataReport(source=table.source, format=f"{table.format} ({shape})",
                     columns_found=[str(c) for c in table.df.columns], rows_read=len(table.df),
                     row_kind=table.row_kind, warnings=capped + data.warnings, problems=list(data.problems))
    rep.details.update(data.details, format=data.format)
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)
    frames: dict[str, pd.DataFrame] = {}
    df = data.frame
    if split_col in df.columns:
        mapped = df[split_col].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        if mapped.isna().any() and (cfg.split_column or mapped.notna().any()):
            bad = sorted(set(df.loc[mapped.isna(), split_col].astype(str)))[:5]
            rep.problems.append(f"column {split_col!r} has values {bad} that are not train/validation/test. Fix: "
                                f"use those three names, or set data.split_column to another column.")
        elif mapped.notna().all():
            for s in ("train", "validation", "test"):
                if (mapped == s).any():
                    frames[s] = df[mapped == s].drop(columns=split_col)
    elif cfg.split_column:
        rep.problems.append(f"data.split_column {cfg.split_column!r} not found; columns found: {rep.columns_found}.")
    frames = frames or {"train": df}
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other, t = read_relations(src, cfg, seed)
            rep.warnings += [f"{role} file: {w}" for w in other.warnings]
            rep.problems += [f"{role} file: {p}" for p in other.problems]
            rep.rows_read += len(t.df)
            frames[role] = other.frame
    if rep.problems:
        return _finish(empty, raise_on_problems)
    train = frames.get("train", df.iloc[:0])
    if train["label_name"].nunique() < 2:
        rep.problems.append(f"{cfg.source}: {len(train)} training pair(s) with {train['label_name'].nunique()} "
                            f"relation(s): a classifier needs at least two (pairs with no relation can be one, "
                            f"`{NO_RELATION}`). Fix: add examples, or give DuIE sentences with their `spo_list` "
                            f"so negatives are made from them.")
        return _finish(empty, raise_on_problems)
    carved = "test" not in frames and cfg.test_size > 0  # the test sentences come out of train here
    if carved:
        train, frames["test"] = _by_sentence(train, cfg.test_size, seed)
    if "validation" not in frames and cfg.validation_size > 0:
        frac = cfg.validation_size / (1 - cfg.test_size) if carved else cfg.validation_size
        train, frames["validation"] = _by_sentence(train, frac, seed)
    frames["train"] = train
    for s in ("validation", "test"):
        frames.setdefault(s, train.iloc[:0])
    labels = relation_labels(frames["train"]["label_name"])
    for s in ("validation", "test"):
        unseen = ~frames[s]["label_name"].isin(labels)
        if unseen.any():
            rep.warnings.append(f"{int(unseen.sum())} {s} pair(s) have relation(s) "
                                f"{sorted(set(frames[s].loc[unseen, 'label_name']))} never seen in train; they were "
                                f"left out (the model cannot predict them).")
            frames[s] = frames[s][~unseen]
    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=seed)
    for s in ("validation", "test"):
        if cfg.max_eval_samples and len(frames[s]) > cfg.max_eval_samples:
            frames[s] = frames[s].sample(n=cfg.max_eval_samples, random_state=seed)
    l2i = {n: i for i, n in enumerate(labels)}
    for s, f in frames.items():
        frames[s] = _marked(f).assign(label=f["label_name"].map(l2i).astype("int64"))
    all_rows = pd.concat(list(frames.values()))
    markers = marker_tokens(all_rows["subject_type"], all_rows["object_type"])
    rep.details["markers"] = markers
    if tokenizer is not None:
        add_markers(tokenizer, markers)
    _describe(rep, frames, labels, cfg, tokenizer)
    extras = [c for c in frames["train"].columns if c not in ("text", "label", "label_name")]
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], labels, rep, extras,
                                max_length=cfg.max_length), raise_on_problems)


def _marked(f: pd.DataFrame) -> pd.DataFrame:
    """The frame with `text`: its sentence with the subject and object marked (what the model reads)."""
    text = [mark(r.sentence, (r.subject_start, r.subject_start + len(r.subject)),
                 (r.object_start, r.object_start + len(r.object)), r.subject_type, r.object_type)
            for r in f.itertuples()]
    out = f.copy()
    out.insert(0, "text", pd.Series(text, index=f.index, dtype=object))
    return out


def _describe(rep: Any, frames: dict[str, pd.DataFrame], labels: list[str], cfg: Any, tokenizer: Any) -> None:
    from ...data.report import token_length_stats

    rep.labels = labels
    rep.rows_used = sum(len(f) for f in frames.values())
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    rep.class_balance = {s: {lab: int((f["label_name"] == lab).sum()) for lab in labels} for s, f in frames.items()}
    rep.details["no_relation_share"] = {s: round(float((f["label_name"] == NO_RELATION).mean()), 4) if len(f) else
                                        0.0 for s, f in frames.items()}
    train = frames["train"]
    rep.details["entity_types"] = {role: {str(k) or "(none)": int(v) for k, v in
                                          train[f"{role}_type"].value_counts().items()}
                                   for role in ("subject", "object")}
    rep.details["sentences"] = {s: int(f["sentence"].nunique()) for s, f in frames.items()}
    key = ["sentence", "subject", "subject_start", "object", "object_start"]
    rep.duplicates = int(train.duplicated(subset=key).sum())
    rep.conflicting_duplicates = int((train.groupby(key)["label_name"].nunique() > 1).sum())
    if rep.duplicates:
        rep.warnings.append(f"{rep.duplicates} training pair(s) repeat an earlier (sentence, subject, object)"
                            + (f"; {rep.conflicting_duplicates} of them with a different relation" if
                               rep.conflicting_duplicates else "") + ".")
    seen = set(train["sentence"])
    for s in ("validation", "test"):
        rep.leakage[s] = int(frames[s]["sentence"].isin(seen).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"leakage: {rep.leakage[s]} {s} pair(s) come from sentences that are also in train; "
                                f"their scores will look better than the model really is. Split by sentence.")
    if tokenizer is None or not len(train):
        return
    max_length = cfg.max_length
    rep.token_lengths = token_length_stats(_lengths(tokenizer, train["text"].tolist()), max_length,
                                           getattr(tokenizer, "name_or_path", ""))
    rep.token_lengths["fate"] = "keep a window of max_length tokens around the two entities (markers kept)"
    windowed, lost = {}, {}
    for s, f in frames.items():
        status = window_status(f["text"].tolist(), tokenizer, max_length)
        windowed[s], lost[s] = status.count("window"), status.count("lost")
    rep.details["windowed"], rep.details["markers_lost"] = windowed, lost
    if sum(windowed.values()):
        rep.warnings.append(f"{sum(windowed.values())} sentence(s) are longer than data.max_length={max_length} "
                            f"tokens (with markers): a window around the two entities is kept ({windowed}). Raise "
                            f"data.max_length if the context that is cut off matters.")
    if sum(lost.values()):
        rep.warnings.append(f"{sum(lost.values())} pair(s) have entities too long to fit data.max_length="
                            f"{max_length} tokens even alone; cutting them loses a marker, so the model cannot "
                            f"see both entities ({lost}). Raise data.max_length.")


def _lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]] if texts else []


def window_status(texts: list[str], tokenizer: Any, max_length: int) -> list[str]:
    """"whole", "window" or "lost" per marked text (`encode.fit_window`); only the long ones are windowed."""
    lengths = _lengths(tokenizer, texts)
    return [fit_window(t, tokenizer, max_length)[1] if n > max_length else "whole" for t, n in zip(texts, lengths)]


def windowed_texts(texts: Sequence[str], tokenizer: Any, max_length: int) -> tuple[list[str], list[str]]:
    """The texts the model reads (`fit_window` where too long) and their status."""
    texts = [str(t) for t in texts]
    lengths = _lengths(tokenizer, texts)
    out = [fit_window(t, tokenizer, max_length) if n > max_length else (t, "whole") for t, n in zip(texts, lengths)]
    return [t for t, _ in out], [s for _, s in out]


def _require_markers(tokenizer: Any) -> None:
    if not marker_ids(tokenizer):
        from ...errors import WorkbenchError
        raise WorkbenchError("this tokenizer has no entity markers (<S>, </S>, <O>, </O>): prepare the data with it "
                             "first (`Task.prepare(..., tokenizer=tok)` adds them), or load the run's own tokenizer.")


# --- the task ------------------------------------------------------------------------------------
class RelationExtraction:
    name = "relation-extraction"
    description = "The relation between two marked entities of a sentence (or no_relation): knowledge-graph triples."
    roles = (
        DataRole("text", "text_column", True, "the sentence"),
        DataRole("subject", None, True, "the subject entity as written in the sentence (optional `subject_start` "
                 "offset, `subject_type`)"),
        DataRole("object", None, True, "the object entity as written in the sentence (optional `object_start`, "
                 "`object_type`)"),
        DataRole("relation", "label_column", True, f"the relation; `{NO_RELATION}` for a pair without one. Or DuIE "
                 f"lines: `text` + `spo_list`, pairs without a triple becoming `{NO_RELATION}`"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    directions: ClassVar[dict[str, bool]] = {"f1": True, "precision": True, "recall": True, "f1_macro": True,
                                             "accuracy": True, "loss": False}
    headline = "f1"
    freeze_embeddings_ok = False  # the new marker embeddings must learn
    readout = "sequence"
    file_formats = ("a table (CSV/TSV/JSON/JSONL/Parquet: text, subject, object, relation) or DuIE JSONL (text, "
                    "spo_list)")
    file_extensions = (".csv", ".tsv", ".json", ".jsonl", ".parquet")

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        return prepare_relations(cfg, seed, tokenizer, raise_on_problems=raise_on_problems,
                                 max_positions=max_positions)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        _require_markers(tokenizer)
        texts, _ = windowed_texts(frame["text"].tolist(), tokenizer, max_length)
        return tokenize_frame(frame.assign(text=texts), tokenizer, max_length)

    def collator(self, tokenizer: Any) -> PaddingCollator:
        return PaddingCollator(tokenizer, keep=self.model_inputs)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        """A sequence classifier whose embeddings hold `tokenizer`'s markers (without a tokenizer: the plain one)."""
        import torch

        from ...models import load_classifier
        model = load_classifier(cfg, labels, tokenizer=tokenizer, attn_implementation=attn_implementation,
                                dtype=dtype if dtype is not None else torch.float32)
        if tokenizer is not None:
            resize_embeddings(model, tokenizer)
        return model

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str]) -> dict[str, float]:
        logits, gold = eval_pred.predictions, np.asarray(eval_pred.label_ids)
        if isinstance(logits, tuple):
            logits = logits[0]
        pred = np.asarray(logits).argmax(-1)
        return relation_scores(gold.tolist(), pred.tolist(), list(range(len(labels))), names=list(labels))

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """The per-example table: CONTRACT columns, `text` (the marked sentence as the model read it: windowed
        when too long), `sentence`, `subject`, `object`, their offsets and types, `p_<relation>`, `window`
        (whole/window/lost) and `error` (one of `ERROR_KINDS`, "" when right)."""
        max_length = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
        texts, status = windowed_texts(frame["text"].tolist(), tokenizer, max_length)
        probs = predict_proba(model, tokenizer, texts, max_length=max_length, batch_size=batch_size, bf16=bf16)
        out = predictions_frame(frame.assign(text=texts), probs, labels)
        out["window"] = status
        out["error"] = [error_kind(g, p) for g, p in zip(out["gold"], out["predicted"])]
        return out

    def predict_texts(self, model: Any, tokenizer: Any, texts: Sequence[str], labels: list[str], *,
                      max_length: int = 256, batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """Relations of sentences with their two entities marked inline: `<S>李柏光</S>从<O>北京大学</O>毕业` (types
        optional, `<S:人物>…</S:人物>`, from those the model was trained with). A row per text: `text`, `subject`,
        `object`, `predicted`, `confidence`, `p_<relation>`, and a `note` when something limits the answer."""
        known = marker_types(tokenizer)
        rows, marked = [], []
        for i, text in enumerate(texts, 1):
            parsed = parse_marked(str(text))
            if isinstance(parsed, str):
                raise DataError(f"text {i} ({str(text)[:60]!r}): {parsed}")
            plain, spans = parsed
            note = ""
            for role, name in (("S", "subject"), ("O", "object")):
                t = spans[role][2]
                if t and t not in known[role]:
                    have = ", ".join(f"<{role}:{x}>" for x in known[role]) or f"none: use <{role}>"
                    raise DataError(f"text {i}: the {name} type {t!r} was not in this model's training data; its "
                                    f"{name} types are {have}. Fix: use one of them, or leave the type out.")
                if not t and known[role]:
                    note = (f"no entity types given; this model was trained with typed markers (e.g. "
                            f"<{role}:{known[role][0]}>), which read better: give them for its best answer.")
            s, o = spans["S"], spans["O"]
            marked.append(mark(plain, s[:2], o[:2], s[2], o[2]))
            rows.append({"text": str(text), "subject": plain[s[0]:s[1]], "object": plain[o[0]:o[1]], "note": note})
        max_length = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
        read, _ = windowed_texts(marked, tokenizer, max_length)
        probs = predict_proba(model, tokenizer, read, max_length=max_length, batch_size=batch_size, bf16=bf16)
        out = pd.DataFrame(rows)
        out.insert(1, "predicted", [labels[i] for i in probs.argmax(1)] if len(out) else [])
        out.insert(2, "confidence", probs.max(1) if len(out) else [])
        for i, name in enumerate(labels):
            out[f"p_{name}"] = probs[:, i]
        return out

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        m = score_table(pred["gold"].tolist(), pred["predicted"].tolist(), labels)
        m["loss"] = float(pred["loss"].mean()) if "loss" in pred and len(pred) else None
        return m

    def baseline(self, prep: Any) -> dict[str, Any]:
        """Always the most frequent training relation (usually `no_relation`: micro F1 0), on the test split."""
        from ...baseline import majority_baseline
        names = prep.labels
        gold = [names[i] for i in prep.test["label"]]
        out = majority_baseline([names[i] for i in prep.train["label"]], gold, names)
        if out:
            out.update(relation_scores(gold, [out["label"]] * len(gold), names))
        return out

    def class_weights(self, spec: Any, prep: Any) -> list[float] | None:
        return class_weight_vector(spec, prep.train["label"].tolist(), prep.labels)

    def error_report(self, pred: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
        """What `workbench errors` prints: errors by kind, the most confused relation pairs, the worst
        mistakes (most confident wrong answers first), and the per-relation scores."""
        kinds = [error_kind(g, p) for g, p in zip(pred["gold"].astype(str), pred["predicted"].astype(str))]
        wrong = pred.assign(error=kinds)[[k != "" for k in kinds]]
        counts = pd.Series(kinds).value_counts().reindex(list(ERROR_KINDS), fill_value=0)
        confused = wrong.groupby(["gold", "predicted"]).size().sort_values(ascending=False).head(n)
        worst = wrong.sort_values("loss", ascending=False).head(n)
        labels = list(dict.fromkeys(relation_labels(pred["gold"].astype(str)) + sorted(set(pred["predicted"]))))
        per = score_table(pred["gold"].tolist(), pred["predicted"].tolist(), labels)["per_relation"]
        cols = [c for c in ("row", "error", "gold", "predicted", "confidence", "subject", "object", "text")
                if c in worst]
        return {
            "errors by kind": counts.rename_axis("error").reset_index(name="count"),
            "most confused (gold -> predicted)": confused.reset_index(name="count"),
            f"{len(worst)} worst mistakes": worst[cols],
            "per relation": pd.DataFrame(per).T.rename_axis("relation").reset_index(),
        }

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        l2i = {n: i for i, n in enumerate(labels)}
        keep = [c for c in ("sentence", "subject", "object", "subject_start", "object_start", "subject_type",
                            "object_type", "line") if c in pred]
        frame = pred[["text"] + keep].copy()
        frame["label_name"] = pred["gold"].astype(str)
        frame["label"] = frame["label_name"].map(l2i)
        frame.index = pred["row"].to_numpy()
        return frame

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        l2i = {n: i for i, n in enumerate(labels)}
        frame = frame.assign(label=frame["label_name"].map(l2i))
        if frame["label"].isna().any():
            raise DataError(f"{source} has relations {sorted(set(frame.loc[frame['label'].isna(), 'label_name']))} "
                            f"that the model was not trained on ({labels}).")
        return frame.assign(label=frame["label"].astype("int64"))


TASK = RelationExtraction()
__all__ = ["ERROR_KINDS", "NO_RELATION", "TASK", "RelationExtraction", "expand_duie", "fit_window", "mark",
           "marker_ids", "parse_marked", "prepare_relations", "read_pairs", "relation_labels", "relation_scores"]
