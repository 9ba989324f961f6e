"""The dashboard's Deploy page with `streamlit.testing.v1.AppTest`: a tiny finished run exported and quantised from
its buttons, the folders compared, refusals shown as messages, and a real `workbench serve` process started, found
again after a reload, called, and stopped."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("fastapi")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

TIMEOUT = 120


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def deploy_page(runs: Path) -> AppTest:
    at = AppTest.from_string("from dashboard import deploy\ndeploy.page()", default_timeout=TIMEOUT)
    at.session_state["runs_folder"] = str(runs)  # what the sidebar's runs-folder box sets
    return at


def frame(at: AppTest, column: str):
    """The first table shown with this column."""
    found = [d.value for d in at.dataframe if column in d.value.columns or column in d.value.index]
    assert found, f"no table with {column!r}"
    return found[0]


def ran(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def runs(deploy_bert_run, tmp_path_factory):
    """A runs folder of its own holding a copy of the tiny finished run (the shared fixture's run stays clean)."""
    root = tmp_path_factory.mktemp("deploy-page") / "runs"
    shutil.copytree(deploy_bert_run.path, root / deploy_bert_run.name)
    return root


def test_no_runs_says_where_to_make_one(tmp_path):
    at = ran(deploy_page(tmp_path / "empty"))
    assert any("No completed runs" in t and "Train page" in t for t in texts(at.info)), texts(at.info)
    assert not [b for b in at.button if b.key == "dep_export"]
    assert not at.error


def test_export_int8_and_prune_buttons_write_folders_the_table_lists(runs):
    at = ran(deploy_page(runs))
    assert at.selectbox(key="dep_run").value is not None
    assert any("No export or compressed copy" in t for t in texts(at.info))
    at.checkbox(key="dep_onnx").uncheck()
    at.button(key="dep_export").click()
    ran(at)
    assert not at.error, texts(at.error)
    assert any("Wrote" in t and "export" in t for t in texts(at.success)), texts(at.success)
    at.selectbox(key="dep_method").set_value("int8-dynamic")
    at.button(key="dep_quantize").click()
    ran(at)
    assert not at.error, texts(at.error)
    assert any("int8-dynamic" in t and "texts/s" in t for t in texts(at.success)), texts(at.success)
    at.slider(key="dep_sparsity").set_value(0.5)
    at.radio(key="dep_prune_kind").set_value("heads")
    at.button(key="dep_prune").click()
    ran(at)
    assert not at.error, texts(at.error)
    assert any("pruned-heads-50" in t for t in texts(at.success)), texts(at.success)
    run = next(p for p in runs.iterdir() if (p / "config.yaml").is_file())
    assert (run / "export" / "workbench_export.json").is_file()
    assert (run / "compressed" / "int8-dynamic" / "compression.json").is_file()
    table = frame(at, "folder")
    assert list(table["folder"]) == ["(the run)", "export", "compressed/int8-dynamic", "compressed/pruned-heads-50"]
    assert table.set_index("folder").loc["compressed/pruned-heads-50", "kind"] == "pruned-heads 50%"
    int8 = table.set_index("folder").loc["compressed/int8-dynamic"]
    assert int8["measured"] and int8["latency_ms_p50"] > 0 and 0 <= int8["score"] <= 1
    assert at.get("plotly_chart"), "the size/score chart"
    # the export is not measured yet: offered first, and Measure fills its row
    assert at.selectbox(key="dep_measure_folder").value == "export"
    at.button(key="dep_measure").click()
    ran(at)
    table = frame(at, "folder").set_index("folder")
    assert table.loc["export", "measured"] and table.loc["export", "throughput"] > 0
    # a second export without the replace box is refused with the message, not a traceback
    at.button(key="dep_export").click()
    ran(at)
    assert any("already exists" in t and "Fix:" in t for t in texts(at.error)), texts(at.error)


def test_refused_runs_show_the_reason(runs, tmp_path):
    import yaml

    from workbench.rundir import RunDir

    src = next(p for p in runs.iterdir() if (p / "config.yaml").is_file())
    root = tmp_path / "runs"
    prefix = root / "prefix-run"
    shutil.copytree(src, prefix, ignore=shutil.ignore_patterns("export", "compressed"))
    cfg = yaml.safe_load((prefix / "config.yaml").read_text())
    cfg["peft"]["method"] = "prefix"
    (prefix / "config.yaml").write_text(yaml.safe_dump(cfg))
    failed = root / "failed-run"
    shutil.copytree(src, failed, ignore=shutil.ignore_patterns("model", "export", "compressed"))
    RunDir(failed).update_status(state="failed", error="the training loss became nan at step 3")
    at = ran(deploy_page(root))
    assert at.selectbox(key="dep_run").options == ["prefix-run"]  # the failed run is not offered
    md = " ".join(m.value for m in at.markdown)
    assert "failed-run" in md and "saved no final model" in md and "nan at step 3" in md, md
    warn = " ".join(texts(at.warning))
    assert "prefix tuning" in warn and "nothing to merge" in warn, warn
    assert at.button(key="dep_export").disabled and at.button(key="dep_quantize").disabled
    assert not at.error


def _wait_ready(url: str, proc_alive, seconds: float = 120) -> None:
    import urllib.request

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc_alive(), "the server process exited"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server never became ready")


def test_start_a_server_find_it_after_a_reload_call_it_and_stop_it(runs):
    from workbench.deploy import servers as S
    from workbench.rundir import pid_alive

    port = free_port()
    at = ran(deploy_page(runs))
    key = at.text_input(key="dep_key").value
    assert len(key) >= 32
    at.number_input(key="dep_port").set_value(port)
    at.button(key="dep_start").click()
    ran(at)
    assert not at.error, texts(at.error)
    [rec] = S.list_servers(runs)
    assert rec.port == port
    try:
        argv = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in argv and key.encode() not in b" ".join(argv)  # the key is not on its command line
        assert f"WORKBENCH_API_KEY={key}".encode() in Path(f"/proc/{rec.pid}/environ").read_bytes().split(b"\0")
        _wait_ready(rec.url, lambda: S.server_alive(rec))

        again = ran(deploy_page(runs))  # a reload: a new session finds the server from its record
        shown = " ".join(texts(again.success))
        assert f"running on http://127.0.0.1:{port}" in shown and "ready" in shown, shown
        code = " ".join(c.value for c in again.code)
        assert "$WORKBENCH_API_KEY" in code and f"http://127.0.0.1:{port}/v1/classify" in code
        assert key not in code  # masked until revealed
        again.toggle(key=f"dep_reveal_{port}").set_value(True)
        ran(again)
        assert key in " ".join(c.value for c in again.code)
        # the monitor reads /v1/monitor with the key; "try it" calls the endpoint
        assert any("No drift flag yet" in t for t in texts(again.info)), texts(again.info)
        assert frame(again, "mean confidence").loc["test split", "predictions"] > 0
        again.text_input(key="dep_try_text").input("a good film")
        ran(again)
        again.button(key="dep_try").click()
        ran(again)
        answer = again.json[0].value
        assert '"predictions"' in answer and '"label"' in answer, answer
        status, body = S.request(rec, "/v1/monitor", key)
        assert status == 200 and body["window"]["n"] == 1
        assert S.request(rec, "/v1/monitor")[0] == 401  # the key is required

        again.button(key=f"dep_stop_{port}").click()
        ran(again)
        assert not pid_alive(rec.pid) and S.readiness(rec)[0] == "down"
        assert S.list_servers(runs) == [] and S.server_key(rec) is None
        assert not any("running on" in t for t in texts(again.success))
    finally:
        if S.server_alive(rec):
            S.stop_server(rec, runs)


def test_compression_figure_draws_measured_folders_and_says_how_many_are_not():
    import pandas as pd

    from workbench.figures.deploy import compression_figure

    table = pd.DataFrame([
        {"folder": "(the run)", "kind": "run (fp32)", "size_mb": 10.0, "metric": "accuracy", "score": 0.9},
        {"folder": "export", "kind": "export", "size_mb": 10.0, "metric": "accuracy", "score": None},
        {"folder": "compressed/int8-dynamic", "kind": "int8-dynamic", "size_mb": 3.0, "metric": "accuracy",
         "score": 0.89}])
    fig = compression_figure(table)
    assert [t.name for t in fig.data] == ["int8-dynamic (compressed/int8-dynamic)", "the run"]
    assert "1 not measured yet" in fig.layout.title.text and fig.layout.yaxis.title.text == "test accuracy"
    assert fig.layout.shapes[0].y0 == 0.9  # the run's score as a line


def test_a_forged_server_record_cannot_stop_another_process(tmp_path):
    """A runs folder may come from someone else: a record naming a pid that is not a `workbench serve` on its port
    is not signalled (only forgotten)."""
    import json
    import subprocess

    from workbench.deploy import servers as S

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / S.SERVERS).mkdir()
        (tmp_path / S.SERVERS / "8123.json").write_text(json.dumps(
            {"pid": proc.pid, "host": "127.0.0.1", "port": 8123, "source": "x", "name": "x", "task":
             "text-classification", "endpoint": "/v1/classify", "batching": True, "started": "", "log": "x.log"}))
        (tmp_path / S.SERVERS / "9000.json").write_text('{"pid": "1; rm -rf /"}')  # malformed: ignored
        [rec] = S.list_servers(tmp_path)
        assert not S.server_alive(rec)
        assert S.stop_server(rec, tmp_path) is False
        assert proc.poll() is None, "the unrelated process was signalled"
        assert S.list_servers(tmp_path) == []
    finally:
        proc.kill()
        proc.wait()
