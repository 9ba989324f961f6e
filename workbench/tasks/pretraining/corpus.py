"""A corpus of documents for continued pre-training, read in one streaming pass.

Sources: a `.txt`/`.md` file or a folder of them (documents split per `data.document_split`), a table
(JSONL/JSON/CSV/TSV/Parquet, a built-in corpus) with a text column. Text files are never held in memory:
the pass keeps, per document, its file, byte offsets, character count and a 64-bit hash of its text, and
the documents are read again by offset when they are tokenised (`doc_texts`). So a 200 MB file costs about
40 bytes per document, not 200 MB (benchmarks/bench_corpus.py measures it).

Splits: a table's `split` column (a built-in's own), `data.validation_source`/`test_source`, else by the
hash of each document's text mixed with the seed, so repeated documents land in the same split and
validation never holds a copy of a training document.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ...errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")
MAX_HELD_OUT = 2000   # validation/test documents when data.max_eval_samples is empty (each is scored one by one)
EXACT_TOKENS_CHARS = 20_000_000  # up to this many characters the report tokenises everything; above, a sample
_SAMPLE_DOCS = 4000


@dataclass
class Corpus:
    """Documents as a frame (index: document number from 1): `text`, or `file`/`start`/`end` byte offsets for
    text files; `chars`, `hash`, and a table's other columns (kept for slices)."""

    frame: pd.DataFrame
    source: str
    format: str
    files: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def text_hash(b: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)


def _binary_reason(head: bytes) -> str | None:
    from ...data.io import _MAGIC

    what = next((desc for magic, desc in _MAGIC if head.startswith(magic)), None)
    if what:
        return f"it looks like {what}"
    nul = head.find(b"\x00")
    if nul >= 0:
        return f"it holds a NUL byte at byte {nul}"
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13) or b == 127)
    if control > max(2, len(head) // 20):
        return f"{control} of its first {len(head)} bytes are control characters"
    return None


def _scan_text_file(path: Path, file_no: int, mode: str, encoding: str, cols: dict[str, array]) -> None:
    """Append one row per document of `path` to `cols` (file number, start, end, chars, hash: 8-byte arrays, not
    Python lists, so memory grows by 40 bytes a document), streaming by line."""
    pos, start, parts = 0, None, []
    bom = b"\xef\xbb\xbf"

    def close(end: int) -> None:
        raw = b"".join(parts).strip()
        if raw:
            try:
                n = len(raw.decode(encoding))
            except UnicodeDecodeError as e:
                line = sum(p.count(b"\n") for p in parts)
                raise DataError(f"{path.name}: not valid {encoding} text (bad byte 0x{raw[e.start]:02x} in the "
                                f"document at byte {start}, {line} line(s) in). Fix: save it as UTF-8, or set "
                                f"data.encoding to its encoding (e.g. gbk, cp1252).") from None
            cols["file"].append(file_no)
            cols["start"].append(start)
            cols["end"].append(end)
            cols["chars"].append(n)
            cols["hash"].append(text_hash(raw))

    with open(path, "rb") as f:
        for line in f:
            if pos == 0 and line.startswith(bom):
                pos, line = len(bom), line[len(bom):]
            end = pos + len(line)
            blank = not line.strip()
            if mode == "line":
                if not blank:
                    start, parts = pos, [line]
                    close(end)
            elif mode == "paragraph" and blank:
                if start is not None:
                    close(pos)
                start, parts = None, []
            else:
                if start is None:
                    start, parts = pos, []
                parts.append(line)
            pos = end
        if start is not None and mode != "line":
            close(pos)


def read_corpus(source: str, cfg: Any) -> Corpus:
    """The documents of `source` (see the module docstring); problems are collected, not raised, except a file
    that cannot be decoded."""
    from ...assets import BUILTIN_DATASETS

    if source in BUILTIN_DATASETS and not Path(source).exists():
        b = BUILTIN_DATASETS[source]
        if b.task != "corpus":
            corpora = ", ".join(k for k, v in BUILTIN_DATASETS.items() if v.task == "corpus")
            raise DataError(f"{source} is a built-in data set for {b.task}, not a text corpus. Corpora: {corpora}; "
                            f"or give a .txt file, a folder of .txt files, or a JSONL/CSV file with a text column.")
        return _table_corpus(source, cfg)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"corpus {source!r} not found: give a .txt file, a folder of .txt files, a JSONL/CSV/Parquet "
                        f"file with a text column, or a built-in corpus "
                        f"({', '.join(k for k, v in BUILTIN_DATASETS.items() if v.task == 'corpus')}).")
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return _table_corpus(str(path), cfg)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        mode = "file" if cfg.document_split == "auto" else cfg.document_split
        if not files:
            others = sorted(p.name for p in path.iterdir())[:8]
            raise DataError(f"{source} holds no text files ({', '.join(TEXT_SUFFIXES)})"
                            f"{': found ' + ', '.join(others) if others else ': it is empty'}. Fix: put the corpus "
                            f"there as .txt files (UTF-8), or give a JSONL/CSV file with a text column.")
    else:
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise DataError(f"{path.name}: a corpus is a text file ({', '.join(TEXT_SUFFIXES)}), a folder of them, "
                            f"or a table ({', '.join(TABLE_SUFFIXES)}); {path.suffix or 'no extension'!r} is "
                            f"neither. Fix: rename it if it is plain text.")
        files = [path]
        mode = "paragraph" if cfg.document_split == "auto" else cfg.document_split
    cols = {k: array("q") for k in ("file", "start", "end", "chars", "hash")}
    corpus = Corpus(pd.DataFrame(), str(source), "text folder" if path.is_dir() else "text",
                    encoding=cfg.encoding or "utf-8")
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8192)
        why = _binary_reason(head)
        if why:
            corpus.skipped.append(f"{f.name}: {why}")
            continue
        _scan_text_file(f, len(corpus.files), mode, corpus.encoding, cols)
        corpus.files.append(str(f))
    if corpus.skipped:
        corpus.warnings.append(f"skipped {len(corpus.skipped)} file(s) that are not text: "
                               f"{'; '.join(corpus.skipped[:5])}. Everything else was read.")
    frame = pd.DataFrame({"file": pd.Categorical.from_codes(np.frombuffer(cols["file"], dtype=np.int64).astype(np.int32),
                                                            categories=corpus.files or ["-"]),
                          **{k: np.frombuffer(cols[k], dtype=np.int64) for k in ("start", "end", "chars", "hash")}})
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="document")
    corpus.frame = frame
    if not len(frame):
        what = "every file was skipped" if corpus.skipped and not corpus.files else "it holds no text"
        corpus.problems.append(f"{source}: no documents: {what}. Fix: give UTF-8 text files with some text.")
    return corpus


def _table_corpus(source: str, cfg: Any) -> Corpus:
    from ...data.io import read_table
    from ...data.prepare import guess_columns

    table = read_table(source, delimiter=cfg.delimiter, encoding=cfg.encoding)
    df = table.df
    col = cfg.text_column or guess_columns(df)["text"]
    if col is None or col not in df:
        raise DataError(f"{table.source}: no text column{f' {col!r}' if col else ''} among "
                        f"{', '.join(map(str, df.columns[:12]))}. Fix: set data.text_column.")
    text = df[col].map(lambda v: v.strip() if isinstance(v, str) else "")
    keep = text.str.len() > 0
    corpus = Corpus(pd.DataFrame(), table.source, table.format, warnings=list(table.warnings))
    if (~keep).sum():
        corpus.warnings.append(f"{int((~keep).sum())} row(s) with no text in {col!r} were left out.")
    extra = [c for c in df.columns if c != col and c not in ("text", "chars", "hash")]
    frame = df.loc[keep, extra].copy()
    frame.insert(0, "text", text[keep])
    frame["chars"] = frame["text"].str.len().astype(np.int64)
    frame["hash"] = [text_hash(t.encode("utf-8")) for t in frame["text"]]
    frame.index.name = "document"
    corpus.frame = frame
    if not len(frame):
        corpus.problems.append(f"{table.source}: no documents: every row's {col!r} is empty.")
    return corpus


def doc_texts(frame: pd.DataFrame, encoding: str = "utf-8") -> Iterator[str]:
    """The text of each document of `frame`, in order: from its `text` column, or read by offset from its file
    (one open file at a time: memory holds one document)."""
    if "text" in frame:
        yield from (str(t) for t in frame["text"])
        return
    handle, name = None, None
    try:
        for f, s, e in zip(frame["file"].astype(str), frame["start"], frame["end"]):
            if f != name:
                if handle is not None:
                    handle.close()
                handle, name = open(f, "rb"), f
            handle.seek(int(s))
            yield handle.read(int(e - s)).decode(encoding, errors="replace").strip()
    finally:
        if handle is not None:
            handle.close()


def split_by_hash(hashes: np.ndarray, validation: float, test: float, seed: int) -> np.ndarray:
    """"train"/"validation"/"test" per document from its text hash mixed with the seed: identical documents
    share a split, and the shares are those asked for on average."""
    h = (hashes.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF))
    h = (h * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(11)  # a mixing step; wraps around
    u = h.astype(np.float64) / float(2 ** 53)
    return np.where(u < test, "test", np.where(u < test + validation, "validation", "train"))
