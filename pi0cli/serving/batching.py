"""Dynamic batching: requests from many connections become one model call.

The event loop never runs the model. Each connection handler awaits :meth:`DynamicBatcher.submit`; one
worker thread collects what is queued, waits at most ``window_s`` for more to arrive (counted from the
oldest request, or from the end of the previous batch if that is later, so the clients it just served can
join), but not at all once every open connection has a request waiting or the batch is full; then it hands
the whole batch to ``process`` and resolves each request's future on the event loop.

``process`` gets a list of items and returns one result per item; an item's result may be an exception
instance, which is raised in that request's handler only, so one bad request never fails its batchmates.
Padding to the few compiled batch sizes is the policy's business
(:meth:`~pi0cli.serving.served.ServedPolicy.run_prepared`).

Fairness: a connection has at most one request in flight (the handler awaits its reply before reading the
next frame), so a client that floods frames only queues behind itself, and a client that stops reading its
replies only stalls its own handler (websocket writes are per-connection coroutines).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from pi0cli.errors import Pi0Error


class OverloadedError(Pi0Error):
    """More requests are waiting than the server accepts; the client should retry later."""

    kind = "overloaded"


class BatcherClosedError(Pi0Error):
    """The batcher was shut down."""

    kind = "shutdown"


@dataclasses.dataclass
class _Pending[T, R]:
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    arrived: float


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    sizes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    busy_s: float = 0.0


def _resolve[R](future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class DynamicBatcher[T, R]:
    """Collects submitted items (``T``) into batches for ``process`` on one worker thread; each gets its
    result (``R``) or has its exception raised.

    ``warmup`` (optional) runs on the worker thread before the first batch (e.g. compiling every batch
    size); ``ready`` is set once it has finished. ``active_clients`` (optional) returns how many clients
    could currently submit (the server counts only connections that asked recently, so idle ones do not hold
    the window open): when that many items are waiting the batch starts without waiting out the window.
    ``incoming`` (optional) returns how many requests are admitted but still in their input transforms.
    ``on_batch(size, seconds)`` (optional) is called on the worker thread after every batch (metrics).
    """

    def __init__(
        self,
        process: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = 8,
        window_s: float = 0.005,
        max_queue: int = 1024,
        warmup: Callable[[], None] | None = None,
        active_clients: Callable[[], int] | None = None,
        incoming: Callable[[], int] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "pi0-batcher",
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must not be negative, got {window_s}")
        self.process = process
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        self.max_queue = int(max_queue)
        self._warmup = warmup
        self._active_clients = active_clients
        self._incoming = incoming
        self._on_batch = on_batch
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.stats = BatchStats()
        self._free_since = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> DynamicBatcher[T, R]:
        self._thread.start()
        return self

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for p in pending:
            self._post(p, BatcherClosedError("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ submitting

    async def submit(self, item: T, arrived: float | None = None) -> R:
        """Queue ``item`` and wait for its result (raises the item's exception, if any). ``arrived``: when the
        request reached the server (``time.perf_counter()``), if earlier than now; the window counts from it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if self.failed is not None:
                raise BatcherClosedError(f"the model failed to start: {self.failed}")
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(f"{len(self._queue)} requests are already waiting; retry shortly")
            self._queue.append(_Pending(item, future, loop, arrived if arrived is not None else time.perf_counter()))
            self._cond.notify()
        return await future

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------------------------------------ worker

    def _post(self, pending: _Pending[T, R], result: R | BaseException) -> None:
        try:
            pending.loop.call_soon_threadsafe(_resolve, pending.future, result)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _post_all(self, batch: list[_Pending[T, R]], results: list[R | BaseException]) -> None:
        for pending, result in zip(batch, results, strict=True):
            self._post(pending, result)

    def _take_batch(self) -> list[_Pending[T, R]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # The window counts from the later of the oldest arrival and the end of the previous batch: the
            # clients served by that batch send their next request right away and should catch this one.
            deadline = max(self._queue[0].arrived, self._free_since) + self.window_s
            # Requests already received but still in their input transforms are worth a little more wait.
            hard_deadline = deadline + max(self.window_s, 0.02)
            while len(self._queue) < self.max_batch and not self._closed:
                incoming = self._incoming() if self._incoming is not None else 0
                if not incoming and self._active_clients is not None and len(self._queue) >= self._active_clients():
                    break  # everyone who could ask is already waiting
                now = time.perf_counter()
                remaining = (hard_deadline if incoming else deadline) - now
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.002) if incoming else remaining)
            if self._closed:
                return None
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        try:
            if self._warmup is not None:
                self._warmup()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting and future request
            self.failed = exc
            with self._cond:
                pending = list(self._queue)
                self._queue.clear()
            for p in pending:
                self._post(p, BatcherClosedError(f"the model failed to start: {exc}"))
            return
        self.ready.set()
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            start = time.perf_counter()
            results: list[R | BaseException]
            try:
                results = list(self.process([p.item for p in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: every request hears why
                results = [exc] * len(batch)
            busy = time.perf_counter() - start
            self.stats.busy_s += busy
            if self._on_batch is not None:
                self._on_batch(len(batch), busy)
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.sizes[len(batch)] += 1
            self._post_all(batch, results)
            del batch, results  # no request outlives its reply in this thread (memory under --record)
            self._free_since = time.perf_counter()
