"""`workbench serve` as a background process the dashboard starts, finds again after a reload, and stops.

Like a training run, a server started from the dashboard is its own process (`python -m workbench serve SOURCE`,
in a new session), so closing the browser tab or restarting the dashboard leaves it running. What is needed to
find it again is a record, `<runs folder>/servers/<port>.json` (pid, host, port, source, task, endpoint, log file),
plus its log `<port>.log` beside it. The API key is never on the command line (where `ps` shows it): the child
gets it in `WORKBENCH_API_KEY`, and a copy is kept, readable by this user only, under the workbench home
(`<home>/server-keys/<port>-<pid>.key`, JSON: the key with the host, port, endpoint and source it was given to),
not in the runs folder (which gets shared), so the page can show it and call the server.

A record is read as untrusted (the runs folder may come from someone else, or be edited while a server runs):
- its host must be an IP address or `localhost` and its endpoint one `workbench serve` has;
- the key is given out (`server_key`) only when the record's host, port, endpoint and source are those of the
  private copy, and `request` builds its URL from that private copy, never from the record, so editing a live
  record's host cannot send the key to another machine;
- the log shown is always `<servers folder>/<port>.log`, read without following a link (a record's `log` field is
  never read); before its pid is signalled, the process's command line must be a `workbench serve` on the
  recorded port (`/proc/PID/cmdline`), so a record cannot make the dashboard stop an unrelated process.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import shlex
import signal
import socket
import stat
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
MAX_RECORD_BYTES = 64_000  # a record is a few hundred bytes; a bigger file is not one
MAX_PID = 2**31 - 1        # pid_t
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
    log: str           # written for people; never read back (the log is always `<servers folder>/<port>.log`)

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _key_file(port: int, pid: int) -> Path:
    return home() / "server-keys" / f"{port}-{pid}.key"


def _endpoints() -> set[str]:
    from .served import ENDPOINTS

    return set(ENDPOINTS.values())


def valid_host(host: str) -> bool:
    """An IP address (v4 or v6, no brackets) or `localhost`: what a record may name, and what the page may start a
    server on (a host name could be made to resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def log_file(runs_folder: str | Path, port: int) -> Path:
    """Where a server's log is: `<runs folder>/servers/<port>.log`, derived from the port alone."""
    return Path(runs_folder) / SERVERS / f"{int(port)}.log"


def _read_regular(path: Path, limit: int) -> bytes | None:
    """At most the last `limit` bytes of a regular file, opened without following a link (and without blocking on
    a FIFO); None when it is missing, a link or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def start_server(source: str | Path, runs_folder: str | Path, *, api_key: str, host: str = "127.0.0.1",
                 port: int | None = None, batching: bool = True, name: str | None = None) -> ServerRecord:
    """Start `workbench serve SOURCE` in its own process and record it; returns at once (the model loads in the
    child: `readiness` says when it answers). The key travels in the environment only."""
    from .served import ENDPOINTS

    key = (api_key or "").strip()
    if len(key) < MIN_KEY_CHARS:
        raise WorkbenchError(f"the API key has {len(key)} characters: use at least {MIN_KEY_CHARS} (the page "
                             f"generates one).")
    if not valid_host(host):
        raise WorkbenchError(f"host {host!r}: give an IP address of this machine (127.0.0.1 for this machine only, "
                             f"0.0.0.0 or :: for every network) or localhost, not a host name.")
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
    if folder.is_symlink():
        raise WorkbenchError(f"{folder} is a symbolic link: a server's log and record are written only into a real "
                             f"folder. Fix: remove the link (a folder is made in its place).")
    log = log_file(runs_folder, port)
    cmd = [sys.executable, "-m", "workbench", "serve", str(src), "--host", host, "--port", str(port),
           "--max-batch", "16" if batching else "1"]
    env = {**os.environ, DEFAULT_KEY_ENV: key, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if log.is_symlink():
            raise WorkbenchError(f"{log} is a symbolic link (someone with access to this runs folder may have put it "
                                 f"there to make the server write elsewhere): the log is not written through it. "
                                 f"Fix: delete {log}, or pick another port.") from None
        raise WorkbenchError(f"cannot write the server's log {log} ({e.strerror}).") from None
    with os.fdopen(log_fd, "ab") as out:
        # start_new_session: the server outlives the dashboard's script run, its tab and Ctrl+C in its terminal.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, close_fds=True)
    _CHILDREN[proc.pid] = proc
    kf = _key_file(port, proc.pid)
    kf.parent.mkdir(parents=True, exist_ok=True)
    kf.unlink(missing_ok=True)  # O_EXCL below: a file left there (or a link) is never written through
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"key": key, "host": host, "port": port, "endpoint": ENDPOINTS[task], "source": str(src),
                   "pid": proc.pid}, f)
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
    data = _read_regular(f, MAX_RECORD_BYTES + 1)
    if data is None or len(data) > MAX_RECORD_BYTES:
        return None
    try:  # ValueError: bad JSON, or an integer of thousands of digits; RecursionError: '[' nested 100000 deep
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    types = {"pid": int, "host": str, "port": int, "source": str, "name": str, "task": str, "endpoint": str,
             "batching": bool, "started": str, "log": str}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), t) for k, t in types.items()):
        return None
    if isinstance(raw["pid"], bool) or isinstance(raw["port"], bool) or not 0 < raw["port"] < 65536 \
            or not 0 < raw["pid"] <= MAX_PID:
        return None
    if not valid_host(raw["host"]) or raw["endpoint"] not in _endpoints():
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


def _private(rec: ServerRecord) -> dict[str, Any] | None:
    """The private copy (`<home>/server-keys/<port>-<pid>.key`) written when this machine's dashboard started the
    server, when the record's host, port, endpoint and source are the ones it holds; None otherwise (not started
    here, or the record was edited since)."""
    data = _read_regular(_key_file(rec.port, rec.pid), MAX_RECORD_BYTES)
    if data is None:
        return None
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # also a key file of an older version (the key alone): start the server again
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str) or not raw["key"].strip():
        return None
    mine = {"host": raw.get("host"), "port": raw.get("port"), "endpoint": raw.get("endpoint"),
            "source": raw.get("source")}
    if mine != {"host": rec.host, "port": rec.port, "endpoint": rec.endpoint, "source": rec.source} \
            or not isinstance(mine["host"], str) or not valid_host(mine["host"]) \
            or mine["endpoint"] not in _endpoints():
        return None
    return raw


def server_key(rec: ServerRecord) -> str | None:
    """The API key the dashboard gave this server; None when it was not started from this machine's dashboard, or
    its record no longer names the host, port, endpoint and source the key was given for."""
    mine = _private(rec)
    return mine["key"].strip() if mine else None


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


def log_tail(rec: ServerRecord, runs_folder: str | Path, lines: int = 15) -> str:
    """The last lines of `<runs folder>/servers/<port>.log` (never the record's `log` field, never through a link)."""
    data = _read_regular(log_file(runs_folder, rec.port), 64_000)
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if data else ""


def request(rec: ServerRecord, path: str, key: str | None = None, body: dict | None = None,
            timeout: float = 5.0) -> tuple[int, Any]:
    """(status, JSON answer) of GET `path` (or POST `body`) on the server; status 0 when nothing answers. The URL
    is the private copy's (see `server_key`); a record without one is called only without a key (its host is an IP
    address or localhost: `_read`)."""
    mine = _private(rec)
    if mine is not None:
        base = _url(mine["host"], mine["port"])
    elif key:
        return 0, {"detail": f"the key is not sent to {rec.url}: this server's record does not match the one this "
                             f"dashboard started (edited, or started elsewhere)."}
    else:
        base = _url(rec.host, rec.port)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - our own server's http URL
            status, text = r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, {"detail": f"nothing answers at {base} ({getattr(e, 'reason', e)})"}
    try:
        return status, json.loads(text)
    except (ValueError, RecursionError):
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
    """A curl command for the served endpoint, the key read from $WORKBENCH_API_KEY (never written out); the URL
    and body shell-quoted, the endpoint one `workbench serve` has (else `WorkbenchError`)."""
    if rec.endpoint not in _endpoints():
        raise WorkbenchError(f"{rec.endpoint!r} is not an endpoint of `workbench serve` "
                             f"({', '.join(sorted(_endpoints()))}).")
    body = json.dumps(example_body(rec.endpoint), ensure_ascii=False)
    return (f"curl -s {shlex.quote(rec.url + rec.endpoint)} \\\n"
            f"  -H \"Authorization: Bearer ${DEFAULT_KEY_ENV}\" \\\n"
            f"  -H 'Content-Type: application/json' \\\n  -d {shlex.quote(body)}")


def exposed(host: str) -> bool:
    """Other machines may reach a server on this address."""
    return not is_loopback(host)


__all__ = ["SERVERS", "ServerRecord", "curl_example", "example_body", "exposed", "free_port", "list_servers",
           "log_file", "log_tail", "readiness", "request", "server_alive", "server_key", "start_server", "stop_server",
           "valid_host"]
