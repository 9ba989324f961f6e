"""`workbench serve` as a background process the dashboard starts, finds again after a reload, and stops.

Like a training run, a server started from the dashboard is its own process (`python -m workbench serve SOURCE`,
in a new session), so closing the browser tab or restarting the dashboard leaves it running. What is needed to
find it again is a record, `<runs folder>/servers/<port>.json` (pid, host, port, source, task, endpoint, log file),
plus its log `<port>.log` beside it. The API key is never on the command line (where `ps` shows it): the child
gets it in `WORKBENCH_API_KEY`, and a copy is kept, readable by this user only, under the workbench home
(`<home>/server-keys/`), not in the runs folder (which gets shared), so the page can show it and call the server.

A record is read as untrusted (the runs folder may come from someone else): before its pid is signalled, the
process's command line must be a `workbench serve` on the recorded port (`/proc/PID/cmdline`), so a record cannot
make the dashboard stop an unrelated process.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError
from ..paths import home
from ..rundir import pid_alive, write_json_atomic
from .security import DEFAULT_KEY_ENV, MIN_KEY_CHARS, is_loopback

SERVERS = "servers"
_CHILDREN: dict[int, subprocess.Popen] = {}  # servers started by this process: reaped when they end


@dataclass
class ServerRecord:
    """A server started by `start_server`, as written to `<runs folder>/servers/<port>.json`."""

    pid: int
    host: str
    port: int
    source: str        # the run directory or deploy folder served
    name: str          # what to call it: the run's name, or run/folder
    task: str
    endpoint: str      # the prediction endpoint, e.g. /v1/classify
    batching: bool
    started: str
    log: str

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _key_file(port: int, pid: int) -> Path:
    return home() / "server-keys" / f"{port}-{pid}.key"


def start_server(source: str | Path, runs_folder: str | Path, *, api_key: str, host: str = "127.0.0.1",
                 port: int | None = None, batching: bool = True, name: str | None = None) -> ServerRecord:
    """Start `workbench serve SOURCE` in its own process and record it; returns at once (the model loads in the
    child: `readiness` says when it answers). The key travels in the environment only."""
    from .served import ENDPOINTS

    key = (api_key or "").strip()
    if len(key) < MIN_KEY_CHARS:
        raise WorkbenchError(f"the API key has {len(key)} characters: use at least {MIN_KEY_CHARS} (the page "
                             f"generates one).")
    src = Path(source).expanduser().resolve()
    task = _task_of(src)
    if task not in ENDPOINTS:
        raise WorkbenchError(f"{src.name} holds a {task} model; `workbench serve` serves {', '.join(ENDPOINTS)} "
                             f"models.")
    port = int(port) if port else free_port(host)
    folder = Path(runs_folder) / SERVERS
    folder.mkdir(parents=True, exist_ok=True)
    rec_file = folder / f"{port}.json"
    old = _read(rec_file)
    if old is not None and server_alive(old):
        raise WorkbenchError(f"a server started from here already runs on port {port} ({old.name}). Fix: stop it "
                             f"first, or leave the port at 0 for a free one.")
    log = folder / f"{port}.log"
    cmd = [sys.executable, "-m", "workbench", "serve", str(src), "--host", host, "--port", str(port),
           "--max-batch", "16" if batching else "1"]
    env = {**os.environ, DEFAULT_KEY_ENV: key, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "ab") as out:
        # start_new_session: the server outlives the dashboard's script run, its tab and Ctrl+C in its terminal.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, close_fds=True)
    _CHILDREN[proc.pid] = proc
    kf = _key_file(port, proc.pid)
    kf.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key)
    rec = ServerRecord(proc.pid, host, port, str(src), name or src.name, task, ENDPOINTS[task], batching,
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), str(log))
    write_json_atomic(rec_file, rec.to_dict())
    return rec


def _task_of(src: Path) -> str:
    from ..models import is_run_dir
    from ..rundir import RunDir
    from .folder import read_manifest

    if is_run_dir(src):
        return RunDir(src).config().task
    return str(read_manifest(src)["task"])


def _read(f: Path) -> ServerRecord | None:
    """A record, checked field by field; None when it is missing or not one."""
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    types = {"pid": int, "host": str, "port": int, "source": str, "name": str, "task": str, "endpoint": str,
             "batching": bool, "started": str, "log": str}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), t) for k, t in types.items()):
        return None
    if isinstance(raw["pid"], bool) or isinstance(raw["port"], bool) or not 0 < raw["port"] < 65536:
        return None
    return ServerRecord(**{k: raw[k] for k in types})


def list_servers(runs_folder: str | Path) -> list[ServerRecord]:
    """The servers recorded under this runs folder, running or not (`server_alive`), by port."""
    folder = Path(runs_folder) / SERVERS
    if not folder.is_dir():
        return []
    recs = [_read(f) for f in sorted(folder.glob("*.json"))]
    return sorted((r for r in recs if r is not None), key=lambda r: r.port)


def _running(pid: int) -> bool:
    """The process exists and has not ended (a child of this process is reaped here when it has)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    return pid_alive(pid)


def _is_server_process(rec: ServerRecord) -> bool:
    """The pid runs `workbench serve` on the recorded port (Linux: its /proc cmdline; elsewhere the pid alone)."""
    try:
        args = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc on this system: trust a live pid
    except OSError:
        return False
    words = [a.decode("utf-8", "replace") for a in args]
    return "workbench" in words and "serve" in words and "--port" in words and \
        words[words.index("--port") + 1: words.index("--port") + 2] == [str(rec.port)]


def server_alive(rec: ServerRecord) -> bool:
    """The recorded process is still running and is that server."""
    return _running(rec.pid) and _is_server_process(rec)


def server_key(rec: ServerRecord) -> str | None:
    """The API key the dashboard gave this server (None: not started from this machine's dashboard)."""
    try:
        return _key_file(rec.port, rec.pid).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def stop_server(rec: ServerRecord, runs_folder: str | Path, wait: float = 15.0) -> bool:
    """SIGTERM to the server (it finishes the requests in flight and exits), then forget it: its record and key
    file go, its log stays. True when it had been running."""
    alive = server_alive(rec)
    if alive:
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            alive = False
        # Its identity was checked above; from here the pid alone is watched (an exiting process's cmdline reads
        # empty, which would look like "not the server" while it is still there).
        end = time.monotonic() + wait
        while _running(rec.pid) and time.monotonic() < end:
            time.sleep(0.1)
        if _running(rec.pid):  # it ignored SIGTERM for `wait` seconds
            os.kill(rec.pid, signal.SIGKILL)
            end = time.monotonic() + 5
            while _running(rec.pid) and time.monotonic() < end:
                time.sleep(0.1)
    (Path(runs_folder) / SERVERS / f"{rec.port}.json").unlink(missing_ok=True)
    _key_file(rec.port, rec.pid).unlink(missing_ok=True)
    return alive


def log_tail(rec: ServerRecord, lines: int = 15) -> str:
    try:
        return "\n".join(Path(rec.log).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def request(rec: ServerRecord, path: str, key: str | None = None, body: dict | None = None,
            timeout: float = 5.0) -> tuple[int, Any]:
    """(status, JSON answer) of GET `path` (or POST `body`) on the server; status 0 when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(rec.url + path, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - our own server's http URL
            status, text = r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, {"detail": f"nothing answers at {rec.url} ({getattr(e, 'reason', e)})"}
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, {"detail": text[:500]}


def readiness(rec: ServerRecord) -> tuple[str, str]:
    """("ready" | "starting" | "down", detail) from GET /readyz."""
    status, body = request(rec, "/readyz", timeout=2.0)
    if status == 200:
        return "ready", f"{body.get('model')} ({body.get('task')})"
    if status == 0:
        return ("starting" if server_alive(rec) else "down"), str(body.get("detail", ""))
    return "starting", str(body.get("detail", "warming up"))


def example_body(endpoint: str) -> dict[str, Any]:
    return {"prompt": "Hello!", "stream": False} if endpoint == "/v1/generate" else {"texts": ["a text to read"]}


def curl_example(rec: ServerRecord) -> str:
    """A curl command for the served endpoint, the key read from $WORKBENCH_API_KEY (never written out)."""
    body = json.dumps(example_body(rec.endpoint), ensure_ascii=False).replace("'", "'\\''")
    return (f"curl -s {rec.url}{rec.endpoint} \\\n  -H \"Authorization: Bearer ${DEFAULT_KEY_ENV}\" \\\n"
            f"  -H 'Content-Type: application/json' \\\n  -d '{body}'")


def exposed(host: str) -> bool:
    """Other machines may reach a server on this address."""
    return not is_loopback(host)


__all__ = ["SERVERS", "ServerRecord", "curl_example", "example_body", "exposed", "free_port", "list_servers",
           "log_tail", "readiness", "request", "server_alive", "server_key", "start_server", "stop_server"]
