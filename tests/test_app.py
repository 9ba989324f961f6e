"""The dashboard, page by page, with `streamlit.testing.v1.AppTest` (no browser, no network).

Each page is one function (`dashboard.<page>.page`), run here as a tiny script; `app.py` itself is run
once to check the navigation. Runs are real run directories: one tiny model trained in-process, plus
hand-made failed / stopped / running ones for the error paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import make_sentiment_frame  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

TIMEOUT = 120


def page(name: str) -> AppTest:
    return AppTest.from_string(f"from dashboard import {name}\n{name}.page()", default_timeout=TIMEOUT)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def frame(at: AppTest, *columns: str, index: str | None = None):
    """The first table shown with these columns (or this index entry)."""
    for d in at.dataframe:
        v = d.value
        if all(c in v.columns for c in columns) and (index is None or index in v.index):
            return v
    raise AssertionError(f"no table with columns {columns} / index {index!r}")


def no_crash(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_bert):
    """A runs root with a completed tiny run (trained in this process), a failed and a stopped run."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("app-runs")
    old = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(root / "runs")
    csv = root / "sentiment.csv"
    make_sentiment_frame(200).to_csv(csv, index=False)
    base = {"model": {"name_or_path": str(tiny_bert)}, "data": {"source": str(csv)},
            "training": {"num_train_epochs": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                         "logging_steps": 5, "save_strategy": "no"},
            "peft": {"freeze_embeddings": False}}  # a tiny random model must train its embeddings
    cfg = RunConfig.from_dict({**base, "name": "tiny-ok"})
    run_training(cfg, new_run_dir(cfg), progress=False)
    failed = new_run_dir(RunConfig.from_dict({**base, "name": "tiny-failed"}))
    failed.update_status(state="failed", error="the training loss became nan at step 3; training halted. "
                         "Fix: lower training.learning_rate.")
    stopped = new_run_dir(RunConfig.from_dict({**base, "name": "tiny-stopped",
                                               "training": {**base["training"], "learning_rate": 1e-3}}))
    stopped.update_status(state="stopped", step=5, total_steps=72, checkpoint="checkpoint-5")
    yield root / "runs"
    if old is None:
        os.environ.pop("WORKBENCH_RUNS", None)
    else:
        os.environ["WORKBENCH_RUNS"] = old


@pytest.fixture
def running_run(runs_root, tiny_bert):
    """A run whose status says running, owned by a live (sleeping) process: Stop and Delete must respect it."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    proc = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                             "signal.signal(signal.SIGTERM, lambda *a: None)  # like a worker: stop gracefully\n"
                             "time.sleep(120)"])
    run = new_run_dir(RunConfig.from_dict({"name": "tiny-running", "model": {"name_or_path": str(tiny_bert)}}))
    run.update_status(state="running", pid=proc.pid, step=10, total_steps=72, eta_seconds=42.0)
    yield run
    proc.kill()
    proc.wait()
    import shutil
    shutil.rmtree(run.path, ignore_errors=True)


# --- app and Data page -----------------------------------------------------------------------------
def test_app_opens_on_the_data_page():
    at = no_crash(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    assert texts(at.title) == ["Data"]
    assert at.file_uploader, "the Data page starts with the upload widget"


def test_upload_csv_shows_preview_mapping_and_report(tmp_path):
    from workbench.paths import uploads_dir

    at = page("data").run()
    at.file_uploader(key="data_upload").upload("../../my data (1).csv",
                                               make_sentiment_frame(120).to_csv(index=False).encode(), "text/csv")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert at.selectbox[0].value == "text" and at.selectbox[1].value == "label"  # guessed
    assert any("Ready: 120 rows" in s for s in texts(at.success))
    assert len(at.get("plotly_chart")) >= 1  # class balance (token lengths need a local tokenizer)
    stored = list(uploads_dir().glob("my_data_1-*.csv"))
    assert stored and stored[0].parent == uploads_dir(), "name sanitised, file kept under uploads_dir()"
    assert at.session_state["data_choice"]["text_column"] == "text"


@pytest.mark.parametrize("name, data, expected", [
    ("broken.parquet", b"\x00\x01 not parquet", "not a readable Parquet file"),
    ("broken.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": oops}\n', "line 2 is not valid JSON"),
    ("empty.csv", b"", "empty"),
])
def test_bad_files_show_an_error_not_a_traceback(name, data, expected):
    at = page("data").run()
    at.file_uploader(key="data_upload").upload(name, data)
    no_crash(at.run())
    assert any(expected in e for e in texts(at.error)), texts(at.error)
    assert not at.success


def test_one_class_data_is_a_problem_with_its_fix():
    df = make_sentiment_frame(60)
    df["label"] = "pos"
    at = page("data").run()
    at.file_uploader(key="data_upload").upload("one_class.csv", df.to_csv(index=False).encode())
    no_crash(at.run())
    errors = texts(at.error)
    assert any("only one class" in e and "Fix:" in e for e in errors), errors
    assert not at.success


def test_upload_over_the_size_limit_is_refused():
    from streamlit import config

    old = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)
    try:
        at = page("data").run()
        at.file_uploader(key="data_upload").upload("big.csv", b"text,label\n" + b"x" * (2 * 1024 * 1024) + b",a\n")
        no_crash(at.run())
    finally:
        config.set_option("server.maxUploadSize", old)
    assert any("upload limit" in e for e in texts(at.error)), texts(at.error)


# --- Train page ------------------------------------------------------------------------------------
def _train_with(tiny_bert, runs_root) -> AppTest:
    at = page("train")
    at.session_state["data_choice"] = {"source": str(runs_root.parent / "sentiment.csv"), "text_column": "text",
                                       "label_column": "label", "text_pair_column": None}
    at.run()
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    return no_crash(at.run())


def test_train_page_presets_help_and_estimate(tiny_bert, runs_root):
    from workbench.config import field_help

    at = _train_with(tiny_bert, runs_root)
    assert not at.error, texts(at.error)
    lr = at.number_input(key="t.training.learning_rate")
    assert lr.help == field_help()["training.learning_rate"]
    at.segmented_control(key="train_preset").set_value("quick look")
    no_crash(at.run())
    assert at.number_input(key="t.training.num_train_epochs").value == 1.0
    assert at.number_input(key="t.data.max_train_samples").value == 1000
    labels = {m.label: m.value for m in at.metric}
    assert {"Parameters", "Peak memory", "Time", "Optimizer steps"} <= set(labels)
    assert any("Estimated, not measured" in c for c in texts(at.caption))
    at.radio(key="t.peft.method").set_value("lora")
    no_crash(at.run())
    assert at.number_input(key="t.training.learning_rate").value == 5e-4  # the LoRA rate of the preset
    assert at.number_input(key="t.peft.lora.r").value == 8


def test_train_page_reports_every_config_problem_and_blocks_launch(tiny_bert, runs_root):
    at = _train_with(tiny_bert, runs_root)
    at.number_input(key="t.training.learning_rate").set_value(0.0)
    at.number_input(key="t.data.validation_size").set_value(0.5)
    at.number_input(key="t.data.test_size").set_value(0.6)
    no_crash(at.run())
    errors = " ".join(texts(at.error))
    assert "training.learning_rate" in errors and "validation_size + data.test_size" in errors
    launch = [b for b in at.button if b.label == "Launch"][0]
    assert launch.disabled


def test_train_page_rejects_a_folder_that_is_not_a_model(tmp_path, runs_root):
    at = page("train").run()
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tmp_path))
    no_crash(at.run())
    assert any("not a model folder" in e for e in texts(at.error))


def test_launch_starts_a_separate_process_and_the_page_follows_it(tiny_bert, runs_root):
    from workbench.rundir import RunDir

    at = _train_with(tiny_bert, runs_root)
    at.segmented_control(key="train_preset").set_value("quick look")
    at.run()
    at.number_input(key="t.training.learning_rate").set_value(3e-3)
    at.text_input(key="train_name").input("ui-launched")
    at.run()
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    run = RunDir(runs_root / "ui-launched")
    assert run.exists(), texts(at.error)
    cfg = run.config()
    assert cfg.model.name_or_path == str(tiny_bert) and cfg.training.learning_rate == 3e-3
    assert cfg.training.num_train_epochs == 1.0 and cfg.data.text_column == "text"
    pid = run.status()["pid"]
    assert pid and pid != os.getpid(), "training runs in its own process"
    assert at.selectbox(key="run").value == "ui-launched"  # the live view follows the new run
    assert at.get("progress"), "progress bar shown"
    deadline = time.time() + 150
    while run.status().get("state") in ("queued", "running", "stopping") and time.time() < deadline:
        time.sleep(1)
    assert run.status()["state"] == "completed", run.status()
    no_crash(at.run())  # a fresh look at the page: the finished run, its curves and Resume gone
    assert any("Completed" in s for s in texts(at.success))


def test_every_peft_method_has_its_fields_and_an_ia3_run_launches(tiny_bert, runs_root):
    import json

    from workbench.peft_methods import EXPLAIN
    from workbench.rundir import RunDir

    at = _train_with(tiny_bert, runs_root)
    assert at.radio(key="t.peft.method").options == ["full", "lora", "adalora", "ia3", "prefix", "prompt"]
    at.radio(key="t.peft.method").set_value("adalora")
    no_crash(at.run())
    assert EXPLAIN["adalora"] in texts(at.caption)
    assert at.number_input(key="t.peft.adalora.init_r").value == 12 and at.get("checkbox")
    at.number_input(key="t.peft.adalora.target_r").set_value(20)  # above init_r: refused with the reason
    no_crash(at.run())
    assert any("target_r=20 is above init_r=12" in e for e in texts(at.error))
    at.number_input(key="t.peft.adalora.target_r").set_value(4)
    at.radio(key="t.peft.method").set_value("prompt")
    no_crash(at.run())
    at.text_input(key="t.peft.prompt.init_text").input("classify the movie")
    at.radio(key="t.peft.method").set_value("ia3")
    no_crash(at.run())
    assert at.text_input(key="t.peft.ia3.target_modules").value == ""
    at.segmented_control(key="train_preset").set_value("quick look")
    at.run()
    at.number_input(key="t.training.learning_rate").set_value(3e-3)
    at.text_input(key="train_name").input("ui-ia3")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    run = RunDir(runs_root / "ui-ia3")
    assert run.exists(), texts(at.error)
    cfg = run.config()
    assert cfg.peft.method == "ia3" and cfg.peft.prompt.init_text == "classify the movie"
    deadline = time.time() + 150
    while run.status().get("state") in ("queued", "running", "stopping") and time.time() < deadline:
        time.sleep(1)
    assert run.status()["state"] == "completed" and run.status()["method"] == "ia3", run.status()
    assert json.loads((run.model_dir / "adapter_config.json").read_text())["peft_type"] == "IA3"


def test_train_page_launches_two_processes_and_refuses_deepspeed_without_a_gpu(tiny_bert, runs_root, monkeypatch):
    from workbench.rundir import RunDir

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = _train_with(tiny_bert, runs_root)
    at.segmented_control(key="train_preset").set_value("quick look")
    at.run()
    at.number_input(key="t.training.learning_rate").set_value(3e-3)
    at.selectbox(key="t.distributed.strategy").set_value("deepspeed")
    at.number_input(key="t.distributed.nproc_per_node").set_value(2)
    no_crash(at.run())
    assert any("needs a GPU" in e for e in texts(at.error)), texts(at.error)
    assert [b for b in at.button if b.label == "Launch"][0].disabled
    at.selectbox(key="t.distributed.strategy").set_value("ddp")
    at.text_input(key="train_name").input("ui-ddp")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    run = RunDir(runs_root / "ui-ddp")
    assert run.exists(), texts(at.error)
    assert run.config().distributed.nproc_per_node == 2 and run.config().distributed.strategy == "ddp"
    deadline = time.time() + 300
    while run.status().get("state") in ("queued", "running", "stopping") and time.time() < deadline:
        time.sleep(1)
    st = run.status()
    assert st["state"] == "completed" and st["world_size"] == 2 and st["strategy"] == "ddp", st
    assert (run.path / "launch" / "torchrun.sh").is_file()
    no_crash(at.run())
    assert any("2 processes · ddp" in c for c in texts(at.caption)), texts(at.caption)


# --- live run view: failed, stopped, running ---------------------------------------------------------
def _monitor(name: str) -> AppTest:
    at = page("train").run()
    at.selectbox(key="run").set_value(name)
    return no_crash(at.run())


def test_a_failed_run_shows_its_error_and_can_resume(runs_root):
    at = _monitor("tiny-failed")
    assert any("Run failed" in e and "nan" in e for e in texts(at.error))
    assert any(b.label == "Resume" for b in at.button)


def test_a_stopped_run_says_where_it_stopped_and_resumes(runs_root, monkeypatch):
    import dashboard.monitor

    resumed = []
    monkeypatch.setattr(dashboard.monitor, "resume", lambda path: resumed.append(Path(path).name))
    at = _monitor("tiny-stopped")
    assert any("Stopped at step 5" in i for i in texts(at.info))
    [b for b in at.button if b.label == "Resume"][0].click()
    no_crash(at.run())
    assert resumed == ["tiny-stopped"]


def test_stop_asks_a_running_run_to_checkpoint_and_stop(running_run):
    at = _monitor("tiny-running")
    assert any("ETA" in p.proto.text for p in at.get("progress"))
    [b for b in at.button if b.label == "Stop"][0].click()
    no_crash(at.run())
    assert running_run.stop_file.exists()
    assert running_run.status()["state"] == "stopping"


# --- Runs page -------------------------------------------------------------------------------------
def test_runs_page_lists_compares_and_diffs(runs_root):
    at = no_crash(page("runs").run())
    table = at.dataframe[0].value
    assert {"tiny-ok", "tiny-failed", "tiny-stopped"} <= set(table["run"])
    assert any("tiny-failed failed" in e for e in texts(at.error))
    at.multiselect(key="compare_runs").set_value(["tiny-ok", "tiny-stopped"])
    no_crash(at.run())
    assert len(at.get("plotly_chart")) == 2
    diff = frame(at, "tiny-ok", "tiny-stopped")
    assert "training.learning_rate" in diff.index and "name" not in diff.index


def test_delete_needs_confirmation_and_refuses_a_running_run(runs_root, running_run, tiny_bert):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    doomed = new_run_dir(RunConfig.from_dict({"name": "tiny-doomed", "model": {"name_or_path": str(tiny_bert)}}))
    doomed.update_status(state="completed")
    at = page("runs").run()
    at.selectbox(key="delete_run").set_value("tiny-running")
    no_crash(at.run())
    assert any("still running" in w for w in texts(at.warning))
    assert not [b for b in at.button if b.label == "Delete"]
    at.selectbox(key="delete_run").set_value("tiny-doomed")
    no_crash(at.run())
    delete = [b for b in at.button if b.label == "Delete"][0]
    assert delete.disabled and doomed.path.exists()
    at.checkbox(key="delete_sure_tiny-doomed").check()
    at.run()
    [b for b in at.button if b.label == "Delete"][0].click()
    no_crash(at.run())
    assert not doomed.path.exists() and running_run.path.exists()


# --- Evaluate page ---------------------------------------------------------------------------------
def test_evaluate_page_scores_confusion_cell_errors_diff_and_try_it(runs_root):
    at = page("evaluate").run()
    at.selectbox(key="eval_run").set_value("tiny-ok")
    no_crash(at.run())
    metrics = {m.label: m for m in at.metric}
    assert float(metrics["Accuracy"].value) > 0.8 and "vs before" in metrics["Accuracy"].delta
    assert len(at.get("plotly_chart")) >= 4  # before/after, per class, confusion matrix, slices
    at.selectbox(key="cm_gold").set_value("neg")
    at.selectbox(key="cm_pred").set_value("neg")
    no_crash(at.run())
    cell = at.dataframe[1].value  # tables in page order: per-class report, then this cell's examples
    assert len(cell) > 0 and set(cell["gold"]) == {"neg"} and set(cell["predicted"]) == {"neg"}
    at.radio(key="err_view").set_value("All examples")
    at.multiselect(key="err_gold").set_value(["pos"])
    at.text_input(key="err_pattern").input("film")
    no_crash(at.run())
    table = at.dataframe[2].value  # after the per-class report and the confusion cell's examples
    assert len(table) and set(table["gold"]) == {"pos"} and table["text"].str.contains("film").all()
    assert "source" in frame(at, "feature", "delta_accuracy")["feature"].tolist()  # the user's extra column
    at.text_input(key="err_pattern").input("(unclosed")
    no_crash(at.run())
    assert any("not a valid regular expression" in e for e in texts(at.error))
    assert {m.label for m in at.metric} >= {"Fixed (A wrong, B right)", "Net gain"}  # before vs after diff
    at.text_area(key="try_text").input("a truly wonderful film")
    [b for b in at.button if b.label == "Classify"][0].click()
    no_crash(at.run())
    assert any("**pos**" in s for s in texts(at.success)), texts(at.success)


def test_evaluate_page_with_a_failed_run_shows_its_error(runs_root):
    from workbench.rundir import RunDir, write_json_atomic

    failed = RunDir(runs_root / "tiny-failed")
    ok = RunDir(runs_root / "tiny-ok")
    write_json_atomic(failed.eval_file, {"before": ok.evaluation()["before"]})
    (failed.predictions_before_file).write_bytes(ok.predictions_before_file.read_bytes())
    try:
        at = page("evaluate").run()
        at.selectbox(key="eval_run").set_value("tiny-failed")
        no_crash(at.run())
        assert any("tiny-failed failed" in e for e in texts(at.error))
        assert any("only the scores before" in i for i in texts(at.info))
    finally:
        failed.eval_file.unlink()
        failed.predictions_before_file.unlink()


# --- Attention page --------------------------------------------------------------------------------
def test_attention_page_maps_rollout_difference_and_saliency(runs_root):
    at = page("attention").run()
    at.selectbox(key="att_run").set_value("tiny-ok")
    at.text_area(key="att_text").input("the film was excellent")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) == 2  # only the open tab runs: heatmap + readout bar
    t0 = time.perf_counter()
    at.slider(key="att_layer").set_value(0)
    at.selectbox(key="att_head").set_value(2)
    no_crash(at.run())
    assert time.perf_counter() - t0 < 5, "moving layer/head must not reload or re-run the model"
    for tab in ("Rollout", "Base vs fine-tuned", "Saliency"):
        at.session_state["att_tab"] = tab
        no_crash(at.run())
        assert len(at.get("plotly_chart")) == 1 and not at.error, (tab, texts(at.error))
    assert at.radio(key="att_sal_method").value == "ig"
    at.session_state["att_tab"] = "Attention map"
    at.radio(key="att_text_kind").set_value("From the error table")
    no_crash(at.run())
    assert at.selectbox(key="att_example").value is not None  # uncertain examples when there are no mistakes


def test_attention_page_with_a_missing_model_folder_says_so(tmp_path, runs_root, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "empty-home"))  # no built-in fetched yet on this machine
    at = page("attention").run()
    at.segmented_control(key="att_kind").set_value("A pretrained model")
    at.run()
    assert any("not on this machine" in i for i in texts(at.info)), "no silent download of a built-in"
    at.selectbox(key="att_model").set_value("a local folder...")
    at.run()
    at.text_input(key="att_folder").input(str(tmp_path / "nowhere"))
    no_crash(at.run())
    assert any("does not exist" in e for e in texts(at.error)), texts(at.error)
