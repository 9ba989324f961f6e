"""What front ends write to and remove from disk: uploaded data files and whole run directories.

Uploaded file names come from a browser and cannot be trusted: they are reduced to a bare name of
safe characters (no folders, no `..`, no hidden files) before anything is written, and the file lands
under `paths.uploads_dir()` with a content hash in its name, so two different uploads called
`data.csv` never overwrite each other and uploading the same bytes twice reuses one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import DataError
from .paths import uploads_dir
from .rundir import RunDir

MAX_NAME = 80


def safe_filename(name: str, default: str = "upload") -> str:
    """A bare file name of letters, digits, `._-`: folder parts, control characters and leading dots removed.

    >>> safe_filename("../../etc/passwd")
    'passwd'
    >>> safe_filename("C:\\\\Users\\\\me\\\\my data (1).csv")
    'my_data_1.csv'
    """
    base = PureWindowsPath(PurePosixPath(name or "").name).name  # strip / and \ folders alike
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")
    base = re.sub(r"\.{2,}", ".", base)
    if not base:
        return default
    stem, dot, ext = base.rpartition(".")
    stem = stem.strip("._-")
    if not dot:
        return base[:MAX_NAME]
    return f"{stem[:MAX_NAME - len(ext) - 1]}.{ext}" if stem else f"{default}.{ext}"


def upload_extensions() -> set[str]:
    """File name endings an upload may have: the tables the data stage reads, plus the ones registered
    tasks read their own way (`file_extensions` on a task, e.g. `.conll` for token classification)."""
    from .data.io import FORMATS  # lazy: the data package pulls in scikit-learn
    from .tasks import TASKS

    return set(FORMATS) | {str(e).lower() for t in TASKS.values() for e in getattr(t, "file_extensions", ())}


def save_upload(data: bytes, name: str, max_bytes: int | None = None) -> Path:
    """Store uploaded bytes under `uploads_dir()` as `<safe stem>-<sha256[:10]><ext>`; return the path.

    Refuses empty files, files over `max_bytes` and extensions the data stage cannot read.
    """
    allowed = upload_extensions()
    clean = safe_filename(name)
    ext = Path(clean).suffix.lower()
    if ext not in allowed:
        raise DataError(f"{clean}: unsupported file type {ext or '(no extension)'!r}. Upload one of: "
                        f"{', '.join(sorted(allowed))}.")
    if not data:
        raise DataError(f"{clean} is empty (0 bytes). Choose the file that holds your examples.")
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(f"{clean} is {len(data) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB upload limit. "
                        f"Fix: upload a sample, or give the file's path in a config for `workbench train`.")
    digest = hashlib.sha256(data).hexdigest()[:10]
    folder = uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{Path(clean).stem}-{digest}{ext}"
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return dest


def list_uploads() -> list[Path]:
    """Uploaded data files, newest first."""
    folder = uploads_dir()
    if not folder.is_dir():
        return []
    allowed = upload_extensions()
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in allowed]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def delete_run(run: str | Path | RunDir) -> None:
    """Remove a run directory; refuses while its process is alive, and anything that is not a run."""
    r = run if isinstance(run, RunDir) else RunDir(run)
    r.require()
    r.require_idle("stop it first, then delete it.")
    shutil.rmtree(r.path)
