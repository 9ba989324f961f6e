"""Extractive question answering: the answer is a span of the context, found by a start and an end logit.

What differs from the other tasks, all of it here: the data is SQuAD JSON or flat rows of question, context,
answer and its offset (`formats`, every answer checked at its offset); an example becomes one or more
overlapping windows (`encode.make_windows`, `data.doc_stride`) with start/end labels, the null position for
windows without the answer; the model is `AutoModelForQuestionAnswering` (an encoder, or Llama's
`LlamaForQuestionAnswering` head; PEFT `QUESTION_ANS`); predictions take the best span over all windows
(`encode.best_answer`), the empty answer only for models trained with unanswerable questions; the scores are
SQuAD's exact match and F1 (character-level F1 for Chinese, `scoring`); the per-example table holds the
predicted span in its context, and each error is typed (no answer given, answered the unanswerable, wrong
place, too long, too short, overlapping).

The "labels" of a QA run are the kinds of answer it was trained on: `["span"]`, plus `"no answer"` when the
training data has unanswerable questions (that is what lets prediction answer nothing).

Validation passes score windows, not answers (the Trainer hands `compute_metrics` logits and labels only):
`span_exact` — both predicted positions right, null windows included — and `span_f1`, the token overlap of
predicted and gold spans; the test split gets the answer-level exact match and F1.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...data.prepare import SPLIT_ALIASES
from ...errors import DataError, ModelError
from ..base import DataRole
from .encode import (MODEL_INPUTS, Answer, QACollator, Windows, best_answer, make_windows, question_text,
                     training_labels, window_logits)
from .formats import QAData, read_qa
from .scoring import best_over

SPAN, NO_ANSWER = "span", "no answer"
ERROR_TYPES = ("no answer given", "answered the unanswerable", "wrong place", "too long", "too short", "overlapping")
N_BEST = 20


# --- data ----------------------------------------------------------------------------------------
SETTINGS = {"doc_stride": 128, "max_answer_length": 30, "null_threshold": 0.0}  # DataConfig's defaults


def settings(frame: pd.DataFrame) -> dict[str, Any]:
    """The run's QA settings (data.doc_stride, max_answer_length, null_threshold) that `prepare` keeps in every
    prepared frame as columns, so encoding and prediction read the run's own; the defaults for a frame without."""
    return {k: (type(d)(frame[k].iloc[0]) if k in frame and len(frame) else d) for k, d in SETTINGS.items()}


def _group_split(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out whole contexts (a context's questions stay together, as SQuAD splits by article): no test
    question is answered from a text seen in training."""
    contexts = df["context"].drop_duplicates().sample(frac=1.0, random_state=seed).tolist()
    n = max(1, int(round(size * len(contexts))))
    held = set(contexts[:n])
    mask = df["context"].isin(held)
    return df[~mask], df[mask]


def question_type(q: str) -> str:
    """The interrogative of a question, for slicing errors: what/who/when/where/which/how/why (English) or
    谁/什么时候/哪里/哪/什么/多少/几 (Chinese); "other" when there is none."""
    s = q.lower()
    for zh, name in (("什么时候", "什么时候 (when)"), ("哪一年", "什么时候 (when)"), ("谁", "谁 (who)"),
                     ("哪里", "哪里 (where)"), ("哪", "哪 (which)"), ("什么", "什么 (what)"),
                     ("多少", "多少 (how many)"), ("几", "几 (how many)")):
        if zh in s:
            return name
    m = re.search(r"\b(what|who|whom|whose|when|where|which|how|why)\b", s)
    return m.group(1) if m else "other"


def prepare_qa(cfg: Any, seed: int = 42, tokenizer: Any = None, *, raise_on_problems: bool = True,
               max_positions: int | None = None) -> Any:
    """Read, check, split and report QA examples (the `Task.prepare` of question answering)."""
    from ...data.prepare import PreparedData, _finish, cap_max_length
    from ...data.report import DataReport

    cfg, capped = cap_max_length(cfg, max_positions, "windows are cut at {n} tokens instead.")
    data = read_qa(cfg.source, encoding=cfg.encoding, delimiter=cfg.delimiter)
    rep = DataReport(source=str(cfg.source), format=data.format, columns_found=list(data.frame.columns),
                     rows_read=data.rows_read, row_kind=data.row_kind, warnings=capped + list(data.repairs),
                     problems=list(data.problems))
    rep.columns = {"question": "question", "context": "context", "answer": "answer"}
    frames: dict[str, pd.DataFrame] = {}
    df = data.frame
    split_col = cfg.split_column or "split"
    if len(df) and split_col in df:
        mapped = df[split_col].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        if mapped.isna().any():
            bad = sorted(set(df.loc[mapped.isna(), split_col].astype(str)))[:5]
            rep.problems.append(f"column {split_col!r} has values {bad} that are not train/validation/test. Fix: use "
                                f"those three names (dev, val, eval and testing are read too), or set "
                                f"data.split_column to another column.")
        for s in ("train", "validation", "test"):
            if (mapped == s).any():
                frames[s] = df[mapped == s].drop(columns=split_col)
    elif cfg.split_column:
        rep.problems.append(f"data.split_column {cfg.split_column!r} not found; columns found: "
                            f"{', '.join(map(str, df.columns))}.")
    else:
        frames["train"] = df
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other = read_qa(src, encoding=cfg.encoding, delimiter=cfg.delimiter)
            rep.warnings += [f"{role} file: {w}" for w in other.repairs]
            rep.problems += [f"{role} file: {p}" for p in other.problems]
            rep.rows_read += other.rows_read
            frames[role] = other.frame
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)
    train = frames.get("train", df.iloc[:0])
    if len(train) == 0:
        rep.problems.append(f"{cfg.source}: no questions to train on.")
        return _finish(empty, raise_on_problems)
    carved = "test" not in frames and cfg.test_size > 0  # the test contexts come out of train here
    if carved:
        train, frames["test"] = _group_split(train, cfg.test_size, seed)
    if "validation" not in frames and cfg.validation_size > 0 and len(train):
        share = cfg.validation_size / (1 - cfg.test_size) if carved else cfg.validation_size
        train, frames["validation"] = _group_split(train, min(share, 0.5), seed)
    if len(train) == 0 or not (train["answer"] != "").any():
        rep.problems.append(f"{cfg.source}: {len(data.frame)} question(s), too few (or none answerable) to hold "
                            f"out validation and test contexts and still train. Fix: give more questions (hundreds), "
                            f"or set data.validation_size and data.test_size to 0 and give data.validation_source / "
                            f"data.test_source files.")
        return _finish(empty, raise_on_problems)
    frames["train"] = train
    for s in ("validation", "test"):
        frames.setdefault(s, train.iloc[:0])
    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=seed)
    for s in ("validation", "test"):
        if cfg.max_eval_samples and len(frames[s]) > cfg.max_eval_samples:
            frames[s] = frames[s].sample(n=cfg.max_eval_samples, random_state=seed)
    labels = [SPAN] + ([NO_ANSWER] if (frames["train"]["answer"] == "").any() else [])
    for s in ("validation", "test"):
        if NO_ANSWER not in labels and (frames[s]["answer"] == "").any():
            rep.warnings.append(f"{int((frames[s]['answer'] == '').sum())} {s} question(s) have no answer but every "
                                f"training question has one: the model always answers, so those count as wrong.")
    _describe(rep, frames, labels, cfg, tokenizer)
    frames = {s: f.assign(**{k: getattr(cfg, k) for k in SETTINGS}) for s, f in frames.items()}
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], labels, rep, [],
                                max_length=cfg.max_length), raise_on_problems)


def _describe(rep: Any, frames: dict[str, pd.DataFrame], labels: list[str], cfg: Any, tokenizer: Any) -> None:
    from ...data.prepare import _first
    from ...data.report import UNKNOWN_WARN, token_length_stats, unknown_token_stats

    rep.labels = labels
    rep.rows_used = sum(len(f) for f in frames.values())
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    rep.class_balance = {s: {"answerable": int((f["answer"] != "").sum()), "unanswerable": int((f["answer"] == "")
                                                                                              .sum())}
                         for s, f in frames.items()}
    train = frames["train"]
    key = train["question"] + "\x00" + train["context"]
    dup = train[key.duplicated()]
    rep.duplicates = len(dup)
    if len(dup):
        rep.warnings.append(f"{len(dup)} training question(s) repeat an earlier one on the same context "
                            f"({rep.row_kind} {_first(dup['line'].tolist())}): they count twice in training.")
    train_ctx = set(train["context"])
    for s in ("validation", "test"):
        f = frames[s]
        rep.leakage[s] = int(f["context"].isin(train_ctx).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"leakage: {rep.leakage[s]} {s} question(s) are about a context that is also in "
                                f"train: their answers may be remembered rather than read.")
    chars = train["context"].str.len().to_numpy()
    rep.details = {"contexts": int(train["context"].nunique()), "questions_per_context":
                   round(len(train) / max(1, train["context"].nunique()), 2),
                   "context_chars": {"p50": int(np.percentile(chars, 50)), "max": int(chars.max())},
                   "question_types": train["question"].map(question_type).value_counts().head(12).to_dict(),
                   "doc_stride": cfg.doc_stride, "max_answer_length": cfg.max_answer_length}
    if tokenizer is None:
        return
    sample = train.sample(n=min(len(train), 2000), random_state=0)
    ctx_tokens = [len(x) for x in tokenizer(sample["context"].tolist(), add_special_tokens=False)["input_ids"]]
    q_tokens = [len(x) for x in tokenizer([question_text(q, tokenizer) for q in sample["question"]],
                                          add_special_tokens=False)["input_ids"]]
    whole = [c + q + tokenizer.num_special_tokens_to_add(pair=True) for c, q in zip(ctx_tokens, q_tokens)]
    rep.token_lengths = token_length_stats(whole, cfg.max_length, getattr(tokenizer, "name_or_path", ""))
    rep.token_lengths["windowed"] = True  # longer pairs are split into windows, not cut
    long = [r for r, n in zip(sample["line"], whole) if n > cfg.max_length]
    if long:
        try:
            win = make_windows(tokenizer, sample["question"].tolist(), sample["context"].tolist(), cfg.max_length,
                               cfg.doc_stride)
            per = np.bincount(win.example)
            rep.details["windows_per_question"] = {"mean": round(float(per.mean()), 2), "max": int(per.max())}
            more = f", up to {int(per.max())} windows each"
        except Exception:  # noqa: BLE001 (a doc_stride that does not fit is the config's problem, said in training)
            more = ""
        rep.warnings.append(f"{len(long)} of {len(sample)} question+context pairs are longer than data.max_length="
                            f"{cfg.max_length} tokens ({rep.row_kind} {_first(long)}): their contexts are split into "
                            f"windows overlapping by data.doc_stride={cfg.doc_stride} tokens{more}; nothing is cut.")
    ans = sample[sample["answer"] != ""]
    if len(ans):
        a_tokens = [len(x) for x in tokenizer(ans["answer"].tolist(), add_special_tokens=False)["input_ids"]]
        rep.details["answer_tokens"] = {"p50": int(np.percentile(a_tokens, 50)), "max": int(max(a_tokens))}
        over = [r for r, n in zip(ans["line"], a_tokens) if n > cfg.max_answer_length]
        if over:
            rep.warnings.append(f"{len(over)} answer(s) are longer than data.max_answer_length={cfg.max_answer_length} "
                                f"tokens ({rep.row_kind} {_first(over)}): the model cannot predict them whole. Raise "
                                f"data.max_answer_length.")
    u = rep.unknown_tokens = unknown_token_stats(tokenizer, sample["context"].head(1000).tolist())
    if u and u["share"] > UNKNOWN_WARN:
        rep.warnings.append(f"{u['share']:.0%} of the context tokens are {u['token']}: this tokenizer cannot read "
                            f"this text, so neither can the model. For Chinese use `smollm2-135m` (byte-level BPE).")


# --- predictions ---------------------------------------------------------------------------------
def answer_spans(model: Any, tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], *, max_length: int,
                 doc_stride: int = 128, max_answer_length: int = 30, allow_null: bool = False,
                 null_threshold: float = 0.0, batch_size: int = 32, bf16: bool = False,
                 progress: Any = None) -> tuple[list[Answer], Windows]:
    """The best answer to each question in its context, and the windows it was read in."""
    from ..classification import model_max_tokens

    if not len(questions):
        return [], Windows({"input_ids": []}, [], [], [])
    max_length = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
    doc_stride = min(doc_stride, max_length // 2)
    win = make_windows(tokenizer, questions, contexts, max_length, doc_stride)
    logits = window_logits(model, tokenizer, win, batch_size=batch_size, bf16=bf16, progress=progress)
    by_example: list[list[Any]] = [[] for _ in questions]
    for w, ex in enumerate(win.example):
        by_example[ex].append((logits[w][0], logits[w][1], win.offsets[w], win.null_index[w]))
    answers = [best_answer(c, ws, n_best=N_BEST, max_answer_length=max_answer_length, allow_null=allow_null,
                           null_threshold=null_threshold) for c, ws in zip(contexts, by_example)]
    return answers, win


def error_kind(pred: Answer, golds: list[dict[str, Any]], correct: bool) -> str:
    """How a wrong answer is wrong, from character spans: see ERROR_TYPES."""
    if correct:
        return "correct"
    if not golds:
        return "answered the unanswerable"
    if not pred.text:
        return "no answer given"
    kinds = []
    for g in golds:
        a, b = int(g["answer_start"]), int(g["answer_start"]) + len(g["text"])
        if pred.end <= a or pred.start >= b:
            kinds.append("wrong place")
        elif pred.start <= a and pred.end >= b:
            kinds.append("too long")
        elif pred.start >= a and pred.end <= b:
            kinds.append("too short")
        else:
            kinds.append("overlapping")
    for k in ("too long", "too short", "overlapping", "wrong place"):  # the closest miss names it
        if k in kinds:
            return k
    return "wrong place"


def context_bucket(n_chars: int) -> str:
    return "<=100" if n_chars <= 100 else "101-300" if n_chars <= 300 else "301-1000" if n_chars <= 1000 else ">1000"


def predictions_table(frame: pd.DataFrame, answers: list[Answer], windows: Windows, loss: np.ndarray) -> pd.DataFrame:
    """The per-example table: question, context, gold and predicted answers with their character spans, EM/F1,
    the error's kind, windows read, plus the user's other columns."""
    n_win = np.bincount(windows.example, minlength=len(frame)) if len(windows) else np.zeros(len(frame), int)
    rows = []
    for k, ((idx, r), a) in enumerate(zip(frame.iterrows(), answers)):
        golds = [dict(g) for g in (r["answers"] if isinstance(r["answers"], (list, tuple)) else list(r["answers"]))]
        em, f1 = best_over([g["text"] for g in golds], a.text)
        kind = error_kind(a, golds, em == 1.0)
        row = {"row": int(r.get("line", idx)), "id": str(r.get("id", idx)), "text": r["question"],
               "question": r["question"], "context": r["context"],
               "gold": " | ".join(g["text"] for g in golds) if golds else "(no answer)",
               "predicted": a.text if a.text else "(no answer)", "loss": float(loss[k]), "correct": em == 1.0,
               "exact_match": em, "f1": f1, "error_type": kind,
               "gold_answers": golds, "pred_start": a.start, "pred_end": a.end, "score": round(a.score, 4),
               "null_score": round(a.null_score, 4), "windows": int(n_win[k]),
               "question_type": question_type(r["question"]), "context_chars": len(r["context"]),
               "context_length": context_bucket(len(r["context"]))}
        for c in frame.columns:
            if c not in row and c not in ("answers", "answer", "answer_start", "line"):
                row[c] = r[c]
        rows.append(row)
    return pd.DataFrame(rows)


def window_losses(model: Any, tokenizer: Any, frame: pd.DataFrame, windows: Windows,
                  logits: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Per example: the mean over its windows of the training loss (start and end cross-entropy, halved)."""
    starts, ends = training_labels(windows, frame["answer_start"].tolist(), frame["answer"].tolist())
    out = np.zeros(len(frame))
    count = np.zeros(len(frame))
    for w, ex in enumerate(windows.example):
        s, e = logits[w]
        ls = -(s[starts[w]] - np.logaddexp.reduce(s))
        le = -(e[ends[w]] - np.logaddexp.reduce(e))
        out[ex] += (ls + le) / 2
        count[ex] += 1
    return out / np.maximum(count, 1)


def slices(pred: pd.DataFrame) -> pd.DataFrame:
    """Exact match and F1 by question type, context length and (when the data has it) relation."""
    out = []
    for dim in ("question_type", "context_length", "relation"):
        if dim not in pred:
            continue
        for val, g in pred.groupby(dim):
            out.append({"slice": dim.replace("_", " "), "value": val, "n": len(g),
                        "exact_match": float(g["exact_match"].mean()), "f1": float(g["f1"].mean())})
    return pd.DataFrame(out, columns=["slice", "value", "n", "exact_match", "f1"]).sort_values(["slice", "f1"]) \
        .reset_index(drop=True)


def highlight(context: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[str, str | None]]:
    """The context cut into (piece, mark) parts for display: mark is "gold", "predicted", "both" or None."""
    n = len(context)
    marks = [set() for _ in range(n)]
    for a, b, name in spans:
        for i in range(max(0, a), min(n, b)):
            marks[i].add(name)
    parts: list[tuple[str, str | None]] = []
    for i, ch in enumerate(context):
        m = "both" if len(marks[i]) > 1 else next(iter(marks[i]), None)
        if parts and parts[-1][1] == m:
            parts[-1] = (parts[-1][0] + ch, m)
        else:
            parts.append((ch, m))
    return parts


# --- the task ------------------------------------------------------------------------------------
class QuestionAnswering:
    name = "question-answering"
    description = "Extractive question answering: the answer is a span of the context (SQuAD, CMRC)."
    roles = (
        DataRole("question", None, True, "the question"),
        DataRole("context", None, True, "the text holding the answer; longer ones are read in overlapping windows"),
        DataRole("answer", None, False, "the answer's text as it occurs in the context, with its character offset "
                 "`answer_start`; empty for an unanswerable question (SQuAD 2.0)"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    directions = {"exact_match": True, "f1": True, "span_exact": True, "span_f1": True, "has_answer_f1": True,
                  "no_answer_accuracy": True, "loss": False}
    validation_metrics = ("loss", "span_exact", "span_f1")
    validation_headline = "span_f1"
    headline = "f1"
    freeze_embeddings_ok = True
    needs_labels = False
    new_head = True  # a fresh start/end head (`qa_outputs`): training.head_learning_rate applies
    file_formats = "SQuAD JSON (data/paragraphs/qas), or JSONL/CSV with context, question, answer, answer_start"
    file_extensions = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
    readout = "answer"  # attention and saliency read the predicted answer's start token

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        return prepare_qa(cfg, seed, tokenizer, raise_on_problems=raise_on_problems, max_positions=max_positions)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        """Windows with start/end labels (one example may give several rows), at the run's data.doc_stride
        (`prepare` keeps it in the frame's `doc_stride` column)."""
        import datasets

        stride = min(settings(frame)["doc_stride"], max_length // 2)
        win = make_windows(tokenizer, frame["question"].tolist(), frame["context"].tolist(), max_length, stride)
        s, e = training_labels(win, frame["answer_start"].tolist(), frame["answer"].tolist())
        cols = dict(win.columns)
        cols["start_positions"], cols["end_positions"] = s, e
        cols["length"] = [len(x) for x in cols["input_ids"]]
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer: Any) -> QACollator:
        return QACollator(tokenizer, self.model_inputs)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        import torch
        import transformers

        from ...models import _load_error, model_load_args

        path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
        mconf.num_labels = 2  # a start and an end logit per token
        name = type(mconf).__name__.replace("Config", "")
        try:
            prefix = transformers.AutoModelForQuestionAnswering._model_mapping[type(mconf)].base_model_prefix
        except (KeyError, AttributeError):
            prefix = None  # no QA head for this config: from_pretrained below says so
        if prefix and prefix != "model":
            # LlamaForQuestionAnswering keeps its body under `transformer`, but a causal LM checkpoint (SmolLM2)
            # stores it under `model.`: without this mapping transformers 5 initialises the whole body at random.
            kw["key_mapping"] = {r"^model\.": f"{prefix}."}
        try:
            model = transformers.AutoModelForQuestionAnswering.from_pretrained(
                path, config=mconf, dtype=dtype if dtype is not None else torch.float32, **kw)
        except ValueError as e:
            if "Unrecognized configuration class" in str(e):
                raise ModelError(f"{cfg.name_or_path} is a {name} model, which transformers has no question-answering "
                                 f"head for. Fix: an encoder (BERT, MiniLM, RoBERTa) or a Llama-family decoder "
                                 f"(smollm2-135m).") from None
            raise _load_error(path, cfg, e, "model") from None
        except Exception as e:
            raise _load_error(path, cfg, e, "model") from None
        if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str] = ()) -> dict[str, float]:
        (s_logits, e_logits), (s_gold, e_gold) = eval_pred.predictions, eval_pred.label_ids
        ps, pe = np.asarray(s_logits).argmax(-1), np.asarray(e_logits).argmax(-1)
        gs, ge = np.asarray(s_gold), np.asarray(e_gold)
        exact = (ps == gs) & (pe == ge)
        f1 = []
        for a, b, c, d in zip(ps, pe, gs, ge):
            inter = max(0, min(b, d) - max(a, c) + 1)
            if inter == 0 or b < a:
                f1.append(float(a == c and b == d))
                continue
            p, r = inter / (b - a + 1), inter / (d - c + 1)
            f1.append(2 * p * r / (p + r))
        return {"span_exact": float(exact.mean()), "span_f1": float(np.mean(f1))}

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 32, bf16: bool = False, progress: Any = None) -> pd.DataFrame:
        from ..classification import model_max_tokens

        max_length = min(max_length, model_max_tokens(model.config, tokenizer) or max_length)
        qa = settings(frame)
        stride = min(qa["doc_stride"], max_length // 2)
        questions, contexts = frame["question"].tolist(), frame["context"].tolist()
        win = make_windows(tokenizer, questions, contexts, max_length, stride)
        logits = window_logits(model, tokenizer, win, batch_size=batch_size, bf16=bf16, progress=progress)
        by_example: list[list[Any]] = [[] for _ in questions]
        for w, ex in enumerate(win.example):
            by_example[ex].append((logits[w][0], logits[w][1], win.offsets[w], win.null_index[w]))
        answers = [best_answer(c, ws, n_best=N_BEST, max_answer_length=qa["max_answer_length"],
                               allow_null=NO_ANSWER in labels, null_threshold=qa["null_threshold"])
                   for c, ws in zip(contexts, by_example)]
        loss = window_losses(model, tokenizer, frame, win, logits)
        return predictions_table(frame, answers, win, loss)

    def predict_texts(self, model: Any, tokenizer: Any, texts: Sequence[str], labels: list[str], *,
                      contexts: Sequence[str] | None = None, max_length: int = 384, batch_size: int = 32,
                      bf16: bool = False, doc_stride: int = 128, max_answer_length: int = 30,
                      null_threshold: float = 0.0) -> pd.DataFrame:
        """Answers to questions (`texts`) about `contexts` (one per question): `predicted`, its character span
        `start`/`end` in the context (-1 for no answer) and its score."""
        if contexts is None or len(contexts) != len(texts):
            raise DataError("question answering needs a context for each question: `workbench predict RUN "
                            "\"question\" --context \"the text that holds the answer\"` (or --context-file FILE).")
        bad = [i + 1 for i, (q, c) in enumerate(zip(texts, contexts)) if not str(q).strip() or not str(c).strip()]
        if bad:
            raise DataError(f"question/context {bad[0]} is empty: give a question and the text to find its answer in.")
        answers, _ = answer_spans(model, tokenizer, list(texts), list(contexts), max_length=max_length,
                                  doc_stride=doc_stride, max_answer_length=max_answer_length,
                                  allow_null=NO_ANSWER in labels, null_threshold=null_threshold,
                                  batch_size=batch_size, bf16=bf16)
        return pd.DataFrame({"text": list(texts), "context": list(contexts),
                             "predicted": [a.text or "(no answer)" for a in answers],
                             "start": [a.start for a in answers], "end": [a.end for a in answers],
                             "score": [round(a.score, 4) for a in answers]})

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        n = len(pred)
        if not n:
            return {"exact_match": 0.0, "f1": 0.0, "n": 0}
        has = pred["gold_answers"].map(len) > 0
        out: dict[str, Any] = {"exact_match": float(pred["exact_match"].mean()), "f1": float(pred["f1"].mean()),
                               "n": int(n), "answerable": int(has.sum()), "unanswerable": int((~has).sum()),
                               "errors": {k: int((pred["error_type"] == k).sum()) for k in ERROR_TYPES}}
        if has.any():
            out["has_answer_f1"] = float(pred.loc[has, "f1"].mean())
            out["has_answer_exact"] = float(pred.loc[has, "exact_match"].mean())
        if (~has).any():
            out["no_answer_accuracy"] = float(pred.loc[~has, "exact_match"].mean())
        if "loss" in pred:
            out["loss"] = float(pred["loss"].mean())
        sl = slices(pred)
        out["slices"] = sl.to_dict(orient="records")
        return out

    def error_report(self, pred: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
        counts = pred["error_type"].value_counts().reindex(list(ERROR_TYPES), fill_value=0)
        wrong = pred[~pred["correct"].astype(bool)].sort_values(["f1", "loss"], ascending=[True, False]).head(n)
        return {
            "errors by type": counts.rename_axis("error").reset_index(name="count"),
            f"{len(wrong)} wrong answers (lowest F1 first)": wrong[["row", "error_type", "question", "gold",
                                                                    "predicted", "f1"]],
            "slices (exact match and F1)": slices(pred),
        }

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        golds = [list(g) for g in pred["gold_answers"]]
        frame = pd.DataFrame({"question": pred["question"], "context": pred["context"], "answers": golds,
                              "answer": [g[0]["text"] if g else "" for g in golds],
                              "answer_start": [int(g[0]["answer_start"]) if g else -1 for g in golds],
                              "id": pred["id"], "line": pred["row"]})
        for c in ("relation", *SETTINGS):
            if c in pred:
                frame[c] = pred[c]
        frame.index = pred["row"].to_numpy()
        return frame

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        return frame  # answers are spans of each context: nothing to map


TASK = QuestionAnswering()
__all__ = ["ERROR_TYPES", "NO_ANSWER", "SPAN", "TASK", "QAData", "QuestionAnswering", "answer_spans", "best_answer",
           "error_kind", "highlight", "make_windows", "prepare_qa", "question_type", "read_qa", "slices"]
