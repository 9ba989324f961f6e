"""Token classification (named-entity recognition): one tag per word, entity-level scores.

What differs from text classification, all of it here: the data is tagged sentences (CoNLL columns,
token/tag lists or character spans, see `formats`), a word's tag goes on its first sub-word (`encode`),
the model has a per-token head (`AutoModelForTokenClassification`, PEFT `TOKEN_CLS`), the metrics are
entity-level precision/recall/F1 from seqeval (`scoring`), and the per-example table holds each
sentence's gold and predicted entities with every error typed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...errors import DataError
from ..base import DataRole
from .encode import IGNORE, encode_words, predict_word_probs, reading_piece, spaced
from .formats import TaggedData, entity_spans, join_tokens, read_tagged, split_words
from .scoring import ERROR_TYPES, compare_entities, entity_scores, error_counts, token_scores

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# --- data ----------------------------------------------------------------------------------------
def load_tagged(source: str, name: str | None = None) -> TaggedData:
    """A built-in tagged data set, or a tagged file (CoNLL, JSON/JSONL tokens or spans)."""
    from ...assets import BUILTIN_DATASETS, load_builtin_dataset

    if source in BUILTIN_DATASETS:
        b = BUILTIN_DATASETS[source]
        if b.task != "token-classification":
            raise DataError(f"{source} is a built-in data set for {b.task}, not tagged sentences. Tagged built-ins: "
                            + ", ".join(k for k, v in BUILTIN_DATASETS.items() if v.task == "token-classification")
                            + ".")
        df = load_builtin_dataset(source)
        df = df.assign(tokens=df["tokens"].map(list), tags=df["tags"].map(list))
        return TaggedData(frame=df, format="built-in", row_kind="line")
    return read_tagged(source, name)


def tag_labels(tags: Sequence[Sequence[str]]) -> list[str]:
    """`O` first, then B-/I- of each entity type in alphabetical order (a stable label order)."""
    types = sorted({t[2:] for seq in tags for t in seq if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _split(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = max(1, int(round(size * len(df))))
    test = df.sample(n=n, random_state=seed)
    return df.drop(test.index), test


def prepare_tagged(cfg: Any, seed: int = 42, tokenizer: Any = None, *, raise_on_problems: bool = True,
                   max_positions: int | None = None) -> Any:
    """Read, check, split and report tagged sentences (the `Task.prepare` of token classification)."""
    from ...data.prepare import PreparedData, _finish, cap_max_length
    from ...data.report import DataReport

    cfg, capped = cap_max_length(cfg, max_positions, "sentences are cut at {n} sub-word tokens instead.")
    data = load_tagged(cfg.source)
    rep = DataReport(source=str(cfg.source), format=data.format, columns_found=["tokens", "tags"],
                     rows_read=len(data.frame), row_kind=data.row_kind, warnings=capped + list(data.repairs),
                     problems=list(data.problems))
    rep.columns = {"tokens": "tokens", "tags": "tags"}
    frames: dict[str, pd.DataFrame] = {}
    df = data.frame.set_index("line", drop=False)
    df.index.name = None
    if "split" in df:
        for s in ("train", "validation", "test"):
            if (df["split"] == s).any():
                frames[s] = df[df["split"] == s].drop(columns="split")
    else:
        frames["train"] = df
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other = load_tagged(src)
            rep.warnings += [f"{role} file: {w}" for w in other.repairs]
            rep.problems += [f"{role} file: {p}" for p in other.problems]
            rep.rows_read += len(other.frame)
            o = other.frame.set_index("line", drop=False)
            o.index.name = None
            frames[role] = o
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)
    train = frames["train"]
    if len(train) == 0:
        rep.problems.append(f"{cfg.source}: no tagged sentences to train on.")
        return _finish(empty, raise_on_problems)
    if not any(t != "O" for seq in train["tags"] for t in seq):
        rep.problems.append(f"{cfg.source}: no entity tags in the training sentences (every tag is `O`): a tagger "
                            f"needs examples of entities. Check that the tag column is the last one on each line.")
        return _finish(empty, raise_on_problems)
    if "test" not in frames and cfg.test_size > 0:
        train, frames["test"] = _split(train, cfg.test_size, seed)
    if "validation" not in frames and cfg.validation_size > 0:
        train, frames["validation"] = _split(train, cfg.validation_size / (1 - cfg.test_size) if "test" not in
                                             frames else cfg.validation_size, seed)
    frames["train"] = train
    for s in ("validation", "test"):
        frames.setdefault(s, train.iloc[:0])
    if len(train) < 2 or not any(t != "O" for seq in train["tags"] for t in seq):
        rep.problems.append(f"{cfg.source}: only {len(data.frame)} sentence(s), too few to hold out validation and "
                            f"test sentences and still train on entities. Fix: give more sentences (hundreds), or "
                            f"set data.validation_size and data.test_size to 0 and give data.validation_source / "
                            f"data.test_source files.")
        return _finish(empty, raise_on_problems)
    labels = tag_labels(frames["train"]["tags"])
    for s in ("validation", "test"):
        unseen = sorted(set(tag_labels(frames[s]["tags"])) - set(labels))
        if unseen:
            rep.warnings.append(f"tag(s) {unseen} appear in {s} but never in train: the model cannot predict them, "
                                f"so those entities count as missed.")
    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=seed)
    for s in ("validation", "test"):
        if cfg.max_eval_samples and len(frames[s]) > cfg.max_eval_samples:
            frames[s] = frames[s].sample(n=cfg.max_eval_samples, random_state=seed)
    l2i = {n: i for i, n in enumerate(labels)}
    for s, f in frames.items():
        frames[s] = f.assign(label_ids=f["tags"].map(lambda ts: [l2i.get(t, 0) for t in ts]))
    _describe(rep, frames, labels, cfg, tokenizer, data)
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], labels, rep, [],
                                max_length=cfg.max_length), raise_on_problems)


def _describe(rep: Any, frames: dict[str, pd.DataFrame], labels: list[str], cfg: Any, tokenizer: Any,
              data: TaggedData) -> None:
    from ...data.report import token_length_stats

    rep.labels = labels
    rep.rows_used = sum(len(f) for f in frames.values())
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    types = sorted({lab[2:] for lab in labels if lab != "O"})
    # For a tagger the "classes" worth balancing are entity types: counts of entities, not of tags.
    rep.class_balance = {s: {t: int(sum(1 for seq in f["tags"] for e in entity_spans(seq) if e[0] == t))
                             for t in types} for s, f in frames.items()}
    words = frames["train"]["tokens"].map(len).to_numpy()
    rep.details = {
        "scheme": data.scheme,
        "sentence_words": {"mean": round(float(words.mean()), 1), "p50": int(np.percentile(words, 50)),
                           "p95": int(np.percentile(words, 95)), "max": int(words.max())} if len(words) else {},
        "invalid": data.invalid[:200],
        "entities_per_sentence": round(sum(rep.class_balance["train"].values()) / max(1, len(frames["train"])), 2),
    }
    train_text = set(frames["train"]["text"])
    for s in ("validation", "test"):
        rep.leakage[s] = int(frames[s]["text"].isin(train_text).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"leakage: {rep.leakage[s]} {s} sentence(s) also appear in train.")
    rep.duplicates = int(frames["train"]["text"].duplicated().sum())
    if tokenizer is not None and len(frames["train"]):
        sample = frames["train"].sample(n=min(len(frames["train"]), 3000), random_state=0)
        enc = tokenizer([spaced(t) for t in sample["tokens"]], is_split_into_words=True, truncation=False)
        rep.token_lengths = token_length_stats([len(x) for x in enc["input_ids"]], cfg.max_length,
                                               getattr(tokenizer, "name_or_path", ""))
        if rep.token_lengths["truncated"]:
            rep.warnings.append(f"{rep.token_lengths['truncated']} training sentence(s) are longer than "
                                f"data.max_length={cfg.max_length} sub-word tokens; their last words get no tag "
                                f"(predicted as O). Raise data.max_length if that matters.")
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None:
            ids = [i for x in enc["input_ids"] for i in x]
            share = sum(1 for i in ids if i == unk) / max(1, len(ids))
            rep.details["unknown_token_share"] = round(share, 4)
            if share > 0.05:
                rep.warnings.append(f"{share:.0%} of the sub-word tokens are unknown ([UNK]) to this tokenizer: the "
                                    f"model cannot read this text. For Chinese use `smollm2-135m` (byte-level BPE).")


# --- the task ------------------------------------------------------------------------------------
class TokenCollator:
    """Pads inputs per batch and labels with -100 (`DataCollatorForTokenClassification`), keeping only the
    model's inputs (the `length` column stays in the dataset for the length-grouped sampler)."""

    def __init__(self, tokenizer: Any, keep: Sequence[str] = MODEL_INPUTS):
        from transformers import DataCollatorForTokenClassification

        self.inner = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)
        self.keep = tuple(keep)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.inner([{k: v for k, v in f.items() if k in self.keep} for f in features])


def entities_text(tokens: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """Entities of one sentence as `{type, start, end, text}` (start/end are word positions, end exclusive)."""
    return [{"type": t, "start": s, "end": e, "text": join_tokens(list(tokens[s:e]))} for t, s, e in entity_spans(tags)]


def _show(ents: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['type']}: {e['text']}" for e in ents) or "(none)"


class TokenClassification:
    name = "token-classification"
    description = "One tag per word: named entities (people, places, organisations, ...), BIO tags."
    roles = (
        DataRole("tokens", None, True, "the words of each sentence: CoNLL lines (token, tag), a `tokens` list "
                 "in JSON/JSONL, or `text` with character spans"),
        DataRole("tags", None, True, "one tag per word (BIO, BIOES or BMES, normalised to BIO), or `entities` "
                 "[{start, end, label}] spans"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    directions = {"f1": True, "precision": True, "recall": True, "f1_macro": True, "token_accuracy": True,
                  "loss": False}
    headline = "f1"
    freeze_embeddings_ok = True
    file_formats = "CoNLL .txt/.conll (token TAB tag, blank line between sentences), JSON/JSONL"
    file_extensions = (".txt", ".conll", ".bio", ".iob", ".json", ".jsonl")  # uploads the dashboard accepts
    # Attention and saliency (`workbench.attention`) read one prediction per word, at its reading piece.
    readout = "word"
    # `data.augment` moves, drops or replaces words tagged O only, so entities and their tags stay whole.
    augment = "words"

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        return prepare_tagged(cfg, seed, tokenizer, raise_on_problems=raise_on_problems, max_positions=max_positions)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, *, model: Any = None) -> Any:
        """Tags on each word's reading piece: the first sub-word, or the last for a decoder `model`."""
        import datasets

        cols = encode_words(frame["tokens"].tolist(), frame["tags"].tolist(), tokenizer, None, max_length,
                            label_ids=frame["label_ids"].tolist(), piece=reading_piece(model))
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer: Any) -> TokenCollator:
        return TokenCollator(tokenizer, self.model_inputs)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        import torch

        from ...models import load_classifier
        return load_classifier(cfg, labels, tokenizer=tokenizer, attn_implementation=attn_implementation,
                               dtype=dtype if dtype is not None else torch.float32, auto_model=self.auto_model)

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str]) -> dict[str, float]:
        logits, label_ids = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        pred = np.asarray(logits).argmax(-1)
        gold_seqs, pred_seqs = [], []
        for p_row, g_row in zip(pred, np.asarray(label_ids)):
            keep = g_row != IGNORE
            gold_seqs.append([labels[int(i)] for i in g_row[keep]])
            pred_seqs.append([labels[int(i)] for i in p_row[keep]])
        ent = entity_scores(gold_seqs, pred_seqs)
        tok = token_scores(gold_seqs, pred_seqs, list(labels))
        return {"f1": ent["f1"], "precision": ent["precision"], "recall": ent["recall"], "f1_macro": ent["f1_macro"],
                "token_accuracy": tok["token_accuracy"]}

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        probs = predict_word_probs(model, tokenizer, frame["tokens"].tolist(), max_length=max_length,
                                   batch_size=batch_size, bf16=bf16)
        return predictions_table(frame, probs, labels)

    def predict_texts(self, model: Any, tokenizer: Any, texts: Sequence[str], labels: list[str], *,
                      max_length: int = 256, batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """Entities of raw texts: a row per text with `predicted` (readable) and `entities`, each
        `{type, text, start, end, score}` with CHARACTER offsets into the text (end exclusive)."""
        spans = [split_words(t) for t in texts]
        words = [[t[a:b] for a, b in sp] for t, sp in zip(texts, spans)]
        probs = predict_word_probs(model, tokenizer, words, max_length=max_length, batch_size=batch_size, bf16=bf16)
        out = []
        for text, sp, pr in zip(texts, spans, probs):
            tags = [labels[int(i)] for i in pr.argmax(-1)] if len(pr) else []
            ents = []
            for t, s, e in entity_spans(tags):
                ents.append({"type": t, "text": text[sp[s][0]:sp[e - 1][1]], "start": sp[s][0], "end": sp[e - 1][1],
                             "score": round(float(pr[s:e].max(-1).mean()), 4)})
            out.append(ents)
        return pd.DataFrame({"text": list(texts),
                             "predicted": ["; ".join(f"{e['type']}: {e['text']} [{e['start']}:{e['end']}]" for e in x)
                                           or "(no entities)" for x in out],
                             "entities": out})

    def tokenize_words(self, tokenizer: Any, text: str) -> tuple[list[str], Any]:
        """The words of a raw text as prediction splits them (`predict_texts`) and their tokenisation, special
        tokens included (its `word_ids()` maps each sub-word back to its word)."""
        words = [text[a:b] for a, b in split_words(text)]
        return words, tokenizer(spaced(words), is_split_into_words=True, verbose=False)

    def error_report(self, pred: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
        """What `workbench errors` prints for a tagger: error counts by type, the worst sentences, the
        entity errors themselves, and entity-level slices."""
        errs = entity_error_table(pred)
        counts = errs["kind"].value_counts().reindex(list(ERROR_TYPES), fill_value=0)
        worst = pred[~pred["correct"].astype(bool)].sort_values(["n_errors", "loss"], ascending=False).head(n)
        return {
            "entity errors by type": counts.rename_axis("error").reset_index(name="count"),
            f"{len(worst)} sentences with the most entity errors": worst[["row", "n_errors", "gold", "predicted",
                                                                          "text"]],
            f"first {min(n * 2, len(errs))} entity errors": errs.head(n * 2)[["row", "kind", "gold", "predicted"]],
            "slices (recall/precision of entities)": entity_slices(pred),
        }

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        gold, predicted = pred["gold_tags"].map(list).tolist(), pred["pred_tags"].map(list).tolist()
        ent = entity_scores(gold, predicted)
        strict = entity_scores(gold, predicted, mode="strict")
        tok = token_scores(gold, predicted, list(labels))
        return {"f1": ent["f1"], "precision": ent["precision"], "recall": ent["recall"], "f1_macro": ent["f1_macro"],
                "f1_strict": strict["f1"], "per_type": ent["per_type"], "per_type_strict": strict["per_type"],
                "token_accuracy": tok["token_accuracy"], "entity_token_accuracy": tok["entity_token_accuracy"],
                "confusion_matrix": tok["confusion_matrix"], "labels": tok["labels"],
                "errors": error_counts(gold, predicted), "n": int(len(pred)),
                "sentence_accuracy": float(pred["correct"].mean()) if len(pred) else 0.0}

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        l2i = {n: i for i, n in enumerate(labels)}
        frame = pd.DataFrame({"tokens": pred["tokens"].map(list), "tags": pred["gold_tags"].map(list),
                              "text": pred["text"], "line": pred["row"]})
        frame["label_ids"] = frame["tags"].map(lambda ts: [l2i.get(t, 0) for t in ts])
        frame.index = pred["row"].to_numpy()
        return frame

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        unknown = sorted(set(tag_labels(frame["tags"])) - set(labels))
        if unknown:
            raise DataError(f"{source} has tags {unknown} that the model was not trained on ({labels}).")
        l2i = {n: i for i, n in enumerate(labels)}
        return frame.assign(label_ids=frame["tags"].map(lambda ts: [l2i[t] for t in ts]))


def predictions_table(frame: pd.DataFrame, probs: list[np.ndarray], labels: list[str]) -> pd.DataFrame:
    """The per-example table: a sentence per row, its gold and predicted entities, every error typed."""
    l2i = {n: i for i, n in enumerate(labels)}
    rows = []
    for (idx, r), p in zip(frame.iterrows(), probs):
        tokens, gold = list(r["tokens"]), list(r["tags"])
        pred = [labels[int(i)] for i in p.argmax(-1)] if len(p) else []
        gold_p = np.array([p[k, l2i.get(t, 0)] for k, t in enumerate(gold)]) if len(p) else np.zeros(0)
        cmp = compare_entities(gold, pred)
        errs = [c for c in cmp if c["kind"] != "correct"]
        g_ents, p_ents = entities_text(tokens, gold), entities_text(tokens, pred)
        rows.append({
            "row": int(r.get("line", idx)), "text": r["text"], "tokens": tokens,
            "gold": _show(g_ents), "predicted": _show(p_ents),
            "loss": float(-np.log(np.clip(gold_p, 1e-12, 1)).mean()) if len(gold_p) else 0.0,
            "correct": not errs, "confidence": float(p.max(-1).min()) if len(p) else 1.0,
            "gold_tags": gold, "pred_tags": pred, "gold_entities": g_ents, "pred_entities": p_ents,
            "n_entities": len(g_ents), "n_errors": len(errs),
            "error_types": sorted({c["kind"] for c in errs}),
            "errors": [{"kind": c["kind"],
                        "gold": None if c["gold"] is None else {"type": c["gold"][0], "text": join_tokens(
                            tokens[c["gold"][1]:c["gold"][2]])},
                        "predicted": None if c["pred"] is None else {"type": c["pred"][0], "text": join_tokens(
                            tokens[c["pred"][1]:c["pred"][2]])}} for c in errs],
            "words": len(tokens),
        })
    return pd.DataFrame(rows)


def entity_error_table(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per entity error: sentence row, kind, gold and predicted entity, entity length in words."""
    rows = []
    for _, r in pred.iterrows():
        for e in r["errors"]:
            ent = e["gold"] or e["predicted"]
            rows.append({"row": r["row"], "kind": e["kind"], "gold": e["gold"] and f"{e['gold']['type']}: "
                         f"{e['gold']['text']}", "predicted": e["predicted"] and f"{e['predicted']['type']}: "
                         f"{e['predicted']['text']}", "type": ent["type"], "text": r["text"]})
    return pd.DataFrame(rows, columns=["row", "kind", "gold", "predicted", "type", "text"])


def entity_slices(pred: pd.DataFrame) -> pd.DataFrame:
    """Recall and precision of entities by entity type, by entity length (words) and by sentence length."""
    rows = []

    def bucket_len(n: int) -> str:
        return "1" if n == 1 else "2" if n == 2 else "3" if n == 3 else "4+"

    def bucket_sent(n: int) -> str:
        return "<=10" if n <= 10 else "11-20" if n <= 20 else "21-40" if n <= 40 else ">40"

    for _, r in pred.iterrows():
        g = {(e["type"], e["start"], e["end"]) for e in r["gold_entities"]}
        p = {(e["type"], e["start"], e["end"]) for e in r["pred_entities"]}
        for kind, ents, other in (("gold", g, p), ("pred", p, g)):
            for t, s, e in ents:
                hit = (t, s, e) in other
                for dim, val in (("entity type", t), ("entity length", bucket_len(e - s)),
                                 ("sentence length", bucket_sent(int(r["words"])))):
                    rows.append({"slice": dim, "value": val, "side": kind, "hit": hit})
    df = pd.DataFrame(rows, columns=["slice", "value", "side", "hit"])
    if df.empty:
        return pd.DataFrame(columns=["slice", "value", "gold", "recall", "predicted", "precision", "f1"])
    out = []
    for (dim, val), grp in df.groupby(["slice", "value"]):
        g, p = grp[grp.side == "gold"], grp[grp.side == "pred"]
        rec = float(g.hit.mean()) if len(g) else float("nan")
        prec = float(p.hit.mean()) if len(p) else float("nan")
        f1 = 2 * rec * prec / (rec + prec) if rec == rec and prec == prec and rec + prec > 0 else 0.0
        out.append({"slice": dim, "value": val, "gold": len(g), "recall": rec, "predicted": len(p),
                    "precision": prec, "f1": f1})
    return pd.DataFrame(out).sort_values(["slice", "f1"]).reset_index(drop=True)


TASK = TokenClassification()
__all__ = ["ERROR_TYPES", "TASK", "TokenClassification", "entity_error_table", "entity_slices", "load_tagged",
           "prepare_tagged", "predictions_table", "tag_labels"]
