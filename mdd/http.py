"""The HTTP API: a plain ASGI app served by hypercorn under trio.

========================  ===========================================================
``GET /health``           200 while serving, 503 with ``reasons`` otherwise
``GET /metrics``          Prometheus exposition of :data:`mdd.metrics.REGISTRY`
``GET /latest?symbol=S``  latest stored trade and quote of ``S`` (SQLite sink)
``GET /bus-stats``        per-sink capacity, queued, fill, drops; overall backpressure
``GET /providers``        every provider: role, state, counters, last message age
``GET /book?symbol=S``    live L2 book of ``S`` (``&depth=N``, ``&provider=P``)
========================  ===========================================================

Every error is JSON, ``{"error": "..."}``: 404 for an unknown path, 405 (with
``Allow``) for another method, 400 for a bad query string, 414 for a huge one.
Routes live in :data:`ROUTES`; adding one is a handler plus one entry::

    async def book(ctx: HttpContext, query: Query) -> Response: ...
    ROUTES["/book"] = Route(book)

Nothing served contains secrets: the status views go through
:func:`mdd.services.redact`.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

import attrs
import orjson
import trio

from . import storage
from .errors import MddError
from .metrics import REGISTRY, register_daemon, unregister_daemon
from .services import (
    health_verdict,
    providers_view,
    redact,
    secrets_of,
    serving,
    status_view,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from .daemon import Daemon
    from .services import RateMeter

LOGGER = logging.getLogger("mdd.http")

#: Longest query string accepted (bytes); longer gets 414.
MAX_QUERY_BYTES: Final = 2048
#: Most ``key=value`` pairs in one query string.
MAX_QUERY_FIELDS: Final = 16
#: A symbol after upper-casing.
SYMBOL_RE: Final = re.compile(r"[A-Z0-9._-]{1,32}")
#: A ``%`` must start a two-hex-digit escape.
_BAD_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")

JSON_TYPE: Final = b"application/json"


class HttpBindError(MddError):
    """The HTTP port could not be bound (in use, or not allowed)."""

    def __init__(self, bind: str, reason: str) -> None:
        self.bind = bind
        super().__init__(
            f"cannot serve HTTP on {bind}: {reason} "
            "(is another mdd running? set [http] port, HTTP_PORT, or --http-port)"
        )


class HttpError(MddError):
    """A request error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


@attrs.frozen
class Response:
    """What a handler returns: status, body bytes, content type and extra headers."""

    status: int
    body: bytes
    content_type: bytes = JSON_TYPE
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_response(obj: Any, status: int = 200) -> Response:
    """A JSON response (orjson; non-string keys and numpy-free values)."""
    return Response(status, orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))


def error_response(status: int, message: str, **extra: Any) -> Response:
    """``{"error": message, ...}`` with ``status``."""
    return json_response({"error": message, **extra}, status)


class Query:
    """A parsed query string: one value per key, strictly decoded.

    Raises :class:`HttpError` (400/414) for invalid percent-encoding, invalid
    UTF-8, repeated keys, too many fields or too many bytes, so a handler only
    ever sees clean strings.
    """

    def __init__(self, raw: bytes) -> None:
        if len(raw) > MAX_QUERY_BYTES:
            raise HttpError(414, f"query string too long (max {MAX_QUERY_BYTES} bytes)")
        self.values: dict[str, str] = {}
        if not raw:
            return
        parts = [p for p in raw.split(b"&") if p]
        if len(parts) > MAX_QUERY_FIELDS:
            raise HttpError(400, f"too many query parameters (max {MAX_QUERY_FIELDS})")
        for part in parts:
            key_raw, _, value_raw = part.partition(b"=")
            key, value = self._decode(key_raw), self._decode(value_raw)
            if key in self.values:
                raise HttpError(400, f"query parameter {key!r} given more than once")
            self.values[key] = value

    @staticmethod
    def _decode(raw: bytes) -> str:
        if _BAD_PERCENT.search(raw):
            raise HttpError(400, "invalid percent-encoding in query string")
        try:
            return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "query string is not valid UTF-8") from None

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None when absent."""
        return self.values.get(key)


def parse_symbol(query: Query) -> str:
    """The ``symbol`` parameter, upper-cased and validated.

    Raises:
        HttpError: 400 when it is missing, empty or malformed.
    """
    raw = query.get("symbol")
    if raw is None or not raw.strip():
        raise HttpError(400, "missing query parameter: symbol (e.g. ?symbol=BTCUSDT)")
    symbol = raw.strip().upper()
    if not SYMBOL_RE.fullmatch(symbol):
        raise HttpError(400, "malformed symbol: expected 1-32 of A-Z 0-9 . _ -")
    return symbol


@attrs.frozen
class HttpContext:
    """What handlers get besides the query: the daemon, the rate meter, the request."""

    daemon: Daemon
    meter: RateMeter | None
    headers: dict[bytes, bytes]


@attrs.frozen
class Route:
    """One path: its handler and the methods it answers (HEAD is served as GET)."""

    handler: Callable[[HttpContext, Query], Awaitable[Response]]
    methods: frozenset[str] = frozenset({"GET", "HEAD"})


# -- handlers ---------------------------------------------------------------


async def health(ctx: HttpContext, query: Query) -> Response:
    """200 while serving; 503 with ``reasons`` when not. Per-feed and per-provider state."""
    daemon = ctx.daemon
    status = daemon.status()
    healthy, reasons = health_verdict(daemon, status)
    stale = daemon.config.failover.stale_after
    feed_states = {name: sup.state() for name, sup in daemon.feeds.items()}
    feeds = {
        name: {
            "state": feed_states.get(name, ("down", "not started"))[0],
            "reason": feed_states.get(name, ("down", "not started"))[1],
            "active": feed["active"],
            "symbols": feed["symbols"],
            "healthy": any(serving(p, stale) for p in feed["providers"].values()),
            "providers": {
                pname: {
                    "state": p["state"],
                    "reason": p["reason"],
                    "active": p["active"],
                    "last_message_age": p["last_message_age"],
                }
                for pname, p in feed["providers"].items()
            },
        }
        for name, feed in status["feeds"].items()
    }
    body = {
        "status": "ok" if healthy else "unhealthy",
        "reasons": reasons,
        "name": status["name"],
        "uptime": status["uptime"],
        "feeds": feeds,
        "sinks": {
            name: {"state": s["state"], "errors": s["errors"], "last_error": s["last_error"]}
            for name, s in status["sinks"].items()
        },
        "backpressure": status["bus"]["backpressure"],
    }
    return json_response(redact(body, secrets_of(daemon.config)), 200 if healthy else 503)


async def metrics(ctx: HttpContext, query: Query) -> Response:
    """The Prometheus exposition, 0.0.4 text unless the scraper asks for OpenMetrics."""
    from prometheus_client.exposition import choose_encoder

    accept = ctx.headers.get(b"accept", b"").decode("latin-1")
    encoder, content_type = choose_encoder(accept)
    return Response(200, encoder(REGISTRY), content_type.encode())


async def latest(ctx: HttpContext, query: Query) -> Response:
    """The latest stored trade and quote of ``?symbol=``, from the SQLite sink's file."""
    symbol = parse_symbol(query)
    config = ctx.daemon.config
    section = config.sinks.sqlite
    if section is None or not section.enabled:
        raise HttpError(503, "no sqlite sink configured: /latest reads [sinks.sqlite]")
    path = config.resolve_path(section.path)
    result = await trio.to_thread.run_sync(functools.partial(read_latest, path, symbol))
    if result["trade"] is None and result["quote"] is None:
        raise HttpError(404, f"symbol {symbol} never seen")
    return json_response(result)


def read_latest(path: Path, symbol: str) -> dict[str, Any]:
    """Latest trade and quote rows of ``symbol`` (any provider), via :func:`mdd.storage.latest`.

    A missing file or table reads as no rows (nothing stored yet).

    Raises:
        HttpError: 503 when the file exists but cannot be read.
    """
    try:
        return storage.latest(path, symbol)
    except storage.StorageError as exc:
        raise HttpError(503, f"cannot read the sqlite database: {exc}") from None


async def bus_stats(ctx: HttpContext, query: Query) -> Response:
    """Per-sink lane statistics and the overall backpressure state."""
    return json_response(ctx.daemon.bus.stats().as_dict())


async def providers(ctx: HttpContext, query: Query) -> Response:
    """Every provider of every feed, with role and health."""
    return json_response(providers_view(ctx.daemon))


async def status(ctx: HttpContext, query: Query) -> Response:
    """The full status (what ``mdd-ctl status --json`` prints)."""
    return json_response(status_view(ctx.daemon, ctx.meter))


#: Levels a side ``/book`` serves by default, and at most.
BOOK_DEPTH: Final = 20
MAX_BOOK_DEPTH: Final = 5000


async def book(ctx: HttpContext, query: Query) -> Response:
    """The live L2 book of ``?symbol=``: top ``&depth=`` levels a side (default 20).

    Served from the providers' local books (:data:`mdd.books.BOOKS`), restricted
    to this daemon's providers; a synced book of a feed's active provider is
    preferred, ``&provider=`` picks one. ``"synced": false`` means the book is
    being resynced after a gap and its levels are not to be trusted. 404 when
    no provider keeps a book of the symbol (no ``book`` channel).
    """
    from .books import BOOKS, book_view

    symbol = parse_symbol(query)
    raw = query.get("depth")
    depth = BOOK_DEPTH
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_BOOK_DEPTH:
            raise HttpError(400, f"depth must be an integer from 1 to {MAX_BOOK_DEPTH}")
        depth = int(raw)
    daemon = ctx.daemon
    mine = {name for feed in daemon.config.feeds for name in feed.providers}
    wanted = query.get("provider")
    books = [
        b
        for b in BOOKS.for_symbol(symbol)
        if b.provider in mine and (wanted is None or b.provider == wanted)
    ]
    if not books:
        raise HttpError(404, f"no order book of {symbol} (is the book channel on for it?)")
    active = {sup.active for sup in daemon.feeds.values()}
    books.sort(key=lambda b: (not b.synced, b.provider not in active))
    return json_response(book_view(books[0], depth))


#: Path -> route. Other modules add theirs (``ROUTES["/book"] = Route(book)``).
ROUTES: dict[str, Route] = {
    "/health": Route(health),
    "/metrics": Route(metrics),
    "/latest": Route(latest),
    "/bus-stats": Route(bus_stats),
    "/providers": Route(providers),
    "/status": Route(status),
    "/book": Route(book),
}


# -- the ASGI app -----------------------------------------------------------


class App:
    """The ASGI application: lifespan, routing and JSON errors.

    Error handling:
        :class:`HttpError` becomes its JSON error; any other exception is logged
        with its traceback and answered 500 ``internal error`` (no details).
    """

    def __init__(self, daemon: Daemon, meter: RateMeter | None = None) -> None:
        self.daemon = daemon
        self.meter = meter
        self.routes = ROUTES

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        response = await self.respond(scope)
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            (b"cache-control", b"no-store"),
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    async def respond(self, scope: dict[str, Any]) -> Response:
        """Route one request to its handler; every failure becomes a JSON error."""
        path = scope["path"]
        method = scope["method"]
        route = self.routes.get(path)
        try:
            if route is None:
                raise HttpError(404, f"no such endpoint: {path[:100]}")
            if method not in route.methods:
                allow = ", ".join(sorted(route.methods))
                return Response(
                    405,
                    orjson.dumps({"error": f"method {method} not allowed", "allow": allow}),
                    headers=((b"allow", allow.encode()),),
                )
            query = Query(scope.get("query_string", b""))
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            return await route.handler(HttpContext(self.daemon, self.meter, headers), query)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except Exception:
            LOGGER.exception("http.handler_failed path=%s", path[:100])
            return error_response(500, "internal error")


def hypercorn_config(host: str, port: int) -> Any:
    """A hypercorn config binding ``host:port``, quiet, logging to ``mdd.http``."""
    from hypercorn.config import Config as HypercornConfig

    cfg = HypercornConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("mdd.http.server")
    cfg.include_server_header = False
    cfg.graceful_timeout = 1.0
    return cfg


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (as hypercorn would bind it).

    Raises:
        HttpBindError: the address cannot be bound (the socket is closed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise HttpBindError(where, exc.strerror or str(exc)) from None
    return sock


async def serve_http(
    daemon: Daemon,
    *,
    meter: RateMeter | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``[http] host:port`` until cancelled (a daemon service).

    The daemon's bus, provider and sink state is exported on ``/metrics``
    (:func:`mdd.metrics.register_daemon`) while this serves.

    ``task_status.started`` gets the bound address, ``http://host:port`` (the
    real port when the config says 0). The daemon's root cancel ends it, so
    ``/health`` answers (503, stopping) throughout a graceful shutdown.

    This is ``hypercorn.trio.serve`` with the socket bound here first (its
    ``worker_serve`` takes sockets), so a port in use is one clear error and
    no half-made socket leaks.

    Raises:
        HttpBindError: the address cannot be bound.
    """
    from hypercorn.config import Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    http = daemon.config.http
    cfg = hypercorn_config(http.host, http.port)
    sockets = Sockets(
        secure_sockets=[], insecure_sockets=[bind_socket(http.host, http.port)], quic_sockets=[]
    )
    try:
        for sock in sockets.insecure_sockets:
            sock.listen(cfg.backlog)
        asgi: Any = App(daemon, meter)  # hypercorn types scopes as TypedDicts
        app = wrap_app(asgi, cfg.wsgi_max_body_size, "asgi")
        register_daemon(daemon)  # bus, provider and sink state on /metrics, read at scrape time
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                functools.partial(
                    worker_serve, app, cfg, sockets=sockets, shutdown_trigger=trio.sleep_forever
                )
            )
            address = binds[0] if binds else cfg.bind[0]
            LOGGER.info("http.serving address=%s", address)
            task_status.started(address)
    finally:
        unregister_daemon()
        for sock in sockets.insecure_sockets:
            sock.close()
