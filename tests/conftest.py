"""Shared fixtures: tiny BERT and Llama models built from config (no download), small data sets,
and an isolated WORKBENCH_HOME / WORKBENCH_RUNS per test session."""

from __future__ import annotations

import os
import random
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

POS = ["good", "great", "excellent", "wonderful", "superb", "lovely", "brilliant", "fine"]
NEG = ["bad", "awful", "terrible", "poor", "boring", "dull", "weak", "horrible"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "acting", "really", "quite", "story", "and", "it", "this",
          "very", "cast", "ending", "scenes", "music", "script", "truly"]


def make_sentiment_frame(n: int = 200, seed: int = 0, extra: bool = True) -> pd.DataFrame:
    """A learnable toy task: the label is carried by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(3, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label == "pos" else NEG))
        rows.append({"text": " ".join(words), "label": label, "source": rng.choice(["web", "mail"])})
    return pd.DataFrame(rows)


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(POS + NEG + FILLER)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def build_tiny_model(kind: str, folder: Path) -> Path:
    """Save a tiny randomly initialised BERT or Llama (+ tokenizer) as a safetensors folder."""
    import torch
    from transformers import AutoModel, BertConfig, LlamaConfig

    torch.manual_seed(0)
    tok = _tokenizer(kind)
    if kind == "bert":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = AutoModel.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("wbhome")
    old = {k: os.environ.get(k) for k in ("WORKBENCH_HOME", "WORKBENCH_RUNS")}
    # Reuse an existing asset cache (built-in models/data) when the caller points at one. Otherwise the session's
    # home shares the machine's asset cache (~/.cache/workbench/assets, as a user's runs do): the built-ins are
    # downloaded and converted once per machine, not once per session and xdist worker. Their writes are atomic
    # (a temp file or folder renamed into place), so two workers fetching the same one at once is safe; tests
    # that need an empty cache set their own WORKBENCH_HOME.
    if not os.environ.get("WORKBENCH_TEST_HOME"):
        shared = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workbench" / "assets"
        shared.mkdir(parents=True, exist_ok=True)
        (home / "assets").symlink_to(shared, target_is_directory=True)
    os.environ["WORKBENCH_HOME"] = os.environ.get("WORKBENCH_TEST_HOME") or str(home)
    os.environ["WORKBENCH_RUNS"] = str(home / "runs")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    p = tmp_path / "sentiment.csv"
    make_sentiment_frame(200).to_csv(p, index=False)
    return p


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


# --- headless Chromium (tests/test_browser.py, tests/test_jupyterlab.py) ---------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def chromium_missing() -> str | None:
    """Why a browser test cannot run here (no Chromium, chromedriver or selenium), or None."""
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium/chromedriver not found: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: pip install selenium"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(request):
    """Headless Chromium through Selenium, one per test module; the module's `WINDOW_SIZE` ("W,H") sets
    the window (its screenshots' size)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", f"--window-size={getattr(request.module, 'WINDOW_SIZE', '1500,1100')}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


# --- finished tiny runs (tests/test_export.py, tests/test_compress.py) --------------------------------------------
def train_tiny_run(model: Path, out: Path, name: str, *, peft: dict | None = None, **training):
    """A completed tiny sentiment run (the way tests/test_training.py makes one): 200 rows, a few epochs."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    data = out / f"{name}.csv"
    out.mkdir(parents=True, exist_ok=True)
    make_sentiment_frame(200).to_csv(data, index=False)
    t = {"num_train_epochs": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "logging_steps": 10,
         "save_total_limit": 1, "bf16": False, "report_to": [], **training}
    cfg = RunConfig.from_dict({"name": name, "output_dir": str(out), "model": {"name_or_path": str(model)},
                               "data": {"source": str(data)}, "training": t,
                               "peft": {"freeze_embeddings": False, **(peft or {})}})
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    return run


@pytest.fixture(scope="session")
def deploy_bert_run(tiny_bert, tmp_path_factory):
    """A completed full fine-tune of the tiny BERT on the toy sentiment task."""
    return train_tiny_run(tiny_bert, tmp_path_factory.mktemp("deploy-runs"), "bert-full")


@pytest.fixture(scope="session")
def deploy_lora_run(tiny_bert, tmp_path_factory):
    """A completed LoRA run of the tiny BERT that saved its adapter only (no merged copy)."""
    return train_tiny_run(tiny_bert, tmp_path_factory.mktemp("deploy-runs"), "bert-lora", learning_rate=1e-2,
                          peft={"method": "lora", "merge_adapter": False})
