"""The consumer's HTTP API: a plain ASGI app served by hypercorn under Trio.

Endpoints (GET or HEAD; loopback ``127.0.0.1:8892`` by default):

==========================  ===================================================
path                        answer
==========================  ===================================================
``/health``                 200 ``{"status": "ok", ...}`` while NATS is
                            connected, else 503 ``{"status": "degraded"}``
``/metrics``                Prometheus text format 0.0.4
``/state/latest?symbol=S``  last trade, last quote and window aggregates of S
``/features/latest?symbol=S``  the latest 11 features of S
``/stats``                  counters: consumed, drops, parse errors, signals,
                            alerts, publishes, inbox, NATS
==========================  ===================================================

Errors are JSON ``{"error": ..., "status": N}``: 400 for a missing or malformed
``symbol``, 404 for an unknown symbol or path, 405 for other methods.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from urllib.parse import parse_qs

import hypercorn.config
import hypercorn.trio
import orjson
import trio

from ..errors import MddError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

LOGGER = logging.getLogger("mdd.consumer.http")

#: Symbols are venue symbols: upper-case letters, digits and a few separators.
SYMBOL_RE: Final = re.compile(r"^[A-Z0-9][A-Z0-9_.:-]{0,31}$")

#: Content type of ``/metrics`` (Prometheus text exposition 0.0.4).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

JSON_CONTENT_TYPE: Final = "application/json"

#: Seconds hypercorn waits for open requests at shutdown.
GRACEFUL_TIMEOUT: Final = 2.0

Scope = dict[str, Any]


class ConsumerView(Protocol):
    """What the HTTP API reads from the running consumer."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body)."""

    def stats(self) -> dict[str, Any]:
        """Counters for ``/stats``."""

    def state_of(self, symbol: str) -> dict[str, Any] | None:
        """Latest state of ``symbol``, None if unknown."""

    def features_of(self, symbol: str) -> dict[str, Any] | None:
        """Latest features of ``symbol``, None if unknown."""

    def render_metrics(self) -> bytes:
        """Prometheus text exposition."""


Response = tuple[int, str, bytes]


def _json(status: int, body: Any) -> Response:
    return status, JSON_CONTENT_TYPE, orjson.dumps(body)


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message, "status": status})


def _symbol(query: bytes) -> str | Response:
    try:
        params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return _error(400, "malformed query string")
    values = params.get("symbol")
    if not values or not values[0].strip():
        return _error(400, "missing query parameter: symbol")
    if len(values) > 1:
        return _error(400, "give symbol once")
    symbol = values[0].strip().upper()
    if not SYMBOL_RE.match(symbol):
        return _error(400, f"malformed symbol {values[0][:40]!r}")
    return symbol


class ConsumerApp:
    """The ASGI application. No framework: five routes and JSON errors.

    Args:
        view: the running consumer (or anything with the same methods).
    """

    ROUTES: Final = ("/health", "/metrics", "/state/latest", "/features/latest", "/stats")

    def __init__(self, view: ConsumerView) -> None:
        self.view = view

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        status, ctype, body = self.respond(method, scope["path"], scope.get("query_string", b""))
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def respond(self, method: str, path: str, query: bytes) -> Response:
        """The (status, content type, body) for one request."""
        if path not in self.ROUTES:
            return _error(404, f"no such endpoint: {path[:80]}")
        if method not in ("GET", "HEAD"):
            return _error(405, f"method {method} not allowed; use GET")
        view = self.view
        if path == "/health":
            healthy, body = view.health()
            return _json(200 if healthy else 503, body)
        if path == "/metrics":
            return 200, METRICS_CONTENT_TYPE, view.render_metrics()
        if path == "/stats":
            return _json(200, view.stats())
        symbol = _symbol(query)
        if not isinstance(symbol, str):
            return symbol
        found = view.state_of(symbol) if path == "/state/latest" else view.features_of(symbol)
        if found is None:
            return _error(404, f"unknown symbol {symbol!r}")
        return _json(200, found)


class HttpBindError(MddError):
    """The HTTP endpoint cannot listen on the configured address."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def _check_bind(host: str, port: int) -> None:
    """Fail early and clearly when the address is taken (hypercorn would leak a socket).

    Raises:
        HttpBindError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpBindError(host, port, str(exc)) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise HttpBindError(host, port, exc.strerror or str(exc)) from None


async def serve_http(
    app: ConsumerApp,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn until ``shutdown_trigger`` returns.

    Calls ``task_status.started(binds)`` once listening, with the bound
    addresses (``["http://127.0.0.1:54321"]``), so ``port=0`` works.

    Raises:
        HttpBindError: the address is taken or invalid.
    """
    _check_bind(host, port)
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = LOGGER
    config.graceful_timeout = GRACEFUL_TIMEOUT
    await hypercorn.trio.serve(
        cast("Any", app), config, shutdown_trigger=shutdown_trigger, task_status=task_status
    )
