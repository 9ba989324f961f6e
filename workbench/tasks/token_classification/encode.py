"""Words and their tags to sub-word tensors, and sub-word logits back to one tag per word.

The rule (Hugging Face's token-classification recipe): a word's tag goes on ONE of its sub-words; the
other pieces, and special tokens, get -100 so the loss ignores them. Labelling every piece instead
counts a long word several times and teaches the model `B-` in the middle of a word. Prediction reads
the same piece of each word back.

Which piece (`reading_piece`): the FIRST for an encoder (BERT, MiniLM), which sees the whole sentence at
every position. A decoder (Llama, SmolLM2) sees only what came before, so at a word's first piece it has
not read the word yet: byte-level BPE splits a Chinese character into two or three byte pieces, and the
first (`æ`) is shared by thousands of characters. For a decoder the tag goes on the word's LAST piece,
the first position that has read all of it.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..classification import autocast_for
from .formats import is_cjk

IGNORE = -100


def spaced(words: list[str]) -> list[str]:
    """Words as they sit in running text: a leading space wherever the sentence has one.

    Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2) spell a word differently after a space
    (`ĠBuilding`) than at the start of a text; giving each word its space makes pre-split words tokenise
    exactly like the joined sentence. WordPiece (BERT) drops the space, so this is harmless there. No
    space goes between two CJK characters, as in Chinese text.
    """
    out = []
    for i, w in enumerate(words):
        prev = words[i - 1] if i else ""
        glue = i == 0 or (prev and w and is_cjk(prev[-1]) and is_cjk(w[0]))
        out.append(w if glue else " " + w)
    return out


Piece = Literal["first", "last"]


def reading_piece(model: Any) -> Piece:
    """Where a word's tag is read: its first sub-word for an encoder, its last for a decoder (see above)."""
    from ...models import is_decoder
    return "last" if model is not None and is_decoder(model) else "first"


def word_positions(word_ids: Sequence[int | None], piece: Piece = "first") -> dict[int, int]:
    """Word index -> the position of its first (or last) sub-word."""
    out: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and (piece == "last" or w not in out):
            out[w] = pos
    return out


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], piece: Piece = "first") -> list[int]:
    """Label ids per sub-word: the word's label on its first (or last) piece, -100 elsewhere (specials too)."""
    out = [IGNORE] * len(word_ids)
    for w, pos in word_positions(word_ids, piece).items():
        out[pos] = int(word_labels[w])
    return out


def encode_words(tokens: list[list[str]], tags: list[list[str]] | None, tokenizer: Any,
                 label2id: dict[str, int] | None, max_length: int, *,
                 label_ids: list[list[int]] | None = None, piece: Piece = "first") -> dict[str, list]:
    """Tokenise pre-split sentences once, unpadded: input ids, attention mask, aligned labels (on each
    word's `piece`), `length`, and `words_cut`, how many words truncation cut off (they get no label)."""
    enc = tokenizer([spaced(t) for t in tokens], is_split_into_words=True, truncation=True, max_length=max_length)
    cols: dict[str, list] = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if label_ids is None and tags is not None and label2id is not None:
        label_ids = [[label2id.get(t, label2id["O"]) for t in seq] for seq in tags]
    labels, cut = [], []
    for i in range(len(tokens)):
        wids = enc.word_ids(i)
        cut.append(len(tokens[i]) - len({w for w in wids if w is not None}))
        if label_ids is not None:
            labels.append(align_labels(wids, label_ids[i], piece))
    if label_ids is not None:
        cols["labels"] = labels
    cols["length"] = [len(x) for x in enc["input_ids"]]
    cols["words_cut"] = cut
    return cols


@torch.inference_mode()
def predict_word_probs(model: Any, tokenizer: Any, tokens: list[list[str]], *, max_length: int = 256,
                       batch_size: int = 64, bf16: bool = False, progress: Any = None) -> list[np.ndarray]:
    """Tag probabilities per word, shape (words, tags) for each sentence, in input order; read from each
    word's `reading_piece` (first sub-word for an encoder, last for a decoder). Words cut off by
    truncation get probability 1 for tag 0 (`O`).

    Sentences are sorted by length and each batch padded only to its own longest one, the same trick
    that makes classification prediction fast on a CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    piece = reading_piece(model)
    n_labels = model.config.num_labels
    out: list[np.ndarray] = []
    for t in tokens:
        a = np.zeros((len(t), n_labels), dtype=np.float32)
        a[:, 0] = 1.0
        out.append(a)
    n = len(tokens)
    if n == 0:
        return out
    enc = tokenizer([spaced(t) for t in tokens], is_split_into_words=True, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    lengths = [len(x) for x in enc["input_ids"]]
    order = np.argsort(lengths, kind="stable")[::-1]
    budget = batch_size * max(8, int(np.median(lengths)))
    pad_left = getattr(tokenizer, "padding_side", "right") == "left"
    i = 0
    while i < n:
        k = max(1, min(n - i, budget // max(1, lengths[order[i]]), batch_size * 4))
        idx = order[i:i + k]
        batch = tokenizer.pad([{key: enc[key][j] for key in keys} for j in idx], return_tensors="pt")
        batch = {key: v.to(device) for key, v in batch.items()}
        with autocast_for(device, bf16):
            logits = model(**batch).logits
        p = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        for row, j in enumerate(idx):
            offset = p.shape[1] - lengths[j] if pad_left else 0
            for w, pos in word_positions(enc.word_ids(int(j)), piece).items():
                out[j][w] = p[row, pos + offset]
        i += k
        if progress is not None:
            progress(min(i, n), n)
    return out
