"""The dashboard for relation extraction: the marked-sentence view, which files are relations, and the Data, Train,
Evaluate (try-it box included) and Attention pages on a relation file and a tiny trained relation run; the CLI's
`predict` output for a run with many relations; the data report's line about long sentences."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
from conftest import FILLER, NEG, POS  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.figures.relations import marked_sentence_html  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

# Five relations (more than the CLI prints in full): the subject word's group names the relation.
GROUPS = {"praised": POS[:4], "liked": POS[4:], "blamed": NEG[:4], "hated": NEG[4:]}
EVIL = "<script>x</script>"


def _relations(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rel = (list(GROUPS) + ["no_relation"])[i % 5]
        words = rng.sample(FILLER, rng.randint(4, 9))
        subj = rng.choice(GROUPS.get(rel, FILLER))
        words.insert(0, subj)
        obj = words[-1]
        rows.append({"text": " ".join(words), "subject": subj, "object": obj, "relation": rel,
                     "subject_type": "WORD", "object_type": "THING"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _duie(path: Path) -> Path:
    lines = [{"text": f"李柏光从北京大学毕业，生于广东{'。' * i}", "spo_list": [
        {"subject": "李柏光", "predicate": "毕业院校", "object": "北京大学", "subject_type": "人物",
         "object_type": "学校"},
        {"subject": "李柏光", "predicate": "出生地", "object": "广东", "subject_type": "人物", "object_type": "地点"}]}
        for i in range(10)]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def re_run(tmp_path_factory, tiny_bert):
    """A runs root with one tiny relation run trained for a few steps (4 relations and no_relation: 5 labels)."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("re-dash")
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(root / "runs")
    cfg = RunConfig.from_dict({
        "task": "relation-extraction", "output_dir": str(root / "runs"), "name": "re-tiny",
        "model": {"name_or_path": str(tiny_bert)},
        "data": {"source": str(_relations(root / "rel.csv", 100)), "max_length": 24},
        "training": {"max_steps": 3, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "no", "eval_strategy": "no", "metric_for_best_model": None, "bf16": False}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    yield run
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


# --- the sentence view and which files are relations -----------------------------------------------
def test_marked_sentence_is_escaped_with_both_entities_highlighted_and_typed():
    out = marked_sentence_html(f"<S:人物>李柏光</S:人物>从<O>{EVIL}</O>毕业", "毕业院校")
    assert "<script>" not in out and "&lt;script&gt;x&lt;/script&gt;" in out
    assert 'title="subject">李柏光</mark>' in out and 'title="object">&lt;script&gt;' in out
    assert "subject · 人物" in out and ">object</sub>" in out and "毕业院校" in out
    assert "<S:" not in out  # the markers become the highlight
    nested = marked_sentence_html("<O>《<S>红楼梦</S>》</O>")
    assert 'title="object">《</mark>' in nested and 'title="subject">红楼梦</mark>' in nested
    bad = marked_sentence_html("no <S>markers here")  # unreadable markers: shown as typed, escaped
    assert "&lt;S&gt;markers" in bad and "<mark" not in bad


def test_relation_files_are_claimed_and_tables_are_not(tmp_path):
    from dashboard import sections
    from dashboard.sections import relation_extraction

    assert sections.hook("relation-extraction", "evaluate") is relation_extraction.evaluate
    assert sections.task_for_source(str(_relations(tmp_path / "r.csv", 5))) == "relation-extraction"
    assert sections.task_for_source(str(_duie(tmp_path / "d.jsonl"))) == "relation-extraction"
    assert sections.task_for_source("duie_re") == "relation-extraction"
    table = tmp_path / "t.csv"
    table.write_text("text,label\na fine film,pos\n", encoding="utf-8")
    assert sections.task_for_source(str(table)) == "text-classification"
    assert relation_extraction.is_duie(str(tmp_path / "d.jsonl")) and not relation_extraction.is_duie("duie_re")


# --- Data page -------------------------------------------------------------------------------------
def test_data_page_shows_the_relation_report_with_windows_and_bad_rows_named(tiny_bert, tmp_path):
    rows = pd.read_csv(_relations(tmp_path / "r.csv", 40)).to_dict("records")
    rows[0]["text"] = " ".join(["movie"] * 30) + " " + rows[0]["text"]  # long: read in a window (max_length 16)
    rows[0]["object"] = rows[0]["text"].split()[-1]
    at = page("data")
    at.session_state["train_model"] = str(tiny_bert)
    at.session_state["t.data.max_length"] = 16
    at.run()
    at.file_uploader(key="data_upload").upload("rel.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert not [s for s in at.selectbox if s.label in ("Text column", "Label column")], "no column mapping"
    assert 'title="subject">' in at.get("html")[0].proto.body  # the preview's highlighted sentences
    preview = next(d.value for d in at.dataframe if "marked sentence" in d.value.columns)
    assert preview["marked sentence"].str.contains("<S:WORD>", regex=False).all()
    metrics = {m.label: m.value for m in at.metric}
    from workbench.config import DataConfig
    from workbench.tasks.relation_extraction import TASK

    pd.DataFrame(rows).to_csv(tmp_path / "same.csv", index=False)
    share = TASK.prepare(DataConfig(source=str(tmp_path / "same.csv")), 42).report.details["no_relation_share"]
    assert metrics["Relations"] == "4" and metrics["no_relation share (train)"] == f"{share['train']:.0%}"
    counts = next(d.value for d in at.dataframe if d.value.index.name == "relation")
    assert set(counts.index) == set(GROUPS) | {"no_relation"} and int(counts.to_numpy().sum()) == 40
    types = next(d.value for d in at.dataframe if d.value.index.name == "type")
    assert types.loc["WORD", "subject"] > 0 and types.loc["THING", "object"] > 0
    windows = next(d.value for d in at.dataframe if d.value.index.name == "split")
    assert windows["window kept"].sum() >= 1  # the long sentence
    assert any("Ready: " in s and "4 relations" in s for s in texts(at.success))
    assert at.session_state["data_choice"]["task"] == "relation-extraction"

    rows[3]["object"] = "zebra"  # not in its sentence: a problem naming the line, no traceback
    at.file_uploader(key="data_upload").upload("bad.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    no_crash(at.run())
    assert any("line 5" in e and "'zebra' does not occur" in e and "Fix:" in e for e in texts(at.error))


def test_data_page_of_duie_lines_says_how_many_negatives_were_made(tmp_path):
    at = page("data")
    at.session_state["t.data.negative_ratio"] = 0.5
    at.run()
    at.file_uploader(key="data_upload").upload("duie.jsonl", _duie(tmp_path / "d.jsonl").read_bytes())
    no_crash(at.run())
    assert not at.error, texts(at.error)
    caps = " ".join(texts(at.caption))
    assert "DuIE: 20 pairs with a triple; 10 of the 40 pairs without one kept as `no_relation`" in caps
    assert "negative_ratio=0.5" in caps


# --- Train page ------------------------------------------------------------------------------------
def test_train_page_writes_a_relation_config_with_negative_ratio_pooling_and_lora(tiny_llama, tmp_path, monkeypatch):
    import dashboard.train

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    data = str(_duie(tmp_path / "d.jsonl"))
    at = page("train")
    at.session_state["data_choice"] = {"source": data, "task": "relation-extraction", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    assert at.selectbox(key="train_task").value == "relation-extraction"
    options = at.selectbox(key="train_source").options
    assert "duie_re" in options and "rotten_tomatoes" not in options
    assert at.selectbox(key="train_source").value == data
    assert not at.number_input(key="t.data.negative_ratio").disabled  # a DuIE file: the ratio applies
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_llama))
    at.text_input(key="train_name").input("ui-re")
    no_crash(at.run())
    assert at.radio(key="t.peft.method").value == "lora"  # a decoder: LoRA by default
    at.number_input(key="t.data.negative_ratio").set_value(2.0)
    at.radio(key="t.model.pooling").set_value("mean")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    launch = [b for b in at.button if b.label == "Launch"][0]
    assert not launch.disabled
    launch.click()
    no_crash(at.run())
    cfg = launched[0]
    assert cfg.task == "relation-extraction" and cfg.validate() == [] and cfg.name == "ui-re"
    assert cfg.data.source == data and cfg.data.negative_ratio == 2.0 and cfg.model.pooling == "mean"
    assert cfg.peft.method == "lora" and cfg.training.metric_for_best_model == "f1"
    at.selectbox(key="train_source").set_value("duie_re")  # a flat table: the ratio does not apply, and says so
    no_crash(at.run())
    assert at.number_input(key="t.data.negative_ratio").disabled
    assert any("Only for DuIE files" in c for c in texts(at.caption))


# --- Evaluate page (and the try-it box) on a tiny trained run --------------------------------------
def test_evaluate_page_shows_micro_f1_per_relation_table_and_confusion_matrix(re_run):
    ev = re_run.evaluation()
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value("re-tiny")
    no_crash(at.run())
    metrics = {m.label: m for m in at.metric}
    assert float(metrics["Micro F1 (relations)"].value) == pytest.approx(ev["after"]["f1"], abs=1e-3)
    assert float(metrics["Accuracy (all pairs)"].value) == pytest.approx(ev["after"]["accuracy"], abs=1e-3)
    assert "vs before" in metrics["Macro F1"].delta
    per = next(d.value for d in at.dataframe if "relation" in d.value.columns and "support" in d.value.columns)
    assert set(per["relation"]) == set(GROUPS) | {"no_relation"}
    assert per["support"].sum() == ev["after"]["n"] and {"precision", "recall", "f1", "f1 before"} <= set(per)
    row = per.set_index("relation").loc["praised"]
    assert row["f1"] == pytest.approx(ev["after"]["per_relation"]["praised"]["f1"])
    specs = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    spec = next(s for s in specs if s["type"] == "heatmap")
    assert spec["x"] == ev["after"]["labels"] and spec["y"] == ev["after"]["labels"], sorted(spec)
    assert spec["text"] == [[str(int(v)) for v in r] for r in ev["after"]["confusion_matrix"]]  # the counts
    counts = next(d.value for d in at.dataframe if list(d.value.columns) == ["error", "before", "after"])
    assert counts.set_index("error")["after"].to_dict() == ev["after"]["errors"]
    examples = next(d.value for d in at.dataframe if {"error", "gold", "predicted", "text"} <= set(d.value.columns))
    assert len(examples) == sum(ev["after"]["errors"].values())  # every kind of error, by default
    assert examples["text"].str.contains("<S:WORD>", regex=False).all()
    if len(examples):
        assert 'title="subject">' in at.get("html")[0].proto.body and any(t.value.startswith("gold ") for t in at.text)


def test_runs_page_lists_a_relation_run_by_its_micro_f1(re_run):
    at = no_crash(page("runs").run())
    table = at.dataframe[0].value
    row = table[table["run"] == "re-tiny"].iloc[0]
    assert row["f1"] == pytest.approx(re_run.evaluation()["after"]["f1"])


def test_try_it_answers_a_marked_sentence_and_explains_one_without_markers(re_run):
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value("re-tiny")
    no_crash(at.run())
    at.text_area(key="re_try_text").input("<S>good</S> movie was a <O>film</O>")
    [b for b in at.button if b.key == "re_try_go"][0].click()
    no_crash(at.run())
    assert not at.error, texts(at.error)
    answer = at.success[0].value
    labels = json.loads(re_run.labels_file.read_text())
    assert answer.split("**")[1] in labels and "between **good** and **film**" in answer
    probs = next(d.value for d in at.dataframe if list(d.value.columns) == ["relation", "probability"])
    assert set(probs["relation"]) == set(labels) and probs["probability"].sum() == pytest.approx(1, abs=1e-4)
    assert probs["probability"].is_monotonic_decreasing and probs["relation"].iloc[0] == answer.split("**")[1]
    assert any("no entity types given" in i and "<O:THING>" in i for i in texts(at.info)), texts(at.info)
    at.text_area(key="re_try_text").input("good movie was a film")
    [b for b in at.button if b.key == "re_try_go"][0].click()
    no_crash(at.run())
    err = " ".join(texts(at.error))
    assert "No entity markers" in err and "<S>…</S> around the subject" in err and "<S:WORD>" in err
    at.text_area(key="re_try_text").input("<S:PERSON>good</S:PERSON> movie <O>film</O>")  # a type it never saw
    [b for b in at.button if b.key == "re_try_go"][0].click()
    no_crash(at.run())
    assert any("'PERSON' was not in this model's training data" in e for e in texts(at.error))


def test_attention_page_reads_a_relation_run_on_a_marked_sentence(re_run):
    at = page("attention").run()
    at.radio(key="att_text_kind").set_value("From the error table")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    text = at.selectbox(key="att_example").options[0]
    assert "<S:WORD>" in text  # the marked sentence the model read
    line = " ".join(texts(at.markdown))
    assert "Prediction for the whole text" in line
    assert any(f"**{lab}**" in line for lab in json.loads(re_run.labels_file.read_text()))
    assert at.get("plotly_chart")  # the attention map and the readout bar
    from workbench.attention import attention_difference, attention_maps, load_for_attention

    # "Base vs fine-tuned": the pretrained model, its embeddings grown for the run's markers, reads the same tokens
    tuned, base = (attention_maps(*load_for_attention(re_run.path, base=b), text.split(": ", 1)[1])
                   for b in (False, True))
    assert {"<S:WORD>", "</S:WORD>", "<O:THING>", "</O:THING>"} <= set(tuned.tokens)  # each marker one token
    assert base.tokens == tuned.tokens and attention_difference(base, tuned).shape[0] == len(tuned.tokens)


# --- CLI and the data report ---------------------------------------------------------------------------
def test_predict_prints_the_top_three_relations_of_a_large_label_set(re_run, capsys):
    from workbench.cli import main, shown_probabilities

    row = pd.Series({"p_a": 0.1, "p_b": 0.6, "p_c": 0.3})
    assert shown_probabilities(row, ["a", "b", "c"]) == [("a", 0.1), ("b", 0.6), ("c", 0.3)]  # small: all, in order
    row = pd.Series({f"p_{k}": v for k, v in zip("abcde", (0.05, 0.5, 0.1, 0.3, 0.05))})
    assert shown_probabilities(row, list("abcde")) == [("b", 0.5), ("d", 0.3), ("c", 0.1)]
    assert main(["predict", str(re_run.path), "<S>good</S> movie was a <O>film</O>"]) == 0
    predicted, probs, _ = capsys.readouterr().out.strip().split("\t")
    shown = [p.split("=") for p in probs.split("  ")]
    assert len(shown) == 3 and shown[0][0] == predicted  # 5 relations: the answer and the next two
    assert [float(p) for _, p in shown] == sorted((float(p) for _, p in shown), reverse=True)


def test_the_report_says_long_sentences_keep_a_window_around_the_entities(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from workbench.config import DataConfig
    from workbench.data.report import format_report
    from workbench.tasks.relation_extraction import TASK

    rows = pd.read_csv(_relations(tmp_path / "r.csv", 20)).to_dict("records")
    rows[0]["text"] = " ".join(["movie"] * 30) + " " + rows[0]["text"]
    rows[0]["object"] = rows[0]["text"].split()[-1]
    pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
    prep = TASK.prepare(DataConfig(source=str(tmp_path / "long.csv"), max_length=16), 42,
                        AutoTokenizer.from_pretrained(tiny_bert))
    line = next(x for x in format_report(prep.report).splitlines() if "longer than max_length=16" in x)
    assert "keep a window of max_length tokens around the two entities" in line and "truncated" not in line
