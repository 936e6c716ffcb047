"""The websocket policy server, wire-compatible with the reference (openpi) server and ``openpi-client``.

Per connection: the server first sends one binary msgpack frame with the policy metadata; then every binary
msgpack observation gets one binary msgpack reply ``{"actions": [H, robot_dim], "policy_timing": {...},
"server_timing": {"infer_ms", "prev_total_ms" (from the 2nd request)}}``. A request that cannot be served
(not msgpack, wrong types, missing keys, wrong shapes or dtypes for the embodiment, NaN, a text frame) is
answered with a *text* frame ``"Error: <what is wrong and how to fix it>"`` -- the reference client raises it
as an error -- and the connection keeps serving. Unlike the reference, the server does not close the
connection after an error, and the model runs on a worker thread (:mod:`pi0cli.serving.batching`), so the
event loop keeps reading, writing and answering health checks while the model computes.

HTTP ``GET /healthz``: 503 ``"compiling\\n"`` until the model has been compiled for every batch size, then
200 ``"OK\\n"`` (500 if warm-up failed). With an API key, the websocket handshake must carry
``Authorization: Api-Key <key>`` (what openpi-client sends) or it is refused with 401. Messages above the size
limit close that connection with code 1009 (the websockets library's limit; nothing is buffered past it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import http
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pi0cli.errors import Pi0Error
from pi0cli.serving import protocol
from pi0cli.serving.batching import DynamicBatcher

log = logging.getLogger("pi0.serve")

HEALTH_PATH = "/healthz"


class ServerError(Pi0Error):
    """The server cannot start as configured."""


class PolicyServer:
    """Serves a policy (anything with ``infer_batch(list, return_exceptions=True)``, ``warmup()``, ``metadata``).

    ``embodiment`` (optional) validates every request before it is queued. ``recorder`` (optional) gets
    ``record(request, reply)`` for every served request.
    """

    def __init__(
        self,
        policy: Any,
        *,
        embodiment: Any | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_batch: int = 8,
        batch_window_ms: float = 10.0,
        max_message_bytes: int | None = 64 * 2**20,
        recorder: Any | None = None,
        metadata: Mapping[str, Any] | None = None,
        warmup: bool = True,
        prepare_threads: int = 2,
    ):
        self.policy = policy
        self.embodiment = embodiment
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_message_bytes = max_message_bytes
        self.recorder = recorder
        self.metadata = dict(metadata if metadata is not None else getattr(policy, "metadata", {}) or {})
        self._metadata_frame = protocol.packb(self.metadata)
        self._connections = 0
        self._preparing = 0
        self.requests = 0
        self.errors = 0
        self.warmup_s: float | None = None
        self._server: Any = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per-request input transforms (image resizing, tokenizing) run on a small pool, overlapping the model.
        self._prepare = getattr(policy, "prepare", None)
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(prepare_threads, thread_name_prefix="pi0-prepare") \
            if self._prepare is not None else None
        self.batcher = DynamicBatcher(
            self._process, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
            warmup=self._warmup if warmup else None, active_clients=lambda: self._connections,
            incoming=lambda: self._preparing,
        )

    # ---------------------------------------------------------------------------------------------- model

    def _warmup(self) -> None:
        start = time.perf_counter()
        self.policy.warmup()
        self.warmup_s = time.perf_counter() - start
        log.info("model compiled for every batch size in %.1f s", self.warmup_s)

    def _process(self, items: list[Any]) -> list[Any]:
        if self._prepare is not None:
            return self.policy.run_prepared(items, return_exceptions=True)
        return self.policy.infer_batch(items, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.batcher.ready.is_set()

    # ---------------------------------------------------------------------------------------------- HTTP

    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            if self.batcher.failed is not None:
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                          f"model failed to start: {self.batcher.failed}\n")
            if not self.ready:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "compiling\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            header = request.headers.get("Authorization") or ""
            expected = f"Api-Key {self.api_key}"
            if not hmac.compare_digest(header.encode(), expected.encode()):
                reason = "missing" if not header else "wrong"
                log.warning("refused a connection from %s: %s API key", _peer(connection), reason)
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    f"{reason} API key: send the header 'Authorization: Api-Key <key>' "
                    "(openpi-client: WebsocketClientPolicy(..., api_key=KEY))\n",
                )
        return None

    # ---------------------------------------------------------------------------------------- websocket

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self._connections += 1
        peer = _peer(ws)
        log.info("client connected: %s", peer)
        prev_total_ms: float | None = None
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                start = time.perf_counter()
                self.requests += 1
                try:
                    obs = protocol.decode_request(message, self.embodiment)
                    item = obs
                    if self._prepare_pool is not None:
                        self._preparing += 1
                        try:
                            item = await asyncio.get_running_loop().run_in_executor(
                                self._prepare_pool, self._prepare, obs)
                        finally:
                            self._preparing -= 1
                    result = await self.batcher.submit(item, arrived=start)
                except Pi0Error as exc:
                    self.errors += 1
                    await ws.send(protocol.error_text(exc))
                    continue
                except Exception as exc:  # noqa: BLE001 - a bug must not take the connection or server down
                    self.errors += 1
                    log.exception("request from %s failed", peer)
                    await ws.send(protocol.error_text(RuntimeError(f"internal server error: {type(exc).__name__}: {exc}")))
                    continue
                timing = {"infer_ms": (time.perf_counter() - start) * 1000.0}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply = {**result, "server_timing": timing}
                try:
                    frame = protocol.packb(reply)
                except Pi0Error as exc:
                    self.errors += 1
                    await ws.send(protocol.error_text(exc))
                    continue
                await ws.send(frame)
                if self.recorder is not None:
                    self.recorder.record(obs, reply)
                prev_total_ms = (time.perf_counter() - start) * 1000.0
        except ConnectionClosed:
            pass
        finally:
            self._connections -= 1
            log.info("client disconnected: %s", peer)

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
                process_request=self._process_request, server_header="pi0",
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
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5.0)
            self.batcher.close()
            if self._prepare_pool is not None:
                self._prepare_pool.shutdown(wait=False, cancel_futures=True)
            if self.recorder is not None:
                self.recorder.close()

    async def _watch_warmup(self, on_ready: Callable[[PolicyServer], None] | None) -> None:
        """Report readiness; stop serving if the model cannot be compiled (nothing could ever be answered)."""
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
        if wait_ready and not self.server.batcher.ready.wait(timeout):
            raise ServerError(f"the model was not ready after {timeout} s")
        if self.server.batcher.failed is not None:
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
