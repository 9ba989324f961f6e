"""Continued pre-training on the user's own text: `masked-lm` (BERT-like encoders, optionally with next-sentence
prediction) and `causal-lm` (decoders: Llama, SmolLM2, GPT-2).

Domain-adaptive pre-training ("Don't stop pretraining", Gururangan et al., 2020): the model keeps learning its
own pre-training objective on text from the user's domain, and a fine-tune then starts from the adapted run
(`model.name_or_path: runs/<run>`). What differs from the supervised tasks, all of it here: the data is a
corpus of documents (`corpus`), training rows are fixed token blocks cut across documents (`blocks`), the model
is the pretrained model with its own pre-training head, and the score is held-out perplexity, each test
document read on its own (`scoring`).

Llama is a causal LM: it was pre-trained to predict each next token, never with masked LM or next-sentence
prediction (those are BERT's objectives); notebook 11 shows both.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import DataError, ModelError
from ..base import DataRole
from . import blocks as B
from .corpus import EXACT_TOKENS_CHARS, MAX_HELD_OUT, doc_texts, read_corpus, split_by_hash, text_hash
from .scoring import causal_document_losses, mlm_document_losses, perplexity

SETTINGS = {"mlm_probability": 0.15, "whole_word_mask": False, "next_sentence_prediction": False}
IGNORE = -100
NSP_LABELS = ("is next", "random")  # next_sentence_label 0 and 1, as BertForPreTraining reads them


def settings(frame: pd.DataFrame) -> dict[str, Any]:
    """The run's masked-LM settings, kept by `prepare` in every frame's `attrs` and written as columns of the
    predictions table (so `workbench eval RUN` re-scores a stored split with the run's own masking); the
    defaults for a frame with neither."""
    from_columns = {k: type(d)(frame[k].iloc[0]) for k, d in SETTINGS.items() if k in frame and len(frame)}
    return {**SETTINGS, **frame.attrs.get("pretraining", {}), **from_columns}


def corpus_encoding(frame: pd.DataFrame) -> str:
    return frame.attrs.get("encoding", "utf-8")


# --- data ----------------------------------------------------------------------------------------
def prepare_corpus(task: Any, cfg: Any, seed: int = 42, tokenizer: Any = None, *, raise_on_problems: bool = True,
                   max_positions: int | None = None) -> Any:
    """Read, check, split and report a corpus (`Task.prepare` of both pre-training tasks)."""
    from ...data.prepare import PreparedData, _finish, cap_max_length
    from ...data.report import DataReport

    cfg, capped = cap_max_length(cfg, max_positions, "blocks are {n} tokens instead.")
    corpus = read_corpus(cfg.source, cfg)
    rep = DataReport(source=str(cfg.source), format=corpus.format, columns_found=list(map(str, corpus.frame.columns)),
                     rows_read=len(corpus.frame), row_kind="document", warnings=capped + corpus.warnings,
                     problems=list(corpus.problems), columns=dict(corpus.columns), guessed=list(corpus.guessed))
    frames: dict[str, pd.DataFrame] = {}
    df = corpus.frame
    split_col = "split" if "split" in df else cfg.split_column
    if split_col and split_col in df:
        from ...data.prepare import SPLIT_ALIASES
        names = df[split_col].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        for s in ("train", "validation", "test"):
            if (names == s).any():
                frames[s] = df[names == s].drop(columns=[split_col])
        rep.warnings += [] if names.notna().all() else [
            f"{int(names.isna().sum())} document(s) with a split value other than train/validation/test were left out."]
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other = read_corpus(src, cfg)
            rep.warnings += [f"{role} corpus: {w}" for w in other.warnings]
            rep.problems += [f"{role} corpus: {p}" for p in other.problems]
            rep.rows_read += len(other.frame)
            frames[role] = other.frame
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)
    if "train" not in frames:
        if split_col and split_col in df:
            rep.problems.append(f"{cfg.source}: no document has split `train` in column {split_col!r}.")
            return _finish(empty, raise_on_problems)
        frames["train"] = df
    # Held-out splits not given are carved from train by text hash: what is asked of the whole corpus
    todo = {s: (0.0 if s in frames else size) for s, size in (("validation", cfg.validation_size),
                                                              ("test", cfg.test_size))}
    if any(todo.values()):
        train = frames["train"]
        where = split_by_hash(train["hash"].to_numpy(), todo["validation"], todo["test"], seed)
        if (where == "train").any():  # else (a document or two) all stay in train; the report says none is held out
            frames["train"] = train[where == "train"]
            for s in ("validation", "test"):
                if s not in frames:
                    frames[s] = train[where == s]
    for s in ("validation", "test"):
        frames.setdefault(s, frames["train"].iloc[:0])
    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=seed).sort_index()
    for s in ("validation", "test"):
        cap = cfg.max_eval_samples or MAX_HELD_OUT
        if len(frames[s]) > cap:
            if not cfg.max_eval_samples:
                rep.warnings.append(f"{s}: {len(frames[s]):,} documents; a seeded sample of {cap:,} is "
                                    f"scored. Set data.max_eval_samples to score more.")
            frames[s] = frames[s].sample(n=cap, random_state=seed).sort_index()
    _describe(task, rep, frames, cfg, tokenizer)
    attrs = {"pretraining": {k: getattr(cfg, k) for k in SETTINGS}, "encoding": corpus.encoding}
    for f in frames.values():
        f.attrs.update(attrs)
    # Next-sentence prediction is a two-way classification; its label names are what a run's labels.json holds
    # (and what tells `load_model` to build the pre-training heads).
    labels = list(NSP_LABELS) if task.name == "masked-lm" and cfg.next_sentence_prediction else []
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], labels, rep, [],
                                max_length=cfg.max_length), raise_on_problems)


def _describe(task: Any, rep: Any, frames: dict[str, pd.DataFrame], cfg: Any, tokenizer: Any) -> None:
    """Documents, characters, tokens, unknown tokens, duplicates and train/held-out overlap; a corpus too short
    for one block is a problem."""
    from ...data.prepare import _check_readable

    rep.rows_used = sum(len(f) for f in frames.values())
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    train = frames["train"]
    hashes = train["hash"].to_numpy()
    rep.duplicates = int(len(hashes) - len(np.unique(hashes)))
    train_set = np.unique(hashes)
    for s in ("validation", "test"):
        rep.leakage[s] = int(np.isin(frames[s]["hash"].to_numpy(), train_set).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"overlap: {rep.leakage[s]} {s} document(s) also appear in train: their perplexity "
                                f"measures memory, not adaptation. Fix: remove them from one side.")
    if rep.duplicates:
        rep.warnings.append(f"{rep.duplicates:,} training document(s) repeat an earlier one "
                            f"({rep.duplicates / max(len(train), 1):.0%}): repeated text is learned by heart. "
                            f"Fix: de-duplicate the corpus.")
    chars = {s: int(f["chars"].sum()) for s, f in frames.items()}
    details: dict[str, Any] = {"objective": task.name, "documents": rep.split_sizes, "characters": chars,
                               "document_split": cfg.document_split, "streamed": "text" not in train}
    if "file" in train:
        details["files"] = int(train["file"].nunique())  # not astype(str): a string per document
    rep.details = details
    if tokenizer is None:
        return
    enc = frames["train"].attrs.get("encoding") or cfg.encoding or "utf-8"
    tokens: dict[str, int] = {}
    exact = sum(chars.values()) <= EXACT_TOKENS_CHARS
    per_char = None
    for s, f in frames.items():
        if not len(f):
            tokens[s] = 0
            continue
        if exact:
            tokens[s] = sum(len(ids) for ids in B.doc_token_ids(tokenizer, f, enc))
        else:
            if per_char is None:
                sample = train.iloc[np.linspace(0, len(train) - 1, min(len(train), 4000)).astype(int)]
                n_tok = sum(len(ids) for ids in B.doc_token_ids(tokenizer, sample, enc))
                per_char = n_tok / max(int(sample["chars"].sum()), 1)
            tokens[s] = int(round(chars[s] * per_char))
    details["tokens"] = tokens
    details["tokens_exact"] = exact
    block = cfg.max_length
    sep = 1  # the end-of-text / [SEP] token after each document
    body = block if task.name == "causal-lm" else block - 2
    details["block_tokens"] = block
    details["train_blocks"] = int(math.ceil((tokens["train"] + sep * len(train)) / body)) if len(train) else 0
    sample = train.head(2000) if len(train) <= 2000 else train.iloc[np.linspace(0, len(train) - 1, 2000).astype(int)]
    cap = max(500, 1_000_000 // max(len(sample), 1))  # about a million characters in all, however long the documents
    sample_texts = [t[:cap] for t in doc_texts(sample, enc)]
    _check_readable(rep, pd.DataFrame({"text": sample_texts}), cfg, tokenizer, None)
    have = tokens["train"] + len(train) + (block - body)  # the tokens of the one block the text would fill
    if have < block:
        lower = f", or set data.max_length to {have} or less" if have >= 32 else ""
        rep.problems.append(f"the training text is {tokens['train']:,} tokens, shorter than one block of "
                            f"data.max_length={block}: too little to learn from. Fix: give more text (at least "
                            f"{block:,} tokens; continued pre-training wants millions){lower}.")
    if not len(frames["validation"]) and not len(frames["test"]):
        n = rep.rows_used
        if n >= 10:
            fix = "data.test_size > 0, or "
        elif rep.format == "text folder" and cfg.document_split in ("auto", "file"):
            fix = ("each file is one document here: data.document_split: paragraph (a document per blank-line-"
                   "separated paragraph) or line; or ")
        elif rep.format == "text" and cfg.document_split in ("auto", "paragraph"):
            fix = "more text; data.document_split: line if its documents are lines, not paragraphs; or "
        else:
            fix = "more text, or "
        few = "" if n >= 10 else f"the corpus is {n} document(s), too few to hold any out. "
        rep.warnings.append(f"no validation or test documents: nothing measures whether the model adapted; {few}"
                            f"Fix: {fix}"
                            f"data.test_source (a held-out corpus).")


def _unknown_is_problem(rep: Any, task: str = "") -> None:
    """A corpus the tokenizer cannot read (MiniLM on Chinese: mostly [UNK]) stops the run before training."""
    u = rep.unknown_tokens
    if u and u.get("share", 0) > 0.30:
        msg = next((w for w in rep.warnings if "cannot read this text" in w), None)
        if msg:
            rep.warnings.remove(msg)
            rep.problems.append(msg + " Pre-training on it would teach the model to predict "
                                f"{u['token']}, nothing of the text." + _decoder_note(msg, task))


def _decoder_note(msg: str, task: str) -> str:
    """A masked-LM run told to use a built-in decoder must change its task too: say so."""
    from ...assets import BUILTIN_MODELS
    from transformers.models.auto import modeling_auto as auto

    named = [m for m in BUILTIN_MODELS.values() if f"'{m.name}'" in msg]
    if task != "masked-lm" or not named or named[0].architecture in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return ""
    return f" {named[0].name} is a decoder ({named[0].architecture}): with it, set task: causal-lm."


# --- the two tasks -------------------------------------------------------------------------------
class _Pretraining:
    roles = (DataRole("text", "text_column", False, "a corpus: a .txt file, a folder of .txt files, or a JSONL/CSV/"
                      "Parquet file whose text column holds one document per row (guessed: text, content, ...)"),)
    needs_labels = False
    new_head = False
    freeze_embeddings_ok = False  # the output layer shares its weight with the input embeddings
    reusable_weights = True  # always save full (merged) weights: a later fine-tune starts from this run
    file_formats = "a .txt file or a folder of them (documents per data.document_split), or JSONL/CSV/Parquet with text"
    file_extensions = (".txt", ".md", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
    headline = "perplexity"
    validation_headline = "perplexity"

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        from ...data.prepare import _finish

        prep = prepare_corpus(self, cfg, seed, tokenizer, raise_on_problems=False, max_positions=max_positions)
        _unknown_is_problem(prep.report, self.name)
        return _finish(prep, raise_on_problems)

    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """(summed loss, predicted tokens, correct top-1) per row instead of the logits (rows x tokens x vocab)."""
        if isinstance(logits, tuple):  # BertForPreTraining: (MLM logits, NSP logits)
            logits = logits[0]
        if isinstance(labels, (tuple, list)):  # with NSP the trainer hands (labels, next_sentence_label)
            labels = labels[0]
        return _nll_rows(logits, labels)

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str] = ()) -> dict[str, float]:
        sums = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3)
        loss = sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)
        return {"perplexity": perplexity(loss), "accuracy": float(sums[:, 2].sum() / max(sums[:, 1].sum(), 1.0))}

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        return frame  # no labels: any text can be scored

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        known = {"row", "text", "gold", "predicted", "loss", "tokens", "perplexity", "correct", "accuracy", "chars"}
        frame = pred[[c for c in pred.columns if c not in known]].copy()
        frame.insert(0, "text", pred["text"].astype(str).to_numpy())
        frame.index = pred["row"].to_numpy()
        frame["hash"] = [text_hash(t.encode("utf-8")) for t in frame["text"]] if len(frame) else []
        return frame

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        """Held-out loss per predicted token over the whole split (each token counts once), its perplexity
        (exp of that mean), top-1 accuracy on the predicted tokens, documents and tokens scored."""
        ok = pred["tokens"].to_numpy(dtype=float) > 0
        n = pred["tokens"].to_numpy(dtype=float)[ok]
        total = float((pred["loss"].to_numpy(dtype=float)[ok] * n).sum())
        loss = total / max(n.sum(), 1.0) if ok.any() else None
        acc = float((pred["accuracy"].to_numpy(dtype=float)[ok] * n).sum() / max(n.sum(), 1.0)) if ok.any() else None
        return {"loss": loss, "perplexity": perplexity(loss) if loss is not None else None, "accuracy": acc,
                "documents": int(len(pred)), "n": int(len(pred)), "tokens": int(n.sum())}

    def complete_weights(self, folder: Any, base: str, prefix: str) -> list[str]:
        """Copy into the saved `folder` the base checkpoint's weights this objective's model has no place for
        (BERT's pooler: `BertForMaskedLM` drops it), unchanged, so a classifier fine-tuned from this run starts
        with the same pooler as one fine-tuned from the base and the two differ only in what pre-training
        changed. Single-file safetensors checkpoints only; returns the names carried over."""
        from pathlib import Path

        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        saved_file, base_file = Path(folder) / "model.safetensors", Path(base) / "model.safetensors"
        if not saved_file.is_file() or not base_file.is_file():
            return []
        saved = load_file(str(saved_file))
        prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in saved)
        carried = {}
        with safe_open(str(base_file), "pt") as f:
            # a base saved with its heads (BertForPreTraining: `bert.…`, `cls.…`) keeps its names as they are
            base_prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in f.keys())
            for k in f.keys():
                if k.endswith("position_ids") or k in saved or (prefix and f"{prefix}.{k}" in saved) or \
                        (prefix and k.startswith(prefix + ".") and k[len(prefix) + 1:] in saved):
                    continue
                name = f"{prefix}.{k}" if prefixed and not base_prefixed else k
                carried[name] = f.get_tensor(k)
        if carried:
            save_file({**saved, **carried}, str(saved_file), metadata={"format": "pt"})
        return sorted(carried)

    def error_report(self, pred: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
        """The documents the model found most surprising (highest loss per token), and loss by the corpus's
        own columns (file, section, ...) and document length."""
        view = pred.assign(text=pred["text"].astype(str).str.slice(0, 160))
        cols = [c for c in ("row", "loss", "perplexity", "tokens", "text") if c in view]
        worst = view.sort_values("loss", ascending=False).head(n)[cols]
        return {f"{len(worst)} documents with the highest loss per token": worst,
                "slices (loss per token, perplexity)": document_slices(pred)}


def _nll_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: summed cross-entropy over labelled positions, their count, and how many the top-1 guessed.
    Labels are aligned with the logits (masked LM); a causal LM's rows are shifted first by the caller."""
    lg = logits.float()
    nll = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                                            reduction="none").view(labels.shape)
    keep = labels != IGNORE
    hit = (lg.argmax(-1) == labels) & keep
    return torch.stack([nll.sum(1), keep.sum(1).float(), hit.sum(1).float()], dim=1)


def document_slices(pred: pd.DataFrame, max_values: int = 30) -> pd.DataFrame:
    def bucket(n: float) -> str:
        return "<=100" if n <= 100 else "101-500" if n <= 500 else "501-2000" if n <= 2000 else ">2000"

    chars = pred["chars"] if "chars" in pred else pred["text"].astype(str).str.len()
    dims = {"document characters": chars.map(bucket)}
    for c in pred.columns:
        if c in {"row", "text", "gold", "predicted", "loss", "tokens", "perplexity", "correct", "accuracy", "chars",
                 "start", "end", "hash"}:
            continue
        if pred[c].map(lambda v: isinstance(v, (str, int, bool))).all() and 1 < pred[c].nunique() <= max_values:
            dims[str(c)] = pred[c].astype(str)
    rows = []
    tok = pred["tokens"].to_numpy(dtype=float)
    losses = np.nan_to_num(pred["loss"].to_numpy(dtype=float))  # a document with no predicted token has no loss
    for dim, values in dims.items():
        for val, idx in values.groupby(values).groups.items():
            i = pred.index.get_indexer(idx)
            t = tok[i]
            loss = float((losses[i] * t).sum() / max(t.sum(), 1.0))
            rows.append({"slice": dim, "value": val, "documents": len(i), "tokens": int(t.sum()), "loss": loss,
                         "perplexity": perplexity(loss)})
    out = pd.DataFrame(rows, columns=["slice", "value", "documents", "tokens", "loss", "perplexity"])
    return out.sort_values(["slice", "loss"], ascending=[True, False]).reset_index(drop=True)


def _prediction_table(frame: pd.DataFrame, texts: list[str], loss: np.ndarray, count: np.ndarray,
                      hits: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"row": frame.index.to_numpy(), "text": texts, "loss": loss, "tokens": count.astype(int),
                        "perplexity": [perplexity(x) if c else float("nan") for x, c in zip(loss, count)],
                        "accuracy": np.where(count > 0, hits / np.maximum(count, 1), np.nan)})
    for k, v in settings(frame).items():  # the run's masking, for re-scoring from this table alone
        out[k] = v
    for c in frame.columns:
        if c not in ("text", "hash", "start", "end") and c not in out:
            out[c] = frame[c].astype(str).to_numpy() if c == "file" else frame[c].to_numpy()
    return out


class MaskedLM(_Pretraining):
    name = "masked-lm"
    description = ("Continued pre-training of an encoder (BERT, MiniLM) on your text: predict masked tokens "
                   "(and, optionally, whether one span follows another).")
    model_inputs = ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")
    auto_model = "AutoModelForMaskedLM"
    peft_task_type = None  # peft has no masked-LM task type: a plain PeftModel, the MLM head kept trainable
    directions = {"loss": False, "perplexity": False, "accuracy": True}
    validation_metrics = ("loss", "perplexity", "accuracy")

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        s = settings(frame)
        if tokenizer.mask_token_id is None:
            raise ModelError("this tokenizer has no mask token, so masked-LM cannot hide tokens from it: it belongs "
                             "to a decoder. Fix: task: causal-lm for this model, or an encoder such as minilm.")
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or sep is None:
            cls = cls if cls is not None else tokenizer.bos_token_id
            sep = sep if sep is not None else tokenizer.eos_token_id
        enc = corpus_encoding(frame)
        rate = float(s["mlm_probability"])
        key = B.fingerprint(frame, tokenizer, "mlm", max_length, s["whole_word_mask"], s["next_sentence_prediction"],
                            cls, sep, rate, corpus_encoding(frame))
        if s["next_sentence_prediction"]:
            def rows() -> Any:
                docs = []
                for t in doc_texts(frame, enc):
                    sents = [x for x in (tokenizer(y, add_special_tokens=False)["input_ids"] for y in B.sentences(t))
                             if x]
                    if len(sents) == 1 and len(sents[0]) >= 2:  # a one-sentence document: its two halves
                        half = len(sents[0]) // 2
                        sents = [sents[0][:half], sents[0][half:]]
                    if sents:
                        docs.append(sents)
                if len(docs) < 2:
                    raise DataError(f"next-sentence prediction needs at least two documents (a random B comes from "
                                    f"another document); this split has {len(docs)}. Fix: more documents, or "
                                    f"data.document_split: paragraph (or line) for a single long text.")
                for r in B.nsp_pairs(docs, max_length, cls, sep, seed=len(docs)):
                    yield {**r, "mlm_probability": rate}
        else:
            def rows() -> Any:
                for r in B.mlm_blocks(B.doc_token_ids(tokenizer, frame, enc, offsets=s["whole_word_mask"]),
                                      max_length, cls, sep, offsets=s["whole_word_mask"]):
                    yield {**r, "mlm_probability": rate}
        ds = B.dataset_from_rows(rows, key)
        if not ds.num_rows and len(frame):
            raise DataError(f"next-sentence prediction made no sentence pairs from these {len(frame)} documents: a "
                            f"pair needs a document with text after its first span. Fix: give longer documents, or "
                            f"set data.next_sentence_prediction: false.")
        return ds

    def collator(self, tokenizer: Any) -> "MLMCollator":
        return MLMCollator(tokenizer)

    def eval_collator(self, tokenizer: Any, seed: int = 0) -> "MLMCollator":
        """Validation passes mask the same positions every time (a fresh seeded generator per pass), so their
        perplexities are comparable from one pass to the next."""
        return MLMCollator(tokenizer, seed=seed)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        """The model with its masked-LM head (`AutoModelForMaskedLM`), or for a run with next-sentence prediction
        (`labels` are `NSP_LABELS`) its pre-training heads (`AutoModelForPreTraining`: MLM + NSP, BERT's). A head
        the checkpoint lacks starts untrained and is said so (all-MiniLM-L6-v2 ships as a sentence encoder without
        one)."""
        import transformers
        from transformers.models.auto import modeling_auto as auto

        from ...models import _load_error, model_load_args

        path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
        mtype = getattr(mconf, "model_type", "")
        name = cfg.name_or_path
        if mtype not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise ModelError(f"{name} is a {mtype or 'model'} model with no masked-LM head: masked-lm is BERT's "
                             f"objective, for encoders (BERT, RoBERTa, MiniLM). A decoder (Llama, SmolLM2, GPT-2) "
                             f"is pre-trained to predict the next token: use task: causal-lm.")
        klass = transformers.AutoModelForMaskedLM
        if list(labels) == list(NSP_LABELS):
            arch = auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES.get(mtype, "")
            import inspect
            klass_nsp = getattr(transformers, arch, None) if arch else None
            if klass_nsp is None or "next_sentence_label" not in inspect.signature(klass_nsp.forward).parameters:
                what = arch or "no pre-training class"
                raise ModelError(f"{name} ({mtype}) has no next-sentence-prediction head ({what}): NSP is BERT's "
                                 f"second objective, which later models such as RoBERTa dropped. Fix: set "
                                 f"data.next_sentence_prediction: false, or use a BERT model.")
            klass = transformers.AutoModelForPreTraining
        try:
            model, info = klass.from_pretrained(path, config=mconf, output_loading_info=True,
                                                dtype=dtype if dtype is not None else torch.float32, **kw)
        except Exception as e:
            raise _load_error(path, cfg, e, "model") from None
        new = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in info.get("missing_keys", ()) if "." in k
                      and not k.startswith(getattr(model, "base_model_prefix", "@") + ".")})
        if new:
            start = "they start" if len(new) > 1 else "it starts"
            print(f"note: {name} has no trained weights for {', '.join(new)}: {start} "
                  f"untrained, so the perplexity before training is that of an untrained head.", file=sys.stderr,
                  flush=True)
            model.workbench_new_heads = new
        # Under LoRA the head's own layers train whole beside the adapters: its transform (and NSP's classifier),
        # not the output layer, which shares its weight with the input embeddings (copying it for peft would
        # untie them, train 11.7M parameters for MiniLM and save the head wrongly).
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        model.workbench_modules_to_save = [m for m in ("transform", "seq_relationship") if m in names]
        return model

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """Per test document: masked tokens' loss (a fixed, seeded 15% of the document's tokens: the same
        positions before and after training), their count and the share guessed top-1."""
        texts = list(doc_texts(frame, corpus_encoding(frame)))
        loss, count, hits = mlm_document_losses(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                                bf16=bf16, rate=float(settings(frame)["mlm_probability"]))
        return _prediction_table(frame, texts, loss, count, hits)


class CausalLM(_Pretraining):
    name = "causal-lm"
    description = "Continued pre-training of a decoder (Llama, SmolLM2, GPT-2) on your text: predict each next token."
    model_inputs = ("input_ids", "attention_mask", "labels")
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    directions = {"loss": False, "perplexity": False, "accuracy": True}
    validation_metrics = ("loss", "perplexity", "accuracy")

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        eot = B.end_of_text_id(tokenizer)
        key = B.fingerprint(frame, tokenizer, "causal", max_length, eot, corpus_encoding(frame))

        def rows() -> Any:
            for b in B.causal_blocks(B.doc_token_ids(tokenizer, frame, corpus_encoding(frame)), max_length, eot):
                yield {"input_ids": b}
        return B.dataset_from_rows(rows, key)

    def collator(self, tokenizer: Any) -> "BlockCollator":
        return BlockCollator(tokenizer)

    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):
            logits = logits[0]
        return _nll_rows(logits[:, :-1], labels[:, 1:])  # position t predicts token t+1

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        import transformers
        from transformers.models.auto import modeling_auto as auto

        from ...models import _load_error, model_load_args

        path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
        mtype = getattr(mconf, "model_type", "")
        if mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(mconf, "is_decoder", False) or \
                mtype not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelError(f"{cfg.name_or_path} is a {mtype or 'model'} encoder: it reads the whole text in both "
                             f"directions and has no next-token head. causal-lm is for decoders (Llama, SmolLM2, "
                             f"GPT-2); for this model use task: masked-lm.")
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(
                path, config=mconf, dtype=dtype if dtype is not None else torch.float32, **kw)
        except Exception as e:
            raise _load_error(path, cfg, e, "model") from None

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """Per test document, read on its own after an end-of-text token: each of its tokens and the end-of-text
        after it predicted once (windows of `max_length` overlap by one token), summed loss, count, top-1 hits."""
        texts = list(doc_texts(frame, corpus_encoding(frame)))
        loss, count, hits = causal_document_losses(model, tokenizer, texts, max_length=max_length,
                                                   batch_size=batch_size, bf16=bf16)
        return _prediction_table(frame, texts, loss, count, hits)


# --- collators -----------------------------------------------------------------------------------
class BlockCollator:
    """Pads causal-LM blocks on the right; labels are the input ids (the model shifts them), -100 on padding."""

    def __init__(self, tokenizer: Any):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for k, f in enumerate(features):
            m = len(f["input_ids"])
            ids[k, :m] = torch.as_tensor(f["input_ids"])
            mask[k, :m] = 1
        labels = ids.masked_fill(mask == 0, IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class MLMCollator:
    """`transformers.DataCollatorForLanguageModeling` at the run's `data.mlm_probability`, which every row
    carries: 80/10/10 per token, or whole words (all [MASK], transformers' rule) when the rows carry offsets;
    NSP rows keep `token_type_ids` and
    `next_sentence_label`. With `seed`, the masks are the same on every pass (validation)."""

    def __init__(self, tokenizer: Any, seed: int | None = None):
        self.tokenizer = tokenizer
        self.seed = seed
        self._inner: dict[tuple[float, bool], Any] = {}

    def _collator(self, rate: float, whole_word: bool) -> Any:
        from transformers import DataCollatorForLanguageModeling

        key = (rate, whole_word)
        if key not in self._inner:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "random replacement is not supported with whole word masking"
                self._inner[key] = DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=rate,
                                                                   whole_word_mask=whole_word, seed=self.seed)
        return self._inner[key]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rate = float(features[0].get("mlm_probability", 0.15))
        ww = "offset_mapping" in features[0]
        n = max(len(f["input_ids"]) for f in features)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(features), n), pad, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        special = torch.ones((len(features), n), dtype=torch.long)
        types = torch.zeros((len(features), n), dtype=torch.long)
        offsets = torch.zeros((len(features), n, 2), dtype=torch.long) if ww else None
        for k, f in enumerate(features):
            m = len(f["input_ids"])
            ids[k, :m] = torch.as_tensor(f["input_ids"])
            mask[k, :m] = 1
            special[k, :m] = torch.as_tensor(f["special_tokens_mask"])
            if "token_type_ids" in f:
                types[k, :m] = torch.as_tensor(f["token_type_ids"])
            if ww:
                offsets[k, :m] = torch.as_tensor(f["offset_mapping"])
        inner = self._collator(rate, ww)
        if self.seed is not None and getattr(inner, "generator", None) is None:
            inner.create_rng("pt")
        masked, labels = inner.torch_mask_tokens(ids.clone(), special_tokens_mask=special, offset_mapping=offsets)
        batch = {"input_ids": masked, "attention_mask": mask, "labels": labels}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = types
        if "next_sentence_label" in features[0]:
            batch["next_sentence_label"] = torch.tensor([int(f["next_sentence_label"]) for f in features])
        return batch


MASKED_LM = MaskedLM()
CAUSAL_LM = CausalLM()
__all__ = ["CAUSAL_LM", "MASKED_LM", "BlockCollator", "CausalLM", "MLMCollator", "MaskedLM", "prepare_corpus"]
