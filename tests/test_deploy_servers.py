"""The Deploy page's server records (`workbench.deploy.servers`) read as untrusted: `<runs folder>/servers/` may be
shared, and edited while a server runs. No model and no server process here: `subprocess.Popen` is replaced by a
stand-in, so each test takes milliseconds."""

from __future__ import annotations

import json
import os
import shlex
import stat
import types

import pytest

from workbench.deploy import servers as S
from workbench.errors import WorkbenchError

KEY = "k" * 40
PID = 4_000_123  # above Linux's pid_max: no real process has it


class _FakeProc:
    pid = PID

    def __init__(self, *args, **kwargs):
        self.args = args

    def poll(self):
        return None


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A server "started" from this dashboard on port 8123 (its record and private key file written as
    `start_server` writes them), with WORKBENCH_HOME in tmp_path; returns (runs folder, record)."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(S, "_CHILDREN", {})
    monkeypatch.setattr(S, "_task_of", lambda src: "text-classification")
    monkeypatch.setattr(S, "subprocess", types.SimpleNamespace(Popen=_FakeProc, DEVNULL=-3, STDOUT=-2))
    runs, src = tmp_path / "runs", tmp_path / "run"
    runs.mkdir()
    src.mkdir()
    rec = S.start_server(src, runs, api_key=KEY, port=8123)
    return runs, rec


def _edit(runs, **changes):
    f = runs / S.SERVERS / "8123.json"
    raw = json.loads(f.read_text())
    raw.update(changes)
    f.write_text(json.dumps(raw))


def test_the_key_goes_only_where_the_dashboard_started_the_server(started, monkeypatch):
    runs, _ = started
    [rec] = S.list_servers(runs)
    assert S.server_key(rec) == KEY
    key_file = S._key_file(8123, PID)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sent = []

    def urlopen(req, timeout=None):
        sent.append((req.full_url, req.get_header("Authorization")))
        raise OSError("no server in this test")

    monkeypatch.setattr(S.urllib.request, "urlopen", urlopen)
    assert S.request(rec, "/v1/monitor", KEY)[0] == 0
    assert sent == [("http://127.0.0.1:8123/v1/monitor", f"Bearer {KEY}")]

    # Someone edits the live record, keeping pid and port: a host name or an endpoint pointing elsewhere is not a
    # record at all; another IP address is one, but without the key, and the key is never sent there.
    for bad in ({"host": "evil.example"}, {"endpoint": "@evil.example/x"}, {"host": "127.0.0.1@evil.example"}):
        _edit(runs, **{"host": "127.0.0.1", "endpoint": "/v1/classify"} | bad)
        assert S.list_servers(runs) == [], bad
    _edit(runs, host="10.9.8.7", endpoint="/v1/classify")
    [edited] = S.list_servers(runs)
    assert S.server_key(edited) is None
    sent.clear()
    status, body = S.request(edited, "/v1/monitor", KEY)
    assert status == 0 and "not sent" in body["detail"] and sent == []
    _edit(runs, host="127.0.0.1", source="/elsewhere")  # another source: not the server the key was given to
    assert S.server_key(S.list_servers(runs)[0]) is None
    _edit(runs, source=rec.source)  # put back as it was: the key again
    assert S.server_key(S.list_servers(runs)[0]) == KEY


def test_curl_example_quotes_and_refuses_unknown_endpoints(started):
    _, rec = started
    words = shlex.split(S.curl_example(rec))
    assert words[:3] == ["curl", "-s", "http://127.0.0.1:8123/v1/classify"]
    assert json.loads(words[-1]) == {"texts": ["a text to read"]}
    forged = S.ServerRecord(**(rec.to_dict() | {"endpoint": "/v1/classify; touch pwned #"}))
    with pytest.raises(WorkbenchError, match="not an endpoint"):
        S.curl_example(forged)


def test_log_tail_reads_the_port_log_never_the_record_path_nor_a_link(started, tmp_path):
    runs, _ = started
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY\n")
    (runs / S.SERVERS / "8123.log").write_text("Uvicorn running\n")
    _edit(runs, log=str(secret))
    [rec] = S.list_servers(runs)
    assert S.log_tail(rec, runs) == "Uvicorn running"
    (runs / S.SERVERS / "8123.log").unlink()
    (runs / S.SERVERS / "8123.log").symlink_to(secret)
    assert "PRIVATE" not in S.log_tail(rec, runs)


def test_start_server_does_not_write_its_log_through_a_planted_link(started, tmp_path):
    runs, _ = started
    target = tmp_path / "home" / "elsewhere.txt"
    (runs / S.SERVERS / "8200.log").symlink_to(target)
    with pytest.raises(WorkbenchError, match="symbolic link"):
        S.start_server(tmp_path / "run", runs, api_key=KEY, port=8200)
    assert not target.exists()
    assert not (runs / S.SERVERS / "8200.json").exists()


def test_records_that_break_the_json_reader_are_skipped(started):
    runs, rec = started
    folder = runs / S.SERVERS
    (folder / "1.json").write_text('{"pid": ' + "9" * 5000 + "}")  # ValueError: over Python's digit limit
    (folder / "2.json").write_text("[" * 100000)                     # RecursionError
    (folder / "3.json").write_text(json.dumps(rec.to_dict() | {"pid": 10**400, "port": 8124}))
    (folder / "4.json").symlink_to(folder / "8123.json")             # a link: not read
    assert [r.port for r in S.list_servers(runs)] == [8123]


def test_comparison_numbers_that_break_json_or_float_are_left_out(tmp_path):
    from workbench.deploy.catalog import folder_row
    from workbench.deploy.compress import RESULT
    from workbench.deploy.folder import MANIFEST

    rows = {}
    for name, text in {"digits": '{"score": ' + "9" * 5000 + "}", "deep": "[" * 100000,
                       "huge": json.dumps({"score": 10**400, "latency_ms_p50": 1.5})}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / MANIFEST).write_text(json.dumps({"kind": "int8-dynamic"}))
        (folder / RESULT).write_text(text)
        rows[name] = folder_row(folder, tmp_path)
    assert all(r["score"] is None and r["kind"] == "int8-dynamic" for r in rows.values())
    assert rows["huge"]["latency_ms_p50"] == 1.5
    assert os.path.basename(rows["deep"]["path"]) == "deep"
