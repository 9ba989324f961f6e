"""workbench.storage: safe upload names and storage, run deletion."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.errors import DataError, RunError
from workbench.paths import uploads_dir
from workbench.storage import delete_run, list_uploads, safe_filename, save_upload


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd.csv", "passwd.csv"),
    ("C:\\Users\\me\\my data (1).csv", "my_data_1.csv"),
    (".hidden.jsonl", "hidden.jsonl"),
    ("naïve résumé.tsv", "naive_resume.tsv"),
    ("a/b/..", "upload"),
    ("", "upload"),
    ("evil\x00.csv", "evil.csv"),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_save_upload_keeps_files_apart_and_inside_the_uploads_dir():
    a = save_upload(b"text,label\nx,1\n", "../data.csv")
    b = save_upload(b"text,label\ny,2\n", "data.csv")
    again = save_upload(b"text,label\nx,1\n", "data.csv")
    assert a.parent == b.parent == uploads_dir() and a != b and again == a
    assert a.name.startswith("data-") and a.suffix == ".csv"
    assert {a, b} <= set(list_uploads())


@pytest.mark.parametrize("data, name, max_bytes, message", [
    (b"", "x.csv", None, "empty"),
    (b"MZ...", "tool.exe", None, "unsupported file type"),
    (b"x" * 100, "x.csv", 10, "upload limit"),
])
def test_save_upload_refuses(data, name, max_bytes, message):
    with pytest.raises(DataError, match=message):
        save_upload(data, name, max_bytes=max_bytes)


def test_delete_run_refuses_a_live_run_and_non_runs(tmp_path):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir

    run = new_run_dir(RunConfig.from_dict({"name": "to-delete", "output_dir": str(tmp_path)}))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.update_status(state="running", pid=proc.pid)
        with pytest.raises(RunError, match="still running"):
            delete_run(run)
    finally:
        proc.kill()
        proc.wait()
    run.update_status(state="stopped")
    delete_run(run.path)
    assert not run.path.exists()
    with pytest.raises(RunError, match="not a run directory"):
        delete_run(tmp_path)
