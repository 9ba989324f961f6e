"""What an uploaded file holds, read from its start only: the sections' `claims` hooks decide from this."""

from __future__ import annotations

import re
from pathlib import Path

TABLES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
_KEY = re.compile(r'"([A-Za-z_]+)"\s*:')


def head_columns(source: str, head_bytes: int = 65536) -> set[str]:
    """Column names (a table's header, a Parquet schema) or the keys of the first JSON records, lower-cased;
    empty for another kind of file or an unreadable one (never raises)."""
    p = Path(source)
    ext = p.suffix.lower()
    if ext not in TABLES or not p.is_file():
        return set()
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return {str(n).lower() for n in pq.read_schema(p).names}
        with p.open("rb") as f:
            head = f.read(head_bytes).decode("utf-8-sig", errors="replace")
    except Exception:  # noqa: BLE001 - an unreadable file is simply not claimed
        return set()
    if ext in (".csv", ".tsv"):
        first = head.splitlines()[0] if head.strip() else ""
        return {c.strip().strip('"').lower() for c in re.split(r"[,\t;|]", first)}
    return {k.lower() for k in _KEY.findall(head[:8192])}
