"""`workbench serve` in a background thread of this process, with a handle that stops it: for notebooks and tests.

`serve.serve` blocks until Ctrl+C, which would hold a Jupyter kernel for good, and a child process is one more
thing a notebook could leave running. Here uvicorn runs the same app (`serve.create_app`) on a socket bound first
(`serve.bind`; port 0: a free one) in a daemon thread; `serve_in_thread` returns once the model has answered its
warm-up prediction (or raises what went wrong), and `BackgroundServer.stop()` (or leaving a `with` block) asks
uvicorn to finish its requests and shut down, joins the thread and closes the socket. The thread is a daemon, so
a kernel that exits without `stop()` does not hang on it. uvicorn installs signal handlers only in the main
thread, so a server here never takes over the kernel's Ctrl+C.

Requests to it from this process share its GIL; a load test of a background server measures the server and the
clients together (`workbench serve` in its own process is the deployment to measure).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError
from .security import ServeSettings
from .serve import bind, create_app


@dataclass
class BackgroundServer:
    """A running background server: its address, app (state, metrics, monitor) and the thread that runs it."""

    url: str
    app: Any
    settings: ServeSettings
    _server: Any
    _thread: threading.Thread
    _sock: Any

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def endpoint(self) -> str:
        """The prediction endpoint of the served task (e.g. /v1/classify)."""
        return self.app.state.served.endpoint

    def stop(self, timeout: float = 15.0) -> None:
        """Finish the requests in flight, run the app's shutdown, end the thread, close the socket (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # a request that does not end: stop waiting for it
            self._server.force_exit = True
            self._thread.join(5)
        self._sock.close()
        if self._thread.is_alive():
            raise WorkbenchError(f"the server at {self.url} did not stop within {timeout + 5:.0f} s; restart the "
                                 f"kernel to end it.")

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BackgroundServer({self.url}, {'running' if self.running else 'stopped'})"


def serve_in_thread(source: str | Path | Any, settings: ServeSettings | None = None, *,
                 ready_timeout: float = 120.0) -> BackgroundServer:
    """Serve `source` (a completed run, a folder the deploy stage wrote, or a loaded `served.Served`) in a background
    thread; return when it answers predictions. `settings` default to loopback on a free port (`port=0`).
    A `WorkbenchError` says what went wrong: bad settings, a port in use, a model that does not load or whose
    warm-up prediction fails, no answer within `ready_timeout` seconds."""
    import uvicorn

    s = (settings or ServeSettings(port=0)).check()
    sock = bind(s.host, s.port)
    try:
        app = create_app(source, s)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    port = sock.getsockname()[1]
    host = f"[{s.host}]" if ":" in s.host else s.host
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"workbench-serve-{port}")
    handle = BackgroundServer(f"http://{host}:{port}", app, s, server, thread, sock)
    thread.start()
    status = app.state.status
    deadline = time.monotonic() + ready_timeout
    while not (server.started and status["ready"]):
        if status["error"] or not thread.is_alive() or time.monotonic() > deadline:
            why = status["error"] or ("the server thread ended" if not thread.is_alive()
                                      else f"not ready after {ready_timeout:.0f} s")
            handle.stop()
            raise WorkbenchError(f"the server for {app.state.served.name} did not start: {why}.")
        time.sleep(0.05)
    return handle


__all__ = ["BackgroundServer", "serve_in_thread"]
