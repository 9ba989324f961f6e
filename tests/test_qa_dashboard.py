"""Question answering on the dashboard and in attention: which files are QA data, the highlighted context, the
Data, Train, Evaluate and Attention pages, and `workbench attention RUN "question" --context ...`.

One tiny Llama QA run is trained for a few steps (module fixture, a few seconds); the checks on attention do
not need it to be right, only that the readout is the first token of whatever answer it predicts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_qa import _jsonl, _toy_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

EVIL = "<script>alert(1)</script>"
# Long enough for two windows of 32 tokens with a stride of 8; "good" asks for the praise word.
LONG = ("the movie was really quite dull and the plot was very long and the acting was weak and the music truly "
        "poor and the story was boring and the script was bad and the ending was superb")


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_llama):
    """A runs root with one completed tiny-Llama QA run (a few seconds of training)."""
    from workbench.config import RunConfig
    from workbench.rundir import RunDir, new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("qa-dash")
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(root / "runs")
    data = _jsonl(root / "toy.jsonl", _toy_rows(120, words=(6, 30)))
    cfg = RunConfig.from_dict({
        "task": "question-answering", "output_dir": str(root / "runs"), "name": "qa-tiny",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(data), "max_length": 32, "doc_stride": 8},
        "training": {"num_train_epochs": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"},
        "peft": {"method": "full", "freeze_embeddings": False}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    yield RunDir(run.path)
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


def html_of(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def _expected_readout(run, question: str, context: str) -> tuple[str, int, int]:
    """(answer, its first character, the token position that starts with it in the answer's window), found
    with the task's own prediction (`Predictor`) and windows (`make_windows`), independently of attention."""
    from workbench.attention import qa_settings
    from workbench.predict import Predictor
    from workbench.tasks.question_answering import answer_spans
    from workbench.tasks.question_answering.encode import make_windows

    p = Predictor.from_run(run.path)
    out = p.predict([question], contexts=[context]).iloc[0]
    qa = qa_settings(run.path)
    answers, _ = answer_spans(p.model, p.tokenizer, [question], [context], max_length=qa.max_length,
                              doc_stride=qa.doc_stride, max_answer_length=qa.max_answer_length)
    win = make_windows(p.tokenizer, [question], [context], qa.max_length, min(qa.doc_stride, qa.max_length // 2))
    offsets = win.offsets[answers[0].window]
    starts = [i for i, o in enumerate(offsets) if o is not None and o[0] == int(out["start"])]
    assert len(starts) == 1  # a word-level tokenizer: one token per word
    return str(out["predicted"]), int(out["start"]), starts[0]


# --- which files, and the highlighted context -------------------------------------------------------
def test_squad_json_and_question_context_tables_are_claimed_as_qa(tmp_path):
    from dashboard import sections
    from dashboard.sections import question_answering as qa

    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": "Ada was born in London.", "qas": [{"id": "1", "question": "Where?", "is_impossible": False,
                                                        "answers": [{"text": "London", "answer_start": 16}]}]}]}]}))
    flat = _jsonl(tmp_path / "flat.jsonl", _toy_rows(3))
    csv = tmp_path / "qa.csv"
    csv.write_text("question,context,answer,answer_start\nwho?,Ada ran,Ada,0\n", encoding="utf-8")
    table = tmp_path / "t.csv"
    table.write_text("text,label\na fine film,pos\n", encoding="utf-8")
    for f in (squad, flat, csv):
        assert qa.claims(str(f)) and sections.task_for_source(str(f)) == "question-answering", f
    assert not qa.claims(str(table)) and sections.task_for_source(str(table)) == "text-classification"
    assert sections.task_for_source("duie_qa") == "question-answering"
    assert sections.hook("question-answering", "evaluate") is qa.evaluate


def test_context_html_marks_gold_predicted_and_both_and_escapes():
    from dashboard.sections.question_answering import COLORS, context_html

    ctx = f"Meet {EVIL} in Paris today"
    out = context_html(ctx, [(ctx.index("Paris"), ctx.index("Paris") + 5)], (ctx.index("in"), ctx.index("Paris") + 5))
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert f'background:{COLORS["predicted"]}' in out and 'title="predicted answer">in </mark>' in out
    assert 'title="gold and predicted">Paris</mark>' in out  # where the two agree
    long = "x " * 5000 + "the answer" + " y" * 5000
    clipped = context_html(long, [(10000, 10010)])
    assert 'title="gold answer">the answer</mark>' in clipped and len(clipped) < 3000 and "more characters" in clipped


# --- pages ----------------------------------------------------------------------------------------
def test_data_page_shows_a_qa_files_report_with_the_repair():
    rows = _toy_rows(40, words=(10, 40))
    rows[3]["answer_start"] += 2  # off: repaired, since the answer occurs once in its context
    body = "\n".join(json.dumps(r) for r in rows).encode()
    at = page("data").run()
    at.file_uploader(key="data_upload").upload("questions.jsonl", body)
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert not [s for s in at.selectbox if s.label in ("Text column", "Label column")], "no column mapping"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Questions read"] == "40" and metrics["Unanswerable"] == "0"
    assert any("moved" in w and "line 4" in w for w in texts(at.warning))  # the repair, with its line
    assert any("Context length in characters" in c for c in texts(at.caption))
    assert 'title="gold answer">' in html_of(at)  # the first question's answer marked in its context
    assert any("Ready: 40 questions" in s for s in texts(at.success))
    assert at.session_state["data_choice"]["task"] == "question-answering"


def test_train_page_launches_a_qa_config_with_the_chosen_doc_stride(qa_run, tiny_llama, monkeypatch):
    import dashboard.train
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    data = str(Path(qa_run.path).parent.parent / "toy.jsonl")
    at = page("train")
    at.session_state["data_choice"] = {"source": data, "task": "question-answering", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    assert at.selectbox(key="train_task").value == "question-answering"
    options = at.selectbox(key="train_source").options
    assert "duie_qa" in options and "rotten_tomatoes" not in options and at.selectbox(key="train_source").value == data
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_llama))
    at.text_input(key="train_name").input("ui-qa")
    no_crash(at.run())
    assert at.radio(key="t.peft.method").value == "lora"  # a decoder: LoRA by default
    at.number_input(key="t.data.doc_stride").set_value(24)
    at.number_input(key="t.data.max_answer_length").set_value(12)
    no_crash(at.run())
    assert not at.error, texts(at.error)
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    cfg = launched[0]
    assert cfg.validate() == []
    written = RunConfig.from_yaml(new_run_dir(cfg.override({"output_dir": str(Path(qa_run.path).parent)})).path
                                  / "config.yaml")
    assert written.task == "question-answering" and written.data.source == data
    assert written.data.doc_stride == 24 and written.data.max_answer_length == 12
    assert written.peft.method == "lora" and written.training.metric_for_best_model == "span_f1"


def test_evaluate_page_shows_em_f1_and_the_highlighted_context(qa_run):
    ev = qa_run.evaluation()
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value("qa-tiny")
    no_crash(at.run())
    metrics = {m.label: m for m in at.metric}
    assert float(metrics["Exact match"].value) == pytest.approx(ev["after"]["exact_match"], abs=1e-3)
    assert float(metrics["F1"].value) == pytest.approx(ev["after"]["f1"], abs=1e-3)
    assert "vs before" in metrics["F1"].delta
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    counts = tables[("error", "before", "after")].set_index("error")["after"]
    assert int(counts.sum()) == ev["after"]["n"]
    assert {"slice", "value", "n", "exact_match", "f1"} <= set(next(c for c in tables if "slice" in c))
    at.radio(key="qa_ex_view").set_value("All questions")
    no_crash(at.run())
    pred = qa_run.predictions("after")
    row = int(pred["row"].iloc[0])
    at.selectbox(key="qa_ex_row").set_value(row)
    no_crash(at.run())
    r = pred.iloc[0]
    body = html_of(at)
    gold = r["gold_answers"][0]["text"]
    assert f"<b>Question:</b> {r['question']}</p>" in body
    if r["correct"]:
        assert f'title="gold and predicted">{gold}</mark>' in body
    else:
        assert f'title="gold answer">{gold}</mark>' in body
        assert 'title="predicted answer">' in body or 'title="gold and predicted">' in body
    at.text_input(key="qa_try_question").input("good")
    at.text_area(key="qa_try_context").input(LONG)
    [b for b in at.button if b.label == "Find the answer"][0].click()
    no_crash(at.run())
    answer, start, _ = _expected_readout(qa_run, "good", LONG)
    assert f"<b>Answer:</b> {answer} (characters {start}:{start + len(answer)}" in html_of(at)


def test_attention_page_reads_a_qa_run_at_the_answers_start_token(qa_run):
    answer, start, pos = _expected_readout(qa_run, "good", LONG)
    at = page("attention").run()
    at.selectbox(key="att_run").set_value("qa-tiny")
    no_crash(at.run())
    assert not [t for t in at.text_area if t.key == "att_text"], "a QA run takes a question and a context"
    at.text_input(key="att_question").input("good")
    at.text_area(key="att_context").input(LONG)
    no_crash(at.run())
    assert not at.error, texts(at.error)
    first = answer.split()[0]
    said = " ".join(texts(at.markdown))
    assert f"Answer: **{answer}**" in said and f"its start token **{first}** (position {pos})" in said
    assert f'title="predicted answer">{answer}</mark>' in html_of(at)
    assert len(at.get("plotly_chart")) == 2  # the map and the readout bar
    assert f"Attention from {first} (position {pos})" in at.get("plotly_chart")[1].proto.spec


def test_attention_and_cli_read_a_qa_model_at_the_answers_start_token(qa_run, tmp_path, capsys):
    from workbench.attention import attention_maps, load_for_attention, qa_settings
    from workbench.cli import main
    from workbench.errors import WorkbenchError
    from workbench.saliency import token_saliency

    answer, start, pos = _expected_readout(qa_run, "good", LONG)
    model, tok = load_for_attention(qa_run.path)
    qa = qa_settings(qa_run.path)
    assert (qa.max_length, qa.doc_stride) == (32, 8)
    res = attention_maps(model, tok, "good", context=LONG, max_tokens=qa.max_length, qa=qa)
    assert res.readout == "answer" and res.qa_windows == 2 and res.answer == answer
    assert res.readout_index == pos and res.answer_tokens[0] == pos and res.answer_span == (start, start + len(answer))
    assert res.tokens[pos] == answer.split()[0]
    sal = token_saliency(model, tok, "good", context=LONG, max_tokens=qa.max_length, qa=qa, method="grad")
    assert sal.readout_index == pos and sal.tokens == res.tokens and "answer start" in sal.target_label
    with pytest.raises(WorkbenchError, match="context"):
        attention_maps(model, tok, "good", max_tokens=32, qa=qa)

    out = tmp_path / "att.html"
    assert main(["attention", str(qa_run.path), "good", "--context", LONG, "--out", str(out),
                 "--saliency", "grad"]) == 0
    said = capsys.readouterr().out
    assert f"model answers: {answer}  (context characters {start}:{start + len(answer)})" in said
    assert f"readout: the answer's start token '{answer.split()[0]}' (position {pos}" in said
    assert "read in 2 windows" in said and out.exists()
    assert main(["attention", str(qa_run.path), "good"]) == 2
    assert "--context" in capsys.readouterr().err
