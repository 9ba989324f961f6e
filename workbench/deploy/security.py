"""The server's settings and its front gate: API key, body size, one log line per request.

Secure by default: the server listens on 127.0.0.1; any other address needs an API key (it refuses to start
without one). The key comes from an environment variable (`WORKBENCH_API_KEY`, or the name given) or from a
file (read once, whitespace stripped) — never from the command line, where `ps` and shell history would show
it. With a key set, every endpoint but /healthz and /readyz needs it (/metrics too, by default: request counts
and drift say what the model is used for), as `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in
constant time (`hmac.compare_digest`).

`Gate` is a plain ASGI middleware, outermost, so a request without the key or with too big a body is refused
before anything reads it: 401 for a missing or wrong key, 413 when the declared Content-Length is over
`max_body_bytes` or, for a chunked body, as soon as the bytes read pass it. It also times every request for the
metrics and writes the request's JSON log line: never the texts themselves unless `log_inputs` is on.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import WorkbenchError

try:
    from starlette.exceptions import HTTPException
except ImportError:  # without the [deploy] extra the settings still load; `serve` says what to install
    class HTTPException(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, detail: str = "", headers: dict[str, str] | None = None):
            super().__init__(detail)
            self.status_code, self.detail, self.headers = status_code, detail, headers

log = logging.getLogger("workbench.serve")
DEFAULT_KEY_ENV = "WORKBENCH_API_KEY"
MIN_KEY_CHARS = 16
OPEN_PATHS = ("/healthz", "/readyz")  # a load balancer's probes: never need the key


@dataclass
class ServeSettings:
    """How `workbench serve` runs. Limits answer 413 (body), 422 (texts) and 429 (load) when passed."""

    host: str = "127.0.0.1"  # loopback: only this machine can call it; any other address needs api_key
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)  # the key itself (`api_key_from`); None: loopback only
    max_batch: int = 16  # texts per forward pass; 1 turns micro-batching off
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # texts waiting for a forward pass; more: 429
    max_texts: int = 64  # texts in one request; more: 422
    max_text_chars: int = 5000  # characters in one text (or prompt); more: 422
    max_body_bytes: int = 1_000_000  # request body; more: 413
    max_concurrent_generations: int = 2  # generations in flight; one more: 429
    max_new_tokens: int = 256  # the most a /v1/generate request may ask for
    monitor_window: int = 1000  # predictions kept for /v1/monitor
    drift_min_count: int = 100  # predictions in the window before the drift flag is set
    log_inputs: bool = False  # put the request's texts in its log line (off: only their count and lengths)
    metrics_need_key: bool = True  # /metrics behind the key too (when there is one)

    def problems(self) -> list[str]:
        p = []
        for name in ("max_batch", "max_queue", "max_texts", "max_text_chars", "max_body_bytes",
                     "max_concurrent_generations", "max_new_tokens", "monitor_window", "drift_min_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                p.append(f"{name}={v!r}: give a whole number of at least 1.")
        if isinstance(self.max_queue, int) and isinstance(self.max_texts, int) and self.max_queue < self.max_texts:
            p.append(f"max_queue={self.max_queue} is smaller than max_texts={self.max_texts}: a request the server "
                     f"accepts could never enter the queue (429 forever). Give max_queue at least max_texts.")
        if not 0 <= self.max_wait_ms <= 10_000:
            p.append(f"max_wait_ms={self.max_wait_ms}: give 0 to 10000 milliseconds.")
        if not 0 <= self.port <= 65535:
            p.append(f"port={self.port}: give 1 to 65535 (0: any free port).")
        if self.api_key is not None and len(self.api_key) < MIN_KEY_CHARS:
            p.append(f"the API key has {len(self.api_key)} characters: use at least {MIN_KEY_CHARS}, e.g. "
                     f"python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
        if self.api_key is None and not is_loopback(self.host):
            p.append(f"--host {self.host} is not a loopback address: anyone who can reach this machine could call the "
                     f"model, so an API key is required. Fix: export {DEFAULT_KEY_ENV}=$(python -c 'import secrets; "
                     f"print(secrets.token_urlsafe(32))') (or --api-key-file PATH) and give it to your callers; or "
                     f"serve on 127.0.0.1 (the default).")
        return p

    def check(self) -> "ServeSettings":
        p = self.problems()
        if p:
            raise WorkbenchError("cannot serve: " + " ".join(p) if len(p) == 1 else
                                 "cannot serve:\n" + "\n".join(f"  - {x}" for x in p))
        return self


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: only processes on this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def api_key_from(env: str | None = None, file: str | Path | None = None) -> str | None:
    """The API key: from `file` when given (read once, stripped), else from the environment variable `env`
    (default `WORKBENCH_API_KEY`; None when unset). A named variable that is unset, a missing or empty file:
    `WorkbenchError`."""
    if file is not None:
        f = Path(file).expanduser()
        try:
            key = f.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise WorkbenchError(f"--api-key-file {file}: no such file. Fix: write the key into it, e.g. python -c "
                                 f"'import secrets; print(secrets.token_urlsafe(32))' > {file}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise WorkbenchError(f"--api-key-file {file} cannot be read ({type(e).__name__}: {e}).") from None
        if not key:
            raise WorkbenchError(f"--api-key-file {file} is empty. Fix: write the key into it.")
        return key
    key = os.environ.get(env or DEFAULT_KEY_ENV)
    if key is None or not key.strip():
        if env and env != DEFAULT_KEY_ENV:
            raise WorkbenchError(f"--api-key-env {env}: that environment variable is not set (or empty). Fix: "
                                 f"export {env}=... before starting the server.")
        return None
    return key.strip()


def given_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    x = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return x or None


def key_matches(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))


class ApiError(HTTPException):
    """An HTTP error with a short machine-readable `error` next to the human `detail` (the JSON body)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.error = error


class BodyTooLarge(ApiError):
    """Raised while a body is read: an HTTPException, so FastAPI passes it on instead of answering 400."""

    def __init__(self, limit: int):
        super().__init__(413, "body_too_large", f"the request body passed {limit} bytes while it was read; this "
                         f"server takes at most {limit} (max_body_bytes). Send fewer or shorter texts per request.")


def json_body(status: int, error: str, detail: str, **extra: Any) -> Callable:
    """A tiny ASGI app answering `status` with {"error", "detail"} (before the framework is reached)."""
    body = json.dumps({"error": error, "detail": detail, **extra}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="workbench"'))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return app


class Gate:
    """ASGI middleware: the key, the body limit, then the app; metrics and a JSON log line for every request.

    `observe(endpoint, status, seconds)` records the metrics; `endpoints` are the paths named in metrics
    and logs as they are (any other path is "other": a client cannot create metric series at will)."""

    def __init__(self, app: Any, settings: ServeSettings, observe: Callable[[str, int, float], None],
                 endpoints: set[str]):
        self.app, self.settings, self.observe, self.endpoints = app, settings, observe, endpoints

    def _refusal(self, scope: Any) -> Callable | None:
        s = self.settings
        path = scope["path"]
        headers = dict(scope["headers"])
        open_path = path in OPEN_PATHS or (path == "/metrics" and not s.metrics_need_key)
        if s.api_key is not None and not open_path:
            given = given_key(headers)
            if given is None:
                return json_body(401, "unauthorized", "this server needs an API key: send it as "
                                 "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
            if not key_matches(given, s.api_key):
                return json_body(401, "unauthorized", "the API key is wrong.")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return json_body(400, "bad_request", "the Content-Length header is not a number.")
            if n > s.max_body_bytes:
                return json_body(413, "body_too_large", f"the request body has {n} bytes; this server takes at "
                                 f"most {s.max_body_bytes} (max_body_bytes). Send fewer or shorter texts per request.")
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = {"code": 500, "started": False}
        scope.setdefault("state", {})
        limit, seen = self.settings.max_body_bytes, [0]

        async def limited_receive() -> Any:
            msg = await receive()
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge(limit)
            return msg

        async def tracked_send(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                status["code"], status["started"] = msg["status"], True
            await send(msg)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, tracked_send)
            else:
                try:
                    await self.app(scope, limited_receive, tracked_send)
                except BodyTooLarge as e:  # read outside the framework's handlers (they answer it themselves)
                    if status["started"]:
                        raise
                    await json_body(413, e.error, e.detail)(scope, receive, tracked_send)
        except BaseException:
            if not status["started"]:
                status["code"] = 500
            raise
        finally:
            seconds = time.perf_counter() - t0
            self.observe(endpoint, status["code"], seconds)
            self._log(scope, endpoint, status["code"], seconds)

    def _log(self, scope: Any, endpoint: str, status: int, seconds: float) -> None:
        """One JSON line: what was asked and how it went; the texts only when `log_inputs` is on."""
        extra = dict(scope.get("state", {}).get("log") or {})
        inputs = extra.pop("inputs", None)
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "method": scope["method"],
                "endpoint": endpoint, "status": status, "latency_ms": round(seconds * 1000, 2), **extra}
        if self.settings.log_inputs and inputs is not None:
            line["inputs"] = inputs
        log.info(json.dumps(line, ensure_ascii=False))
