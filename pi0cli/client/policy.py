"""A policy that runs on a ``pi0 serve`` (or reference openpi) server over a websocket."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

from pi0cli.errors import Pi0Error
from pi0cli.observation_types import Observation, ObservationValue, Reply
from pi0cli.serving import protocol

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection


class PolicyServerError(Pi0Error):
    """The server answered with an error, or could not be reached."""


class ServerUnreachableError(PolicyServerError):
    """No server answered at the address within the connect timeout."""


class BasePolicy:
    """What a policy offers a robot: ``infer(obs) -> {"actions": [H, D], ...}`` and ``reset()``."""

    def infer(self, obs: Observation) -> Reply:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class WebsocketClientPolicy(BasePolicy):
    """Connects to ``ws://host:port`` (``host`` may be a full ``ws://`` / ``wss://`` URI), retrying every
    ``retry_interval`` seconds while the server starts, for up to ``connect_timeout`` seconds (None: forever);
    ``on_wait(waited_seconds, last_error)`` is called after each failed attempt (to show what is awaited).

    Sends ``Authorization: Api-Key <key>`` when ``api_key`` is given; a refused key fails at once. The server's
    first frame (its metadata) is available from :meth:`get_server_metadata`. An error reply (a text frame)
    raises :class:`PolicyServerError` naming the problem; the connection stays usable.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 8000,
        api_key: str | None = None,
        *,
        connect_timeout: float | None = 300.0,
        retry_interval: float = 0.5,
        request_timeout: float | None = None,
        max_message_bytes: int | None = None,
        on_wait: Callable[[float, BaseException | None], None] | None = None,
    ):
        if host.startswith(("ws://", "wss://")):
            self.uri = host
        else:
            self.uri = f"ws://{host}"
            if port is not None:
                self.uri += f":{port}"
        self.api_key = api_key
        self.request_timeout = request_timeout
        self._max_size = max_message_bytes
        self._packer = protocol.Packer()
        self._on_wait = on_wait
        self._ws, self._metadata = self._connect(connect_timeout, retry_interval)

    # -------------------------------------------------------------------------------------------- connect

    def _connect(self, timeout: float | None, interval: float) -> tuple[ClientConnection, dict[str, ObservationValue]]:
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        last: BaseException | None = None
        while True:
            # One attempt never outlasts the deadline (a silent host would otherwise hold it 10 s).
            attempt = 10.0 if deadline is None else max(0.1, min(10.0, deadline - time.monotonic()))
            try:
                # Entered as a context manager (closed by close()): websockets >= 17.1 warns otherwise.
                ws = connect(self.uri, compression=None, max_size=self._max_size, additional_headers=headers,
                             open_timeout=attempt).__enter__()
            except InvalidStatus as exc:
                status = exc.response.status_code
                body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
                if status in (401, 403):
                    reason = body or "bad API key"
                    raise PolicyServerError(f"{self.uri} refused the connection ({status}): {reason}") from None
                last = exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                last = exc
            else:
                try:
                    first = ws.recv(timeout=30)
                except Exception as exc:  # noqa: BLE001
                    ws.close()
                    raise PolicyServerError(f"{self.uri} sent no metadata frame ({exc})") from None
                if isinstance(first, str):
                    ws.close()
                    raise PolicyServerError(f"{self.uri} sent an error instead of metadata: {first}")
                metadata = protocol.unpackb(first)
                if not isinstance(metadata, dict):
                    ws.close()
                    raise PolicyServerError(f"{self.uri} sent metadata that is not a map "
                                            f"({type(metadata).__name__}); is it a pi0 or openpi policy server?")
                return ws, metadata
            if deadline is not None and time.monotonic() >= deadline:
                raise ServerUnreachableError(f"no policy server at {self.uri} after {timeout:g} s ({last}); start "
                                             "one with `pi0 serve` or check the host and port")
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - start, last)
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))

    def get_server_metadata(self) -> dict[str, ObservationValue]:
        return self._metadata

    # ------------------------------------------------------------------------------------------- requests

    def infer(self, obs: Observation) -> Reply:
        self._ws.send(self._packer.pack(obs))
        frame = self._ws.recv(timeout=self.request_timeout)
        if isinstance(frame, str):
            raise PolicyServerError(f"the policy server rejected the request: {frame.removeprefix('Error: ')}")
        reply = protocol.unpackb(frame)
        if not isinstance(reply, dict):
            raise PolicyServerError(f"the policy server's reply is not a map ({type(reply).__name__})")
        return reply

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> WebsocketClientPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until_ready(host: str, port: int, timeout: float = 300.0, interval: float = 0.2) -> None:
    """Poll ``http://host:port/healthz`` until it answers 200 (the model is compiled)."""
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}/healthz"
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code == 500:
                raise PolicyServerError(f"{url}: the server's model failed to start") from None
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise PolicyServerError(f"{url} not ready after {timeout:g} s ({last})")
