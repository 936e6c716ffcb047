"""What bounds the work hostile or careless clients can cause ``pi0 serve``: the connection cap and activity
tracking (:class:`Connections`), the budget for costly rejected frames (:class:`RejectedBytesBudget`) and
rate-limited warnings (:class:`RateLimitedLog`). No networking here: the server asks, these answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

#: A connection counts as an active client while a request is in flight and this long after its last reply.
ACTIVE_S = 2.0


class RateLimitedLog:
    """Warnings of one kind at most once per ``interval_s``, the next one saying how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self._logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (and %d more like this in the last %.0f s)"
            args = (*args, suppressed, self.interval_s)
        self._logger.warning(message, *args, exc_info=exc_info)


class RejectedBytesBudget:
    """A token bucket shared by every connection for *rejected* frames that were costly: at least
    ``min_bytes`` long, or at least ``min_work_s`` of decoding and validation on the worker pool.

    Receiving a frame costs the event loop about 2-3 ms per MiB inside the websockets library (copies and
    unmasking) before any of our code runs, and a frame that fills the element budget costs a worker a few
    ms. A client whose costly frame is refused waits, before its next frame is read, until the bucket has
    paid for it: its bytes at ``bytes_per_s`` plus ``work_factor`` times its worker time. Together, hostile
    connections can then spend only a small, bounded share of the event loop and of the workers. Clients
    sending valid requests, or cheap invalid ones, never wait.
    """

    def __init__(self, bytes_per_s: float, min_bytes: int = 64 * 1024, min_work_s: float = 0.002,
                 work_factor: float = 4.0):
        self.bytes_per_s = float(bytes_per_s)
        self.min_bytes = min_bytes
        self.min_work_s = min_work_s
        self.work_factor = work_factor
        self._free_at = 0.0

    def delay(self, nbytes: int, work_s: float = 0.0) -> float:
        """Seconds the sender of a rejected frame of ``nbytes`` (``work_s`` on a worker) waits."""
        if nbytes < self.min_bytes and work_s < self.min_work_s:
            return 0.0
        now = time.monotonic()
        self._free_at = max(now, self._free_at) + nbytes / self.bytes_per_s + work_s * self.work_factor
        return self._free_at - now


@dataclasses.dataclass(eq=False)
class Connection:
    """One open websocket connection, as the limits see it."""

    peer: str
    in_flight: bool = False
    last_active: float = float("-inf")


class Connections:
    """The open connections, at most ``limit`` of them; which count as active clients for the batcher.

    Mutated on the event loop only; :meth:`active` is read from the batcher's thread too (it copies first).
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._open: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.limit

    def open(self, peer: str) -> Connection:
        conn = Connection(peer)
        self._open.add(conn)
        return conn

    def close(self, conn: Connection) -> None:
        self._open.discard(conn)

    def active(self) -> int:
        """Connections with a request in flight or answered within :data:`ACTIVE_S` (thread-safe)."""
        now = time.perf_counter()
        return sum(1 for c in list(self._open) if c.in_flight or now - c.last_active < ACTIVE_S)


def peer_name(connection: object) -> str:
    """``host:port`` of a websocket connection's peer (``?`` when unknown), for logs and the limits."""
    address = getattr(connection, "remote_address", None)  # None (or odd) once the socket is gone
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "?"
