"""A corpus of documents for continued pre-training, read in one streaming pass.

Sources: a `.txt`/`.md` file or a folder of them (documents split per `data.document_split`), a table
(JSONL/JSON/CSV/TSV/Parquet, a built-in corpus) with a text column. Text files are never held in memory:
the pass keeps, per document, its file, byte offsets, character count and a 64-bit hash of its text (40
bytes), and the documents are read again by offset when they are tokenised (`doc_texts`). A document longer
than `MAX_DOC_BYTES` (a file without blank lines, a book) is cut into pieces, since a tokenizer holds a
whole document while it reads it. benchmarks/bench_corpus.py measures it: preparing and encoding a 200 MB
file of 474k paragraphs peaked 108 MB above the process's start (20 MB: 72 MB; about 90 bytes more per
document), where reading the file into one string took 381 MB. Tables (JSONL/CSV/Parquet) are read whole.

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
MAX_DOC_BYTES = 1 << 17  # longer documents (a file without blank lines, a book) are cut into pieces of about this:
# the tokenizer holds ~200 bytes per character of a text while it reads it, so a 1 MB document would cost 200 MB
BOM_UTF8 = b"\xef\xbb\xbf"


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
    columns: dict[str, str] = field(default_factory=dict)  # a table's text column: {"text": name}
    guessed: list[str] = field(default_factory=list)  # ["text"] when that column was guessed


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


class _Document:
    """One document being scanned: its start, a running hash and character count of its stripped bytes (the same
    digest `text_hash` gives the whole), and the whitespace after its last text, held back until more text comes
    (a document's trailing whitespace is not part of it)."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.hash = hashlib.blake2b(digest_size=8)
        self.chars = 0
        self.pending = b""
        self.fed = False

    def add(self, pos: int, piece: bytes, decode: Any) -> None:
        if self.start is None:
            self.start = pos
        body = piece.rstrip()
        if not body:
            if self.fed:
                self.pending += piece
            return
        if not self.fed:
            body = body.lstrip()
        text = self.pending + body
        self.chars += decode(text)
        self.hash.update(text)
        self.fed = True
        self.pending = piece[len(piece.rstrip()):]


def _piece_end(chunk: bytes, encoding: str) -> int:
    """Where to cut a line longer than `MAX_DOC_BYTES`: after its last space or tab, else at the last whole
    character (never inside a multi-byte one)."""
    k = chunk.rfind(b" ", max(len(chunk) - 65536, 0))
    k = k if k >= 0 else chunk.rfind(b"\t", max(len(chunk) - 65536, 0))
    if k > 0:
        return k + 1
    import codecs

    dec = codecs.getincrementaldecoder(encoding)("strict")
    try:
        dec.decode(chunk, final=False)
    except UnicodeDecodeError:
        return len(chunk)  # the decode error is reported when the piece is read
    return len(chunk) - len(dec.getstate()[0]) or len(chunk)


def _scan_text_file(path: Path, file_no: int, mode: str, encoding: str, cols: dict[str, array]) -> tuple[int, int]:
    """Append one row per document of `path` to `cols` (file number, start, end, chars, hash: 8-byte arrays, not
    Python lists, so memory grows by 40 bytes a document), streaming by line. A document (or a line) longer than
    `MAX_DOC_BYTES` is cut into pieces at line ends (inside a longer line: at a space or a character boundary),
    so no document, and no read, holds more than about that much. Returns how many documents were cut, and into
    how many pieces."""
    line_no, doc = 1, _Document()
    cut = [0, 0]  # documents cut, pieces they became
    going_on = False  # the document being read continues one that was cut

    def decode(b: bytes) -> int:
        try:
            return len(b.decode(encoding))
        except UnicodeDecodeError as e:
            raise DataError(_decode_problem(path, encoding, b, e, line_no)) from None

    def close(end: int, cutting: bool = False) -> None:
        nonlocal doc, going_on
        if doc.fed:
            cols["file"].append(file_no)
            cols["start"].append(doc.start)
            cols["end"].append(end)
            cols["chars"].append(doc.chars)
            cols["hash"].append(int.from_bytes(doc.hash.digest(), "little", signed=True))
            if cutting or going_on:
                cut[0] += not going_on
                cut[1] += 1
            going_on = cutting
        doc = _Document()

    with open(path, "rb") as f:
        pos = 0
        while True:
            line = f.readline(MAX_DOC_BYTES)
            if not line:
                break
            if pos == 0 and line.startswith(BOM_UTF8):
                pos, line = len(BOM_UTF8), line[len(BOM_UTF8):]
            whole = line.endswith(b"\n")
            partial = not whole and len(line) == MAX_DOC_BYTES  # a line longer than a document may be
            if partial:
                k = _piece_end(line, encoding)
                if k < len(line):
                    f.seek(pos + k)
                    line = line[:k]
            end = pos + len(line)
            if mode == "paragraph" and not line.strip():
                close(pos)
            else:
                doc.add(pos, line, decode)
                if partial or (mode != "line" and end - doc.start >= MAX_DOC_BYTES):
                    close(end, cutting=doc.fed)
                elif mode == "line" and whole:
                    close(end)
            line_no += whole
            pos = end
        close(pos)
    return cut[0], cut[1]


def _decode_problem(path: Path, encoding: str, text: bytes, e: UnicodeDecodeError, line_no: int) -> str:
    """What to say about a line that is not valid in `encoding`: where, and the encoding it decodes in."""
    guess = next((enc for enc in ("gbk", "big5", "shift_jis", "euc-kr", "cp1252") if enc != encoding.lower()
                  and _decodes(text, enc)), None)
    hint = (f"it decodes as {guess}: set data.encoding: {guess} (or save the file as UTF-8)" if guess else
            "save it as UTF-8, or set data.encoding to its encoding (e.g. gbk, big5, shift_jis, cp1252)")
    return (f"{path}: not valid {encoding} text (byte 0x{text[e.start]:02x} on line {line_no}). Fix: {hint}. "
            f"Every file of a corpus is read in data.encoding.")


def _decodes(b: bytes, enc: str) -> bool:
    try:
        text = b.decode(enc)
    except UnicodeDecodeError:
        return False
    if enc == "cp1252":
        return True
    # A CJK encoding decodes many byte pairs: count it only when most non-ASCII characters become CJK text
    wide = [c for c in text if ord(c) > 127]
    cjk = sum(1 for c in wide if "\u3000" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uff00" <= c <= "\uffef")
    return bool(wide) and cjk >= 0.8 * len(wide)


def _check_encoding(encoding: str) -> None:
    """The streamed reader splits bytes at newlines: the encoding must be a known one that keeps ASCII as it is."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"data.encoding {encoding!r} is not an encoding Python knows. Fix: a name such as utf-8, "
                        f"gbk, big5, shift_jis, cp1252, or leave it empty for UTF-8.") from None
    if not "\n a".encode(encoding).endswith(b"\n a"):  # (utf-8-sig's BOM before it is fine)
        raise DataError(f"data.encoding {encoding!r}: a text corpus is read line by line, which needs an encoding "
                        f"that writes ASCII as single bytes (UTF-8, GBK, Big5, cp1252, ...), not UTF-16/32. Fix: "
                        f"save the files as UTF-8 (e.g. `iconv -f {encoding} -t utf-8 in.txt > out.txt`) and leave "
                        f"data.encoding empty.")


_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


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
    corpus = Corpus(pd.DataFrame(), str(source), "text folder" if path.is_dir() else "text",
                    encoding=cfg.encoding or "utf-8")
    _check_encoding(corpus.encoding)
    cols = {k: array("q") for k in ("file", "start", "end", "chars", "hash")}
    cut: dict[str, tuple[int, int]] = {}
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8192)
        wide = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
        if wide:
            raise DataError(f"{f}: {wide} text (it starts with a {wide} byte-order mark, as Windows Notepad's "
                            f"\"Unicode\" does); a corpus is read line by line, which needs UTF-8 or another "
                            f"encoding that writes ASCII as single bytes. Fix: save it as UTF-8 (in Notepad: Save "
                            f"as, Encoding UTF-8; or `iconv -f {wide} -t UTF-8 in.txt > out.txt`).")
        why = _binary_reason(head)
        if why:
            corpus.skipped.append(f"{f.relative_to(path) if path.is_dir() else f.name}: {why}")
            continue
        n_cut = _scan_text_file(f, len(corpus.files), mode, corpus.encoding, cols)
        if n_cut[0]:
            cut[str(f.relative_to(path) if path.is_dir() else f.name)] = n_cut
        corpus.files.append(str(f))
    if corpus.skipped and corpus.files:
        corpus.warnings.append(f"skipped {len(corpus.skipped)} file(s) that are not text: "
                               f"{'; '.join(corpus.skipped[:5])}. The other {len(corpus.files)} file(s) were read.")
    if cut:
        kb = MAX_DOC_BYTES // 1024
        again = (" If the documents are lines, not blank-line-separated paragraphs, set data.document_split: line."
                 if mode == "paragraph" else "")
        corpus.warnings.append(f"{sum(d for d, _ in cut.values()):,} document(s) longer than {kb:,} KB were cut into "
                               f"{sum(p for _, p in cut.values()):,} pieces of about {kb:,} KB, at line ends or "
                               f"spaces ({', '.join(list(cut)[:5])}): a document is tokenised whole, and this keeps "
                               f"memory flat; training is unchanged (blocks cross documents anyway).{again}")
    # copy=False: the columns stay the scan's own buffers (no second copy of 32 bytes a document at the peak)
    codes = np.frombuffer(cols["file"], dtype=np.int64).astype(np.int32)
    frame = pd.DataFrame({"file": pd.Categorical.from_codes(codes, categories=corpus.files or ["-"]),
                          **{k: np.frombuffer(cols[k], dtype=np.int64) for k in ("start", "end", "chars", "hash")}},
                         copy=False)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="document")
    corpus.frame = frame
    if not len(frame):
        if corpus.skipped and not corpus.files:
            which = "its only file" if len(corpus.skipped) == 1 else "every file"
            corpus.problems.append(f"{source}: no text to read: {which} is not text ({'; '.join(corpus.skipped[:5])})."
                                   f" Fix: give plain text files (.txt, UTF-8); export documents (PDF, Word) as "
                                   f"plain text first.")
        else:
            which = "its files hold" if len(corpus.files) > 1 else "it holds"
            corpus.problems.append(f"{source}: no documents: {which} no text (empty or only blank lines). Fix: put "
                                   f"the text in it, UTF-8.")
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
    corpus = Corpus(pd.DataFrame(), table.source, table.format, warnings=list(table.warnings),
                    columns={"text": str(col)}, guessed=[] if cfg.text_column else ["text"])
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
        col = frame["file"]
        # the file of each document by its category code, not `astype(str)` (a string per document)
        files = (col.cat.categories.astype(str)[col.cat.codes.to_numpy()] if hasattr(col, "cat") else col.astype(str))
        for f, s, e in zip(files, frame["start"], frame["end"]):
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
    codes = (u < test + validation).astype(np.int8) + (u < test)  # 0 train, 1 validation, 2 test
    # an object array of three shared strings: 8 bytes a document, where a numpy string array takes 40
    return np.array(["train", "validation", "test"], dtype=object)[codes]
