"""Issue 13, items 7 and 16: attention windows, and the small things a new user trips over."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import FILLER, POS

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

# 200 words -> 202 tokens with [CLS]/[SEP]: four windows of 64 (62 text tokens each) on the tiny BERT.
LONG = " ".join((FILLER + POS)[i % len(FILLER + POS)] for i in range(200))


# --- item 7: attention windows ---------------------------------------------------------------------
def test_i13_7_windows_cover_the_whole_input_once(tiny_bert):
    from workbench.attention import attention_maps, load_for_attention, token_windows

    model, tok = load_for_attention(tiny_bert)
    windows = token_windows(tok, LONG, max_tokens=64)
    assert windows == [(0, 63), (63, 125), (125, 187), (187, 202)]
    seen = []
    for w in windows:
        r = attention_maps(model, tok, LONG, max_tokens=64, window=w)
        assert r.window == w and r.n_tokens == 202 and len(r.tokens) <= 64
        seen += [t for t, s in zip(r.input_ids, r.special) if not s]
    full = tok(LONG)["input_ids"]
    assert seen == full[1:-1]  # every text token exactly once, in order
    assert token_windows(tok, "a good film", max_tokens=64) == [(0, 5)]


def test_i13_7_whole_text_prediction_is_what_predict_sees(tiny_bert):
    from workbench.attention import load_for_attention, whole_text_prediction
    from workbench.predict import Predictor

    model, tok = load_for_attention(tiny_bert)
    whole = whole_text_prediction(model, tok, LONG, max_length=256)
    # The tiny BERT takes 128 positions: normal prediction cuts there, and the label says so.
    assert whole.max_length == 128 and whole.n_tokens == 202 and whole.truncated
    assert "its first 128 of 202 tokens" in whole.label
    expected = Predictor(model, tok, whole.labels, 256).predict_proba([LONG])[0]
    assert abs(whole.probs - expected).max() < 1e-5


def _attention_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string("from dashboard import attention\nattention.page()", default_timeout=120).run()
    at.segmented_control(key="att_kind").set_value("A pretrained model").run()
    at.selectbox(key="att_model").set_value("a local folder...").run()
    return at


def test_i13_7_attention_page_has_a_window_control_and_labels_its_predictions(tiny_bert):
    at = _attention_page()
    at.text_input(key="att_folder").input(str(tiny_bert)).run()
    at.text_area(key="att_text").input("the film was good").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not [s for s in at.select_slider if s.key == "att_window"], "a text that fits needs no window control"
    assert any("Prediction for the whole text (6 tokens)" in m.value for m in at.markdown)

    at.text_area(key="att_text").input(LONG).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.select_slider(key="att_window").value == 0
    md = [m.value for m in at.markdown]
    assert any("Prediction for this window (tokens 0–62 of 202)" in m for m in md), md
    assert any("whole text, as normal prediction sees it (its first 128 of 202 tokens)" in m for m in md), md

    at.select_slider(key="att_window").set_value(2).run()
    assert not at.exception and not at.error
    assert any("showing positions 125–186" in w.value for w in at.warning)
    md = [m.value for m in at.markdown]
    assert any("Prediction for this window (tokens 125–186 of 202)" in m for m in md), md

    at.text_area(key="att_text").input(" ".join(LONG.split()[:100])).run()  # fewer windows: back to a valid one
    assert not at.exception and not at.error
    assert at.select_slider(key="att_window").value in (0, 1)


def test_i13_7_cli_window_and_out_of_range(tmp_path, tiny_bert, capsys):
    from workbench.cli import main

    out = tmp_path / "att.html"
    rc = main(["attention", str(tiny_bert), LONG, "--max-tokens", "64", "--window", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and out.exists(), printed
    assert "prediction for this window (tokens 63–124 of 202)" in printed
    assert "prediction for the whole text, as normal prediction sees it (its first 128 of 202 tokens)" in printed
    assert "1 = tokens 63–124 of 202" in printed  # the windows are listed with their numbers
    assert main(["attention", str(tiny_bert), LONG, "--max-tokens", "64", "--window", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "window 4 does not exist" in err and "4 windows" in err and "from 0 to 3" in err


# --- item 16: small things -------------------------------------------------------------------------
@pytest.fixture
def fake_minilm(tmp_path, monkeypatch, tiny_bert):
    """A WORKBENCH_HOME whose built-in `minilm` is the tiny BERT (already 'downloaded': nothing is fetched)."""
    import shutil

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "assets" / "models" / "minilm"
    shutil.copytree(tiny_bert, folder)
    return folder


def test_i13_16_token_length_axis_starts_at_0_and_names_the_model(tmp_path, fake_minilm, capsys):
    from workbench.cli import main
    from workbench.data.report import token_length_stats
    from workbench.figures.data import token_length_figure
    from conftest import make_sentiment_frame

    # Long texts, as on the data set that showed the axis running to -2000.
    lengths = [30] * 50 + [800] * 30 + [6000] * 5
    fig = token_length_figure({"token_lengths": token_length_stats(lengths, 256, "minilm")})
    assert fig.layout.xaxis.range[0] == 0 and fig.layout.xaxis.range[1] >= 6000

    csv = tmp_path / "d.csv"
    make_sentiment_frame(60).to_csv(csv, index=False)
    assert main(["report", str(csv), "--model", "minilm"]) == 0
    printed = capsys.readouterr().out
    assert "tokens (minilm):" in printed and str(fake_minilm) not in printed, printed

    from workbench.config import DataConfig
    from workbench.data import prepare_data
    from workbench.models import load_tokenizer, resolve_model_path
    from workbench.config import ModelConfig

    tok = load_tokenizer(resolve_model_path("minilm"), ModelConfig(name_or_path="minilm"))
    prep = prepare_data(DataConfig(source=str(csv)), tokenizer=tok, raise_on_problems=False)
    assert token_length_figure(prep.report).layout.title.text == "Token lengths (minilm)"
    own = tmp_path / "my-model"  # a folder the user gave keeps its path: that is the name they used
    import shutil
    shutil.copytree(fake_minilm, own)
    tok = load_tokenizer(str(own), ModelConfig(name_or_path=str(own)))
    prep = prepare_data(DataConfig(source=str(csv)), tokenizer=tok, raise_on_problems=False)
    assert prep.report.token_lengths["tokenizer"] == str(own)


def test_i13_16_one_validation_point_gets_a_sensible_y_range():
    import pandas as pd

    from workbench.figures.training import metric_figure, throughput_figure

    one = pd.DataFrame([{"kind": "train", "step": 5, "epoch": 0.5, "loss": 0.7},
                        {"kind": "eval", "step": 10, "epoch": 1.0, "eval_accuracy": 0.9005, "eval_f1_macro": 0.9009}])
    lo, hi = metric_figure(one).layout.yaxis.range
    assert hi - lo >= 0.1 and lo <= 0.9005 and hi >= 0.9009 and lo >= -0.01 and hi <= 1.01
    perfect = one.assign(eval_accuracy=1.0, eval_f1_macro=1.0)
    lo, hi = metric_figure(perfect).layout.yaxis.range
    assert 0.85 <= lo <= 0.9 and 1.0 < hi <= 1.01  # a score of 1 is at the top, not mid-air above it
    many = pd.concat([one, one.assign(step=20, eval_accuracy=0.6, eval_f1_macro=0.55)])
    assert metric_figure(many).layout.yaxis.range is None  # a real spread: plotly's own range
    tps = pd.DataFrame([{"kind": "train", "step": 5, "tokens_per_second": 1000.0}])
    lo, hi = throughput_figure(tps).layout.yaxis.range
    assert lo <= 900 and hi >= 1100


def test_i13_16_a_completed_run_shows_a_full_width_full_progress_bar(tmp_path, monkeypatch, tiny_bert):
    from streamlit.testing.v1 import AppTest

    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    run = new_run_dir(RunConfig.from_dict({"name": "done", "model": {"name_or_path": str(tiny_bert)}}))
    # The last step the status recorded is short of total_steps, as when the final step is not logged.
    run.update_status(state="completed", step=58, total_steps=72)
    script = ("import sys\nfrom dashboard.monitor import run_monitor\nfrom workbench.rundir import RunDir\n"
              "run_monitor(RunDir(sys.argv[-1]))")
    at = AppTest.from_string(script.replace("sys.argv[-1]", repr(str(run.path))), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    [bar] = at.get("progress")
    assert bar.proto.value == 100, bar.proto.value
    in_columns = [e for c in at.columns for e in c.get("progress")]
    assert not in_columns, "a finished run's bar must not share its row with an empty button column"


def test_i13_16_the_train_preset_survives_a_reload(tmp_path, monkeypatch, tiny_bert):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    script = "from dashboard import train\ntrain.page()"
    at = AppTest.from_string(script, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    at.segmented_control(key="train_preset").set_value("thorough").run()
    assert at.query_params.get("preset") in ("thorough", ["thorough"]), at.query_params
    # A reload: a new session (empty session state) at the same address.
    again = AppTest.from_string(script, default_timeout=120)
    again.query_params["preset"] = "thorough"
    again.run()
    assert not again.exception, [e.value for e in again.exception]
    assert again.segmented_control(key="train_preset").value == "thorough"
    assert again.number_input(key="t.training.num_train_epochs").value == 6.0
    assert again.number_input(key="t.data.max_length").value == 512
    bad = AppTest.from_string(script, default_timeout=120)
    bad.query_params["preset"] = "nonsense"  # a hand-edited address falls back to the default
    bad.run()
    assert not bad.exception and bad.segmented_control(key="train_preset").value == "good default"


def _scored_run(tmp_path, tiny_bert, row_kind: str):
    """A completed run directory with scores and predictions whose `row`s are file line numbers."""
    import json

    import pandas as pd

    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    run = new_run_dir(RunConfig.from_dict({"name": "scored", "model": {"name_or_path": str(tiny_bert)}}))
    labels = ["neg", "pos"]
    pred = pd.DataFrame({"row": [12956, 40, 7], "text": ["a long\nmulti-line review", "bad", "good"],
                         "gold": ["pos", "neg", "pos"], "predicted": ["neg", "neg", "pos"],
                         "confidence": [0.9, 0.8, 0.7], "margin": [0.8, 0.6, 0.4], "loss": [2.3, 0.2, 0.3],
                         "correct": [False, True, True], "p_neg": [0.9, 0.8, 0.3], "p_pos": [0.1, 0.2, 0.7]})
    pred.to_json(run.predictions_file, orient="records", lines=True)
    scores = {"accuracy": 2 / 3, "f1_macro": 0.67, "precision_macro": 0.75, "recall_macro": 0.75, "n": 3,
              "labels": labels, "confusion_matrix": [[1, 0], [1, 1]],
              "per_class": {k: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for k in labels}}
    run.eval_file.write_text(json.dumps({"after": scores}))
    run.report_file.write_text(json.dumps({"row_kind": row_kind}))
    run.update_status(state="completed")
    return run


def test_i13_16_error_tables_say_row_is_a_line_in_the_file(tmp_path, monkeypatch, tiny_bert, capsys):
    import json

    from streamlit.testing.v1 import AppTest

    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    run = _scored_run(tmp_path, tiny_bert, "line")
    at = AppTest.from_string("from dashboard import evaluate\nevaluate.page()", default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [d for d in at.dataframe if "row" in d.value.columns]
    assert len(tables) == 2  # the confusion cell's examples and the error table
    for d in tables:
        row = json.loads(d.proto.columns)["row"]
        assert row["label"] == "line in file" and "line number in the data file" in row["help"], row

    assert main(["errors", str(run.path), "--min-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "line" in out.split("most confident mistakes ==")[1].splitlines()[1].split()[0]
    run.report_file.write_text(json.dumps({"row_kind": "row"}))  # a JSON file: record numbers
    assert main(["errors", str(run.path), "--min-size", "1"]) == 0
    assert "record" in capsys.readouterr().out


def test_i13_16_lora_runs_print_no_transformers_future_warning(tmp_path, tiny_llama):
    """SmolLM2's recipe is LoRA: peft read transformers' deprecated `is_gradient_checkpointing` on every wrap."""
    import json
    import warnings

    from workbench.config import LoraSettings, ModelConfig, PeftConfig
    from workbench.models import apply_lora, load_classifier, load_tokenizer, load_trained

    cfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(str(tiny_llama), cfg)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = apply_lora(load_classifier(cfg, ["neg", "pos"], tokenizer=tok), PeftConfig(lora=LoraSettings(r=4)))
        folder = tmp_path / "model"
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        (folder / "workbench_model.json").write_text(json.dumps(
            {"labels": ["neg", "pos"], "task": "text-classification", "method": "lora", "model": cfg.__dict__}))
        load_trained(folder)
    future = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
    assert not future, future


class _ScriptedRun:
    """Stands in for a RunDir: each status() read returns the next scripted status (the last one repeats)."""

    def __init__(self, tmp_path, statuses):
        import pandas as pd

        self.statuses, self.reads = list(statuses), 0
        self.report_file = tmp_path / "no-report.json"
        self._metrics = pd.DataFrame([{"kind": "train", "step": 1, "loss": 0.5}])

    def status(self):
        st = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return st

    def metrics(self):
        return self._metrics


# Training reaches its last step, then stays there (saving the model) for many polls before scoring.
_SCRIPT = ([{"phase": "training", "step": s, "total_steps": 4} for s in (0, 1, 2, 3)]
           + [{"phase": "training", "step": 4, "total_steps": 4}] * 12
           + [{"phase": "scoring the test split after fine-tuning", "step": 4, "total_steps": 4}] * 3)


def _follow(tmp_path, monkeypatch):
    import time

    from workbench import cli

    monkeypatch.setattr(cli._ProgressPrinter, "POLL", 0.005)
    run = _ScriptedRun(tmp_path, _SCRIPT)
    printer = cli._ProgressPrinter(run)
    printer.start()
    while run.reads < len(_SCRIPT) + 2:  # every scripted status has been read
        time.sleep(0.01)
    printer.stop()


def test_i13_16_progress_into_a_log_file_is_lines_not_a_redrawn_bar(tmp_path, monkeypatch, capsys):
    from workbench import cli

    monkeypatch.setattr(cli._ProgressPrinter, "LINE_EVERY", 0.0)  # a line per new step, to see them all
    _follow(tmp_path, monkeypatch)  # under pytest, stdout and stderr are not terminals: a log file
    out, err = capsys.readouterr()
    assert "\r" not in out + err, "no redrawing in a file"
    lines = [line for line in out.splitlines() if line.startswith("training: step")]
    assert [line.split()[2] for line in lines] == ["0/4", "1/4", "2/4", "3/4", "4/4"], lines
    assert "training: step 4/4 (100%), loss 0.5000" in out
    assert out.index("step 4/4") < out.index("... scoring the test split")


def test_i13_16_progress_bar_on_a_terminal_is_closed_at_the_last_step(tmp_path, monkeypatch, capsys):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _follow(tmp_path, monkeypatch)
    drawn = term.getvalue()
    assert "4/4" in drawn
    # Reaching the last step closes the bar: the 12 polls while the model is saved draw nothing more.
    assert drawn.count("4/4") <= 2, drawn.count("4/4")
