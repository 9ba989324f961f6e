"""`workbench.deploy.background.serve_in_thread`: the server in a thread of this process answers over real loopback
HTTP once started, and `stop()` ends the thread and frees the port; a port in use or a bad source is a message."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from workbench.deploy.background import serve_in_thread  # noqa: E402
from workbench.deploy.security import ServeSettings  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402


def _serving_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("workbench-serve-")]


def test_answers_then_stops_and_frees_the_port(deploy_bert_run):
    server = serve_in_thread(deploy_bert_run.path, ServeSettings(port=0, max_batch=4))
    port = int(server.url.rsplit(":", 1)[1])
    try:
        assert server.running and server.endpoint == "/v1/classify"
        r = httpx.post(server.url + "/v1/classify", json={"texts": ["a great film", "dull"]}, timeout=30)
        assert r.status_code == 200, r.text
        labels = set(deploy_bert_run.labels())
        assert [p["label"] in labels for p in r.json()["predictions"]] == [True, True]
        assert httpx.get(server.url + "/readyz", timeout=10).json()["ready"] is True
    finally:
        server.stop()
    assert not server.running and f"workbench-serve-{port}" not in _serving_threads()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=5)
    probe = socket.socket()
    probe.bind(("127.0.0.1", port))  # the port is free again
    probe.close()
    server.stop()  # a second stop is harmless


def test_a_port_in_use_and_a_bad_source_are_messages(deploy_bert_run, tmp_path):
    with serve_in_thread(deploy_bert_run.path) as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(WorkbenchError, match=f"port {port} is in use"):
            serve_in_thread(deploy_bert_run.path, ServeSettings(port=port))
    assert not first.running
    with pytest.raises(WorkbenchError):
        serve_in_thread(tmp_path)
    assert not _serving_threads()
