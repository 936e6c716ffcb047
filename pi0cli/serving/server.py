"""The websocket policy server, wire-compatible with the reference (openpi) server and ``openpi-client``.

Per connection: the server first sends one binary msgpack frame with the policy metadata; then every binary
msgpack observation gets one binary msgpack reply ``{"actions": [H, robot_dim], "policy_timing": {...},
"server_timing": {"infer_ms", "prev_total_ms" (from the 2nd request)}}``. A request that cannot be served
(not msgpack, wrong types, missing keys, wrong shapes or dtypes for the embodiment, NaN, a text frame, or a
model that produced NaN/inf actions) is answered with a *text* frame ``"Error: <what is wrong and how to fix
it>"`` of at most a few hundred characters -- the reference client raises it as an error -- and the
connection keeps serving. A bug answers ``"Error: internal server error (request id ...)"``; the details go
to the log only.

One path per request, whatever the policy (:class:`~pi0cli.serving.served.ServedPolicy`): decode
(:mod:`~pi0cli.serving.protocol`), validate (the embodiment's one check), ``policy.prepare`` -- all on a small
thread pool -- then ``policy.run_prepared`` on the batcher's thread (:mod:`~pi0cli.serving.batching`), so the
event loop only moves frames. Each connection has at most one request in flight and at most
``max_buffered_frames`` frames buffered, plus whatever the last read off the socket already held (it is not
read further meanwhile). Costly refused frames
draw on a server-wide budget and connections are capped (:mod:`~pi0cli.serving.limits`); a connection
that sends nothing for ``idle_timeout_s`` is closed with code 1000, one beyond ``max_connections`` with 1013
(try again later). ``/healthz``, ``/metrics`` and the API key: :mod:`~pi0cli.serving.endpoints`. Messages
above the size limit close that connection with code 1009 (the websockets library's limit; nothing is
buffered past it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pi0cli.errors import ObservationError, Pi0Error
from pi0cli.models.tokenizer import DECODE_FAILURES_KEY, DECODE_RULE_KEY
from pi0cli.observation_check import check_observation
from pi0cli.observation_types import Observation, ObservationValue, Reply
from pi0cli.serving import protocol
from pi0cli.serving.batching import DynamicBatcher
from pi0cli.serving.endpoints import HEALTH_PATH, METRICS_PATH, Endpoints, Health
from pi0cli.serving.limits import (
    ACTIVE_S,
    Connection,
    Connections,
    RateLimitedLog,
    RejectedBytesBudget,
    peer_name,
)
from pi0cli.serving.metrics import ServerMetrics
from pi0cli.serving.served import PreparedRequest, ServedPolicy, describe_missing

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.http11 import Request, Response

    from pi0cli.embodiment import Embodiment
    from pi0cli.serving.recording import Recorder

__all__ = ["ACTIVE_S", "HEALTH_PATH", "METRICS_PATH", "InternalServerError", "PolicyServer", "RateLimitedLog",
           "RejectedBytesBudget", "ServerError", "ServerThread"]

log = logging.getLogger("pi0.serve")

#: Close code for "the server is full" (RFC 6455 registry: Try Again Later).
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_NORMAL = 1000
#: How long a closing handshake may take (a vanished peer must not hold a connection, or shutdown, longer).
CLOSE_TIMEOUT_S = 2.0

#: What the worker pool hands back for one frame: (prepared request, validated observation) or the error.
type _Admitted = tuple[PreparedRequest, Observation] | BaseException


class ServerError(Pi0Error):
    """The server cannot start as configured."""


class InternalServerError(Pi0Error):
    """A bug while serving one request; the client gets the request id, the log gets the traceback."""

    kind = "internal"

    def __init__(self, request_id: str):
        super().__init__(f"internal server error (request id {request_id}); the details are in the server log")


def _error_kind(exc: BaseException) -> str:
    kind = getattr(exc, "kind", "invalid") if isinstance(exc, Pi0Error) else "internal"
    return str(kind)


class PolicyServer:
    """Serves a :class:`~pi0cli.serving.served.ServedPolicy`.

    ``embodiment`` (optional) validates every request before it is prepared (without one, only the
    robot-independent rules apply). ``recorder`` (optional) gets ``record(request, reply, nbytes)`` for every
    served request. Limits: ``max_message_bytes`` (frame size), ``max_elements`` (msgpack elements per
    frame), ``max_connections``, ``idle_timeout_s`` (None or 0: none), ``max_buffered_frames`` (per
    connection), ``rejected_bytes_per_s`` (see :class:`RejectedBytesBudget`; None: off).
    """

    def __init__(
        self,
        policy: ServedPolicy,
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
        metadata: Mapping[str, object] | None = None,
        warmup: bool = True,
        prepare_threads: int = 2,
    ):
        missing = describe_missing(policy)
        if missing:
            raise ServerError(f"cannot serve a {type(policy).__name__}: it has no {', '.join(missing)}; a served "
                              "policy implements pi0cli.serving.served.ServedPolicy")
        if max_connections < 1:
            raise ServerError(f"--max-connections must be at least 1, got {max_connections}")
        if max_elements < 16:
            raise ServerError(f"--max-message-elements must be at least 16, got {max_elements}")
        self.policy = policy
        self.embodiment = embodiment
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_elements = int(max_elements)
        self.idle_timeout_s = idle_timeout_s or None
        self.max_buffered_frames = max(1, int(max_buffered_frames))
        self._rejected = RejectedBytesBudget(rejected_bytes_per_s) if rejected_bytes_per_s else None
        self.recorder = recorder
        self.metadata = dict(metadata if metadata is not None else policy.metadata)
        self._metadata_frame = protocol.packb(self.metadata)
        self.connections = Connections(max_connections)
        self._preparing = 0
        self._preparing_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests = 0
        self.errors = 0
        self.warmup_s: float | None = None
        self._server: Server | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warn = RateLimitedLog(log)
        # Decoding, validation and the per-request input transforms (image resizing, tokenizing) run on a small
        # pool, overlapping the model and keeping the event loop free.
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, prepare_threads), thread_name_prefix="pi0-prepare")
        self.metrics = ServerMetrics(open_connections=lambda: len(self.connections),
                                     active_connections=self.connections.active, ready=lambda: float(self.ready),
                                     recorder=recorder)
        self.endpoints = Endpoints(api_key=api_key, metrics=self.metrics, health=self._health, warn=self._warn)
        self.batcher: DynamicBatcher[PreparedRequest, Reply] = DynamicBatcher(
            self._process, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
            warmup=self._warmup if warmup else None, active_clients=self.connections.active,
            incoming=lambda: self._preparing, on_batch=self.metrics.observe_batch,
        )

    # ---------------------------------------------------------------------------------------------- model

    def _warmup(self) -> None:
        start = time.perf_counter()
        self.policy.warmup()
        self.warmup_s = time.perf_counter() - start
        log.info("model compiled for every batch size in %.1f s", self.warmup_s)

    def _process(self, items: Sequence[PreparedRequest]) -> list[Reply | BaseException]:
        return self.policy.run_prepared(items, return_exceptions=True)

    @property
    def api_key(self) -> str | None:
        return self.endpoints.api_key

    @property
    def max_connections(self) -> int:
        return self.connections.limit

    @property
    def ready(self) -> bool:
        return self.batcher.ready.is_set()

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def active_clients(self) -> int:
        """Connections with a request in flight or answered within :data:`ACTIVE_S` (thread-safe)."""
        return self.connections.active()

    def _health(self) -> Health:
        if self.batcher.failed is not None:
            return "failed"
        return "ready" if self.ready else "compiling"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return self.endpoints(connection, request)

    # ---------------------------------------------------------------------------------------- websocket

    async def _handler(self, ws: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = peer_name(ws)
        if self.connections.full:
            self.metrics.refused.labels("full").inc()
            self._warn.warning("full", "refused a connection from %s: %d connections open (--max-connections)",
                               peer, len(self.connections))
            await ws.close(CLOSE_TRY_AGAIN_LATER, f"server full: {self.max_connections} connections open "
                                                  "(--max-connections); retry later")
            return
        conn = self.connections.open(peer)
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
            self.connections.close(conn)
            log.info("client disconnected: %s", peer)

    async def _next_frame(self, ws: ServerConnection) -> str | bytes | None:
        """The next frame, or None once the connection was idle for ``idle_timeout_s`` (then closed)."""
        if self.idle_timeout_s is None:
            return await ws.recv()
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                return await ws.recv()
        except TimeoutError:
            self.metrics.closed_idle.inc()
            log.info("closing idle connection %s", peer_name(ws))
            await ws.close(CLOSE_NORMAL, f"idle for {self.idle_timeout_s:g} s (--idle-timeout-s); reconnect")
            return None

    def _admit(self, message: str | bytes, request_id: str, peer: str) -> tuple[_Admitted, float]:
        """Decode, validate and prepare one frame (on the pool): ``(prepared request, observation)`` or the
        error, and the seconds it took."""
        start = time.perf_counter()
        return self._admit_one(message, request_id, peer), time.perf_counter() - start

    def _admit_one(self, message: str | bytes, request_id: str, peer: str) -> _Admitted:
        try:
            obs = self._validate(protocol.decode_request(message, max_elements=self.max_elements))
            with self._preparing_lock:
                self._preparing += 1
            try:
                return self.policy.prepare(obs), obs
            finally:
                with self._preparing_lock:
                    self._preparing -= 1
        except Pi0Error as exc:
            exc.__traceback__ = None  # an expected error keeps no frames (nor the frame bytes) alive
            return exc
        except Exception as exc:  # noqa: BLE001 - a bug must not take the connection or server down
            return self._internal(exc, request_id, peer)

    def _validate(self, obs: Observation) -> Observation:
        """The embodiment's one check; its error text cut to one short line (it may quote client data)."""
        try:
            if self.embodiment is None:
                return check_observation(obs)
            return self.embodiment.validate_observation(obs)
        except ObservationError as exc:
            raise ObservationError(protocol.clip_text(str(exc))) from None
        except Exception as exc:  # a validator that trips over odd input must not cost the connection
            name = self.embodiment.name if self.embodiment is not None else "observation"
            raise ObservationError(f"{name}: invalid observation "
                                   f"({type(exc).__name__}: {protocol.clip_text(str(exc), 120)})") from None

    def _internal(self, exc: BaseException, request_id: str, peer: str) -> InternalServerError:
        log.error("request %s from %s failed", request_id, peer, exc_info=exc)
        exc.__traceback__ = None
        return InternalServerError(request_id)

    async def _send_error(self, ws: ServerConnection, exc: BaseException) -> None:
        self.errors += 1
        self.metrics.error(_error_kind(exc))
        await ws.send(protocol.error_text(exc))

    async def _serve_one(self, ws: ServerConnection, conn: Connection, message: str | bytes,
                         prev_total_ms: float | None) -> float | None:
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
        timing: dict[str, ObservationValue] = {"infer_ms": (time.perf_counter() - start) * 1000.0}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        reply: Reply = {**result, "server_timing": timing}
        try:
            frame = protocol.packb(reply)
        except Pi0Error as exc:
            await self._send_error(ws, self._internal(exc, request_id, conn.peer))
            return prev_total_ms
        await ws.send(frame)
        self.metrics.replies.inc()
        failures = result.get(DECODE_FAILURES_KEY)
        if isinstance(failures, (int, np.integer)) and failures:
            self.metrics.action_decode(str(result.get(DECODE_RULE_KEY, "strict")), int(failures))
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
