"""Issue 13, "one place for runs, one install": a new user's first day with the CLI, the dashboard and
the built-ins (items 8-12 and 15). Each test names its item."""

from __future__ import annotations

import os
import subprocess
import sys
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
    calls: list[dict] = []

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
