"""The HTTP side of ``pi0 serve``: ``GET /healthz``, ``GET /metrics`` and the API key of the websocket handshake.

``/healthz`` needs no key: 503 ``"compiling\\n"`` until the model is ready, then 200 ``"OK\\n"`` (500 if it
failed to start; the reason goes to the log only). With an API key, every other request (the websocket
handshake, ``/metrics``) must carry exactly one ``Authorization: Api-Key <key>`` header (what openpi-client
sends) or is refused with 401. ``/metrics`` answers in the Prometheus text format.

(Not named ``http.py``: that would shadow the standard library's ``http`` for anything run from this folder.)
"""

from __future__ import annotations

import hmac
import http
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pi0cli.serving.limits import RateLimitedLog, peer_name
from pi0cli.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

#: What ``/healthz`` reports.
type Health = Literal["compiling", "ready", "failed"]


def auth_problem(api_key: str | None, authorization: list[str]) -> str | None:
    """Why the ``Authorization`` header values are refused for ``api_key`` (None: accepted). Never quotes
    what the client sent, and compares in constant time."""
    if api_key is None:
        return None
    if not authorization:
        return "missing API key"
    if len(authorization) > 1:
        return "more than one Authorization header"
    if not hmac.compare_digest(authorization[0].encode("utf-8", "surrogateescape"), f"Api-Key {api_key}".encode()):
        return "wrong API key"
    return None


class Endpoints:
    """The websockets ``process_request`` hook: answers the HTTP paths, refuses unauthorised handshakes, and
    lets every other authorised request through to the websocket handler (None)."""

    def __init__(self, *, api_key: str | None, metrics: ServerMetrics, health: Callable[[], Health],
                 warn: RateLimitedLog):
        self.api_key = api_key or None
        self.metrics = metrics
        self.health = health
        self.warn = warn

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._route(connection, request)
        except Exception:  # noqa: BLE001 - a bug here must not log a traceback per hostile attempt
            self.warn.warning("http", "could not answer an HTTP request from %s", peer_name(connection), exc_info=True)
            return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error\n")

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            health = self.health()
            if health == "failed":
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                          "model failed to start; see the server log\n")
            if health == "compiling":
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "compiling\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        problem = auth_problem(self.api_key, request.headers.get_all("Authorization") if self.api_key else [])
        if problem is not None:
            self.metrics.refused.labels("auth").inc()
            self.warn.warning("auth", "refused a connection from %s: %s", peer_name(connection), problem)
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
