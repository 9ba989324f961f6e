"""Where a model's prediction is read ("the readout token"), for attention and saliency.

A text classifier reads one token per text ([CLS], or the last token of a decoder); a token classifier
predicts at every word, so what is explained is a chosen word's prediction, read at its first sub-word
(its last for a decoder, which has read the whole word only there; where the task trains and predicts
it). An extractive question-answering model predicts a span by a start and an end logit per token: what
is explained is the predicted answer's start token (`answer_position`), in the window that holds it.
Which of these a model is comes from its task (`Task.readout`), found from the model's head through the
task registry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import WorkbenchError

# The BIO "no entity" tag: the default readout word of a tagger is its first word tagged otherwise.
OUTSIDE = "O"
ONE_PER_TEXT = ("This model predicts one class per text, read at a fixed token; there is no token to choose. "
                "Choosing a token (--token) applies to token-classification (NER) models.")
ANSWER_READOUT = ("A question-answering model is read at the predicted answer's start token; there is no word to "
                  "choose (--token applies to token-classification models).")
NOT_QA = ("A context (--context) is for question-answering models, which find the answer to a question in it; "
          "this model reads the text alone.")


def model_task(model: Any) -> Any:
    """The registered task whose head `model` carries, from its class (`BertForTokenClassification` -> the
    task whose `auto_model` is `AutoModelForTokenClassification`); text classification when none matches."""
    from .tasks import TASKS, get_task

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a PEFT wrapper
    name = type(inner).__name__
    for task in TASKS.values():
        head = str(getattr(task, "auto_model", "")).removeprefix("AutoModel")
        if head and name.endswith(head):
            return task
    return get_task("text-classification")


def readout_kind(task: Any) -> str:
    """The task's readout: "word" (a prediction per word) if it says so (`Task.readout`), else "sequence"."""
    return "sequence" if task is None else str(getattr(task, "readout", "sequence"))


def answer_position(offsets: list[tuple[int, int] | None], start_logits: np.ndarray, start_char: int) -> int | None:
    """The token an answer starting at character `start_char` was predicted at: among the window's context
    tokens that begin at that character, the one with the highest start logit (what the best-span search
    picked; a byte-level CJK character is several pieces with the same offsets). None when no context token
    of this window begins there."""
    found = [i for i, o in enumerate(offsets) if o is not None and o[0] == start_char and i < len(start_logits)]
    return max(found, key=lambda i: float(start_logits[i])) if found else None


def answer_end_position(offsets: list[tuple[int, int] | None], end_logits: np.ndarray, start: int,
                        end_char: int) -> int | None:
    """The answer's last token: from `start` on, the context token ending at `end_char` with the highest end logit."""
    found = [i for i, o in enumerate(offsets) if o is not None and i >= start and o[1] == end_char
             and i < len(end_logits)]
    return max(found, key=lambda i: float(end_logits[i])) if found else None


def choose_readout(words: list[str], word_positions: list[int | None], word_ids: list[int | None],
                   tags: list[str | None], *, word: int | None = None,
                   position: int | None = None) -> tuple[int, int | None]:
    """(token position, word) to read a token classifier's prediction at.

    `word` (0-based) gives that word's reading piece (first sub-word; last for a decoder); `position` a
    token position directly; with neither, the first word predicted as an entity (`tags`, a tag other
    than `O`), else the first word shown.
    """
    if word is not None and position is not None:
        raise WorkbenchError("Choose a word or a token position, not both.")
    if position is not None:
        p = int(position)
        if not 0 <= p < len(word_ids):
            raise WorkbenchError(f"token position {p} does not exist: {len(word_ids)} tokens are shown "
                                 f"(0..{len(word_ids) - 1}).")
        return p, word_ids[p]
    if word is not None:
        w = int(word)
        if not 0 <= w < len(words):
            listed = " ".join(f"{i}:{t}" for i, t in enumerate(words[:12])) + (" ..." if len(words) > 12 else "")
            raise WorkbenchError(f"word {w} does not exist: the text has {len(words)} words, 0..{len(words) - 1} "
                                 f"({listed}). Fix: give a word index in that range.")
        if word_positions[w] is None:
            raise WorkbenchError(f"word {w} ({words[w]!r}) is not among the tokens shown: max_tokens or the window "
                                 f"cut it off. Fix: raise max_tokens, or choose a window that includes it.")
        return int(word_positions[w]), w
    shown = [i for i, p in enumerate(word_positions) if p is not None]
    if not shown:
        raise WorkbenchError("No word of this text is among the tokens shown; raise max_tokens or widen the window.")
    w = next((i for i in shown if tags[i] not in (None, OUTSIDE)), shown[0])
    return int(word_positions[w]), w


def word_tags(token_probs: np.ndarray, positions: list[int | None], labels: list[str]) -> list[str | None]:
    """The predicted tag at each word's position (None where the word is not shown)."""
    return [None if p is None else labels[int(np.argmax(token_probs[p]))] for p in positions]
