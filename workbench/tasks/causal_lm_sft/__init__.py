"""Supervised fine-tuning of causal LMs (`causal-lm-sft`): instructions and dialogue, judged by what it writes.

What differs from the classification tasks, all of it here: the data is conversations (`formats`: a
`messages` column, Alpaca records or prompt/completion columns, all read into message lists), an example
is the conversation in the model's own chat template with labels only on the assistant's tokens (`encode`),
the model is the pretrained LM itself (`AutoModelForCausalLM`, PEFT `CAUSAL_LM`, no new head), the metric
is held-out loss (and its perplexity), and the per-example table holds the prompt, the reference answer,
the model's greedy answer (`workbench.generate`) and the example's loss.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import DataError
from ..base import DataRole
from . import packing
from .encode import IGNORE, SFTCollator, encode_conversation, end_of_turn, template_kind
from .formats import Conversations, prompt_text, split_last_turn, to_conversations
from .scoring import generation_scores, paired_bootstrap_chrf, sentence_chrf

MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
MAX_NEW_TOKENS = 128  # the most a prediction may write when scoring a split (see `predict`)


# --- data ----------------------------------------------------------------------------------------
def load_conversations(source: str, cfg: Any) -> Conversations:
    """A file (JSONL/JSON/CSV/TSV/Parquet) read into message lists (`formats.to_conversations`)."""
    from ...assets import BUILTIN_DATASETS
    from ...data.io import read_table

    if source in BUILTIN_DATASETS and BUILTIN_DATASETS[source].task != "causal-lm-sft":
        raise DataError(f"{source} is a built-in data set for {BUILTIN_DATASETS[source].task}, not conversations. "
                        f"Give a JSONL file with `messages`, Alpaca `instruction`/`output` records, or "
                        f"prompt/completion columns.")
    table = read_table(source, delimiter=cfg.delimiter, encoding=cfg.encoding)
    builtin = BUILTIN_DATASETS.get(source) if table.format == "builtin" else None
    template = getattr(cfg, "prompt_template", None) or (builtin.prompt_template if builtin else None)
    answer = cfg.label_column or (builtin.completion_column if builtin and template else None)
    conv = to_conversations(table.df, table.source, prompt_column=cfg.text_column, completion_column=answer,
                            row_kind=table.row_kind, prompt_template=template)
    conv.warnings[:0] = table.warnings
    return conv


def _split(df: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = max(1, int(round(size * len(df))))
    test = df.sample(n=n, random_state=seed)
    return df.drop(test.index), test


def _stats(values: Sequence[int]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    if not a.size:
        return {}
    return {"mean": round(float(a.mean()), 1), "p50": int(np.percentile(a, 50)), "p95": int(np.percentile(a, 95)),
            "max": int(a.max())}


def prepare_sft(cfg: Any, seed: int = 42, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
    """Read, check, split and report conversations (the `Task.prepare` of causal-lm-sft)."""
    from ...data.prepare import PreparedData, _finish, cap_max_length
    from ...data.report import DataReport

    cfg, capped = cap_max_length(cfg, max_positions, "conversations are cut at {n} tokens instead.")
    data = load_conversations(cfg.source, cfg)
    rep = DataReport(source=str(cfg.source), format=data.format, columns_found=list(map(str, data.frame.columns)),
                     rows_read=len(data.frame), row_kind="line" if data.frame.index.name == "line" else "row",
                     warnings=capped + data.warnings, problems=list(data.problems))
    rep.columns = dict(data.columns)
    frames: dict[str, pd.DataFrame] = {}
    df = data.frame
    if "split" in df:
        for s in ("train", "validation", "test"):
            if (df["split"] == s).any():
                frames[s] = df[df["split"] == s].drop(columns="split")
    else:
        frames["train"] = df
    for role, src in (("validation", cfg.validation_source), ("test", cfg.test_source)):
        if src:
            other = load_conversations(src, cfg)
            rep.warnings += [f"{role} file: {w}" for w in other.warnings]
            rep.problems += [f"{role} file: {p}" for p in other.problems]
            rep.rows_read += len(other.frame)
            frames[role] = other.frame
    empty = PreparedData(*(pd.DataFrame(),) * 3, labels=[], report=rep)
    if rep.problems:
        return _finish(empty, raise_on_problems)
    train = frames["train"]
    if len(train) < 2:
        rep.problems.append(f"{cfg.source}: {len(train)} conversation(s), too few to train on and hold some out. "
                            f"Fix: give more (hundreds), or data.validation_source / data.test_source files.")
        return _finish(empty, raise_on_problems)
    if "test" not in frames and cfg.test_size > 0:
        train, frames["test"] = _split(train, cfg.test_size, seed)
    if "validation" not in frames and cfg.validation_size > 0:
        train, frames["validation"] = _split(train, cfg.validation_size / (1 - cfg.test_size) if "test" not in
                                             frames else cfg.validation_size, seed)
    frames["train"] = train
    for s in ("validation", "test"):
        frames.setdefault(s, train.iloc[:0])
    if cfg.max_train_samples and len(frames["train"]) > cfg.max_train_samples:
        frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=seed)
    for s in ("validation", "test"):
        if cfg.max_eval_samples and len(frames[s]) > cfg.max_eval_samples:
            frames[s] = frames[s].sample(n=cfg.max_eval_samples, random_state=seed)
    _describe(rep, frames, cfg, tokenizer)
    return _finish(PreparedData(frames["train"], frames["validation"], frames["test"], [], rep, [],
                                max_length=cfg.max_length), raise_on_problems)


def _describe(rep: Any, frames: dict[str, pd.DataFrame], cfg: Any, tokenizer: Any) -> None:
    """The data report's findings: turns, token lengths of prompts and answers, truncation, template problems."""
    from ...data.prepare import _first as _rows  # "1, 2, 3 and 9 more", as classification's report lists rows
    from ...data.report import token_length_stats

    rep.rows_used = sum(len(f) for f in frames.values())
    rep.split_sizes = {s: len(f) for s, f in frames.items()}
    turns = [sum(m["role"] != "system" for m in c) for c in frames["train"]["messages"]]
    rep.details = {"turns": _stats(turns), "multi_turn": int(sum(t > 2 for t in turns)),
                   "with_system": int(sum(c[0]["role"] == "system" for c in frames["train"]["messages"]))}
    keys = {s: f["messages"].map(lambda c: json.dumps(c, ensure_ascii=False, sort_keys=True))
            for s, f in frames.items()}
    train_keys = set(keys["train"])
    for s in ("validation", "test"):
        rep.leakage[s] = int(keys[s].isin(train_keys).sum())
        if rep.leakage[s]:
            rep.warnings.append(f"leakage: {rep.leakage[s]} {s} conversation(s) also appear in train.")
    rep.duplicates = int(keys["train"].duplicated().sum())
    rep.warnings += repeated_answers(frames["train"], rep.row_kind)
    if tokenizer is None:
        return
    eot = end_of_turn(tokenizer)
    rep.details.update(template=template_kind(tokenizer), end_of_turn=eot)
    if template_kind(tokenizer) == "fallback":
        rep.warnings.append("the tokenizer has no chat template: conversations use the workbench's plain one "
                            "(`role:` line, then the text; an answer ends with the EOS token). A chat model's own "
                            "template is better; set tokenizer.chat_template to use another.")
    lengths, prompts, answers, cut, too_long, refused = [], [], [], [], [], []
    for s, f in frames.items():
        for row, msgs in zip(f.index, f["messages"]):
            try:
                e = encode_conversation(tokenizer, msgs, cfg.max_length, eot)
            except Exception as err:  # noqa: BLE001 - a template's own error (jinja's raise_exception) is data
                refused.append((s, row, str(err).splitlines()[0][:160] if str(err) else type(err).__name__))
                continue
            if s == "train":
                lengths.append(e.length)
                prompts.append(e.prompt_tokens)
                answers.append(e.answer_tokens)
            if e.too_long:
                too_long.append((s, row, e.answer_tokens))
            elif e.cut:
                cut.append((s, row))
    rep.token_lengths = token_length_stats(lengths, cfg.max_length, getattr(tokenizer, "name_or_path", ""))
    rep.details.update(prompt_tokens=_stats(prompts), answer_tokens=_stats(answers),
                       truncated=len(cut), truncated_rows=[f"{s}:{r}" for s, r, *_ in cut[:200]])
    kind = rep.row_kind
    if refused:
        rep.problems.append(f"the chat template refused {len(refused)} conversation(s): {kind} "
                            f"{_rows([f'{r} ({s})' for s, r, _ in refused])}; e.g. {refused[0][2]!r}. Fix: make them "
                            f"follow the turn order and roles this model's template accepts.")
    if too_long:
        rep.problems.append(f"{len(too_long)} conversation(s) whose last answer alone is longer than "
                            f"data.max_length={cfg.max_length} tokens ({kind} "
                            f"{_rows([f'{r} ({s}, {n} answer tokens)' for s, r, n in too_long])}): truncation "
                            f"would cut into the answer. Fix: raise data.max_length to at least "
                            f"{max(n for *_, n in too_long) + 1}, or shorten or drop those rows.")
    if cut:
        rep.warnings.append(f"{len(cut)} conversation(s) are longer than data.max_length={cfg.max_length} tokens "
                            f"({kind} {_rows([f'{r} ({s})' for s, r in cut])}): their oldest tokens (the left side "
                            f"of the prompt) are dropped so the last answer stays whole. Raise data.max_length to "
                            f"keep them.")


def repeated_answers(train: pd.DataFrame, kind: str = "row", share: float = 0.01, least: int = 5) -> list[str]:
    """Warnings for one answer given to many different prompts (at least `least` and `share` of the training
    conversations): a stand-in such as `placeholder` or `N/A`, or a canned reply, which the model learns to say."""
    from ...data.prepare import _first as _rows

    if train.empty:
        return []
    answers = train["messages"].map(lambda c: " ".join(str(c[-1]["content"]).split()).lower())
    prompts = train["messages"].map(lambda c: json.dumps(c[:-1], ensure_ascii=False, sort_keys=True))
    out = []
    for answer, n in answers.value_counts().items():
        if n < max(least, share * len(train)):
            break
        same = answers == answer
        if prompts[same].nunique() > 1:
            out.append(f"{n} training conversations ({n / len(train):.1%}) have the same answer {answer[:60]!r} to "
                       f"different prompts ({kind} {_rows(list(train.index[same]))}): if it is a stand-in for a "
                       f"missing answer, drop those rows, or the model learns to say it.")
    return out[:5]


# --- the task ------------------------------------------------------------------------------------
def _example_losses(model: Any, tokenizer: Any, encoded: list[Any], batch_size: int, bf16: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean loss over its answer tokens (teacher-forced) and its count of answer tokens."""
    from ..classification import autocast_for

    device = next(model.parameters()).device
    collate = SFTCollator(tokenizer)
    order = np.argsort([len(e.input_ids) for e in encoded], kind="stable")[::-1]
    loss, count = np.zeros(len(encoded)), np.zeros(len(encoded), dtype=int)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = collate([{"input_ids": encoded[j].input_ids, "labels": encoded[j].labels} for j in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_for(device, bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total, n = token_nll(logits, batch["labels"])
            loss[idx] = (total / n.clamp(min=1)).cpu().numpy()
            count[idx] = n.cpu().numpy()
    return loss, count


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token negative log-likelihood over labelled positions, and their count (the
    causal-LM loss: position t predicts label t+1, as `model(labels=...)` computes it). Logits longer than the
    labels come from prompt tuning (peft prepends the soft prompt's positions): the text's are the last ones."""
    logits = logits[:, logits.shape[1] - labels.shape[1]:]
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE,
                                            reduction="none").view(lb.shape)
    return nll.sum(1), (lb != IGNORE).sum(1)


class CausalLMSFT:
    name = "causal-lm-sft"
    description = "Instruction and dialogue fine-tuning of a causal LM (Llama): learn the assistant's answers."
    roles = (
        DataRole("messages", None, False, "a list of {role, content} turns (system, user, assistant) per example; "
                 "or Alpaca `instruction`/`input`/`output`; or the two columns below"),
        DataRole("prompt", "text_column", False, "the user's prompt (guessed: prompt, question, input, ...)"),
        DataRole("completion", "label_column", False, "the answer to learn (guessed: completion, response, "
                 "answer, output, ...)"),
    )
    model_inputs = MODEL_INPUTS
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    directions = {"loss": False, "perplexity": False, "chrf": True, "bleu": True, "rouge1": True, "rouge2": True,
                  "rougeL": True, "exact_match": True}
    # What a validation pass computes (no generation during training): the others are test-split scores.
    validation_metrics = ("loss", "perplexity")
    headline = "loss"
    # The LM head of Llama/SmolLM2 shares its weight with the input embeddings: freezing them would freeze the
    # output layer, the one layer every answer token goes through. Tied embeddings, decided here: kept tied. Full
    # fine-tuning trains the one matrix (SmolLM2: 49,152 x 576 = 28.3M of 134.5M parameters, 113 MB in fp32) and
    # save_pretrained writes it once, re-tied on load; LoRA leaves it frozen (tests/test_sft_tied.py, README).
    freeze_embeddings_ok = False
    needs_labels = False  # labels.json is []: nothing to classify
    reads_prompt_template = True  # `data.prompt_template` makes its prompts (RunConfig.validate asks)
    file_formats = "JSONL with `messages`, Alpaca JSON/JSONL, prompt/completion CSV/TSV/JSONL/Parquet"
    file_extensions = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

    def prepare(self, cfg: Any, seed: int, tokenizer: Any = None, *, raise_on_problems: bool = True,
                max_positions: int | None = None) -> Any:
        return prepare_sft(cfg, seed, tokenizer, raise_on_problems=raise_on_problems, max_positions=max_positions)

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Any:
        import datasets

        eot = end_of_turn(tokenizer)
        cols: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
        for row, msgs in zip(frame.index, frame["messages"]):
            e = encode_conversation(tokenizer, msgs, max_length, eot)
            if e.too_long:
                raise DataError(f"row {row}: the last answer alone ({e.answer_tokens} tokens) is longer than "
                                f"max_length={max_length}. Fix: raise data.max_length, or drop the row.")
            cols["input_ids"].append(e.input_ids)
            cols["attention_mask"].append([1] * len(e.input_ids))
            cols["labels"].append(e.labels)
            cols["length"].append(len(e.input_ids))
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer: Any) -> SFTCollator:
        return SFTCollator(tokenizer)  # one conversation per row, or packed rows (`packing`)

    def pack(self, dataset: Any, max_length: int) -> tuple[Any, dict[str, Any]]:
        """`data.packing`: the encoded training conversations packed into rows of up to `max_length` tokens
        without attention across them (`packing.pack`), and what packing did."""
        return packing.pack(dataset, max_length)

    def load_model(self, cfg: Any, labels: list[str], *, tokenizer: Any = None, attn_implementation: str | None = None,
                   dtype: Any = None) -> Any:
        """The pretrained causal LM as is: its own LM head, nothing new (`labels` is unused)."""
        import transformers

        from ...models import _load_error, model_load_args

        path, mconf, kw = model_load_args(cfg, tokenizer, attn_implementation)
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(
                path, config=mconf, dtype=dtype if dtype is not None else torch.float32, **kw)
        except Exception as e:
            raise _load_error(path, cfg, e, "model") from None

    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Validation keeps (summed loss, answer tokens) per example instead of the logits: a batch of logits
        is examples x tokens x vocabulary (49,152 for SmolLM2), far too big to gather over a split."""
        if isinstance(logits, tuple):
            logits = logits[0]
        total, n = token_nll(logits, labels)
        return torch.stack([total, n.float()], dim=1)

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str] = ()) -> dict[str, float]:
        sums = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 2)
        loss = sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)
        return {"perplexity": float(math.exp(min(loss, 50.0)))}

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *, max_length: int,
                batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """The per-example table: prompt, reference (the last assistant turn), the model's greedy answer to the
        conversation before it, and the example's loss over all its answer tokens (teacher-forced)."""
        from ...generate import generate_answers

        eot = end_of_turn(tokenizer)
        msgs = [list(m) for m in frame["messages"]]
        encoded = [encode_conversation(tokenizer, m, max_length, eot) for m in msgs]
        ok = [not e.too_long for e in encoded]
        loss, count = np.full(len(msgs), np.nan), np.zeros(len(msgs), dtype=int)
        keep = [e for e, k in zip(encoded, ok) if k]
        if keep:
            ls, cs = _example_losses(model, tokenizer, keep, batch_size, bf16)
            loss[np.flatnonzero(ok)], count[np.flatnonzero(ok)] = ls, cs
        prompts, refs = zip(*(split_last_turn(m) for m in msgs)) if msgs else ((), ())
        # Generation stops at the end of the turn; the cap only bounds a model that never ends its turn
        # (an untrained one), at twice the longest reference: anything longer is wrong by then.
        longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs), default=1)
        answers = generate_answers(model, tokenizer, list(prompts), sampling=answer_sampling(longest),
                                   max_length=max_length, batch_size=min(batch_size, 32), bf16=bf16)
        return answer_table(frame, msgs, [prompt_text(p) for p in prompts], list(refs), answers, loss, count)

    def predict_texts(self, model: Any, tokenizer: Any, texts: Sequence[str], labels: list[str], *,
                      max_length: int = 256, batch_size: int = 16, bf16: bool = False) -> pd.DataFrame:
        """Greedy answers to raw prompts (`workbench predict RUN "prompt"`), one user turn each."""
        from ...generate import Sampling, as_conversation, generate_answers

        answers = generate_answers(model, tokenizer, [as_conversation(t) for t in texts],
                                   sampling=Sampling(max_new_tokens=MAX_NEW_TOKENS), max_length=max_length,
                                   batch_size=batch_size, bf16=bf16)
        return pd.DataFrame({"text": list(texts), "predicted": answers})

    def error_report(self, pred: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
        """What `workbench errors` prints for a causal-lm-sft run: the answers the model found least likely
        (highest loss), and slices by number of turns, prompt and reference length and the user's columns."""
        cols = [c for c in ("row", "loss", "chrf", "gold", "predicted", "text") if c in pred]
        worst = pred.sort_values("loss", ascending=False).head(n)[cols]
        return {f"{len(worst)} answers with the highest loss": worst,
                "slices (loss per answer token, mean sentence chrF, exact match)": answer_slices(pred)}

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        """Held-out loss per answer token (every answer token of the split counts once), its perplexity,
        corpus chrF and BLEU and mean ROUGE-1/2/L of the greedy answers (`scoring`), and the share generated
        exactly (whitespace aside)."""
        n_tok = pred["answer_tokens"].to_numpy(dtype=float)
        ok = ~pred["loss"].isna().to_numpy()
        loss = float((pred["loss"].to_numpy()[ok] * n_tok[ok]).sum() / max(n_tok[ok].sum(), 1.0)) if ok.any() else None
        return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0))) if loss is not None else None,
                **generation_scores(pred["predicted"].astype(str).tolist(), pred["gold"].astype(str).tolist()),
                "exact_match": float(pred["correct"].mean()) if len(pred) else 0.0, "n": int(len(pred)),
                "answer_tokens": int(n_tok[ok].sum())}

    def compare_before_after(self, before: pd.DataFrame, after: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
        """The tuned-minus-base corpus chrF on the same test prompts, with its paired bootstrap 95% interval
        (`scoring.paired_bootstrap_chrf`); rows are matched by their source row."""
        b = before.set_index("row")
        a = after.set_index("row")
        rows = [r for r in a.index if r in b.index]
        return paired_bootstrap_chrf(b.loc[rows, "predicted"].astype(str).tolist(),
                                     a.loc[rows, "predicted"].astype(str).tolist(),
                                     a.loc[rows, "gold"].astype(str).tolist(), seed=seed)

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        extra = [c for c in pred.columns if c not in ("row", "text", "gold", "predicted", "loss", "answer_tokens",
                                                      "chrf", "correct", "turns", "messages")]
        frame = pred[extra].copy()
        frame["messages"] = [list(m) for m in pred["messages"]]
        frame.index = pred["row"].to_numpy()
        return frame

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        return frame  # no labels: any conversations can be scored by any causal LM


def answer_sampling(longest_reference: int) -> Any:
    """Greedy decoding for scoring a split: generation stops at the end of the turn (or EOS); the cap only
    bounds a model that never ends it, at twice the longest reference (anything longer is wrong by then)."""
    from ...generate import Sampling

    return Sampling(max_new_tokens=int(min(MAX_NEW_TOKENS, max(16, 2 * longest_reference + 8))))


def answer_table(frame: pd.DataFrame, msgs: list[Any], texts: list[str], refs: list[str], answers: list[str],
                 loss: np.ndarray, count: np.ndarray) -> pd.DataFrame:
    """The per-example predictions table of a text-writing task (causal-lm-sft, seq2seq): the prompt shown,
    reference, answer, teacher-forced loss, sentence chrF, exact match, turns, and the data's other columns."""
    out = pd.DataFrame({"row": frame.index.to_numpy(), "text": texts, "gold": refs, "predicted": answers,
                        "loss": loss, "answer_tokens": count, "chrf": sentence_chrf(answers, refs),
                        "correct": [_norm(a) == _norm(r) for a, r in zip(answers, refs)],
                        "turns": [sum(m["role"] != "system" for m in c) for c in msgs], "messages": msgs})
    for c in frame.columns:
        if c not in ("messages",) and c not in out:
            out[c] = frame[c].to_numpy()
    return out


def answer_slices(pred: pd.DataFrame, max_values: int = 20) -> pd.DataFrame:
    """Loss, sentence chrF and exact match by turns, prompt length, reference length (words) and each user
    column with at most `max_values` values; worst loss first within each slice."""
    def words(s: Any) -> int:
        return len(str(s).split())

    def bucket(n: int) -> str:
        return "<=5" if n <= 5 else "6-15" if n <= 15 else "16-40" if n <= 40 else ">40"

    dims = {"turns": pred["turns"].map(lambda t: "one exchange" if t <= 2 else f"{(t + 1) // 2} exchanges")
            if "turns" in pred else None,
            "prompt words": pred["text"].map(lambda s: bucket(words(s))),
            "reference words": pred["gold"].map(lambda s: bucket(words(s)))}
    known = {"row", "text", "gold", "predicted", "loss", "answer_tokens", "chrf", "correct", "turns", "messages"}
    for c in pred.columns:
        if c not in known and pred[c].map(lambda v: isinstance(v, (str, int, bool))).all() and \
                pred[c].nunique() <= max_values:
            dims[str(c)] = pred[c].astype(str)
    rows = []
    tok = pred["answer_tokens"].to_numpy(dtype=float)
    for dim, values in dims.items():
        if values is None:
            continue
        for val, idx in values.groupby(values).groups.items():
            p, t = pred.loc[idx], tok[pred.index.get_indexer(idx)]
            ok = ~p["loss"].isna().to_numpy()
            rows.append({"slice": dim, "value": val, "n": len(p),
                         "loss": float((p["loss"].to_numpy()[ok] * t[ok]).sum() / max(t[ok].sum(), 1.0)),
                         "chrf": float(p["chrf"].mean()) if "chrf" in p else float("nan"),
                         "exact_match": float(p["correct"].astype(bool).mean())})
    out = pd.DataFrame(rows, columns=["slice", "value", "n", "loss", "chrf", "exact_match"])
    return out.sort_values(["slice", "loss"], ascending=[True, False]).reset_index(drop=True)


def _norm(s: Any) -> str:
    return " ".join(str(s).split())


TASK = CausalLMSFT()
__all__ = ["TASK", "CausalLMSFT", "answer_slices", "load_conversations", "prepare_sft", "token_nll"]
