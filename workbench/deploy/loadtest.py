"""A bounded load test of a running `workbench serve`: N clients, each sending M requests one after another.

Each client is its own `httpx.AsyncClient` (its own connection), so the server sees N requests in flight at
once — what micro-batching is for. It stops by itself: after n_clients × n_requests requests, or at
`max_seconds` (the requests not sent by then are counted as not sent). Latency is per request, from send to
the whole answer; throughput is answered requests (and texts) per second of wall time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Sequence

import numpy as np

from ..errors import WorkbenchError


def load_test(url: str, n_clients: int, n_requests: int, texts: Sequence[str], api_key: str | None = None, *,
              endpoint: str = "/v1/classify", texts_per_request: int = 1, timeout: float = 60.0,
              max_seconds: float = 600.0) -> dict[str, Any]:
    """Run the test against the server at `url` (e.g. http://127.0.0.1:8000) and summarise it:
    {clients, requests, ok, errors, statuses, not_sent, seconds, throughput_rps, texts_per_second, p50_ms,
    p99_ms, mean_ms}. Request k of client c sends `texts_per_request` texts starting at (c·n_requests + k)."""
    try:
        import httpx
    except ImportError:
        raise WorkbenchError("the load test needs httpx. Fix: pip install 'workbench[deploy]'") from None
    if n_clients < 1 or n_requests < 1 or not texts:
        raise WorkbenchError("load_test needs n_clients ≥ 1, n_requests ≥ 1 and at least one text.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def client(c: int, deadline: float) -> int:
        sent = 0
        async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as http:
            for k in range(n_requests):
                if time.perf_counter() > deadline:
                    break
                at = (c * n_requests + k) * texts_per_request
                batch = [texts[(at + i) % len(texts)] for i in range(texts_per_request)]
                t0 = time.perf_counter()
                try:
                    r = await http.post(endpoint, json={"texts": batch})
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                sent += 1
                if status == "200":
                    latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        return sent

    async def main() -> tuple[float, int]:
        t0 = time.perf_counter()
        sent = await asyncio.gather(*(client(c, t0 + max_seconds) for c in range(n_clients)))
        return time.perf_counter() - t0, sum(sent)

    seconds, sent = _run(main())
    ok = statuses.get("200", 0)
    lat = np.asarray(latencies) * 1000
    return {"url": url, "endpoint": endpoint, "clients": n_clients, "requests": n_clients * n_requests,
            "texts_per_request": texts_per_request, "ok": ok, "errors": sent - ok, "statuses": statuses,
            "not_sent": n_clients * n_requests - sent, "seconds": round(seconds, 3),
            "throughput_rps": round(ok / seconds, 2) if seconds else None,
            "texts_per_second": round(ok * texts_per_request / seconds, 2) if seconds else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "mean_ms": round(float(lat.mean()), 2) if len(lat) else None}


def _run(coro: Any) -> Any:
    """`asyncio.run`, also from inside a running event loop (a Jupyter notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
