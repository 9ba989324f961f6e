"""Reading tables: files (CSV, TSV, JSON, JSONL, Parquet), DataFrames, built-ins and hub data sets.

Everything a user can get wrong about a file is reported here, at the boundary, as a `DataError`
(or a warning carried on the `Table`): the encoding, the delimiter, ragged rows, a broken JSON line.
Row numbers are kept in the DataFrame's index so later stages can say *which* rows they dropped.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "csv", ".json": "json", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
DELIMITERS = [",", ";", "\t", "|"]
_DELIM_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass
class Table:
    """A loaded table: the frame (index = source row/line number), where it came from, and warnings."""

    df: pd.DataFrame
    source: str
    format: str
    row_kind: str = "row"  # "line" when the index holds file line numbers
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, pd.DataFrame] | None = None  # hub data sets arrive already split


# Byte-order marks of the Unicode encodings that have one; UTF-32 first (its LE mark starts like UTF-16's).
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16")]
# File signatures of binary formats people save or rename as .csv, to say what the file really is.
_MAGIC = [(b"PK\x03\x04", "a ZIP archive or an Excel/OpenDocument workbook (.xlsx, .ods)"),
          (b"\xd0\xcf\x11\xe0", "an old Excel/Word file (.xls, .doc)"), (b"PAR1", "a Parquet file"),
          (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"\x89PNG", "a PNG image"),
          (b"\xff\xd8\xff", "a JPEG image"), (b"SQLite format 3", "an SQLite database"), (b"BZh", "a bzip2 archive"),
          (b"\x80\x04", "a Python pickle"), (b"\x80\x03", "a Python pickle"), (b"\x7fELF", "a program")]


def check_text(raw: bytes, name: str) -> None:
    """Refuse binary content (NUL bytes or mostly control characters): it is not a text table.

    Without this a spreadsheet or an archive renamed to .csv decodes as cp1252 and becomes a table
    with kilobytes of garbage column names.
    """
    head = raw[:8192]
    what = next((desc for magic, desc in _MAGIC if head.startswith(magic)), None)
    nul = head.find(b"\x00")
    # Control bytes other than tab/newline/carriage return/form feed; in a text table they are rare.
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13) or b == 127)
    if what is None and nul < 0 and control <= max(2, len(head) // 20):
        return
    detail = f"it looks like {what}" if what else (f"it holds a NUL byte at byte {nul}" if nul >= 0 else
                                                     f"{control} of its first {len(head)} bytes are control characters")
    fix = ("give it a .parquet extension" if what == "a Parquet file" else
           "open it in the program that made it and export the table as CSV (UTF-8)")
    raise DataError(f"{name} is not a text table: {detail}. Fix: {fix}.")


def decode(raw: bytes, name: str, encoding: str | None = None) -> tuple[str, list[str]]:
    """Bytes to text: a BOM's encoding (UTF-8/16/32), else UTF-8, else cp1252 then latin-1 with a warning
    naming the line. Binary content is refused (`check_text`)."""
    if encoding:
        try:
            return raw.decode(encoding), []
        except (UnicodeDecodeError, LookupError) as e:
            raise DataError(f"{name}: cannot decode as {encoding!r} ({e}). Fix: set data.encoding to the file's "
                            f"real encoding, or leave it empty to detect.") from None
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(enc), []  # "utf-16"/"utf-32" read the BOM's byte order and drop it
            except UnicodeDecodeError as e:
                raise DataError(f"{name} starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()} "
                                f"(byte {e.start}). Fix: save it again as UTF-8, or set data.encoding.") from None
    check_text(raw, name)
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        for enc in ("cp1252", "latin-1"):
            try:
                text = raw.decode(enc)
            except UnicodeDecodeError:
                continue
            return text, [f"{name} is not valid UTF-8 (first bad byte 0x{raw[e.start]:02x} on line {line}); "
                          f"decoded it as {enc}. If accents look wrong, save the file as UTF-8 or set data.encoding."]
    raise AssertionError("latin-1 decodes any bytes")


@contextlib.contextmanager
def _any_field_size() -> Iterator[None]:
    """Let one CSV cell be as large as the file: the csv module refuses cells over 128 KB by default,
    which long documents legitimately exceed. (The limit is process-wide; it is restored after.)"""
    old = csv.field_size_limit()
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:  # a C long is 32 bits on some platforms
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(old)


def sniff_delimiter(text: str, default: str = ",") -> str:
    """The delimiter that splits the first lines into the same number (> 1) of fields most often."""
    lines = [ln for ln in text.splitlines()[:50] if ln.strip()]
    if not lines:
        return default
    best, best_score = default, (0, 0)
    for d in DELIMITERS:
        try:
            counts = [len(r) for r in csv.reader(lines, delimiter=d)]
        except csv.Error:
            continue
        head = counts[0]
        if head < 2:
            continue
        score = (sum(c == head for c in counts), head)
        if score > best_score:
            best, best_score = d, score
    return best


def _parse_delimited(text: str, name: str, delimiter: str) -> tuple[pd.DataFrame, list[str]]:
    warnings: list[str] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name} is empty: it has no header row and no data. Fix: export the table again "
                        f"with a header line such as `text,label`.") from None
    except csv.Error as e:
        raise DataError(f"{name}: cannot parse the header line ({e}).") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{name}: the first line is blank; it must hold the column names (e.g. `text,label`).")
    rows, lines, bad = [], [], []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{name}: line {start}: {e}. Fix the quoting on that line.") from None
        if row and any(c.strip() for c in row):
            if len(row) == len(header):
                rows.append(row)
                lines.append(start)
            else:
                bad.append((start, len(row)))
        start = reader.line_num + 1
    if bad:
        shown = ", ".join(f"line {ln} ({n} fields)" for ln, n in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        warnings.append(f"{name}: skipped {len(bad)} row(s) whose field count differs from the header's "
                        f"{len(header)} ({_DELIM_NAMES.get(delimiter, repr(delimiter))}-separated): {shown}{more}. "
                        f"Quote fields that contain the delimiter.")
    if len(header) != len(set(header)):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{name}: duplicate column names {dupes}. Fix: rename them so each column is unique.")
    df = pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line"), dtype=object)
    df = df.replace({"": None})
    for col in df.columns:  # numbers stay numbers (labels 0/1, scores), text stays text
        converted = pd.to_numeric(df[col], errors="coerce")
        if converted.notna().sum() == df[col].notna().sum() and df[col].notna().any():
            df[col] = converted
    return df, warnings


def _parse_json(text: str, name: str) -> pd.DataFrame:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        # A JSON-lines file saved as .json is common: try it before giving up.
        if e.msg.startswith("Extra data"):
            return _parse_jsonl(text, name)
        raise DataError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if isinstance(obj, dict):
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(x, dict) for x in next(iter(lists.values()))):
            obj = next(iter(lists.values()))  # {"data": [{...}, ...]}
        elif lists and len({len(v) for v in lists.values()}) == 1:
            return _indexed(pd.DataFrame(lists))  # {"text": [...], "label": [...]}
    if not isinstance(obj, list) or not all(isinstance(x, dict) for x in obj):
        raise DataError(f"{name}: expected a list of records like [{{\"text\": ..., \"label\": ...}}] or a mapping "
                        f"of equal-length columns; got {type(obj).__name__}.")
    return _indexed(pd.DataFrame.from_records(obj))


def _parse_jsonl(text: str, name: str) -> pd.DataFrame:
    records, lines = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {i} is not valid JSON ({e.msg} at column {e.colno}): "
                            f"{line[:80]!r}. Fix or delete that line.") from None
        if not isinstance(rec, dict):
            raise DataError(f"{name}: line {i} is a {type(rec).__name__}, not an object like "
                            f"{{\"text\": ..., \"label\": ...}}.")
        records.append(rec)
        lines.append(i)
    return pd.DataFrame.from_records(records, index=pd.Index(lines, name="line"))


def _indexed(df: pd.DataFrame) -> pd.DataFrame:
    df.index = pd.RangeIndex(1, len(df) + 1, name="row")
    return df


def read_table(source: str | Path | pd.DataFrame | bytes, *, name: str | None = None,
               format: str | None = None, delimiter: str | None = None, encoding: str | None = None) -> Table:
    """Load a table from a file path, raw bytes (an upload; give `name`), a DataFrame, or a built-in name."""
    if isinstance(source, pd.DataFrame):
        return Table(_indexed(source.copy()), name or "DataFrame", "dataframe")
    if isinstance(source, (str, Path)) and not isinstance(source, bytes):
        s = str(source)
        if s.startswith("hub:"):
            return _read_hub(s[4:])
        path = Path(s).expanduser()
        if not path.exists():
            from ..assets import BUILTIN_DATASETS, load_builtin_dataset
            if s in BUILTIN_DATASETS:
                return Table(_indexed(load_builtin_dataset(s)), s, "builtin")
            raise DataError(f"Data source {s!r} not found: it is neither a file nor a built-in data set. "
                            f"Built-ins: {', '.join(BUILTIN_DATASETS)}; hub data sets: `hub:NAME`.")
        if path.is_dir():
            raise DataError(f"{s} is a folder: give a file (CSV, TSV, JSON, JSONL or Parquet). A folder of .txt "
                            f"files is a corpus to pre-train on: for that, set task: masked-lm or causal-lm.")
        raw, name = path.read_bytes(), name or path.name
    else:
        raw, name = bytes(source), name or "upload"
    fmt = format or FORMATS.get(Path(name).suffix.lower())
    if fmt is None:
        raise DataError(f"{name}: unknown file type {Path(name).suffix or '(no extension)'!r}. Supported: "
                        f"{', '.join(sorted(set(FORMATS)))}.")
    if not raw.strip():
        raise DataError(f"{name} is empty (0 rows). Fix: choose the file that holds your examples, with a "
                        f"header line such as `text,label`.")
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
            return Table(_indexed(pq.read_table(io.BytesIO(raw)).to_pandas()), name, fmt)
        except Exception as e:  # pyarrow raises many types for corrupt files
            raise DataError(f"{name}: not a readable Parquet file ({type(e).__name__}: {e}).") from None
    text, warnings = decode(raw, name, encoding)
    if fmt == "json":
        return Table(_parse_json(text, name), name, fmt, "row", warnings)
    if fmt == "jsonl":
        return Table(_parse_jsonl(text, name), name, fmt, "line", warnings)
    with _any_field_size():
        delim = delimiter or ("\t" if fmt == "tsv" else sniff_delimiter(text))
        df, more = _parse_delimited(text, name, delim)
    if delim != "," and not delimiter:
        more.insert(0, f"{name}: detected {_DELIM_NAMES.get(delim, repr(delim))}-separated columns.")
    return Table(df, name, fmt, "line", warnings + more)


def _read_hub(dataset_id: str) -> Table:
    """A hub data set through `datasets` (needs a network); its own splits are kept."""
    try:
        import datasets
        dd = datasets.load_dataset(dataset_id)
    except Exception as e:
        raise DataError(f"Could not load hub data set {dataset_id!r}: {type(e).__name__}: {str(e)[:300]}. "
                        f"Offline? Export it to a CSV/Parquet file and give its path, or use a built-in data set "
                        f"(`workbench datasets`).") from None
    splits = {k: _indexed(v.to_pandas()) for k, v in dd.items()}
    first = splits.get("train", next(iter(splits.values())))
    return Table(first, f"hub:{dataset_id}", "hub", splits=splits)
