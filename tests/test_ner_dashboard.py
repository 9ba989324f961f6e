"""The dashboard for token classification (NER): figures, the highlighted sentence view, the page
sections found by task, and the Data, Train, Runs and Evaluate pages on tagged data and a NER run.

The NER run is written by hand with the task's own code (`predictions_table`, `TASK.score`) from
made-up tag probabilities, so every kind of entity error is present and the pages need no training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_ner import _toy_conll  # noqa: E402

from workbench import figures  # noqa: E402
from workbench.tasks.token_classification import TASK, entity_slices, predictions_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
EVIL = "<script>alert(1)</script>"
# (words, gold tags, tags the "after" model predicts): one sentence per kind of entity error.
SENTENCES = [
    ("John Smith lives in Paris".split(), ["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-PER", "I-PER", "O", "O", "B-LOC"]),
    ("Ann visited Rome".split(), ["B-PER", "O", "B-LOC"], ["O", "O", "B-LOC"]),                       # missed
    (["The", EVIL, "met", "Berlin"], ["O", "B-PER", "O", "B-LOC"], ["O", "B-LOC", "O", "B-LOC"]),   # wrong type
    ("New York Times".split(), ["B-LOC", "I-LOC", "I-LOC"], ["B-LOC", "I-LOC", "O"]),              # wrong boundary
    ("It rained in Oslo".split(), ["O", "O", "O", "B-LOC"], ["O", "O", "B-PER", "I-PER"]),         # type and boundary
    ("Nothing here".split(), ["O", "O"], ["O", "B-LOC"]),                                         # spurious
]
AFTER_ERRORS = {"correct": 4, "missed": 1, "spurious": 1, "wrong type": 1, "wrong boundary": 1,
                "wrong type and boundary": 1}


def _probs(tags: list[str]) -> np.ndarray:
    p = np.full((len(tags), len(LABELS)), 0.05)
    for i, t in enumerate(tags):
        p[i, LABELS.index(t)] = 0.8
    return p


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.DataFrame({"tokens": [w for w, _, _ in SENTENCES], "tags": [g for _, g, _ in SENTENCES],
                          "text": [" ".join(w) for w, _, _ in SENTENCES], "line": [1 + 7 * i for i in range(6)]})
    before = predictions_table(frame, [_probs(["O"] * len(g)) for _, g, _ in SENTENCES], LABELS)
    after = predictions_table(frame, [_probs(p) for _, _, p in SENTENCES], LABELS)
    return before, after


def _evaluation() -> dict:
    before, after = _tables()
    return {"before": TASK.score(before, LABELS), "after": TASK.score(after, LABELS)}


@pytest.fixture(scope="module")
def ner_runs(tmp_path_factory):
    """A runs root holding one completed NER run written by hand (config, status, eval, predictions)."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir, write_json_atomic

    root = tmp_path_factory.mktemp("ner-dash")
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(root / "runs")
    data = _toy_conll(root / "toy.conll", 20)
    cfg = RunConfig.from_dict({"task": "token-classification", "name": "ner-fake", "output_dir": str(root / "runs"),
                               "model": {"name_or_path": "minilm"}, "data": {"source": str(data)},
                               "training": {"metric_for_best_model": "f1"}})
    run = new_run_dir(cfg)
    before, after = _tables()
    before.to_json(run.predictions_before_file, orient="records", lines=True, force_ascii=False)
    after.to_json(run.predictions_file, orient="records", lines=True, force_ascii=False)
    write_json_atomic(run.eval_file, _evaluation())
    run.update_status(state="completed")
    yield root
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


# --- figures and the sentence view ----------------------------------------------------------------
def test_ner_figures_have_a_trace_per_stage_and_the_counts():
    ev = _evaluation()
    assert ev["after"]["errors"] == AFTER_ERRORS  # the hand-made sentences hold one error of each kind
    fig = figures.entity_type_figure(ev, metric="recall")
    assert [t.name for t in fig.data] == ["before fine-tuning", "after fine-tuning"]
    assert set(fig.data[1].x) == {"LOC", "PER"}
    per = dict(zip(fig.data[1].x, fig.data[1].y))
    assert per["PER"] == pytest.approx(ev["after"]["per_type"]["PER"]["recall"]) and per["PER"] == pytest.approx(1 / 3)
    fig = figures.error_types_figure(ev)
    assert list(fig.data[1].x) == list(figures.ner.ERROR_TYPES)
    assert list(fig.data[1].y) == [1, 1, 1, 1, 1] and list(fig.data[0].y)[0] == 8  # before: every entity missed
    assert "4 correct" in fig.data[1].name
    heat = figures.token_confusion_figure(ev["after"]).data[0]
    assert heat.type == "heatmap" and list(heat.x) == LABELS and list(heat.y) == LABELS
    _, after = _tables()
    fig = figures.entity_slices_figure(entity_slices(after))
    assert {t.name for t in fig.data} == {"entity type", "entity length", "sentence length"}
    # nothing to draw: a figure that says so, not an exception
    assert figures.entity_type_figure({}).layout.annotations[0].text.startswith("no per-type")
    assert figures.entity_slices_figure(pd.DataFrame()).layout.annotations


def test_error_types_match_the_scorer():
    from workbench.tasks.token_classification.scoring import ERROR_TYPES

    assert figures.ner.ERROR_TYPES == ERROR_TYPES


def test_highlighted_sentence_escapes_text_and_colours_each_type():
    html = figures.highlight_entities(["Meet", EVIL, "in", "Paris"],
                                      [{"type": "PER", "start": 1, "end": 2}, {"type": "LOC", "start": 3, "end": 4},
                                       {"type": "X", "start": 2, "end": 99}, {"start": 0}])  # malformed: skipped
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<mark") == 4  # two entities and their two legend chips
    colors = figures.entity_colors(["PER", "LOC"])
    assert colors["LOC"] != colors["PER"] and f"background:{colors['LOC']}" in html
    assert 'title="LOC">Paris' in html
    cjk = figures.highlight_entities(list("我在北京"), [{"type": "LOC", "start": 2, "end": 4}], legend=False)
    assert "我在<mark" in cjk and ">北京 <span" in cjk  # Chinese characters join without spaces
    view = figures.sentence_view(["Ann", "in", "Rome"], [{"type": "PER", "start": 0, "end": 1}],
                                 [{"type": "LOC", "start": 0, "end": 1}])
    assert ">gold<" in view and ">predicted<" in view and 'title="PER">Ann' in view and 'title="LOC">Ann' in view
    text = figures.highlight_text("<b>Ada</b> in London", [{"type": "PER", "start": 3, "end": 6},
                                                           {"type": "LOC", "start": 14, "end": 20}])
    assert "&lt;b&gt;<mark" in text and 'title="LOC">London' in text and "<b>" not in text


# --- sections found by task -------------------------------------------------------------------------
def test_sections_are_found_by_task_with_classification_as_the_fallback(tmp_path):
    from dashboard import sections
    from dashboard.sections import classification, generic, token_classification

    assert sections.hook("token-classification", "evaluate") is token_classification.evaluate
    assert sections.hook("no-such-task", "evaluate") is generic.evaluate  # scores and examples of any task
    assert sections.hook("no-such-task", "data_view") is classification.data_view
    assert sections.task_for_source("wnut_ner") == "token-classification"
    assert sections.task_for_source("rotten_tomatoes") == "text-classification"
    assert sections.task_for_source(str(_toy_conll(tmp_path / "toy.txt", 3))) == "token-classification"
    table = tmp_path / "t.txt"
    table.write_text("text,label\na fine film,pos\na dull film,neg\n", encoding="utf-8")
    assert sections.task_for_source(str(table)) == "text-classification"

    class Toy:  # a task defined outside the package brings its own sections the same way
        @staticmethod
        def claims(source: str) -> bool:
            return source.endswith(".toy")

    sections.register_sections("toy-task", Toy)
    try:
        assert sections.task_for_source("x.toy") == "toy-task"
        assert sections.hook("toy-task", "data_view") is classification.data_view
        with pytest.raises(ValueError, match="already registered"):
            sections.register_sections("toy-task", object())
    finally:
        sections.SECTIONS.pop("toy-task")


# --- pages ----------------------------------------------------------------------------------------
def test_evaluate_page_shows_the_entity_report_errors_and_a_highlighted_example(ner_runs):
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value("ner-fake")
    no_crash(at.run())
    metrics = {m.label: m for m in at.metric}
    assert {"Entity F1", "Entity precision", "Entity recall", "Entity F1 (strict)"} <= set(metrics)
    assert float(metrics["Entity F1"].value) == pytest.approx(_evaluation()["after"]["f1"], abs=1e-3)
    assert "vs before" in metrics["Entity F1"].delta
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    counts = tables[("error", "before", "after")].set_index("error")["after"].to_dict()
    assert counts == AFTER_ERRORS
    overall = tables[("score", "before", "after", "change")].set_index("score")
    assert {"entity F1", "entity F1, strict mode", "token accuracy"} <= set(overall.index)
    per_type = tables[("type", "gold entities", "precision before", "precision", "recall before", "recall",
                       "f1 before", "f1")]
    assert set(per_type["type"]) == {"LOC", "PER"}
    assert {"slice", "recall", "precision", "f1"} <= set(next(c for c in tables if "slice" in c))
    assert len(at.get("plotly_chart")) >= 4  # per type, error types, token confusion, slices

    # Examples: sentences with errors only (5 of 6); pick the one whose entity was given the wrong type.
    assert any("5 of 6 test sentences" in c for c in texts(at.caption))
    at.multiselect(key="ner_ex_kinds").set_value(["wrong type"])
    no_crash(at.run())
    assert any("1 of 6 test sentences" in c for c in texts(at.caption))
    html = at.get("html")[0].proto.body
    assert "&lt;script&gt;" in html and "<script>" not in html  # the untrusted word is escaped
    assert 'title="PER">&lt;script&gt;' in html and 'title="LOC">&lt;script&gt;' in html  # gold PER, predicted LOC
    errors = next(d.value for d in at.dataframe if list(d.value.columns) == ["error", "gold", "predicted"])
    assert errors.to_dict("records") == [{"error": "wrong type", "gold": f"PER: {EVIL}", "predicted": f"LOC: {EVIL}"}]
    at.multiselect(key="ner_ex_kinds").set_value([])
    at.radio(key="ner_ex_view").set_value("All sentences")
    no_crash(at.run())
    at.selectbox(key="ner_ex_row").set_value(1)  # the sentence without errors
    no_crash(at.run())
    assert 'title="PER">John Smith' in at.get("html")[0].proto.body
    assert any("Every entity in this sentence" in s for s in texts(at.success))
    assert any("no final model yet" in i for i in texts(at.info))  # Try it: the hand-made run has no model


def test_runs_page_lists_a_ner_run_by_its_f1(ner_runs):
    at = no_crash(page("runs").run())
    table = at.dataframe[0].value
    row = table[table["run"] == "ner-fake"].iloc[0]
    assert row["f1"] == pytest.approx(_evaluation()["after"]["f1"]) and row["f1_before"] == 0.0


def test_data_page_shows_the_ner_report_for_a_tagged_upload():
    conll = ("Ann b-per\nlives O\nin O\nRome I-LOC\n\n" * 3 + "Bob B-PER\nin O\nOslo B-LOC\n\n" * 6).encode()
    at = page("data").run()
    at.file_uploader(key="data_upload").upload("tagged.conll", conll)
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert not [s for s in at.selectbox if s.label in ("Text column", "Label column")], "no column mapping"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tag scheme"] == "BIO" and metrics["Entity types"] == "2"
    warnings = " ".join(texts(at.warning))
    assert "lower case" in warnings and "(lines 4, 9, 14)" in warnings  # repairs, with line numbers
    invalid = next(d.value for d in at.dataframe if "why" in d.value.columns)
    assert 4 in invalid["line"].tolist()
    assert any("Sentence length in words" in c for c in texts(at.caption))
    assert any("Ready: 9 sentences, entity types LOC, PER" in s for s in texts(at.success))
    assert at.session_state["data_choice"]["task"] == "token-classification"


def test_train_page_offers_tagged_data_without_columns_and_builds_a_ner_config(tiny_bert, ner_runs, monkeypatch):
    import dashboard.train

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    data = str(ner_runs / "toy.conll")
    at = page("train")
    at.session_state["data_choice"] = {"source": data, "task": "token-classification", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    assert at.selectbox(key="train_task").value == "token-classification"  # follows the Data page's choice
    options = at.selectbox(key="train_source").options
    assert "wnut_ner" in options and "msra_ner" in options and "rotten_tomatoes" not in options
    assert at.selectbox(key="train_source").value == data
    assert any("No columns to map" in c for c in texts(at.caption))
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    at.text_input(key="train_name").input("ui-ner")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert any("training rows, labels O, B-BAD" in c for c in texts(at.caption))  # the tagger's data check
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    cfg = launched[0]
    assert cfg.task == "token-classification" and cfg.validate() == []
    assert cfg.data.source == data and cfg.data.text_column is None and cfg.data.label_column is None
    assert cfg.training.metric_for_best_model == "f1" and cfg.model.name_or_path == str(tiny_bert)
    assert cfg.name == "ui-ner"
    at.selectbox(key="train_task").set_value("text-classification")
    no_crash(at.run())
    options = at.selectbox(key="train_source").options
    assert "rotten_tomatoes" in options and "wnut_ner" not in options
