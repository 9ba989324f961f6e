"""Micro-batching: requests that arrive together share one forward pass.

One asyncio queue and one worker task per server. The worker takes the first waiting request, then keeps
taking requests until the batch holds `max_batch` texts or `max_wait_ms` have passed since it started
collecting, runs the forward in one worker thread (the event loop keeps accepting requests meanwhile; one
thread, so forwards never compete for the CPU), and resolves each request's future with its own results.
A request bigger than `max_batch` runs alone, whole. `max_batch=1` turns batching off: one request per forward.
When a batch's forward fails, each of its requests is retried in a forward of its own, so only a request that
fails alone gets the error (500), not every request that happened to share its batch.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """More texts are waiting than the server accepts (`max_queue`): answered with 429."""


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    batch: dict[str, int] = field(default_factory=dict)  # filled in: the size of the batch it ran in


class MicroBatcher:
    """`await submit(texts)` -> `predict(texts)`'s results for those texts, computed in a shared batch.

    `on_batch(n_texts)` is called once per forward (the batch-size metric)."""

    def __init__(self, predict: Callable[[list[str]], list[Any]], *, max_batch: int = 16, max_wait_ms: float = 10.0,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None):
        self.predict, self.max_batch, self.max_wait = predict, max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.waiting = 0  # texts queued and not yet in a forward
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-forward")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, texts: list[str]) -> list[Any]:
        """Outside the queue: one forward in the worker thread (the server's warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.predict, texts)

    async def submit(self, texts: list[str]) -> tuple[list[Any], int]:
        """(the results for `texts`, the number of texts in the forward they ran in)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self.waiting + len(texts) > self.max_queue:
            raise QueueFull(f"{self.waiting} texts are already waiting; the server takes at most {self.max_queue} "
                            f"(max_queue). Retry in a moment, or send fewer texts at once.")
        item = _Item(list(texts), asyncio.get_running_loop().create_future())
        self.waiting += len(texts)
        await self._queue.put(item)
        results = await item.future
        return results, item.batch["texts"]

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry or await self._queue.get()
            carry, batch, n = None, [first], len(first.texts)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if n + len(nxt.texts) > self.max_batch:
                    carry = nxt  # starts the next batch
                    break
                batch.append(nxt)
                n += len(nxt.texts)
            self.waiting -= n
            texts = [t for it in batch for t in it.texts]
            if self.on_batch is not None:
                self.on_batch(len(texts))
            try:
                results = await loop.run_in_executor(self._pool, self.predict, texts)
            except Exception as e:  # noqa: BLE001 - handed to the requests, never raised here
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(e)
                    continue
                await self._one_by_one(batch)  # one bad text must not fail the requests it shared a batch with
                continue
            at = 0
            for it in batch:
                it.batch["texts"] = len(texts)
                if not it.future.done():  # a client that went away cancelled its future
                    it.future.set_result(results[at:at + len(it.texts)])
                at += len(it.texts)

    async def _one_by_one(self, batch: list[_Item]) -> None:
        """Each request of a failed batch in a forward of its own: only those that fail alone get an error."""
        loop = asyncio.get_running_loop()
        for it in batch:
            if it.future.done():  # its client went away
                continue
            if self.on_batch is not None:
                self.on_batch(len(it.texts))
            try:
                results = await loop.run_in_executor(self._pool, self.predict, it.texts)
            except Exception as e:  # noqa: BLE001 - this request's own error
                if not it.future.done():
                    it.future.set_exception(e)
                continue
            it.batch["texts"] = len(it.texts)
            if not it.future.done():
                it.future.set_result(results)
