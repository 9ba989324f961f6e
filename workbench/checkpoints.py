"""Which checkpoint a resume starts from: the newest one whose files are all intact.

Checkpoints are written atomically (trainer.py), yet one can still be damaged afterwards: a disk that
filled while it was copied, a sync cut short, a file deleted by hand. `transformers.Trainer` then fails
with a raw traceback on a truncated file, and silently starts a fresh optimizer and learning-rate
schedule when `optimizer.pt` or `scheduler.pt` is missing. So every file a resume needs is checked here
first, by its structure only: nothing is loaded, and nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
# file -> what resuming without it would silently do
REQUIRED = {"optimizer.pt": "start a fresh optimizer", "scheduler.pt": "restart the learning-rate schedule"}


def checkpoint_problems(ckpt: Path) -> list[str]:
    """What is missing or damaged in the checkpoint folder `ckpt` ([] when it can be resumed from)."""
    if (ckpt / f"{FSDP_MODEL}_0").is_dir():
        return fsdp_checkpoint_problems(ckpt)
    if (ckpt / "latest").is_file():
        return ["a DeepSpeed checkpoint: the workbench does not resume DeepSpeed runs (its checkpoint files are "
                "pickles DeepSpeed loads whole, which the workbench cannot vet). Fix: start a new run, or fine-tune "
                "further from the run's model/ when it completed"]
    problems = []
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            problems.append("trainer_state.json has no global_step")
    except FileNotFoundError:
        problems.append("trainer_state.json is missing")
    except (OSError, ValueError):
        problems.append("trainer_state.json is damaged (not valid JSON)")
    problems += _weights_problems(ckpt)
    for name, consequence in REQUIRED.items():
        if not (ckpt / name).is_file():
            problems.append(f"{name} is missing (resuming from it would {consequence})")
        else:
            problems += _torch_file_problems(ckpt / name)
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng:
        problems.append("rng_state.pth is missing")
    for f in rng:
        problems += _torch_file_problems(f)
    return problems


FSDP_MODEL, FSDP_OPTIMIZER = "pytorch_model_fsdp", "optimizer"
# What the `.metadata` pickle of a torch.distributed.checkpoint folder may name: its own record classes, paths,
# sizes and dtypes, each by exact (module, name). Anything else (a function to call, a class with side effects, a
# dotted name reaching through a module) and the folder is refused.
_DCP_GLOBALS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                ("pathlib", "PureWindowsPath"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("collections", "OrderedDict"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                *(("torch.distributed.checkpoint.metadata", n) for n in (
                    "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                    "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")),
                *(("torch", n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16",
                                         "int8", "uint8", "bool", "complex64", "float8_e4m3fn", "float8_e5m2"))}


def fsdp_checkpoint_problems(ckpt: Path) -> list[str]:
    """An FSDP checkpoint written sharded (torch.distributed.checkpoint): model and optimizer folders each with a
    `.metadata` record and its `__R_0.distcp` shard files, vetted without unpickling anything (`dcp_problems`)."""
    problems = []
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            problems.append("trainer_state.json has no global_step")
    except (OSError, ValueError):
        problems.append("trainer_state.json is missing or damaged")
    for name in (f"{FSDP_MODEL}_0", f"{FSDP_OPTIMIZER}_0"):
        folder = ckpt / name
        if not folder.is_dir():
            problems.append(f"{name}/ is missing")
        else:
            problems += [f"{name}/{p}" for p in dcp_problems(folder)]
    if not (ckpt / "scheduler.pt").is_file():
        problems.append("scheduler.pt is missing (resuming from it would restart the learning-rate schedule)")
    else:
        problems += _torch_file_problems(ckpt / "scheduler.pt")
    for f in sorted(ckpt.glob("rng_state*.pth")):
        problems += _torch_file_problems(f)
    return problems


class _Vetted(Exception):
    pass


def _restricted_load(data: bytes, allowed: set[tuple[str, str]]) -> Any:
    """Unpickle `data` allowing only the exact (module, name) pairs of `allowed`: anything else, and any dotted name
    (pickle protocol 4 resolves `a.b` through attributes), raises before it is looked up."""
    import io
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if "." in name or (module, name) not in allowed:
                raise _Vetted(f"{module}.{name}")
            found = super().find_class(module, name)
            if module != "torch" and getattr(found, "__module__", None) != module and module != "pathlib":
                raise _Vetted(f"{module}.{name}")
            return found

    return Restricted(io.BytesIO(data)).load()


def dcp_problems(folder: Path) -> list[str]:
    """A torch.distributed.checkpoint folder, checked before torch reads it: its `.metadata` is a pickle, unpickled
    here only through an allowlist of the record classes; every non-tensor item (optimizer settings) is a
    torch.save archive inside a shard file, each read with `torch.load(weights_only=True)`; every shard file the
    record names must exist and be long enough."""
    meta = folder / ".metadata"
    if not meta.is_file():
        return [".metadata is missing"]
    try:
        md = _restricted_load(meta.read_bytes(), _DCP_GLOBALS)
    except _Vetted as e:
        return [f".metadata names {e}, which a checkpoint record never holds: refused (unpickling it could run code)"]
    except Exception as e:  # a cut-short or garbled pickle
        return [f".metadata is damaged ({type(e).__name__})"]
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
    if not isinstance(md, Metadata) or not isinstance(md.storage_data, dict) or \
            not isinstance(md.state_dict_metadata, dict):
        return [".metadata is not a checkpoint record"]
    try:
        return _dcp_items_problems(folder, md, BytesStorageMetadata)
    except (TypeError, ValueError, AttributeError, OSError) as e:
        return [f".metadata is damaged ({type(e).__name__})"]


def _dcp_items_problems(folder: Path, md: Any, BytesStorageMetadata: type) -> list[str]:
    import io

    import torch

    problems: list[str] = []
    sizes: dict[str, int | None] = {}
    for index, info in md.storage_data.items():
        rel = str(getattr(info, "relative_path", ""))
        if Path(rel).name != rel or not rel:
            return [f".metadata points outside its folder ({rel[:60]!r}): refused"]
        if rel not in sizes:
            sizes[rel] = (folder / rel).stat().st_size if (folder / rel).is_file() else None
        if sizes[rel] is None:
            problems.append(f"{rel} is missing")
        elif int(info.offset) + int(info.length) > sizes[rel]:
            problems.append(f"{rel} is cut short ({sizes[rel]} bytes, the record needs {info.offset + info.length})")
        elif isinstance(md.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            with open(folder / rel, "rb") as f:
                f.seek(info.offset)
                blob = f.read(info.length)
            try:
                torch.load(io.BytesIO(blob), weights_only=True)
            except Exception:
                problems.append(f"{rel}: item {index.fqn} is not plain data (refused: unpickling it could run code)")
    return sorted(set(problems))


def _weights_problems(ckpt: Path) -> list[str]:
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [f"{index.name} is damaged"]
    else:
        shards = [n for n in WEIGHTS if (ckpt / n).exists()]
    if not shards:
        return [f"the model weights ({' or '.join(WEIGHTS)}) are missing"]
    out = []
    for name in shards:
        p = ckpt / Path(name).name
        if not p.is_file():
            out.append(f"{p.name} is missing")
        elif problem := _safetensors_problem(p):
            out.append(f"{p.name} {problem}")
    return out


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes; the header's
    largest end offset says how long the file must be, so a cut-short file is found without loading it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is cut short ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"is cut short ({size} bytes, its header alone needs {8 + n})"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "is damaged (its header is not a safetensors header)"
    if size != 8 + n + end:
        return f"is cut short ({size} of {8 + n + end} bytes)" if size < 8 + n + end else \
            f"is damaged ({size - 8 - n - end} unexpected bytes at its end)"
    return None


def _torch_file_problems(path: Path) -> list[str]:
    """`torch.save` writes a zip archive with a CRC per record: a cut-short or corrupted file fails here."""
    if _is_bare_pickle(path):
        return [f"{path.name} is a pickle, not a torch.save archive of tensors"]
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return [f"{path.name} is damaged or cut short (not a complete torch.save archive)"]
    return [f"{path.name} is damaged (record {bad} fails its checksum)"] if bad else []


def _is_bare_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80" and not zipfile.is_zipfile(path)  # pickle protocol 2+ opcode


def pickled_files(ckpt: Path) -> list[str]:
    """Files of `ckpt` that are bare pickles: never loaded (unpickling can run code), and never quietly
    skipped either, since our own checkpoints never hold one: someone put it there."""
    return [p.name for p in sorted(ckpt.glob("*.p*")) if p.suffix in (".pt", ".pth", ".pkl", ".bin")
            and p.is_file() and _is_bare_pickle(p)]


def intact_checkpoint(checkpoints: list[Path]) -> tuple[Path | None, dict[str, list[str]]]:
    """The newest intact checkpoint of `checkpoints` (oldest first), and the problems of the newer damaged ones."""
    damaged: dict[str, list[str]] = {}
    for ckpt in reversed(checkpoints):
        problems = checkpoint_problems(ckpt)
        if not problems:
            return ckpt, damaged
        damaged[ckpt.name] = problems
    return None, damaged


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to `damaged-checkpoint-N`: kept for inspection, but out of the trainer's
    rotation (which would otherwise keep it as the newest and delete intact ones) and never resumed from."""
    dest, n = ckpt.with_name(f"damaged-{ckpt.name}"), 2
    while dest.exists():
        dest, n = ckpt.with_name(f"damaged-{ckpt.name}-{n}"), n + 1
    ckpt.rename(dest)
    return dest
