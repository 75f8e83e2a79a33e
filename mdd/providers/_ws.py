"""The shared WebSocket connection loop every venue provider runs, and its transport seam.

One loop for all venues: connect (with a timeout), the venue's subscribe hook,
keepalive, receive -> ``parse`` -> publish, stale detection, a proactive
reconnect before the venue's lifetime cut, and reconnect with exponential
backoff and jitter (1 s -> 60 s, :class:`mdd.supervisor.Backoff`), reset after
a session that subscribed and carried data. Venue modules subclass
:class:`WsProvider` and supply only metadata, request builders, a pure
``parse()`` and the reaction to control messages.

The WebSocket client sits behind :class:`Transport`: trio-websocket now
(:class:`TrioWebsocketTransport`, with a large message queue so a busy loop
never stalls the socket), a faster client later behind the same seam
(``transport`` in the provider config selects it).

Hot path rules (see DESIGN.md): one decode per frame, events handed to the
outlet synchronously, one clock read per frame, no per-event logging; the
only await per frame is the receive itself (plus ``wait_for_room`` when a
blocking sink is congested).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol
from urllib.parse import urlsplit

import attrs
import orjson
import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

from ..errors import AuthError, ParseError, ProviderError
from ..events import SYSTEM_SYMBOL, StatusEvent, now_ns
from ..redact import redact_text, redact_url
from ._parse import Control, SampledLog

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import ProviderConfig
    from ..events import Event
    from ..health import ProviderHealth
    from ..supervisor import Backoff
    from ._parse import Parsed
    from .base import Outlet

LOGGER = logging.getLogger("mdd.providers")

#: Defaults, seconds. ``stale_after``: no message at all for this long -> reconnect.
DEFAULT_STALE_AFTER: Final = 30.0
CONNECT_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 2.0
SUBSCRIBE_TIMEOUT: Final = 10.0
#: trio-websocket's receive queue (its default of 1 stalls the socket behind a busy loop).
MESSAGE_QUEUE_SIZE: Final = 4096
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: A session shorter than this is not "healthy" enough to skip backoff on a venue-asked reconnect.
MIN_HEALTHY_SESSION: Final = 1.0


# ---------------------------------------------------------------------------
# Errors


class ConnectionLost(ProviderError):
    """The WebSocket closed or broke; a reconnect may cure it."""


class ConnectFailed(ProviderError):
    """Could not open the WebSocket (refused, timed out, handshake rejected)."""


class StaleConnection(ProviderError):
    """The venue sent nothing for ``stale_after`` seconds."""


class Reconnect(ProviderError):
    """A planned reconnect: the venue asked for one, or the connection reached its lifetime."""


# ---------------------------------------------------------------------------
# Transport seam


class Connection(Protocol):
    """One open WebSocket, as the loop sees it."""

    async def get_message(self) -> str | bytes:
        """The next text (str) or binary (bytes) message.

        Raises:
            ConnectionLost: the connection closed or broke.
        """

    async def get_messages(self) -> list[str | bytes]:
        """The messages already received, oldest first (at least one; waits for it).

        The provider loop reads in these batches: one await per socket read,
        not per message.

        Raises:
            ConnectionLost: the connection closed or broke (after every
            received message was returned).
        """

    async def send_message(self, message: str | bytes) -> None:
        """Send one message.

        Raises:
            ConnectionLost: the connection closed or broke.
        """

    async def aclose(self) -> None:
        """Close, waiting at most the transport's close timeout; never raises."""


class Transport(Protocol):
    """Opens WebSockets. Background tasks (readers) go into the caller's ``nursery``.

    Taking the nursery keeps the connection's tasks owned by the session that
    uses it (structured concurrency) without a context manager around the body.
    """

    async def connect(self, nursery: trio.Nursery, url: str) -> Connection:
        """Open ``url``.

        Raises:
            ConnectFailed: refused, timed out or rejected.
        """


def _closed(exc: trio_websocket.ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:  # pragma: no cover - trio-websocket always sets one
        return "connection closed"
    return f"connection closed: code={reason.code} {reason.reason or reason.name}"


class _TrioWebsocketConnection:
    """A trio-websocket connection adapted to :class:`Connection`.

    We open the TCP (or TLS) stream ourselves and keep it: trio-websocket's
    reader task does not close its stream when cancelled, so :meth:`aclose`
    closes it explicitly after the (bounded) close handshake. The reader is
    shielded (see :class:`_ReaderHost`) so that the close handshake completes
    even while the session is being cancelled; :meth:`aclose` stops it.
    """

    __slots__ = ("_close_timeout", "_reader", "_stream", "_ws")

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: _Stream,
        reader: _ReaderHost,
        close_timeout: float,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._reader = reader
        self._close_timeout = close_timeout

    async def get_message(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from None

    async def get_messages(self) -> list[str | bytes]:
        return [await self.get_message()]

    async def send_message(self, message: str | bytes) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError) as exc:
            raise ConnectionLost(f"send failed: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        # trio-websocket may wait forever for the server's TCP close: bound it.
        with trio.move_on_after(self._close_timeout, shield=True):
            try:
                await self._ws.aclose()
            except (OSError, trio.BrokenResourceError, trio_websocket.ConnectionClosed):
                pass
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)
        self._reader.stop()


_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@attrs.define
class TrioWebsocketTransport:
    """:class:`Transport` on trio-websocket (pure Python, wsproto)."""

    connect_timeout: float = CONNECT_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    message_queue_size: int = MESSAGE_QUEUE_SIZE
    max_message_size: int = MAX_MESSAGE_SIZE

    async def connect(self, nursery: trio.Nursery, url: str) -> Connection:
        """Open ``url`` with a timeout; the reader task runs in ``nursery``.

        trio-websocket reports a rejected handshake (HTTP 503, 429 ...) by
        raising from its reader task, i.e. into the nursery. The reader runs
        under a :class:`_ReaderHost` instead, which turns that into
        :class:`ConnectFailed` here (or a closed connection later).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConnectFailed(f"not a ws:// or wss:// URL: {redact_url(url)!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        host = parts.hostname
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        header_host = host if port in (80, 443) else f"{host}:{port}"
        reader = _ReaderHost()
        inner: trio.Nursery = await nursery.start(reader.run)
        stream: _Stream | None = None
        try:
            with trio.fail_after(self.connect_timeout), trio.CancelScope() as handshake:
                reader.on_error = handshake.cancel
                if secure:
                    stream = await trio.open_ssl_over_tcp_stream(
                        host, port, ssl_context=ssl.create_default_context(), https_compatible=True
                    )
                else:
                    stream = await trio.open_tcp_stream(host, port)
                ws = await trio_websocket.wrap_client_stream(
                    inner,
                    stream,
                    header_host,
                    resource,
                    message_queue_size=self.message_queue_size,
                    max_message_size=self.max_message_size,
                )
            reader.on_error = None
            if reader.error is not None:
                raise reader.error
        except BaseException as exc:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            reader.stop()
            raise _connect_failure(exc, self.connect_timeout) from None
        assert stream is not None  # set before wrap_client_stream returned
        return _TrioWebsocketConnection(ws, stream, reader, self.close_timeout)


class _ReaderHost:
    """Hosts trio-websocket's reader task and catches what it raises.

    The reader raises ``ConnectionRejected`` and friends into its nursery;
    here they end the host quietly (recorded in :attr:`error`, and
    :attr:`on_error` called) instead of crashing the session nursery.
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.on_error: Any = None
        # Shielded: the reader must keep reading while a cancelled session
        # closes the WebSocket (else every close waits out its timeout).
        # The connection's aclose (always called) cancels it.
        self._scope = trio.CancelScope(shield=True)

    def stop(self) -> None:
        """End the reader task (after the close handshake, or when connect failed)."""
        self._scope.cancel("connection closed")

    async def run(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    task_status.started(nursery)
                    await trio.sleep_forever()
            except* _READER_ERRORS as group:
                self.error = group.exceptions[0]
                if self.on_error is not None:
                    self.on_error()


_READER_ERRORS: Final = (
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    LocalProtocolError,
)


def _connect_failure(exc: BaseException, timeout: float) -> BaseException:
    """The :class:`ConnectFailed` for a failed connect (other exceptions unchanged)."""
    match exc:
        case trio.TooSlowError():
            return ConnectFailed(f"connect timed out after {timeout:g}s")
        case trio_websocket.ConnectionRejected():
            return ConnectFailed(f"handshake rejected: HTTP {exc.status_code}")
        case trio_websocket.HandshakeError() | trio_websocket.ConnectionClosed():
            return ConnectFailed(f"handshake failed: {type(exc).__name__}")
        case OSError() | trio.BrokenResourceError() | trio.ClosedResourceError():
            return ConnectFailed(f"connect failed: {type(exc).__name__}: {exc}")
        case LocalProtocolError():
            return ConnectFailed(f"handshake failed: {exc}")
    return exc


def make_transport(name: str | None) -> Transport:
    """The transport named in the provider config (None: the default, picows).

    picows is the default because ``mdd bench`` measured it 5-8x faster end to
    end than trio-websocket (whose pure-Python wsproto costs ~63 us per frame);
    ``transport = "trio-websocket"`` selects the pure-Python client.

    Raises:
        ProviderError: a transport that is not available (yet).
    """
    if name == "trio-websocket":
        return TrioWebsocketTransport()
    if name in (None, "picows"):  # picows (Cython) on a trio-asyncio loop: see _picows.py
        from ._picows import PicowsTransport

        return PicowsTransport()
    raise ProviderError(f"transport {name!r} is not available")


# ---------------------------------------------------------------------------
# The loop


@attrs.frozen
class Plan:
    """One connection a provider keeps open: where, and which symbols it carries."""

    url: str
    symbols: tuple[str, ...]
    topics: tuple[str, ...] = ()
    #: :attr:`url` without user and password: what logs, events and errors show.
    safe_url: str = attrs.field(init=False, eq=False)

    @safe_url.default
    def _safe_url(self) -> str:
        return redact_url(self.url)


class Session:
    """One live connection: the send path (rate limited) and what the loop knows of it."""

    def __init__(self, conn: Connection, plan: Plan, max_send_rate: float) -> None:
        self.conn = conn
        self.plan = plan
        self.opened = trio.current_time()
        self.last_rx = self.opened
        self.subscribed = False
        self.flowed = False
        self.state: dict[str, Any] = {}
        self.error: ProviderError | None = None
        self.scope = trio.CancelScope()
        self._min_interval = 1.0 / max_send_rate
        self._next_send = 0.0

    async def send(self, message: Any) -> None:
        """Send a JSON message, never faster than the venue's limit.

        A slot is reserved before sleeping, so concurrent senders (handshake
        and keepalive) never share one.
        """
        slot = max(trio.current_time(), self._next_send)
        self._next_send = slot + self._min_interval
        await trio.sleep_until(slot)
        await self.conn.send_message(orjson.dumps(message).decode())

    def abort(self, error: ProviderError) -> None:
        """End the session from a helper task; the first error wins."""
        if self.error is None:
            self.error = error
        self.scope.cancel(str(error))


class WsProvider:
    """Base class of the WebSocket venue providers: the shared loop plus venue hooks.

    Subclasses set ``kind`` and implement :meth:`plans`, :meth:`parse_frame`,
    and where needed :meth:`on_open`, :meth:`on_control`,
    :meth:`keepalive_message` and :meth:`retry_floor`.

    Args:
        config: the provider's config (``url``, ``transport``, venue keys).
        symbols: normalized symbols of the feed.
        channels: ``trade``/``quote``/``book``.
        health: updated as the provider runs.
        transport: overrides ``config.transport`` (tests, benchmarks).
        stale_after: reconnect when no message at all arrives for this long
            (default: the venue's :attr:`default_stale_after`).
        subscribe_timeout: reconnect when the subscription is not acknowledged in time.
        max_lifetime: reconnect proactively after this long (venue lifetime cut).
        rng: jitter source (tests pass a seeded one).
    """

    kind: ClassVar[str] = "ws"
    #: Messages per second we may send to the venue (Binance allows 5 incl. pongs).
    max_send_rate: ClassVar[float] = 5.0
    #: Seconds between client keepalive messages (None: none needed).
    keepalive_interval: float | None = None
    #: No message at all for this long means a dead or stalled connection.
    default_stale_after: ClassVar[float] = DEFAULT_STALE_AFTER
    #: Raw capture hook (:mod:`mdd.capture`): called with (provider, connection URL,
    #: ts_recv ns, frame) for every received frame, before parsing; None: off.
    frame_tap: Callable[[str, str, int, str | bytes], None] | None = None

    def __init__(
        self,
        config: ProviderConfig,
        symbols: tuple[str, ...],
        channels: tuple[str, ...],
        health: ProviderHealth,
        *,
        transport: Transport | None = None,
        stale_after: float | None = None,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        max_lifetime: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.symbols = symbols
        self.channels = channels
        self.health = health
        self.transport = transport if transport is not None else make_transport(config.transport)
        self.stale_after = stale_after if stale_after is not None else self.default_stale_after
        self.subscribe_timeout = subscribe_timeout
        self.max_lifetime = max_lifetime
        self._rng = rng or random.Random()
        self._first_data = trio.Event()
        self._connected: set[int] = set()
        self._subscribed: set[int] = set()
        self._n_plans = 1
        self._bad = SampledLog(LOGGER)

    # -- venue hooks -------------------------------------------------------

    def plans(self) -> list[Plan]:
        """The connections to keep open (one, or several when streams are split)."""
        raise NotImplementedError

    def parse_frame(self, raw: str | bytes, ts_recv: int, session: Session) -> Parsed:
        """Parse one frame (the venue's pure ``parse``, with connection context).

        Raises:
            ParseError: malformed frame.
        """
        raise NotImplementedError

    def parse_frames(
        self, frames: list[str | bytes], ts_recv: int, session: Session
    ) -> list[Event] | None:
        """A socket read's events at once, or None: parse these frames one by one.

        The fast path for a venue that can decode a batch in one call. It must
        be pure and all or nothing: None for any frame it does not take in full
        (a control, a malformed frame), and the loop then calls
        :meth:`parse_frame` per frame, which reports the bad one. The default
        takes nothing.
        """
        return None

    async def on_open(self, session: Session) -> None:
        """Called once the socket is open: send the subscription (or wait for a greeting)."""

    async def on_control(self, session: Session, ctl: Control) -> None:
        """React to a control message: acks, errors, auth flow, shutdown notices.

        Raises:
            ProviderError: the session must end (the loop reconnects with backoff).
        """

    def keepalive_message(self) -> Any:
        """The client ping to send every ``keepalive_interval`` seconds."""
        return None

    def retry_floor(self, error: ProviderError | None) -> float:
        """The least delay before reconnecting after ``error`` (0: backoff alone)."""
        return 0.0

    # -- helpers for venues --------------------------------------------------

    def mark_subscribed(self, session: Session) -> None:
        """Record that the venue acknowledged the whole subscription of ``session``."""
        if session.subscribed:
            return
        session.subscribed = True
        self._subscribed.add(id(session.plan))
        self.health.subscribed = len(self._subscribed) >= self._n_plans
        LOGGER.info(
            "provider.subscribed provider=%s url=%s symbols=%d",
            self.name,
            session.plan.safe_url,
            len(session.plan.symbols),
        )
        self.status(session.plan, "subscribed", f"{len(session.plan.topics)} topics")

    def status(self, plan: Plan, status: str, detail: str = "") -> None:
        """Publish a StatusEvent per symbol of ``plan`` (set as :attr:`_outlet`)."""
        outlet = self._outlet
        if outlet is None:
            return
        ts = now_ns()
        for symbol in plan.symbols or (SYSTEM_SYMBOL,):
            outlet.publish(StatusEvent(self.name, symbol, None, ts, status, detail))

    def venue_error(self, plan: Plan, ctl: Control) -> None:
        """Record a venue error that does not end the session (logged, status, last_error)."""
        text = f"venue error {ctl.code}: {ctl.message}" if ctl.code is not None else ctl.message
        self.health.last_error = text
        LOGGER.warning(
            "provider.venue_error provider=%s code=%s msg=%r", self.name, ctl.code, ctl.message
        )
        self.status(plan, "error", text)

    # -- the loop ------------------------------------------------------------

    _outlet: Outlet | None = None

    async def run(
        self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep every planned connection open and stream events into ``outlet``.

        Calls ``task_status.started()`` once the first data frame has been
        published. Network failures are retried here, forever; only bugs escape.
        """
        self._outlet = outlet
        plans = self.plans()
        self._n_plans = len(plans)
        try:
            async with trio.open_nursery() as nursery:
                for plan in plans:
                    nursery.start_soon(self._connection_loop, plan, outlet)
                await self._first_data.wait()
                task_status.started()
        finally:
            self.health.connected = False
            self.health.subscribed = False

    async def _connection_loop(self, plan: Plan, outlet: Outlet) -> None:
        backoff = _new_backoff(self._rng)
        first = True
        while True:
            if not first:
                self.health.reconnects += 1
            first = False
            session, error = await self._session(plan, outlet)
            healthy = session is not None and session.subscribed and session.flowed
            lived = 0.0 if session is None else trio.current_time() - session.opened
            reason = redact_text(str(error)) if error is not None else "closed"
            if healthy:
                backoff.reset()
            if isinstance(error, Reconnect) and healthy and lived >= MIN_HEALTHY_SESSION:
                delay = 0.0
            else:
                delay = max(backoff.next(), self.retry_floor(error))
            if error is not None and not isinstance(error, Reconnect):
                self.health.last_error = reason
                self.status(plan, "error", reason)
            LOGGER.warning(
                "provider.reconnect provider=%s url=%s reason=%r delay=%.2f",
                self.name,
                plan.safe_url,
                reason,
                delay,
            )
            await trio.sleep(delay)

    async def _session(
        self, plan: Plan, outlet: Outlet
    ) -> tuple[Session | None, ProviderError | None]:
        """One connection from open to close; returns it and the error that ended it."""
        session: Session | None = None
        error: ProviderError | None = None
        key = id(plan)
        async with trio.open_nursery() as nursery:
            try:
                conn = await self.transport.connect(nursery, plan.url)
                session = Session(conn, plan, self.max_send_rate)
                try:
                    self._connected.add(key)
                    self.health.connected = len(self._connected) >= self._n_plans
                    LOGGER.info("provider.connected provider=%s url=%s", self.name, plan.safe_url)
                    self.status(plan, "connected", plan.safe_url)
                    nursery.start_soon(self._watchdog, session)
                    if self.keepalive_interval is not None:
                        nursery.start_soon(self._keepalive, session, self.keepalive_interval)
                    with session.scope:
                        await self.on_open(session)
                        await self._receive(session, outlet)
                    if session.error is not None:
                        raise session.error
                finally:
                    await conn.aclose()
                    was_connected = key in self._connected
                    self._connected.discard(key)
                    self._subscribed.discard(key)
                    self.health.connected = False
                    self.health.subscribed = False
                    if was_connected:
                        self.status(plan, "disconnected", plan.safe_url)
            except ProviderError as exc:
                error = exc
            finally:
                nursery.cancel_scope.cancel("session over")
        return session, error

    async def _receive(self, session: Session, outlet: Outlet) -> None:
        """The hot loop: receive, parse, publish; controls go to :meth:`on_control`."""
        conn = session.conn
        parse = self.parse_frame
        parse_frames = self.parse_frames
        publish_many = outlet.publish_many
        health = self.health
        current_time = trio.current_time
        tap = self.frame_tap
        while True:
            frames = await conn.get_messages()
            session.last_rx = current_time()
            # One receive time per batch: the frames of one socket read arrived together.
            ts_recv = time.time_ns()
            if tap is not None:
                for raw in frames:
                    tap(self.name, session.plan.safe_url, ts_recv, raw)
            # The read's events are published in one call (a control in between
            # first publishes what came before it, keeping wire order).
            batch = parse_frames(frames, ts_recv, session)
            if batch is not None:
                frames = []  # all taken at once
            else:
                batch = []
            n = 0
            for raw in frames:
                try:
                    items = parse(raw, ts_recv, session)
                except ParseError as exc:
                    health.parse_errors += 1
                    self._bad("provider.parse_error provider=%s error=%s", self.name, exc)
                    continue
                if Control not in map(type, items):
                    batch += items  # type: ignore[arg-type]
                    continue
                for item in items:
                    if type(item) is Control:
                        n += len(batch)
                        publish_many(batch)
                        batch = []
                        await self._control(session, item)
                    else:
                        batch.append(item)  # type: ignore[arg-type]
            if batch:
                n += len(batch)
                publish_many(batch)
            if n:
                health.mark_data(n)
                if not session.flowed:
                    session.flowed = True
                    self._first_data.set()
            if outlet.congested:
                await outlet.wait_for_room()

    async def _control(self, session: Session, ctl: Control) -> None:
        if ctl.kind == "unknown":
            self.health.parse_errors += 1
            self._bad("provider.unknown_message provider=%s what=%r", self.name, ctl.message[:120])
            return
        await self.on_control(session, ctl)

    async def _watchdog(self, session: Session) -> None:
        """Ends the session when it goes stale, misses its ack, or reaches its lifetime."""
        while True:
            now = trio.current_time()
            stale_at = session.last_rx + self.stale_after
            if now >= stale_at:
                session.abort(StaleConnection(f"no message for {now - session.last_rx:.1f}s"))
                return
            wake = stale_at
            if not session.subscribed:
                ack_by = session.opened + self.subscribe_timeout
                if now >= ack_by:
                    session.abort(
                        ProviderError(
                            f"subscription not acknowledged in {self.subscribe_timeout:g}s"
                        )
                    )
                    return
                wake = min(wake, ack_by)
            if self.max_lifetime is not None:
                end = session.opened + self.max_lifetime
                if now >= end:
                    session.abort(Reconnect(f"connection lifetime {self.max_lifetime:g}s reached"))
                    return
                wake = min(wake, end)
            await trio.sleep_until(wake)

    async def _keepalive(self, session: Session, interval: float) -> None:
        message = self.keepalive_message()
        while True:
            await trio.sleep(interval)
            try:
                await session.send(message)
            except ProviderError as exc:
                session.abort(exc)
                return


def _new_backoff(rng: random.Random) -> Backoff:
    # Imported late: mdd.supervisor imports the provider registry, which imports us.
    from ..supervisor import Backoff

    return Backoff(rng=rng)


def is_auth_error(error: BaseException | None) -> bool:
    """True for credential failures (they get a slow retry)."""
    return isinstance(error, AuthError)
