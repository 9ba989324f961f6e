"""The dashboard for continued pre-training (`masked-lm`, `causal-lm`): corpora offered to both tasks, the Data
page's corpus report, the Train page's corpus settings and finished runs as a starting model, and the Evaluate
page's perplexity before -> after, hardest documents, slices and playground, on tiny BERT/Llama runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from conftest import FILLER, NEG, POS  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))


def _corpus(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Paragraphs of the tiny models' words; each ends with "." (not in their vocabulary: a little [UNK])."""
    rng = random.Random(seed)
    paras = [" ".join(rng.choice(FILLER + POS + NEG) for _ in range(rng.randint(8, 20))) + " ." for _ in range(n)]
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pt_runs(tmp_path_factory, tiny_bert, tiny_llama):
    """A runs root with a tiny masked-lm run and a tiny causal-lm run (validation passes logged)."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("pt-dash")
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(root / "runs")
    corpus = _corpus(root / "corpus.txt")
    runs = {}
    for task, model, name in (("masked-lm", tiny_bert, "mlm-tiny"), ("causal-lm", tiny_llama, "clm-tiny")):
        cfg = RunConfig.from_dict({
            "task": task, "output_dir": str(root / "runs"), "name": name, "model": {"name_or_path": str(model)},
            "data": {"source": str(corpus), "max_length": 32},
            "training": {"max_steps": 12, "learning_rate": 1e-2, "per_device_train_batch_size": 8,
                         "logging_steps": 2, "save_strategy": "no", "eval_strategy": "steps", "eval_steps": 6,
                         "bf16": False}})
        runs[name] = run_training(cfg, new_run_dir(cfg), progress=False)
        assert runs[name].status()["state"] == "completed"
    yield {"corpus": corpus, "root": root / "runs", **runs}
    if old is None:
        os.environ.pop("WORKBENCH_RUNS", None)
    else:
        os.environ["WORKBENCH_RUNS"] = old


def page(name: str) -> AppTest:
    return AppTest.from_string(f"from dashboard import {name}\n{name}.page()", default_timeout=120)


def no_crash(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


# --- which task a corpus is for ---------------------------------------------------------------------
def test_corpora_are_offered_to_both_pretraining_tasks_and_to_no_other(tmp_path):
    from dashboard import sections
    from dashboard.sections import pretraining

    from workbench.storage import save_upload

    assert sections.hook("masked-lm", "evaluate") is pretraining.evaluate
    assert sections.hook("causal-lm", "train_data") is pretraining.train_data
    assert sections.task_for_source("aclsum_papers") == "masked-lm"  # a "corpus" built-in: the first corpus task
    assert sections.task_for_source("msra_ner") == "token-classification"  # other built-ins as before
    text = save_upload(_corpus(tmp_path / "c.txt", 5).read_bytes(), "my-corpus.txt")
    notes = save_upload(b"# Notes\n\nSome text.\n", "notes.md")
    conll = save_upload(b"EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n", "ner.txt")
    assert sections.task_for_source(str(text)) == "masked-lm" and sections.task_for_source(str(notes)) == "masked-lm"
    assert sections.task_for_source(str(conll)) == "token-classification"  # tagged lines stay NER's
    for task in ("masked-lm", "causal-lm"):
        offered = sections.data_sources(task)
        assert {"aclsum_papers", "msra_text", str(text), str(notes)} <= set(offered), task
        assert str(conll) not in offered and "rotten_tomatoes" not in offered and "msra_ner" not in offered
    for task in ("text-classification", "token-classification", "causal-lm-sft", "question-answering"):
        offered = sections.data_sources(task)
        assert not {"aclsum_papers", "msra_text", str(text), str(notes)} & set(offered), task
    assert str(conll) in sections.data_sources("token-classification")


# --- Data page ---------------------------------------------------------------------------------------
def test_data_page_shows_the_corpus_report_with_tokens_per_split_and_unknown_tokens(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from workbench.config import DataConfig
    from workbench.tasks import get_task

    corpus = _corpus(tmp_path / "corpus.txt")
    at = page("data")
    at.session_state["train_model"] = str(tiny_bert)
    at.session_state["t.data.max_length"] = 32
    at.run()
    at.file_uploader(key="data_upload").upload("corpus.txt", corpus.read_bytes())
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert at.radio(key="pt_objective").value == "masked-lm"  # the Train page's model is an encoder
    expected = get_task("masked-lm").prepare(DataConfig(source=str(corpus), max_length=32), 42,
                                             AutoTokenizer.from_pretrained(tiny_bert), raise_on_problems=False).report
    d = expected.details
    splits = next(x.value for x in at.dataframe if x.value.index.name == "split")
    assert splits["documents"].to_dict() == d["documents"] and splits["characters"].to_dict() == d["characters"]
    assert splits["tokens"].to_dict() == d["tokens"] and sum(d["documents"].values()) == 60
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Documents"] == "60" and metrics["Tokens (train)"] == f"{d['tokens']['train']:,}"
    assert metrics["Training blocks"] == f"{d['train_blocks']:,}"
    assert metrics["Unknown tokens"] == f"{expected.unknown_tokens['share']:.1%}" != "0.0%"  # the "." pieces
    assert any("[UNK]" in w for w in texts(at.warning)), texts(at.warning)
    preview = next(x.value for x in at.dataframe if "text" in x.value.columns)
    assert preview["text"].iloc[0] == corpus.read_text().split("\n\n")[0]
    assert any("Ready: 60 documents" in s for s in texts(at.success))
    assert at.session_state["data_choice"]["task"] == "masked-lm"
    at.radio(key="pt_objective").set_value("causal-lm")
    no_crash(at.run())
    assert at.session_state["data_choice"]["task"] == "causal-lm"  # the Train page's task follows the choice

    at.file_uploader(key="data_upload").upload("zh.txt", ("今天天气很好。\n\n" * 40).encode())
    no_crash(at.run())  # Chinese for a tokenizer without it: mostly [UNK], a problem that stops the run
    at.radio(key="pt_objective").set_value("masked-lm")
    no_crash(at.run())
    assert any("[UNK]" in e for e in texts(at.error)), texts(at.error)
    assert not any("Ready" in s for s in texts(at.success))


# --- Train page ----------------------------------------------------------------------------------------
def _adapter_only_run(src, root: Path) -> Path:
    """A completed run directory whose model folder holds a LoRA adapter alone: not a starting model."""
    fake = root / "lora-only"
    fake.mkdir()
    shutil.copy(src.config_file, fake / "config.yaml")
    (fake / "status.json").write_text(json.dumps({"state": "completed", "created": 1.0}))
    (fake / "model").mkdir()
    (fake / "model" / "adapter_config.json").write_text("{}")
    return fake


def test_train_page_offers_corpus_settings_and_finished_runs_as_starting_models(pt_runs, monkeypatch):
    import dashboard.train

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    fake = _adapter_only_run(pt_runs["mlm-tiny"], pt_runs["root"])
    corpus = str(pt_runs["corpus"])
    at = page("train")
    at.session_state["runs_folder"] = str(pt_runs["root"])
    at.session_state["data_choice"] = {"source": corpus, "task": "masked-lm", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    assert at.selectbox(key="train_task").value == "masked-lm"
    options = at.selectbox(key="train_source").options
    assert at.selectbox(key="train_source").value == corpus and {"aclsum_papers", "msra_text"} <= set(options)
    assert not at.selectbox(key="t.data.document_split").disabled  # a text file: documents per paragraph/line
    assert at.number_input(key="t.data.mlm_probability").value == pytest.approx(0.15)
    at.radio(key="train_model_kind").set_value("Finished run")
    no_crash(at.run())
    labels = at.selectbox(key="train_run_model").options  # shown by run name, task and starting model
    base = {n: Path(pt_runs[n].config().model.name_or_path).name for n in ("clm-tiny", "mlm-tiny")}
    assert sorted(labels) == [f"clm-tiny · causal-lm · from {base['clm-tiny']}",
                              f"mlm-tiny · masked-lm · from {base['mlm-tiny']}"]
    assert fake.exists() and not any("lora-only" in o for o in labels)  # an adapter alone is no starting model
    at.selectbox(key="train_run_model").set_value(str(pt_runs["mlm-tiny"].path))
    no_crash(at.run())
    assert any("model type bert" in c for c in texts(at.caption))  # the run's model folder is read like a model's
    assert at.radio(key="t.peft.method").value == "full"
    assert at.number_input(key="t.training.learning_rate").value == pytest.approx(1e-4)
    at.number_input(key="t.data.mlm_probability").set_value(0.3)
    at.checkbox(key="t.data.whole_word_mask").check()
    at.selectbox(key="t.data.document_split").set_value("line")
    at.number_input(key="t.data.max_length").set_value(32)
    at.text_input(key="train_name").input("from-mlm")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    cfg = launched[0]
    assert cfg.task == "masked-lm" and cfg.validate() == [] and cfg.name == "from-mlm"
    assert cfg.model.name_or_path == str(pt_runs["mlm-tiny"].path)  # the run directory is the starting model
    assert cfg.data.mlm_probability == 0.3 and cfg.data.whole_word_mask and cfg.data.document_split == "line"
    assert cfg.data.source == corpus and cfg.training.metric_for_best_model == "perplexity"

    at.selectbox(key="train_task").set_value("causal-lm")  # the same corpus, no masking knobs, a decoder: LoRA
    at.selectbox(key="train_run_model").set_value(str(pt_runs["clm-tiny"].path))
    no_crash(at.run())
    assert at.selectbox(key="train_source").value == corpus
    assert not [w for w in at.number_input if w.key == "t.data.mlm_probability"]
    assert at.radio(key="t.peft.method").value == "lora"
    assert at.number_input(key="t.training.learning_rate").value == pytest.approx(1e-3)


# --- Evaluate page on tiny runs --------------------------------------------------------------------------
def _evaluate(run_name: str) -> AppTest:
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value(run_name)
    return no_crash(at.run())


def test_evaluate_page_shows_perplexity_before_and_after_hardest_documents_and_slices(pt_runs):
    ev = pt_runs["mlm-tiny"].evaluation()
    at = _evaluate("mlm-tiny")
    assert not at.error, texts(at.error)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Perplexity"].value == f"{ev['after']['perplexity']:.2f}"
    assert metrics["Perplexity"].delta == f"{ev['after']['perplexity'] - ev['before']['perplexity']:+.3f} vs before"
    assert metrics["Tokens"].value == f"{ev['after']['tokens']:,}"
    line = f"**Perplexity {ev['before']['perplexity']:.2f} → {ev['after']['perplexity']:.2f}**"
    assert any(m.startswith(line) for m in texts(at.markdown)), texts(at.markdown)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Validation perplexity" in titles
    pred = pt_runs["mlm-tiny"].predictions()
    docs = next(d.value for d in at.dataframe if "loss before" in d.value.columns)
    assert len(docs) == len(pred) and docs["loss"].dropna().is_monotonic_decreasing
    assert {"row", "text", "tokens", "perplexity", "file"} <= set(docs.columns)
    first = docs.iloc[0]
    before = pt_runs["mlm-tiny"].predictions("before").set_index("row")
    assert first["loss before"] == pytest.approx(before.loc[first["row"], "loss"])
    assert at.text[0].value == first["text"]  # the hardest document, readable whole
    at.number_input(key="pt_min_tokens").set_value(3)  # short documents' losses are noisy: leave them out
    no_crash(at.run())
    longer = next(d.value for d in at.dataframe if "loss before" in d.value.columns)
    assert len(longer) == (pred["tokens"] >= 3).sum() < len(pred) and (longer["tokens"] >= 3).all()
    slices = next(d.value for d in at.dataframe if "slice" in d.value.columns)
    whole = slices[slices["slice"] == "document characters"]
    assert whole["documents"].sum() == len(pred) and whole["loss"].notna().all()
    # each token once: the slices' losses, weighted by their tokens, give the split's loss
    assert (whole["loss"] * whole["tokens"]).sum() / whole["tokens"].sum() == pytest.approx(ev["after"]["loss"])


def test_playground_fills_the_mask_with_the_base_model_and_the_run_side_by_side(pt_runs, tiny_bert):
    from workbench.playground import fill_mask, load_lm

    at = _evaluate("mlm-tiny")
    at.text_input(key="pt_mask_text").input("the [MASK] was good")
    at.slider(key="pt_mask_k").set_value(5)
    at.button(key="pt_mask_go").click()
    no_crash(at.run())
    assert not at.error, texts(at.error)
    tables = [d.value for d in at.dataframe if list(d.value.columns) == ["mask", "rank", "token", "probability"]]
    assert len(tables) == 2 and all(len(t) == 5 for t in tables)
    base, tuned = tables
    assert all(t["probability"].is_monotonic_decreasing for t in tables)
    expect = fill_mask(load_lm(pt_runs["mlm-tiny"].path), "the [MASK] was good", 5)[0]
    assert list(tuned["token"]) == [e["text"] for e in expect]
    assert tuned["probability"].to_numpy() == pytest.approx([e["probability"] for e in expect], abs=1e-6)
    assert list(base["probability"]) != list(tuned["probability"])  # two models, not one twice
    assert any("no trained weights" in i for i in texts(at.info))  # the tiny BERT has no MLM head: said so
    at.text_input(key="pt_mask_text").input("no mask here")
    at.button(key="pt_mask_go").click()
    no_crash(at.run())
    assert any("no mask in the text" in e for e in texts(at.error)), texts(at.error)


def test_playground_continues_the_text_with_both_models(pt_runs):
    from workbench.playground import continue_text, load_lm

    at = _evaluate("clm-tiny")
    at.text_area(key="pt_cont_text").input("the movie")
    at.slider(key="pt_cont_n").set_value(6)
    at.button(key="pt_cont_go").click()
    no_crash(at.run())
    assert not at.error, texts(at.error)
    shown = [t.value for t in at.text if t.value.startswith("the movie")]
    assert len(shown) == 2
    out = continue_text(load_lm(pt_runs["clm-tiny"].path), "the movie", max_new_tokens=6)  # greedy: reproducible
    assert shown[1] == ("the movie" + out if out.strip() else "the movie\n(nothing: the model ended the text at once)")
    # The tiny Llama was saved without an output layer: the base's continuation comes from a random head, said so
    assert any("no trained weights for lm_head" in i for i in texts(at.info)), texts(at.info)
