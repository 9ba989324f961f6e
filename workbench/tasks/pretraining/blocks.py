"""Documents to training rows: fixed blocks of token ids, and BERT's sentence pairs for next-sentence prediction.

Causal LM: every document is tokenised (no special tokens), followed by the end-of-text token, and the
token stream is cut into blocks of `max_length` tokens: blocks cross document boundaries (the end-of-text
token between documents tells the model one ended, as GPT-2 and Llama were trained), and the last, shorter
block is kept, so no token is lost (`tests/test_pretraining.py` counts them). Masked LM: the same stream with
[SEP] between documents, cut into `max_length - 2` tokens and wrapped in [CLS] ... [SEP].

Rows are written to an Arrow file in chunks and memory-mapped (`datasets.Dataset.from_file`), so memory
stays flat however big the corpus: the file is cached under the workbench cache, named by a fingerprint of
the documents, the tokenizer and the settings.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from .corpus import doc_texts

BLOCKS_FORMAT = 2         # bump whenever the rows built from the same documents change (names the cache files)
BATCH_DOCS = 256          # documents tokenised per call of the (fast, batched) tokenizer
BATCH_CHARS = 1 << 18     # ... or fewer, once they hold this many (a fast tokenizer holds ~200 bytes a character)
CHUNK_ROWS = 2048         # rows per Arrow record batch written
END_OF_TEXT = ("<|endoftext|>", "</s>", "<|end_of_text|>")


def end_of_text_id(tokenizer: Any) -> int:
    """The token put between documents for a causal LM: the vocabulary's `<|endoftext|>` (GPT-2, SmolLM2),
    `</s>` or `<|end_of_text|>` (Llama 3) when it has one, else its EOS token."""
    vocab = tokenizer.get_vocab()
    for t in END_OF_TEXT:
        if t in vocab:
            return int(vocab[t])
    if tokenizer.eos_token_id is None:
        from ...errors import ModelError
        raise ModelError("this tokenizer has no end-of-text or EOS token to put between documents. Fix: use the "
                         "model's own tokenizer, or set tokenizer.eos_token.")
    return int(tokenizer.eos_token_id)


def token_stream(tokenizer: Any, texts: Iterable[str], *, offsets: bool = False) -> Iterator[Any]:
    """Token ids of each text (no special tokens), in batches of `BATCH_DOCS` texts or `BATCH_CHARS` characters;
    with `offsets`, (ids, offsets)."""
    batch: list[str] = []

    def flush() -> Iterator[Any]:
        enc = tokenizer(batch, add_special_tokens=False, truncation=False, return_attention_mask=False,
                        return_offsets_mapping=offsets)
        for i, ids in enumerate(enc["input_ids"]):
            yield (ids, [tuple(o) for o in enc["offset_mapping"][i]]) if offsets else ids

    size = 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if len(batch) == BATCH_DOCS or size >= BATCH_CHARS:  # long documents: fewer per call, memory stays flat
            yield from flush()
            batch, size = [], 0
    if batch:
        yield from flush()


def causal_blocks(docs: Iterable[list[int]], block: int, eot: int) -> Iterator[list[int]]:
    """Documents joined with `eot` after each and cut into `block`-token rows; the last row may be shorter."""
    buf: list[int] = []
    for ids in docs:
        buf.extend(ids)
        buf.append(eot)
        while len(buf) >= block:
            yield buf[:block]
            del buf[:block]
    if buf:
        yield buf


def mlm_blocks(docs: Iterable[Any], block: int, cls: int, sep: int, *, offsets: bool = False) -> Iterator[dict]:
    """Documents joined with [SEP] and cut into rows of [CLS] + `block - 2` tokens + [SEP]; the last may be
    shorter. With `offsets` (whole-word masking), each token's character offsets in its document ((0, 0) for
    special tokens) travel along, so the collator can tell which pieces form one word."""
    body = block - 2
    ids_buf: list[int] = []
    off_buf: list[tuple[int, int]] = []

    def row(ids: list[int], offs: list[tuple[int, int]]) -> dict:
        r = {"input_ids": [cls, *ids, sep], "special_tokens_mask": [1, *(int(t in (cls, sep)) for t in ids), 1]}
        if offsets:
            r["offset_mapping"] = [(0, 0), *offs, (0, 0)]
        return r

    first = True
    for d in docs:
        ids, offs = d if offsets else (d, [])
        if not first:
            ids_buf.append(sep)
            off_buf.append((0, 0))
        first = False
        ids_buf.extend(ids)
        off_buf.extend(offs if offsets else ())
        while len(ids_buf) >= body:
            yield row(ids_buf[:body], off_buf[:body])
            del ids_buf[:body]
            del off_buf[:body]
    if ids_buf:
        yield row(ids_buf, off_buf)


_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])[\"'”’)\]]*\s+|(?<=[。！？；])")


def sentences(text: str) -> list[str]:
    """A document cut into sentences: after . ! ? ; followed by space, and after Chinese 。！？； (no space)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def nsp_pairs(docs: list[list[list[int]]], block: int, cls: int, sep: int, seed: int) -> Iterator[dict]:
    """BERT's next-sentence pairs from documents given as lists of tokenised sentences.

    Walking each document, segment A takes sentences until it holds about half of the `block - 3` budget (at
    least one); with probability 1/2 segment B is the sentences that really follow (label 0, "is next"), else
    sentences from a random other document (label 1, "random"), as in Devlin et al. (2019). Both kinds consume the
    same text (A and its real continuation) and an A with nothing after it makes no pair, so the coin alone
    sets the balance: half the pairs are random.
    The pair is cut longest-first to fit. Needs the
    documents in memory (NSP is meant for corpora of modest size; the report says how many pairs were made).
    """
    rng = random.Random(seed)
    budget = block - 3
    n_docs = len(docs)
    for d, sents in enumerate(docs):
        i = 0
        while i < len(sents):
            a: list[int] = []
            j = i
            while j < len(sents) and (not a or len(a) + len(sents[j]) <= budget // 2):
                a.extend(sents[j])
                j += 1
            following = j < len(sents)
            if not following:
                break  # nothing follows A: no pair either way (a random B only here would tip the balance)
            is_next = rng.random() < 0.5 or n_docs < 2
            b = []  # the real continuation: B of an "is next" pair; skipped past by a "random" one too
            while j < len(sents) and (not b or len(a) + len(b) + len(sents[j]) <= budget):
                b.extend(sents[j])
                j += 1
            label, nxt = 0, j
            if not is_next:  # same text consumed either way, so the coin alone sets the balance
                other = rng.randrange(n_docs - 1)
                other += other >= d
                o = docs[other]
                k = rng.randrange(len(o)) if o else 0
                b = [t for s in o[k:] for t in s][: budget - min(len(a), budget // 2)]
                label = 1
            a, b = _truncate_pair(a, b, budget)
            if a and b:
                yield {"input_ids": [cls, *a, sep, *b, sep], "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                       "special_tokens_mask": [1, *([0] * len(a)), 1, *([0] * len(b)), 1],
                       "next_sentence_label": label}
            i = max(nxt, i + 1)


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


# --- Arrow rows on disk ------------------------------------------------------------------------------
def cache_dir() -> Path:
    from ...paths import assets_dir

    d = assets_dir().parent / "corpus_blocks"
    d.mkdir(parents=True, exist_ok=True)
    return d


def fingerprint(frame: pd.DataFrame, tokenizer: Any, *parts: Any) -> str:
    """Names a block file: the documents (their text hashes and, for files, path, size and mtime), the
    tokenizer (name, vocabulary size, a digest of its vocabulary) and the settings."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(frame["hash"].to_numpy(dtype=np.int64)).tobytes())
    if "file" in frame:
        for f in frame["file"].cat.categories if hasattr(frame["file"], "cat") else sorted(set(frame["file"])):
            try:
                st = os.stat(f)
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(str(f).encode())
    vocab = tokenizer.get_vocab()
    h.update(f"{getattr(tokenizer, 'name_or_path', '')}|{len(vocab)}|{type(tokenizer).__name__}".encode())
    h.update(hashlib.sha256("\n".join(sorted(vocab)).encode("utf-8", "replace")).digest())
    h.update(repr((BLOCKS_FORMAT, *parts)).encode())
    return h.hexdigest()[:24]


def write_rows(rows: Iterator[dict], path: Path) -> int:
    """Stream dict rows into an Arrow IPC stream file (the format `datasets.Dataset.from_file` maps), chunk by
    chunk; returns the number of rows. Written to a temporary name and renamed, so a crash leaves no half file."""

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    writer = None
    try:
        chunk: list[dict] = []
        for r in rows:
            r = {**r, "length": len(r["input_ids"])}
            chunk.append(r)
            if len(chunk) == CHUNK_ROWS:
                writer = _write_chunk(chunk, tmp, writer)
                n += len(chunk)
                chunk = []
        if chunk or writer is None:
            writer = _write_chunk(chunk, tmp, writer, empty_ok=True)
            n += len(chunk)
        writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


_SCHEMA_TYPES = {"input_ids": "int32", "special_tokens_mask": "int8", "token_type_ids": "int8", "labels": "int32"}


def _write_chunk(chunk: list[dict], tmp: Path, writer: Any, empty_ok: bool = False) -> Any:
    import pyarrow as pa

    keys = list(chunk[0]) if chunk else ["input_ids", "length"]
    fields = []
    for k in keys:
        if k in _SCHEMA_TYPES:
            fields.append(pa.field(k, pa.list_(getattr(pa, _SCHEMA_TYPES[k])())))
        elif k == "offset_mapping":
            fields.append(pa.field(k, pa.list_(pa.list_(pa.int32(), 2))))
        elif k == "mlm_probability":
            fields.append(pa.field(k, pa.float32()))
        else:
            fields.append(pa.field(k, pa.int64()))
    schema = pa.schema(fields)
    if writer is None:
        writer = pa.ipc.new_stream(str(tmp), schema)
    table = pa.Table.from_pylist([{k: (list(map(list, r[k])) if k == "offset_mapping" else r[k]) for k in keys}
                                  for r in chunk], schema=schema)
    writer.write_table(table)
    return writer


def dataset_from_rows(make_rows: Any, key: str) -> Any:
    """The memory-mapped `datasets.Dataset` of the rows `make_rows()` yields, built once per `key`."""
    import datasets

    path = cache_dir() / f"{key}.arrow"
    if not path.exists():
        write_rows(make_rows(), path)
    return datasets.Dataset.from_file(str(path))


def doc_token_ids(tokenizer: Any, frame: pd.DataFrame, encoding: str = "utf-8", *,
                  offsets: bool = False) -> Iterator[Any]:
    return token_stream(tokenizer, doc_texts(frame, encoding), offsets=offsets)
