"""GGUF model files: recognise one, check that transformers can read its architecture, and convert it
once into a cached safetensors folder that every other stage loads like any model folder.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, dequantising to float) for a fixed list
of architectures (`GGUF_SUPPORTED_ARCHITECTURES`). A model loaded that way cannot be saved (it keeps a
quantisation config), and loading it again costs a dequantisation each time, so we rebuild the model
from its config without one, load the dequantised weights, and save that folder under
`$WORKBENCH_HOME/assets/gguf/`, keyed by the file's path, size and modification time: a changed file
is converted again. Reading a GGUF file parses a binary header and arrays; nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ModelError
from .paths import assets_dir

MAGIC = b"GGUF"
# `general.architecture` spellings that transformers renames before its support check.
_RENAMED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
            "t5encoder": "t5"}


def supported_architectures() -> list[str]:
    """The GGUF architectures this transformers can load (its `GGUF_SUPPORTED_ARCHITECTURES`)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def is_gguf(path: Path) -> bool:
    """A regular file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == MAGIC
    except OSError:
        return False


def find_gguf(path: Path) -> Path | None:
    """The GGUF file that `path` stands for: the file itself, or the only `.gguf` file of a folder that has no
    config.json. None for anything else (a model folder, a hub id); a `.gguf` name that is not GGUF, another
    kind of file, or a folder with several GGUF files is an error that says what to give instead."""
    if path.is_file():
        if is_gguf(path):
            return path
        if path.suffix.lower() == ".gguf":
            with open(path, "rb") as f:
                head = f.read(4)
            raise ModelError(f"{path} is named .gguf but is not a GGUF file (it starts with {head!r}, not b'GGUF'; "
                             f"{path.stat().st_size} bytes): it may be damaged or only partly downloaded. Fix: "
                             f"download it again, or point model.name_or_path at another model.")
        raise ModelError(f"{path} is a file, not a model the workbench can load. Fix: give a folder with "
                         f"config.json and model.safetensors (as written by `save_pretrained`), a .gguf file, a "
                         f"built-in name (`workbench models`) or a hub id.")
    if not path.is_dir() or (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return None
    found = sorted(f for f in path.iterdir() if f.suffix.lower() == ".gguf" and f.is_file())
    if len(found) > 1:
        raise ModelError(f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:6])}) and no "
                         f"config.json, so it is not clear which model to load. Fix: set model.name_or_path to one "
                         f"of the files, e.g. {found[0]}.")
    return found[0] if found else None


def gguf_architecture(path: Path) -> tuple[str, str]:
    """`general.architecture` and `general.name` from the file's header (no weights are read)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError(f"{path} is a GGUF file; reading it needs the `gguf` package. Fix: pip install gguf") \
            from None
    try:
        reader = GGUFReader(path)
        fields = reader.fields

        def text(key: str) -> str:
            f = fields.get(key)
            return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None and f.data else ""
        return text("general.architecture"), text("general.name")
    except Exception as e:
        raise ModelError(f"{path} could not be read as a GGUF file ({type(e).__name__}: {str(e)[:200]}): it may be "
                         f"damaged or only partly downloaded. Fix: download it again.") from None


def check_gguf(path: Path) -> str:
    """Raise `ModelError` unless transformers can load this GGUF file's architecture; return the architecture."""
    arch, name = gguf_architecture(path)
    supported = supported_architectures()
    if arch not in supported and _RENAMED.get(arch) not in supported:
        named = f" (general.name: {name!r})" if name else ""
        raise ModelError(
            f"{path} is a GGUF model of architecture {arch or 'unknown'!r}{named}, which transformers cannot load "
            f"from GGUF. Architectures it can load: {', '.join(supported)}. Fix: use the original Hugging Face "
            f"model this file was made from (a folder with config.json and *.safetensors, or its hub id"
            f"{f', e.g. search the hub for {name!r}' if name else ''}), or a GGUF file of a supported architecture.")
    return arch


def cache_key(path: Path) -> str:
    """Path, size and modification time: a replaced or edited file is converted again (hashing gigabytes
    at every run would cost more than a conversion)."""
    st = path.stat()
    raw = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def convert_gguf(src: Path, dest: Path, *, adjust_config: Callable[[object], None] | None = None) -> None:
    """Dequantise the GGUF model `src` and save it with its tokenizer as a safetensors folder `dest`.

    Models up to 1B parameters are kept in float32, larger ones in bfloat16 (half the disk, and the
    classifier loads them in float32 anyway).
    """
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer)
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    folder, name = str(src.parent), src.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        auto = (AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else
                AutoModelForSeq2SeqLM if config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES else
                AutoModel)
        loaded = auto.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"transformers could not load the GGUF file {src} ({type(e).__name__}: {str(e)[:300]}). "
                         f"Fix: use the original Hugging Face model it was made from (config.json + safetensors, "
                         f"or its hub id).") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if adjust_config is not None:
        adjust_config(config)
    model = auto.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    lost = [m for m in missing if not (tied and "lm_head" in m)]
    if lost or unexpected:
        raise ModelError(f"Converting {src} lost weights (missing {lost[:3]}, unexpected {unexpected[:3]}). Fix: use "
                         f"the original Hugging Face model it was made from.")
    del loaded
    if tied:
        model.tie_weights()
    if sum(p.numel() for p in model.parameters()) > 1e9:
        model = model.to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(dest)


def build_once(out: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` into a fresh folder next to `out` and rename it to `out`: a crash leaves no half
    folder, and two processes converting at once both end with one complete folder."""
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        build(tmp)
        if out.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def converted_dir(src: Path) -> Path:
    """Where the conversion of `src` is (or will be) cached."""
    return assets_dir() / "gguf" / f"{src.stem[:60]}-{cache_key(src)}"


def gguf_model_path(src: Path) -> Path:
    """The cached safetensors folder converted from the GGUF file `src` (converted on first use)."""
    check_gguf(src)
    out = converted_dir(src)

    def build(tmp: Path) -> None:
        convert_gguf(src, tmp)
        (tmp / "workbench_gguf_source.json").write_text(json.dumps(
            {"source": str(src.resolve()), "size": src.stat().st_size}, indent=2))
    return build_once(out, build)
