"""The websocket policy server, wire-compatible with the reference (openpi) server and ``openpi-client``.

Per connection: the server first sends one binary msgpack frame with the policy metadata; then every binary
msgpack observation gets one binary msgpack reply ``{"actions": [H, robot_dim], "policy_timing": {...},
"server_timing": {"infer_ms", "prev_total_ms" (from the 2nd request)}}``. A request that cannot be served
(not msgpack, wrong types, missing keys, wrong shapes or dtypes for the embodiment, NaN, a text frame, or a
model that produced NaN/inf actions) is answered with a *text* frame ``"Error: <what is wrong and how to fix
it>"`` of at most a few hundred characters -- the reference client raises it as an error -- and the
connection keeps serving. A bug answers ``"Error: internal server error (request id ...)"``; the details go
to the log only.

Bounded work per client: decoding (at most ``max_elements`` msgpack elements), validation and the input
transforms run on a small thread pool, the model on the batcher's thread (:mod:`pi0cli.serving.batching`),
so the event loop only moves frames and answers health checks. Each connection has at most one request in
flight and at most ``max_buffered_frames`` frames buffered (the socket is not read further meanwhile).
Large or costly frames that are refused draw on a server-wide budget (:class:`RejectedBytesBudget`), so
hostile clients cannot keep the event loop or the workers busy with them.
Beyond ``max_connections`` a new connection is closed at once with code 1013 (try again later); a
connection that sends nothing for ``idle_timeout_s`` is closed with code 1000. Only connections that asked
within the last few seconds count as active clients for the batcher's window.

HTTP ``GET /healthz``: 503 ``"compiling\\n"`` until the model has been compiled for every batch size, then
200 ``"OK\\n"`` (500 if warm-up failed; the reason goes to the log). ``GET /metrics``: Prometheus text format
(:mod:`pi0cli.serving.metrics`). With an API key, the websocket handshake (and ``/metrics``) must carry exactly
one ``Authorization: Api-Key <key>`` header (what openpi-client sends) or it is refused with 401. Messages
above the size limit close that connection with code 1009 (the websockets library's limit; nothing is
buffered past it). Warnings about refused connections are rate-limited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import http
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pi0cli.errors import Pi0Error
from pi0cli.models.tokenizer import DECODE_FAILURES_KEY
from pi0cli.serving import protocol
from pi0cli.serving.batching import DynamicBatcher
from pi0cli.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.serving.recording import Recorder

log = logging.getLogger("pi0.serve")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
#: Close code for "the server is full" (RFC 6455 registry: Try Again Later).
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_NORMAL = 1000
#: A connection counts as an active client while a request is in flight and this long after its last reply.
ACTIVE_S = 2.0
#: How long a closing handshake may take (a vanished peer must not hold a connection, or shutdown, longer).
CLOSE_TIMEOUT_S = 2.0


class ServerError(Pi0Error):
    """The server cannot start as configured."""


class InternalServerError(Pi0Error):
    """A bug while serving one request; the client gets the request id, the log gets the traceback."""

    kind = "internal"

    def __init__(self, request_id: str):
        super().__init__(f"internal server error (request id {request_id}); the details are in the server log")


class RateLimitedLog:
    """Warnings of one kind at most once per ``interval_s``, the next one saying how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self._logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
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
class _Connection:
    peer: str
    in_flight: bool = False
    last_active: float = float("-inf")


def _error_kind(exc: BaseException) -> str:
    return getattr(exc, "kind", "invalid") if isinstance(exc, Pi0Error) else "internal"


class PolicyServer:
    """Serves a policy (anything with ``infer_batch(list, return_exceptions=True)``, ``warmup()``, ``metadata``).

    ``embodiment`` (optional) validates every request before it is queued. ``recorder`` (optional) gets
    ``record(request, reply, nbytes)`` for every served request. Limits: ``max_message_bytes`` (frame size),
    ``max_elements`` (msgpack elements per frame), ``max_connections``, ``idle_timeout_s`` (None or 0: none),
    ``max_buffered_frames`` (per connection), ``rejected_bytes_per_s`` (see :class:`RejectedBytesBudget`;
    None: off).
    """

    def __init__(
        self,
        policy: Any,
        *,
        embodiment: Embodiment | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_batch: int = 8,
        batch_window_ms: float = 10.0,
        max_message_bytes: int | None = 64 * 2**20,
        max_elements: int = protocol.MAX_ELEMENTS,
        max_connections: int = 64,
        idle_timeout_s: float | None = 600.0,
        max_buffered_frames: int = 2,
        rejected_bytes_per_s: float | None = 4 * 2**20,
        recorder: Recorder | None = None,
        metadata: Mapping[str, Any] | None = None,
        warmup: bool = True,
        prepare_threads: int = 2,
    ):
        if max_connections < 1:
            raise ServerError(f"--max-connections must be at least 1, got {max_connections}")
        if max_elements < 16:
            raise ServerError(f"--max-message-elements must be at least 16, got {max_elements}")
        self.policy = policy
        self.embodiment = embodiment
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_message_bytes = max_message_bytes
        self.max_elements = int(max_elements)
        self.max_connections = int(max_connections)
        self.idle_timeout_s = idle_timeout_s or None
        self.max_buffered_frames = max(1, int(max_buffered_frames))
        self._rejected = RejectedBytesBudget(rejected_bytes_per_s) if rejected_bytes_per_s else None
        self.recorder = recorder
        self.metadata = dict(metadata if metadata is not None else getattr(policy, "metadata", {}) or {})
        self._metadata_frame = protocol.packb(self.metadata)
        self._connections: set[_Connection] = set()
        self._preparing = 0
        self._preparing_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests = 0
        self.errors = 0
        self.warmup_s: float | None = None
        self._server: Any = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warn = RateLimitedLog(log)
        # Decoding, validation and the per-request input transforms (image resizing, tokenizing) run on a small
        # pool, overlapping the model and keeping the event loop free.
        self._prepare = getattr(policy, "prepare", None)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, prepare_threads), thread_name_prefix="pi0-prepare")
        self.metrics = ServerMetrics(open_connections=lambda: len(self._connections),
                                     active_connections=self.active_clients, ready=lambda: float(self.ready),
                                     recorder=recorder)
        self.batcher = DynamicBatcher(
            self._process, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
            warmup=self._warmup if warmup else None, active_clients=self.active_clients,
            incoming=lambda: self._preparing, on_batch=self.metrics.observe_batch,
        )

    # ---------------------------------------------------------------------------------------------- model

    def _warmup(self) -> None:
        start = time.perf_counter()
        self.policy.warmup()
        self.warmup_s = time.perf_counter() - start
        log.info("model compiled for every batch size in %.1f s", self.warmup_s)

    def _process(self, items: Sequence[Any]) -> list[Any]:
        if self._prepare is not None:
            return self.policy.run_prepared(items, return_exceptions=True)
        return self.policy.infer_batch(items, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.batcher.ready.is_set()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def active_clients(self) -> int:
        """Connections with a request in flight or answered within :data:`ACTIVE_S` (thread-safe)."""
        now = time.perf_counter()
        return sum(1 for c in list(self._connections) if c.in_flight or now - c.last_active < ACTIVE_S)

    # ---------------------------------------------------------------------------------------------- HTTP

    def _auth_problem(self, request: Any) -> str | None:
        """Why a request's API key is refused (None: accepted). Never quotes what the client sent."""
        if self.api_key is None:
            return None
        values = request.headers.get_all("Authorization")
        if not values:
            return "missing API key"
        if len(values) > 1:
            return "more than one Authorization header"
        expected = f"Api-Key {self.api_key}".encode()
        if not hmac.compare_digest(values[0].encode("utf-8", "surrogateescape"), expected):
            return "wrong API key"
        return None

    def _process_request(self, connection: Any, request: Any) -> Any:
        try:
            return self._route(connection, request)
        except Exception:  # noqa: BLE001 - a bug here must not log a traceback per hostile attempt
            self._warn.warning("http", "could not answer an HTTP request from %s", _peer(connection), exc_info=True)
            return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error\n")

    def _route(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            if self.batcher.failed is not None:
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                          "model failed to start; see the server log\n")
            if not self.ready:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "compiling\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        problem = self._auth_problem(request)
        if problem is not None:
            self.metrics.refused.labels("auth").inc()
            self._warn.warning("auth", "refused a connection from %s: %s", _peer(connection), problem)
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                f"{problem}: send one header 'Authorization: Api-Key <key>' "
                "(openpi-client: WebsocketClientPolicy(..., api_key=KEY))\n",
            )
        if path == METRICS_PATH:
            response = connection.respond(http.HTTPStatus.OK, self.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        return None

    # ---------------------------------------------------------------------------------------- websocket

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = _peer(ws)
        if len(self._connections) >= self.max_connections:
            self.metrics.refused.labels("full").inc()
            self._warn.warning("full", "refused a connection from %s: %d connections open (--max-connections)",
                               peer, len(self._connections))
            await ws.close(CLOSE_TRY_AGAIN_LATER, f"server full: {self.max_connections} connections open "
                                                  "(--max-connections); retry later")
            return
        conn = _Connection(peer)
        self._connections.add(conn)
        log.info("client connected: %s", peer)
        prev_total_ms: float | None = None
        try:
            await ws.send(self._metadata_frame)
            while True:
                message = await self._next_frame(ws)
                if message is None:
                    break
                prev_total_ms = await self._serve_one(ws, conn, message, prev_total_ms)
                del message  # an idle connection holds no request
        except ConnectionClosed:
            pass
        finally:
            self._connections.discard(conn)
            log.info("client disconnected: %s", peer)

    async def _next_frame(self, ws: Any) -> Any:
        """The next frame, or None once the connection was idle for ``idle_timeout_s`` (then closed)."""
        if self.idle_timeout_s is None:
            return await ws.recv()
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                return await ws.recv()
        except TimeoutError:
            self.metrics.closed_idle.inc()
            log.info("closing idle connection %s", _peer(ws))
            await ws.close(CLOSE_NORMAL, f"idle for {self.idle_timeout_s:g} s (--idle-timeout-s); reconnect")
            return None

    def _admit(self, message: Any, request_id: str, peer: str) -> tuple[tuple[Any, Any] | BaseException, float]:
        """Decode, validate and transform one frame (on the pool): ``(model item, request)`` or the error, and
        the seconds it took."""
        start = time.perf_counter()
        return self._admit_one(message, request_id, peer), time.perf_counter() - start

    def _admit_one(self, message: Any, request_id: str, peer: str) -> tuple[Any, Any] | BaseException:
        try:
            obs = protocol.decode_request(message, self.embodiment, max_elements=self.max_elements)
            if self._prepare is None:
                return obs, obs
            with self._preparing_lock:
                self._preparing += 1
            try:
                return self._prepare(obs), obs
            finally:
                with self._preparing_lock:
                    self._preparing -= 1
        except Pi0Error as exc:
            exc.__traceback__ = None  # an expected error keeps no frames (nor the frame bytes) alive
            return exc
        except Exception as exc:  # noqa: BLE001 - a bug must not take the connection or server down
            return self._internal(exc, request_id, peer)

    def _internal(self, exc: BaseException, request_id: str, peer: str) -> InternalServerError:
        log.error("request %s from %s failed", request_id, peer, exc_info=exc)
        exc.__traceback__ = None
        return InternalServerError(request_id)

    async def _send_error(self, ws: Any, exc: BaseException) -> None:
        self.errors += 1
        self.metrics.error(_error_kind(exc))
        await ws.send(protocol.error_text(exc))

    async def _serve_one(self, ws: Any, conn: _Connection, message: Any, prev_total_ms: float | None) -> float | None:
        start = time.perf_counter()
        self.requests += 1
        self.metrics.requests.inc()
        request_id = f"{next(self._ids):x}"
        admitted, work_s = await asyncio.get_running_loop().run_in_executor(self._pool, self._admit, message,
                                                                            request_id, conn.peer)
        self.metrics.decode_seconds.observe(time.perf_counter() - start)
        if isinstance(admitted, BaseException):
            await self._send_error(ws, admitted)
            if self._rejected is not None and (delay := self._rejected.delay(len(message), work_s)) > 0:
                await asyncio.sleep(delay)  # read nothing more from this client until its frame is paid for
            return prev_total_ms
        item, obs = admitted
        del admitted
        conn.in_flight = True
        try:
            result = await self.batcher.submit(item, arrived=start)
        except Exception as exc:  # noqa: BLE001 - reported to this client only
            if not isinstance(exc, Pi0Error):
                exc = self._internal(exc, request_id, conn.peer)
            exc.__traceback__ = None
            await self._send_error(ws, exc)
            return prev_total_ms
        finally:
            conn.in_flight = False
            conn.last_active = time.perf_counter()
        del item
        timing = {"infer_ms": (time.perf_counter() - start) * 1000.0}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        reply = {**result, "server_timing": timing}
        try:
            frame = protocol.packb(reply)
        except Pi0Error as exc:
            await self._send_error(ws, self._internal(exc, request_id, conn.peer))
            return prev_total_ms
        await ws.send(frame)
        self.metrics.replies.inc()
        if DECODE_FAILURES_KEY in result:
            self.metrics.action_decode_failures.inc(int(result[DECODE_FAILURES_KEY]))
        self.metrics.request_seconds.observe(time.perf_counter() - start)
        if self.recorder is not None:
            self.recorder.record(obs, reply, nbytes=len(message) + len(frame))
        return (time.perf_counter() - start) * 1000.0

    # ---------------------------------------------------------------------------------------------- life

    async def serve(self, on_listening: Callable[[PolicyServer], None] | None = None,
                    on_ready: Callable[[PolicyServer], None] | None = None) -> None:
        """Listen until :meth:`stop` (or cancellation); the model warms up on the batcher's thread."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await serve(
                self._handler, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                max_queue=self.max_buffered_frames, process_request=self._process_request, server_header="pi0",
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except OSError as exc:
            raise ServerError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                              "pick another --port or stop the process using it") from None
        self._server = server
        sockets = list(server.sockets)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.batcher.start()
        try:
            if on_listening is not None:
                on_listening(self)
            watcher = asyncio.get_running_loop().create_task(self._watch_warmup(on_ready))
            await self._stop.wait()
            watcher.cancel()
        finally:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except (TimeoutError, Exception):  # noqa: BLE001 - e.g. a peer that vanished while we paused reading
                for connection in list(server.connections):
                    connection.transport.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2.0)
            self.batcher.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self.recorder is not None:
                self.recorder.close()

    async def _watch_warmup(self, on_ready: Callable[[PolicyServer], None] | None) -> None:
        """Report readiness; stop serving if the model cannot be compiled (nothing could ever be answered)."""
        assert self._stop is not None
        while not self.ready:
            if self.batcher.failed is not None:
                log.error("model warm-up failed: %s", self.batcher.failed)
                self._stop.set()
                return
            await asyncio.sleep(0.05)
        if on_ready is not None:
            on_ready(self)

    def stop(self) -> None:
        """Stop serving (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


class ServerThread:
    """Run a :class:`PolicyServer` on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pi0-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(on_listening=lambda _: self._listening.set()))
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._listening.set()

    def start(self, wait_ready: bool = True, timeout: float = 300.0) -> ServerThread:
        self._thread.start()
        self._listening.wait(timeout)
        if self._error is not None:
            raise self._error
        deadline = time.monotonic() + timeout
        while wait_ready and not self.server.batcher.ready.wait(0.05) and self.server.batcher.failed is None:
            if time.monotonic() > deadline:
                raise ServerError(f"the model was not ready after {timeout} s")
        if wait_ready and self.server.batcher.failed is not None:
            raise ServerError(f"the model failed to start: {self.server.batcher.failed}")
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, timeout: float = 10.0) -> None:
        self.server.stop()
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _peer(connection: Any) -> str:
    try:
        host, port = connection.remote_address[:2]
        return f"{host}:{port}"
    except Exception:  # noqa: BLE001
        return "?"
