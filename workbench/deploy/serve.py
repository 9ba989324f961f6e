"""`workbench serve`: a run's model (or an exported folder) behind an HTTP API.

FastAPI + uvicorn: the most used Python ASGI stack, whose pydantic request models give us 422 validation and
the OpenAPI schema from one declaration, and whose ASGI server streams tokens and runs a batching task in-process.

Endpoints (only the prediction endpoint of the loaded task is mounted; the others answer 404 naming the task):
  POST /v1/classify {"texts": [...]}  text-classification: label, confidence, probabilities per text
  POST /v1/tag      {"texts": [...]}  token-classification: entities per text (character offsets)
  POST /v1/generate {"prompt"|"messages", ...}  causal-lm-sft / seq2seq: Server-Sent Events, a `data:` line
                    {"text": piece} per piece, then `event: done` with the whole answer ("stream": false: JSON)
  GET /healthz (process up), /readyz (model loaded and warmed up; 503 before), /metrics (Prometheus),
  /v1/monitor (drift record, `monitor.py`), /v1/info (model, task, labels, limits), /openapi.json, /docs.
Classification and tagging go through the micro-batcher (`batching.py`); generations run one thread each, at
most `max_concurrent_generations` at a time. Security, limits and logs: `security.py`. No endpoint takes a path
or reads a file: the only file this module opens is the model's, at start-up.
"""

import asyncio
import json
import socket
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from ..errors import WorkbenchError

try:
    import uvicorn  # noqa: F401 - checked here, used by `serve`
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from starlette.exceptions import HTTPException
except ImportError as e:  # the optional [deploy] extra
    raise WorkbenchError(f"serving needs FastAPI, uvicorn and prometheus-client ({e.name} is not installed). "
                         f"Fix: pip install 'workbench[deploy]'") from None

from .batching import MicroBatcher, QueueFull
from .monitor import Monitor
from .security import ApiError, Gate, ServeSettings, log
from .served import ENDPOINTS, Served, load_served

OWN_PATHS = {"/healthz", "/readyz", "/metrics", "/v1/monitor", "/v1/info", "/openapi.json", "/docs",
             *ENDPOINTS.values()}
ERRORS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "body_too_large", 422: "invalid_request", 429: "too_many_requests", 503: "not_ready"}


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process stay apart)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("workbench_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("workbench_errors", "responses with a status of 400 or more", ["endpoint", "status"],
                              registry=r)
        self.latency = Histogram("workbench_request_latency_seconds", "time from request to the end of the response",
                                 ["endpoint"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("workbench_batch_size", "texts per forward pass", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.generations = Gauge("workbench_generations_in_flight", "generations being written now", registry=r)
        self.queue = Gauge("workbench_queue_texts", "texts waiting for a forward pass", registry=r)
        self.window = Gauge("workbench_monitor_predictions", "predictions in the drift monitor's window", registry=r)
        self.drift = Gauge("workbench_drift", "1: drift flagged, 0: not, -1: not enough predictions yet", registry=r)
        self.drift_stat = Gauge("workbench_drift_statistic", "drift statistics (label_tvd, confidence_psi, "
                                "length_psi)", ["statistic"], registry=r)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)


def _schemas(s: ServeSettings, served: Served) -> dict[str, type]:
    """The request and response models, with this server's limits in them (and so in /openapi.json)."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=s.max_text_chars)]
    strict = ConfigDict(extra="forbid")

    class TextsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["a text to read"]}]})
        texts: list[Text] = Field(min_length=1, max_length=s.max_texts,
                                  description=f"1 to {s.max_texts} texts of at most {s.max_text_chars} characters")

    class ClassPrediction(BaseModel):
        label: str
        confidence: float
        probabilities: dict[str, float]

    class ClassifyResponse(BaseModel):
        model: str
        task: str
        predictions: list[ClassPrediction]

    class Entity(BaseModel):
        type: str
        text: str
        start: int = Field(description="character offset of the entity's first character")
        end: int = Field(description="character offset after its last character")
        score: float

    class TextEntities(BaseModel):
        entities: list[Entity]

    class TagResponse(BaseModel):
        model: str
        task: str
        predictions: list[TextEntities]

    class Message(BaseModel):
        model_config = strict
        role: Annotated[str, StringConstraints(pattern="^(system|user|assistant)$")]
        content: Text

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompt": "Hello!"}]})
        prompt: Text | None = Field(None, description="one user turn (or give messages)")
        messages: list[Message] | None = Field(None, min_length=1, max_length=s.max_texts,
                                               description="a conversation ending with a user turn")
        system: Text | None = None
        max_new_tokens: int = Field(min(128, s.max_new_tokens), ge=1, le=s.max_new_tokens)
        temperature: float = Field(0.0, ge=0.0, le=5.0, description="0: greedy (the same answer every time)")
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        stream: bool = Field(True, description="Server-Sent Events, one per piece of text; false: one JSON answer")

    class GenerateResponse(BaseModel):
        model: str
        task: str
        text: str

    return {k: v for k, v in locals().items() if isinstance(v, type)}


def _where(loc: tuple) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "the body"


def _problem(err: dict[str, Any], fields: list[str]) -> str:
    """One validation error, said so that the caller knows what to change."""
    kind, where, ctx = err.get("type", ""), _where(tuple(err.get("loc", ()))), err.get("ctx") or {}
    if kind == "json_invalid":
        return f"the body is not valid JSON (near character {err['loc'][-1]}): send a JSON object."
    if kind == "extra_forbidden":
        return f"unknown field {where!r}: this endpoint takes {', '.join(fields)}."
    if kind == "string_too_long":
        return f"{where} has more than {ctx.get('max_length')} characters (max_text_chars): shorten or split it."
    if kind == "too_long":
        return f"{where} has more than {ctx.get('max_length')} items (max_texts): send them in several requests."
    if kind == "missing":
        return f"{where} is required." if where != "the body" else "the body is empty: send a JSON object."
    if kind == "model_attributes_type" or (kind == "dict_type" and where == "the body"):
        return "the body must be a JSON object, e.g. {\"texts\": [\"...\"]}."
    return f"{where}: {err.get('msg', 'invalid')}."


def create_app(source: "str | Path | Served", settings: ServeSettings | None = None) -> FastAPI:
    """The server for a completed run directory or an exported model folder (or an already loaded `Served`).

    The model is loaded here (a `WorkbenchError` says what is wrong); the warm-up prediction runs when the app
    starts, in the background: /readyz answers 503 until it is done."""
    s = (settings or ServeSettings()).check()
    served = source if isinstance(source, Served) else load_served(source)
    m = _Metrics()
    monitor = Monitor(served.reference, s.monitor_window, s.drift_min_count)
    batcher = None if served.generates else MicroBatcher(lambda texts: served.predict(texts), max_batch=s.max_batch,
                                                         max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                                                         on_batch=m.batch.observe)
    state: dict[str, Any] = {"ready": False, "error": None, "generations": 0}
    sc = _schemas(s, served)

    async def warm_up() -> None:
        try:
            if batcher is not None:
                await batcher.run(["warm-up"])
            else:
                from ..generate import Sampling, generate_answers

                await asyncio.to_thread(generate_answers, served.model, served.tokenizer,
                                        [[{"role": "user", "content": "warm-up"}]],
                                        sampling=Sampling(max_new_tokens=1), max_length=served.max_length)
            state["ready"] = True
            log.info(json.dumps({"event": "ready", "model": served.name, "task": served.task}))
        except Exception as e:  # noqa: BLE001 - /readyz says it; the process stays up for /healthz
            state["error"] = f"the warm-up prediction failed: {type(e).__name__}: {str(e)[:300]}"
            log.error(json.dumps({"event": "warm-up failed", "error": state["error"]}))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if batcher is not None:
            batcher.start()
        task = asyncio.create_task(warm_up())
        yield
        task.cancel()
        if batcher is not None:
            await batcher.stop()
        log.info(json.dumps({"event": "shutdown", "model": served.name}))

    app = FastAPI(title=f"workbench: {served.name}", version="1", lifespan=lifespan,
                  description=f"A {served.task} model ({served.kind} {served.name}) served by `workbench serve`. "
                              f"Prediction: POST {served.endpoint}.")
    app.state.served, app.state.monitor, app.state.batcher, app.state.status = served, monitor, batcher, state
    app.state.metrics, app.state.settings = m, s
    app.add_middleware(Gate, settings=s, observe=m.observe, endpoints=OWN_PATHS)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and request.url.path in ENDPOINTS.values():
            detail = (f"this server serves a {served.task} model ({served.name}): {request.url.path} is for "
                      f"{' and '.join(t for t, e in ENDPOINTS.items() if e == request.url.path)} models. "
                      f"Use POST {served.endpoint}.")
        elif exc.status_code == 404:
            detail = f"no such endpoint: {request.url.path[:100]}. See /docs for the endpoints."
        elif exc.status_code == 405:
            allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}" + (f": use {allow}." if allow else ".")
        return JSONResponse({"error": getattr(exc, "error", ERRORS.get(exc.status_code, "error")), "detail": detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        model = sc["GenerateRequest"] if request.url.path == "/v1/generate" else sc["TextsRequest"]
        problems = [_problem(e, list(model.model_fields)) for e in exc.errors()]
        if "json" not in request.headers.get("content-type", ""):
            problems.insert(0, "send the body as JSON with the header Content-Type: application/json.")
        return JSONResponse({"error": "invalid_request", "detail": " ".join(problems[:5]), "problems": problems},
                            status_code=422)

    def require_ready() -> None:
        if not state["ready"]:
            raise ApiError(503, "not_ready", state["error"] or "the model is warming up; retry in a moment "
                           "(GET /readyz says when it is ready).", headers={"Retry-After": "1"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """The process is up (says nothing about the model: see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "loading or warming up"}})
    async def readyz() -> JSONResponse:
        """The model is loaded and one prediction has been made: requests will be answered."""
        body = {"ready": state["ready"], "model": served.name, "task": served.task}
        if not state["ready"]:
            body["detail"] = state["error"] or "warming up"
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, errors, batch sizes, generations in flight, drift."""
        rep = monitor.report()
        m.queue.set(batcher.waiting if batcher else 0)
        m.window.set(rep["window"]["n"])
        flag = rep["drift"]["flag"]
        m.drift.set(-1 if flag is None else int(flag))
        for k, v in rep["drift"]["statistics"].items():
            m.drift_stat.labels(k).set(v["value"])
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/monitor", tags=["monitoring"])
    async def monitor_report() -> dict:
        """The last predictions (label shares, confidence, input length) next to the run's test split, and a
        drift flag with its statistics (label TVD, confidence and length PSI; thresholds in the answer)."""
        return monitor.report()

    @app.get("/v1/info", tags=["monitoring"])
    async def info() -> dict:
        """What is served and the limits a request must keep."""
        limits = {k: getattr(s, k) for k in ("max_texts", "max_text_chars", "max_body_bytes", "max_batch",
                                             "max_wait_ms", "max_queue", "max_concurrent_generations",
                                             "max_new_tokens")}
        return {"model": served.name, "source": served.kind, "task": served.task, "endpoint": served.endpoint,
                "labels": served.labels, "max_length": served.max_length, "limits": limits, "notes": served.notes}

    async def predict(body: Any, request: Request) -> list[dict[str, Any]]:
        require_ready()
        try:
            results, batch = await batcher.submit(body.texts)
        except QueueFull as e:
            raise ApiError(429, "queue_full", str(e), headers={"Retry-After": "1"}) from None
        lengths = [len(t) for t in body.texts]
        for r, n in zip(results, lengths):
            monitor.record(*served.monitored(r), n)
        request.state.log = {"batch_size": batch, "n_texts": len(lengths), "text_lengths": lengths,
                             "inputs": body.texts}
        return results

    TextsRequest = sc["TextsRequest"]
    if served.task == "text-classification":
        @app.post("/v1/classify", response_model=sc["ClassifyResponse"], tags=["predict"])
        async def classify(body: TextsRequest, request: Request) -> dict:
            """The label of each text, its confidence and every class probability (the run's own predictor)."""
            return {"model": served.name, "task": served.task, "predictions": await predict(body, request)}
    elif served.task == "token-classification":
        @app.post("/v1/tag", response_model=sc["TagResponse"], tags=["predict"])
        async def tag(body: TextsRequest, request: Request) -> dict:
            """The entities of each text, with character offsets (end exclusive) and a score."""
            return {"model": served.name, "task": served.task, "predictions": await predict(body, request)}
    else:
        _mount_generate(app, served, s, sc, state, m, monitor, require_ready)
    return app


def _mount_generate(app: FastAPI, served: Served, s: ServeSettings, sc: dict[str, type], state: dict[str, Any],
                    m: _Metrics, monitor: Monitor, require_ready: Any) -> None:
    from ..generate import Sampling, as_conversation, generate_answers, iter_answer

    GenerateRequest = sc["GenerateRequest"]

    @app.post("/v1/generate", tags=["predict"], response_model=sc["GenerateResponse"],
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "stream: Server-Sent Events (`data: {\"text\": piece}`, then "
                                              "`event: done`); without: one JSON answer"}})
    async def generate(body: GenerateRequest, request: Request) -> Any:
        """The model's answer to a prompt or a conversation, streamed piece by piece as it is written."""
        require_ready()
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(422, "invalid_request", "give either prompt (one user turn) or messages (a conversation).")
        if state["generations"] >= s.max_concurrent_generations:
            raise ApiError(429, "too_many_generations", f"{state['generations']} generations are being written; "
                           f"this server writes at most {s.max_concurrent_generations} at a time "
                           f"(max_concurrent_generations). Retry in a moment.", headers={"Retry-After": "1"})
        messages = as_conversation(body.prompt if body.prompt is not None else
                                   [x.model_dump() for x in body.messages], body.system)
        sampling = Sampling(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p)
        lengths = [len(x["content"]) for x in messages]
        monitor.record(None, None, sum(lengths))
        request.state.log = {"n_texts": len(messages), "text_lengths": lengths, "stream": body.stream,
                             "inputs": messages}
        state["generations"] += 1
        m.generations.inc()
        released = [False]

        def release() -> None:
            if not released[0]:
                released[0] = True
                state["generations"] -= 1
                m.generations.dec()

        kw = {"sampling": sampling, "max_length": served.max_length}
        if not body.stream:
            try:
                text = (await asyncio.to_thread(generate_answers, served.model, served.tokenizer, [messages],
                                                **kw))[0]
            finally:
                release()
            return {"model": served.name, "task": served.task, "text": text}

        stop = threading.Event()  # set: the generation ends at its next piece (the client is gone)

        async def events():
            pieces = iter_answer(served.model, served.tokenizer, messages, stop=stop, **kw)
            end = object()
            written = []
            try:
                while (piece := await asyncio.to_thread(next, pieces, end)) is not end:
                    written.append(piece)
                    yield f"data: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n"
                yield f"event: done\ndata: {json.dumps({'text': ''.join(written).strip()}, ensure_ascii=False)}\n\n"
            except Exception as e:  # noqa: BLE001 - the status is sent already: the error is the last event
                log.error(json.dumps({"event": "generation failed", "error": f"{type(e).__name__}: {e}"[:300]}))
                yield f"event: error\ndata: {json.dumps({'error': type(e).__name__})}\n\n"
            finally:
                stop.set()
                release()
                try:
                    pieces.close()
                except ValueError:  # cancelled while `next` runs in a worker thread: the stop event ends it
                    pass

        def finish() -> None:
            stop.set()
            release()

        return _Releasing(events(), finish, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Releasing(StreamingResponse):
    """A stream that runs `finish` however it ends: written out, the client gone mid-stream, or cancelled before
    its body iterator started (then the iterator's own `finally` never runs, and a generation slot would leak)."""

    def __init__(self, content: Any, finish: Any, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._finish = finish

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._finish()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a `WorkbenchError` saying why not (bound before the model loads, so
    a second server on the same port is refused at once and no other process can take the port meanwhile)."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a second server must fail
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise WorkbenchError(f"port {port} is in use — another server? pick --port (e.g. --port {port + 1}), "
                                 f"or stop the process listening there.") from None
        if e.errno == errno.EACCES:
            raise WorkbenchError(f"port {port} needs administrator rights: pick --port 1024 or above.") from None
        raise WorkbenchError(f"cannot listen on {host}:{port} ({e.strerror}): give an address of this machine "
                             f"with --host, e.g. 127.0.0.1.") from None
    except (socket.gaierror, UnicodeError) as e:
        sock.close()
        raise WorkbenchError(f"--host {host}: not an address of this machine ({e}).") from None
    sock.listen(2048)
    return sock


def serve(source: "str | Path", settings: ServeSettings, *, announce: Any = print) -> None:
    """Run the server in this process until Ctrl+C / SIGTERM: settings checked, port bound, model loaded."""
    import logging
    import sys

    s = settings.check()
    sock = bind(s.host, s.port)
    try:
        app = create_app(source, s)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        served = app.state.served
        port = sock.getsockname()[1]
        shown = f"[{s.host}]" if ":" in s.host else s.host
        announce(f"serving {served.kind} {served.name} ({served.task}) at http://{shown}:{port}  "
                 f"POST {served.endpoint}; docs at /docs; API key: {'required' if s.api_key else 'none (loopback)'}")
        for note in served.notes:
            announce(f"note: {note}")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
