"""`workbench serve`: predictions equal the run's predictor, the API key and limits answer the right status with a
clear body, requests arriving together share a forward pass, metrics, readiness, the drift monitor, nothing from
a request reaches the file system, the CLI's refusals, and a real server process over loopback."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import NEG, POS, free_port, make_sentiment_frame  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.deploy.monitor import reference_from_predictions  # noqa: E402
from workbench.deploy.security import ServeSettings, api_key_from, is_loopback  # noqa: E402
from workbench.deploy.serve import create_app  # noqa: E402
from workbench.deploy.served import EXPORT_FILE, load_served  # noqa: E402
from workbench.rundir import RunDir, new_run_dir  # noqa: E402
from workbench.training import run_training  # noqa: E402

KEY = "k" * 20 + "-serve-test-key"
REPO = Path(__file__).resolve().parent.parent


def _run(cfg: dict) -> RunDir:
    c = RunConfig.from_dict(cfg)
    run = new_run_dir(c)
    run_training(c, run, progress=False)
    return RunDir(run.path)


@pytest.fixture(scope="module")
def clf_run(tiny_bert, tmp_path_factory) -> RunDir:
    d = tmp_path_factory.mktemp("serve")
    make_sentiment_frame(200).to_csv(d / "s.csv", index=False)
    return _run({"output_dir": str(d / "runs"), "name": "clf", "model": {"name_or_path": str(tiny_bert)},
                 "data": {"source": str(d / "s.csv")}, "peft": {"freeze_embeddings": False},
                 "training": {"num_train_epochs": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                              "save_strategy": "no", "logging_steps": 5}})


@pytest.fixture(scope="module")
def clf(clf_run):
    return load_served(clf_run.path)


@pytest.fixture(scope="module")
def chat_export(tiny_llama, tmp_path_factory) -> Path:
    """A tiny causal LM as an exported folder (EOS made unlikely: answers run to max_new_tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] = -model.get_output_embeddings().weight.mean(0) * 50
    out = tmp_path_factory.mktemp("chat-export")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / EXPORT_FILE).write_text(json.dumps({"task": "causal-lm-sft", "max_length": 64, "labels": []}))
    return out


def _ready(c: TestClient) -> None:
    for _ in range(600):  # a wait for the warm-up, not a timing assertion
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(c.get("/readyz").json())


@contextmanager
def serving(source, **settings):
    app = create_app(source, ServeSettings(**settings))
    with TestClient(app) as c:
        _ready(c)
        yield c, app


def _wait_for(cond, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _metric(text: str, name: str) -> float:
    """The value of one sample line of /metrics (`name` with its labels, exactly)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


class Blocked:
    """Stands in for `Served.predict`: the forward waits until `release()`; `started` is set when one waits."""

    def __init__(self, real):
        self.real, self.started, self.gate, self.calls = real, threading.Event(), threading.Event(), []

    def __call__(self, texts):
        self.calls.append(len(texts))
        self.started.set()
        assert self.gate.wait(60)
        return self.real(texts)

    def release(self):
        self.gate.set()


# --- predictions ---------------------------------------------------------------------------------------
def test_classify_answers_what_the_runs_predictor_does(clf, clf_run):
    from workbench.predict import Predictor

    texts = clf_run.predictions()["text"].tolist()[:12] + ["good", "the plot was awful and dull"]
    want = Predictor.from_run(clf_run).predict(texts)
    with serving(clf) as (c, _):
        r = c.post("/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["label"] for p in got] == want["predicted"].tolist()
    for p, (_, row) in zip(got, want.iterrows()):
        assert p["probabilities"]["pos"] == pytest.approx(row["p_pos"], abs=1e-5)
        assert p["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
    assert r.json()["task"] == "text-classification" and r.json()["model"] == "clf"


def test_an_exported_folder_serves_the_same_predictions(clf, clf_run, tmp_path):
    """An export is a plain transformers folder + workbench_export.json (loaded with the Auto class, not the run)."""
    folder = tmp_path / "export"
    shutil.copytree(clf_run.model_dir, folder)
    (folder / "workbench_model.json").unlink()
    ref = reference_from_predictions(clf_run.predictions(), "text-classification")
    (folder / EXPORT_FILE).write_text(json.dumps({"source_run": "clf", "task": "text-classification",
                                                  "max_length": 256, "labels": ["neg", "pos"], "reference": ref}))
    from workbench.predict import Predictor

    texts = ["the movie was great", "awful acting", "a plot"]
    want = Predictor.from_run(clf_run, bf16=False).predict(texts)  # an export is served in float32
    with serving(folder) as (c, _):
        got = c.post("/v1/classify", json={"texts": texts}).json()["predictions"]
        info = c.get("/v1/info").json()
        mon = c.get("/v1/monitor").json()
    assert [p["label"] for p in got] == want["predicted"].tolist()
    assert [p["confidence"] for p in got] == pytest.approx(want["confidence"].tolist(), abs=1e-5)
    assert info["source"] == "export" and info["labels"] == ["neg", "pos"]
    assert mon["reference"]["n"] == 40 and mon["reference"]["label_distribution"] == {"neg": 0.5, "pos": 0.5}


def test_a_folder_without_the_export_record_is_refused_with_the_fix(clf_run, tmp_path):
    from workbench.errors import WorkbenchError

    folder = tmp_path / "plain"
    shutil.copytree(clf_run.model_dir, folder)
    with pytest.raises(WorkbenchError, match="no workbench_export.json.*workbench export RUN"):
        load_served(folder)
    with pytest.raises(WorkbenchError, match="no such run directory or model folder"):
        load_served(tmp_path / "nowhere")


def test_ner_run_tags_entities_as_its_predictor_does(tiny_bert, tmp_path):
    from test_ner import _toy_conll

    from workbench.predict import Predictor

    run = _run({"task": "token-classification", "output_dir": str(tmp_path / "runs"), "name": "ner",
                "model": {"name_or_path": str(tiny_bert)},
                "data": {"source": str(_toy_conll(tmp_path / "toy.conll", 160)), "max_length": 32},
                "training": {"num_train_epochs": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                             "save_strategy": "no", "logging_steps": 5},
                "peft": {"freeze_embeddings": False}})
    texts = ["the movie was great and the plot awful", "this film"]
    want = Predictor.from_run(run).predict(texts)
    with serving(run.path) as (c, _):
        r = c.post("/v1/tag", json={"texts": texts})
        wrong = c.post("/v1/classify", json={"texts": texts})
        mon = c.get("/v1/monitor").json()
    assert r.status_code == 200, r.text
    got = [[(e["type"], e["start"], e["end"]) for e in p["entities"]] for p in r.json()["predictions"]]
    assert got == [[(e["type"], e["start"], e["end"]) for e in ents] for ents in want["entities"]]
    assert any(got)  # the tagger found something: the comparison is not of two empty lists
    assert wrong.status_code == 404 and "token-classification" in wrong.json()["detail"]
    assert set(mon["reference"]["label_distribution"]) <= {"GOOD", "BAD", "(no entities)"}


def test_generation_streams_the_answer_it_would_give_at_once(chat_export):
    from workbench.generate import Sampling, generate_answers

    served = load_served(chat_export)
    want = generate_answers(served.model, served.tokenizer, [[{"role": "user", "content": "the movie"}]],
                            sampling=Sampling(max_new_tokens=6), max_length=64)[0]
    with serving(served) as (c, _):
        r = c.post("/v1/generate", json={"prompt": "the movie", "max_new_tokens": 6})
        whole = c.post("/v1/generate", json={"prompt": "the movie", "max_new_tokens": 6, "stream": False})
        big = c.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 10_000})
        neither = c.post("/v1/generate", json={"max_new_tokens": 3})
        clf_endpoint = c.post("/v1/classify", json={"texts": ["x"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e.strip()]
    pieces = [json.loads(e[len("data: "):])["text"] for e in events if e.startswith("data: ")]
    assert len(pieces) >= 2 and events[-1].startswith("event: done")
    assert "".join(pieces).strip() == want == json.loads(events[-1].split("data: ", 1)[1])["text"]
    assert whole.json()["text"] == want
    assert big.status_code == 422 and "max_new_tokens" in big.json()["detail"]
    assert neither.status_code == 422 and "prompt" in neither.json()["detail"]
    assert clf_endpoint.status_code == 404 and "causal-lm-sft" in clf_endpoint.json()["detail"]


def test_the_openapi_schema_holds_the_limits_and_only_the_served_tasks_endpoint(clf):
    with serving(clf, max_texts=7, max_text_chars=99) as (c, _):
        schema = c.get("/openapi.json").json()
    assert "/v1/classify" in schema["paths"] and not {"/v1/tag", "/v1/generate"} & set(schema["paths"])
    body = schema["components"]["schemas"]["TextsRequest"]
    texts = body["properties"]["texts"]
    assert texts["maxItems"] == 7 and texts["items"]["maxLength"] == 99 and body["additionalProperties"] is False
    assert {"/healthz", "/readyz", "/metrics", "/v1/monitor"} <= set(schema["paths"])


# --- security and limits --------------------------------------------------------------------------------
def test_the_api_key_is_required_everywhere_but_health_and_compared_in_constant_time(clf, monkeypatch):
    import workbench.deploy.security as security

    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    body = {"texts": ["good"]}
    with serving(clf, api_key=KEY) as (c, _):
        none = c.post("/v1/classify", json=body)
        wrong = c.post("/v1/classify", json=body, headers={"Authorization": "Bearer " + "x" * len(KEY)})
        bearer = c.post("/v1/classify", json=body, headers={"Authorization": f"Bearer {KEY}"})
        header = c.post("/v1/classify", json=body, headers={"X-API-Key": KEY})
        open_paths = [c.get(p).status_code for p in ("/healthz", "/readyz")]
        closed = {p: c.get(p).status_code for p in ("/metrics", "/v1/monitor", "/v1/info", "/openapi.json")}
        big_without_key = c.post("/v1/classify", content=b"x" * 2_000_000)
    assert none.status_code == 401 and "Authorization: Bearer" in none.json()["detail"]
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and wrong.json() == {"error": "unauthorized", "detail": "the API key is wrong."}
    assert bearer.status_code == 200 and header.status_code == 200 and compared
    assert open_paths == [200, 200] and set(closed.values()) == {401}
    assert big_without_key.status_code == 401  # the key is checked before the body is looked at
    with serving(clf, api_key=KEY, metrics_need_key=False) as (c, _):
        assert c.get("/metrics").status_code == 200 and c.get("/v1/monitor").status_code == 401


def test_limits_answer_413_and_422_with_a_body_that_says_what_to_change(clf):
    with serving(clf, max_body_bytes=2000, max_texts=3, max_text_chars=50) as (c, _):
        declared = c.post("/v1/classify", content=b'{"texts": ["' + b"a" * 3000 + b'"]}',
                          headers={"content-type": "application/json"})

        def chunks():  # no Content-Length: the limit is checked while the body is read
            yield b'{"texts": ["'
            for _ in range(10):
                yield b"a" * 500
            yield b'"]}'
        chunked = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        malformed = c.post("/v1/classify", content=b'{"texts": ["good"', headers={"content-type": "application/json"})
        unknown = c.post("/v1/classify", json={"texts": ["good"], "label": "pos"})
        long_text = c.post("/v1/classify", json={"texts": ["good", "a" * 51]})
        many = c.post("/v1/classify", json={"texts": ["good"] * 4})
        not_object = c.post("/v1/classify", json=["good"])
        fine = c.post("/v1/classify", json={"texts": ["good"] * 3})
    assert "transfer-encoding" not in declared.request.headers and declared.status_code == 413
    assert declared.json()["error"] == "body_too_large" and "2000" in declared.json()["detail"]
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert chunked.status_code == 413 and "while it was read" in chunked.json()["detail"]
    assert malformed.status_code == 422 and "not valid JSON" in malformed.json()["detail"]
    assert unknown.status_code == 422 and "unknown field 'label'" in unknown.json()["detail"]
    assert long_text.status_code == 422 and "texts[1]" in long_text.json()["detail"] \
        and "max_text_chars" in long_text.json()["detail"]
    assert many.status_code == 422 and "max_texts" in many.json()["detail"]
    assert not_object.status_code == 422 and "JSON object" in not_object.json()["detail"]
    assert all(r.json()["error"] == "invalid_request" for r in (malformed, unknown, long_text, many, not_object))
    assert fine.status_code == 200


def test_a_full_queue_answers_429(clf, monkeypatch):
    with serving(clf, max_batch=1, max_queue=2, max_texts=2) as (c, app):
        block = Blocked(clf.predict)
        monkeypatch.setattr(clf, "predict", block)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/v1/classify", json={"texts": ["good"]})
            assert block.started.wait(30)  # the first request is in its forward pass
            second = pool.submit(c.post, "/v1/classify", json={"texts": ["bad"]})
            _wait_for(lambda: app.state.batcher.waiting == 1, "the second request queued")
            full = c.post("/v1/classify", json={"texts": ["good", "bad"]})
            block.release()
            assert first.result().status_code == 200 and second.result().status_code == 200
    assert full.status_code == 429 and full.json()["error"] == "queue_full"
    assert "max_queue" in full.json()["detail"] and full.headers["retry-after"] == "1"


def test_too_many_concurrent_generations_answer_429(chat_export, monkeypatch):
    import workbench.generate as generate

    gate, started = threading.Event(), threading.Event()

    def slow_answer(model, tok, messages, **kw):  # a generation that is still being written
        yield "one"
        started.set()
        assert gate.wait(60)
        yield " two"
    monkeypatch.setattr(generate, "iter_answer", slow_answer)
    with serving(chat_export, max_concurrent_generations=1) as (c, app):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/v1/generate", json={"prompt": "hi"})
            assert started.wait(30)
            assert app.state.status["generations"] == 1
            second = c.post("/v1/generate", json={"prompt": "hello"})
            in_flight = _metric(c.get("/metrics").text, "workbench_generations_in_flight")
            gate.set()
            done = first.result()
        _wait_for(lambda: app.state.status["generations"] == 0, "the generation slot released")
        after = c.post("/v1/generate", json={"prompt": "hello"})
    assert second.status_code == 429 and second.json()["error"] == "too_many_generations"
    assert "max_concurrent_generations" in second.json()["detail"]
    assert in_flight == 1
    assert done.status_code == 200 and '"text": "one two"' in done.text
    assert after.status_code == 200


async def _hang_up_stream(app, body: dict, when: threading.Event | None) -> list[dict]:
    """POST /v1/generate straight into the ASGI app as a client that hangs up once `when` is set; None: gone
    before the response starts (ASGI 2.4: `send` raises OSError), so its body iterator never starts. What the app
    sent back."""
    import anyio
    from starlette.requests import ClientDisconnect

    raw, sent, asked = json.dumps(body).encode(), [], [False]

    async def receive() -> dict:
        if not asked[0]:
            asked[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        while when is not None and not when.is_set():  # a wait for the other thread, not a timing assertion
            await anyio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        if when is None and msg["type"] == "http.response.start" and msg["status"] == 200:
            raise OSError("the client is gone")
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.0" if when else "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/v1/generate",
             "raw_path": b"/v1/generate", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    with anyio.fail_after(30):
        try:
            await app(scope, receive, send)
        except ClientDisconnect:
            pass
    return sent


def test_streams_whose_client_hangs_up_give_their_generation_slot_back(chat_export, monkeypatch):
    import workbench.generate as generate

    writing, stops = threading.Event(), []

    def slow_answer(model, tok, messages, stop=None, **kw):  # still writing when the client hangs up
        stops.append(stop)
        yield "one"
        writing.set()
        (stop or threading.Event()).wait(10)  # the stop event is how the server ends an abandoned answer
        yield " two"
    monkeypatch.setattr(generate, "iter_answer", slow_answer)
    with serving(chat_export, max_concurrent_generations=2) as (c, app):
        # gone while `next` runs in a worker thread (the first piece sent, the second being written)
        mid = c.portal.call(_hang_up_stream, app, {"prompt": "hi"}, writing)
        before = c.portal.call(_hang_up_stream, app, {"prompt": "hi"}, None)  # gone before the body started
        _wait_for(lambda: app.state.status["generations"] == 0, "both generation slots released")
        in_flight = _metric(c.get("/metrics").text, "workbench_generations_in_flight")
        third = c.post("/v1/generate", json={"prompt": "hello"})
    assert mid[0]["status"] == 200 and b"one" in mid[1]["body"]
    assert before == [] and in_flight == 0
    assert stops and all(s is not None and s.is_set() for s in stops)  # the abandoned generation was stopped
    assert third.status_code == 200 and '"text": "one two"' in third.text, third.text


# --- batching, readiness, metrics, logs ------------------------------------------------------------------
@pytest.mark.parametrize("max_batch", [16, 1])
def test_requests_waiting_together_share_one_forward_pass_unless_batching_is_off(clf, max_batch, monkeypatch):
    texts = ["good", "bad", "great film", "awful", "the plot was dull", "lovely"]
    with serving(clf, max_batch=max_batch, max_wait_ms=5) as (c, app):
        block = Blocked(clf.predict)
        monkeypatch.setattr(clf, "predict", block)
        with ThreadPoolExecutor(len(texts) + 1) as pool:
            first = pool.submit(c.post, "/v1/classify", json={"texts": ["fine"]})
            assert block.started.wait(30)
            rest = [pool.submit(c.post, "/v1/classify", json={"texts": [t]}) for t in texts]
            _wait_for(lambda: app.state.batcher.waiting == len(texts), "all requests queued")
            block.release()
            answers = [f.result() for f in [first, *rest]]
        metrics = c.get("/metrics").text
    assert all(r.status_code == 200 for r in answers)
    assert [r.json()["predictions"][0]["label"] for r in answers[1:]] == ["pos", "neg", "pos", "neg", "neg", "pos"]
    assert _metric(metrics, "workbench_batch_size_sum") == 1 + len(texts)
    if max_batch == 16:
        assert block.calls == [1, len(texts)]
        assert _metric(metrics, "workbench_batch_size_count") == 2
        assert _metric(metrics, 'workbench_batch_size_bucket{le="4.0"}') == 1  # the batch of 6 is above 4
    else:
        assert block.calls == [1] * (1 + len(texts))
        assert _metric(metrics, 'workbench_batch_size_bucket{le="1.0"}') == 1 + len(texts)


def test_a_failing_batch_is_retried_request_by_request_so_only_the_bad_one_fails():
    import asyncio

    from workbench.deploy.batching import MicroBatcher

    forwards = []

    def predict(texts):
        forwards.append(list(texts))
        if "poison" in texts:
            raise ValueError("this text breaks the model")
        return [t.upper() for t in texts]

    async def main():
        b = MicroBatcher(predict, max_batch=4, max_wait_ms=10_000)  # fills at 4 texts: no timing involved
        b.start()
        try:
            return await asyncio.gather(b.submit(["good", "fine"]), b.submit(["poison"]), b.submit(["ok"]),
                                        return_exceptions=True)
        finally:
            await b.stop()

    good, bad, ok = asyncio.run(main())
    assert forwards[0] == ["good", "fine", "poison", "ok"]  # they did share a forward pass
    assert good == (["GOOD", "FINE"], 2) and ok == (["OK"], 1)
    assert isinstance(bad, ValueError) and "breaks the model" in str(bad)


def test_readyz_is_503_until_the_warm_up_prediction_is_done(clf, monkeypatch):
    block = Blocked(clf.predict)
    monkeypatch.setattr(clf, "predict", block)
    app = create_app(clf, ServeSettings())
    with TestClient(app) as c:
        assert block.started.wait(30)  # the warm-up is running
        before = c.get("/readyz")
        asked = c.post("/v1/classify", json={"texts": ["good"]})
        health = c.get("/healthz")
        block.release()
        _ready(c)
        after = c.post("/v1/classify", json={"texts": ["good"]})
    assert before.status_code == 503 and before.json()["ready"] is False and before.json()["detail"] == "warming up"
    assert asked.status_code == 503 and asked.json()["error"] == "not_ready"
    assert health.status_code == 200 and after.status_code == 200


def test_metrics_count_requests_errors_and_latency_by_endpoint(clf):
    with serving(clf) as (c, _):
        c.post("/v1/classify", json={"texts": ["good", "bad"]})
        c.post("/v1/classify", json={"texts": ["good"], "x": 1})
        c.get("/no/such/path/" + "a" * 50)
        text = c.get("/metrics").text
    assert _metric(text, 'workbench_requests_total{endpoint="/v1/classify",status="200"}') == 1
    assert _metric(text, 'workbench_requests_total{endpoint="/v1/classify",status="422"}') == 1
    assert _metric(text, 'workbench_errors_total{endpoint="/v1/classify",status="422"}') == 1
    assert _metric(text, 'workbench_errors_total{endpoint="other",status="404"}') == 1  # not one series per path
    assert _metric(text, 'workbench_request_latency_seconds_count{endpoint="/v1/classify"}') == 2
    assert _metric(text, "workbench_batch_size_sum") == 2
    assert "workbench_generations_in_flight 0.0" in text and "workbench_drift -1.0" in text


def test_each_request_logs_one_json_line_without_its_texts_unless_asked(clf, caplog):
    secret = "the secret plot was awful"
    for log_inputs in (False, True):
        caplog.clear()
        with caplog.at_level("INFO", logger="workbench.serve"), serving(clf, log_inputs=log_inputs) as (c, _):
            c.post("/v1/classify", json={"texts": [secret, "good"]})
            c.post("/v1/classify", json={"texts": [secret], "oops": secret})
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "workbench.serve"]
        lines = [x for x in lines if "endpoint" in x]  # not the ready/shutdown events
        ok = [x for x in lines if x["endpoint"] == "/v1/classify" and x["status"] == 200]
        assert len(ok) == 1 and ok[0]["n_texts"] == 2 and ok[0]["text_lengths"] == [len(secret), 4]
        assert ok[0]["batch_size"] == 2 and ok[0]["latency_ms"] > 0 and "time" in ok[0]
        assert any(x["status"] == 422 for x in lines)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert (secret in logged) is log_inputs


def test_no_request_makes_the_server_open_a_file(clf, tmp_path, monkeypatch):
    target = tmp_path / "secret.txt"
    target.write_text("private")
    asked = [str(target), "/etc/passwd", "../../config.yaml", "~/.ssh/id_rsa", "file:///etc/shadow"]
    opened: list[str] = []
    real_open, real_os_open, real_path_open = builtins.open, os.open, Path.open

    def spy(real):
        def f(file, *a, **k):
            opened.append(str(file))
            return real(file, *a, **k)
        return f

    with serving(clf) as (c, _):
        monkeypatch.setattr(builtins, "open", spy(real_open))
        monkeypatch.setattr(os, "open", spy(real_os_open))
        monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(str(self)) or real_path_open(self, *a,
                                                                                                           **k))
        target.read_text()  # the spies see opens made in this process
        assert opened == [str(target)]
        opened.clear()
        answers = [c.post("/v1/classify", json={"texts": asked}),
                   c.post("/v1/classify", json={"texts": ["x"], "path": str(target)}),
                   c.post("/v1/classify", json={"texts": ["x"], "file": asked[1]}),
                   c.get("/v1/monitor"), c.get(f"/v1/classify/{target}"), c.get("/openapi.json")]
        monkeypatch.undo()
    assert answers[0].status_code == 200 and [a.status_code for a in answers[1:3]] == [422, 422]
    assert not [f for f in opened if any(p in f or Path(p).name in f for p in asked)], opened


# --- the drift monitor ------------------------------------------------------------------------------------
def test_the_monitor_flags_a_skewed_stream_and_not_a_test_like_one(clf):
    fresh = make_sentiment_frame(240, seed=7)["text"].tolist()
    settings = {"monitor_window": 200, "drift_min_count": 100}
    with serving(clf, **settings) as (c, _):
        for i in range(0, 40, 20):
            c.post("/v1/classify", json={"texts": fresh[i:i + 20]})
        early = c.get("/v1/monitor").json()
        for i in range(40, 240, 50):
            c.post("/v1/classify", json={"texts": fresh[i:i + 50]})
        like_test = c.get("/v1/monitor").json()
    skewed = [f"{w} {w} {w} this movie" for w in POS] * 25  # only praise
    with serving(clf, **settings) as (c, _):
        for i in range(0, 200, 50):
            c.post("/v1/classify", json={"texts": skewed[i:i + 50]})
        drifted = c.get("/v1/monitor").json()
        gauge = _metric(c.get("/metrics").text, "workbench_drift")
    assert early["drift"]["flag"] is None and "needs 100" in early["drift"]["reason"]
    assert like_test["window"]["n"] == 200 and like_test["drift"]["flag"] is False, like_test
    stats = drifted["drift"]["statistics"]
    assert drifted["drift"]["flag"] is True and stats["label_tvd"]["over"] and stats["label_tvd"]["value"] > 0.4
    assert drifted["window"]["label_distribution"] == {"pos": 1.0}
    assert drifted["reference"]["label_distribution"] == {"neg": 0.5, "pos": 0.5} and gauge == 1
    assert set(stats) == {"label_tvd", "confidence_psi", "length_psi"}


def test_reference_parsing_tolerates_what_another_writer_puts_there():
    from workbench.deploy.monitor import Monitor, parse_reference

    ref = parse_reference({"label_distribution": {"a": 30, "b": 10}, "confidence": {"mean": 0.8, "histogram":
                          [0, 0, 0, 0, 0, 5, 5, 10, 10, 10]}, "input_length": {"quantiles": {"p50": 40}}}, "x")
    assert ref.label_shares == {"a": 0.75, "b": 0.25} and ref.confidence_hist[1][-1] == 10
    assert ref.length_quantiles == {"p50": 40.0} and ref.length_hist is None and not ref.notes
    bad = parse_reference({"label_distribution": ["a"], "confidence": {"histogram": {"edges": [0, 1]}}}, "x")
    assert bad.label_shares is None and bad.confidence_hist is None and len(bad.notes) == 2
    m = Monitor(bad, window=5, min_count=1)
    m.record(["a"], 0.9, 10)
    assert m.report()["drift"]["flag"] is None  # nothing comparable: no flag rather than a wrong one


def test_reference_numbers_too_big_for_a_float_are_left_out_and_drift_stays_finite():
    from workbench.deploy.monitor import Monitor, parse_reference

    huge = 10 ** 400  # json.loads gives Python ints of any size; math.isfinite(huge) raises OverflowError
    ref = parse_reference({"n": huge, "label_distribution": {"a": 1e308, "b": 1e308},
                           "confidence": {"mean": huge, "histogram": [1e308] * 10},  # counts summing to inf
                           "input_length": {"quantiles": {"p50": huge, "p90": 50},
                                            "histogram": {"edges": [0, 10, 1000], "counts": [huge, 1]}}}, "x")
    assert ref.n is None and ref.confidence_mean is None and ref.length_quantiles == {"p90": 50.0}
    assert ref.label_shares is None and ref.confidence_hist is None and ref.length_hist is None
    assert len(ref.notes) == 3
    m = Monitor(ref, window=5, min_count=1)
    m.record(["a"], 0.9, 10)
    json.dumps(m.report(), allow_nan=False)  # what /v1/monitor sends: inf or nan would make it a 500


@pytest.mark.parametrize("text", ['{"kind": "int8-dynamic", "task": []}', '{"max_length": ' + "7" * 5000 + "}",
                                  "[" * 100_000], ids=["task-a-list", "5000-digits", "100000-deep"])
def test_a_damaged_export_record_is_refused_with_a_message(clf_run, tmp_path, text):
    from workbench.errors import ModelError

    folder = tmp_path / "exp"
    shutil.copytree(clf_run.model_dir, folder)
    (folder / EXPORT_FILE).write_text(text)
    with pytest.raises(ModelError, match=EXPORT_FILE):
        load_served(folder)


# --- settings and the command line -------------------------------------------------------------------------
def test_settings_need_a_key_off_loopback_and_read_it_from_env_or_file(tmp_path, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert any("API key is required" in p for p in ServeSettings(host="0.0.0.0").problems())
    assert not ServeSettings(host="0.0.0.0", api_key=KEY).problems()
    assert any("at least 16" in p for p in ServeSettings(api_key="short").problems())
    (tmp_path / "key").write_text(f"  {KEY}\n")
    monkeypatch.setenv("MY_KEY", "from-env-" + KEY)
    assert api_key_from(file=tmp_path / "key") == KEY
    assert api_key_from("MY_KEY") == "from-env-" + KEY
    monkeypatch.delenv("WORKBENCH_API_KEY", raising=False)
    assert api_key_from() is None


def test_the_api_key_is_not_in_the_settings_repr():
    s = ServeSettings(api_key=KEY)
    assert KEY not in repr(s) and KEY not in str(s) and "max_batch=16" in repr(s)


def test_settings_refuse_a_queue_smaller_than_one_request():
    problems = ServeSettings(max_queue=8, max_texts=64).problems()
    assert any("max_queue=8" in p and "max_texts=64" in p for p in problems), problems
    assert not ServeSettings(max_queue=64, max_texts=64).problems()


@pytest.fixture
def cli(capsys, monkeypatch):
    from workbench.cli import main

    monkeypatch.delenv("WORKBENCH_API_KEY", raising=False)

    def run(*args: str) -> tuple[int, str]:
        rc = main(["serve", *map(str, args)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return rc, err
    return run


def test_the_cli_refuses_what_it_cannot_serve_safely_with_one_message(cli, clf_run, tmp_path):
    rc, err = cli(clf_run.path, "--host", "0.0.0.0")
    assert rc == 2 and "not a loopback address" in err and "WORKBENCH_API_KEY" in err
    rc, err = cli(clf_run.path, "--api-key-file", tmp_path / "missing.key")
    assert rc == 2 and "--api-key-file" in err and "no such file" in err
    rc, err = cli(clf_run.path, "--api-key-env", "NOT_SET_ANYWHERE_42")
    assert rc == 2 and "NOT_SET_ANYWHERE_42" in err and "not set" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, err = cli(clf_run.path, "--port", port)
    assert rc == 2 and f"port {port} is in use — another server? pick --port" in err


def test_the_cli_refuses_a_run_still_training_or_failed(cli, clf_run, tmp_path):
    training = tmp_path / "training"
    shutil.copytree(clf_run.path, training, ignore=shutil.ignore_patterns("model"))
    RunDir(training).update_status(state="running", pid=os.getpid(), step=3, total_steps=72)
    rc, err = cli(training, "--port", free_port())
    assert rc == 2 and "still running (step 3 of 72)" in err and "no final model" in err
    RunDir(training).update_status(state="failed", error="NaN loss at step 3")
    rc, err = cli(training, "--port", free_port())
    assert rc == 2 and "no final model to serve (state: failed: NaN loss at step 3)" in err


def test_core_import_needs_no_deploy_extra_and_serve_says_what_to_install():
    code = ("import sys\nimport workbench, workbench.cli\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'httpx') if m in sys.modules))\n"
            "sys.modules['fastapi'] = None\nsys.exit(workbench.cli.main(['serve', 'somewhere']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout.strip() == "[]" and p.returncode == 2
    assert "pip install 'workbench[deploy]'" in p.stderr and "Traceback" not in p.stderr


def test_a_real_server_process_answers_over_loopback_then_stops(clf_run, cli, tmp_path):
    import httpx

    from workbench.deploy.loadtest import load_test

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKBENCH_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "serve", str(clf_run.path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # start-up: import, load, warm up
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(url + "/v1/classify", json={"texts": [f"{POS[0]} movie", f"{NEG[0]} movie"]}, headers=auth)
        no_key = httpx.post(url + "/v1/classify", json={"texts": ["good"]})
        rc, err = cli(clf_run.path, "--port", port)  # a second server on the same port
        load = load_test(url, n_clients=4, n_requests=5, texts=["good", "bad film"], api_key=KEY)
    finally:
        proc.terminate()
        out, log = proc.communicate(timeout=30)
    assert r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]
    assert no_key.status_code == 401
    assert rc == 2 and f"port {port} is in use" in err
    assert load["ok"] == 20 and load["errors"] == 0 and load["not_sent"] == 0
    assert 0 < load["p50_ms"] <= load["p99_ms"] and load["throughput_rps"] > 0
    assert f"at http://127.0.0.1:{port}" in out and "API key: required" in out
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    # SIGTERM: uvicorn finishes the requests and the app's shutdown, then exits by the signal it caught
    assert proc.returncode in (0, -15) and lines[-1] == {"event": "shutdown", "model": "clf"}, log
    assert any(x.get("endpoint") == "/v1/classify" and x["status"] == 401 for x in lines)
    assert "Traceback" not in log and KEY not in out + log
