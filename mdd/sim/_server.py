"""The simulator's server side: listeners, per-connection sessions and faults.

``serve_sim`` binds a trio-websocket server on loopback, runs the venue's
:class:`~mdd.sim._market.Market`, and hands every accepted connection to the
venue's :class:`Session` subclass. A session owns a nursery with three kinds of
task: the reader (client frames into an inbox), the pump (the only task that
turns client commands and market steps into frames, so ordering is exact) and
venue timers (pings, lifetime, auth timeout, resends).

Faults are read live from ``options.faults`` on every data frame.
"""

from __future__ import annotations

import collections
import logging
import random
import urllib.parse
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from ._market import Market

if TYPE_CHECKING:
    from ._market import Step
    from ._options import Faults, SimOptions
    from .rest import DepthRest

LOGGER = logging.getLogger("mdd.sim")

#: Seconds the server waits for a clean close handshake before dropping TCP.
CLOSE_TIMEOUT = 2.0
#: Binary junk sent by the garbage fault.
JUNK = b"\x00\xff\xfe\x80sim-junk\x81\x9f"
#: Client frames a session buffers before it stops reading.
INBOX_LIMIT = 1000


def dumps(obj: Any) -> str:
    """Compact JSON text, keys in insertion order (the venues' wire order)."""
    return orjson.dumps(obj).decode()


class Session:
    """One accepted WebSocket connection of a simulated venue.

    Subclasses implement :meth:`on_text` (a client frame), :meth:`on_step` (a
    market step of a symbol in :attr:`symbols`), and may greet or add timers in
    :meth:`start`. They send with :meth:`send_control` (never subject
    to faults) or :meth:`send_data` (counted, faulted).
    """

    #: Venue name, for logs.
    venue: ClassVar[str] = ""

    def __init__(
        self,
        server: SimServer,
        ws: WebSocketConnection,
        request_path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.server = server
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        self.ws = ws
        self.market = server.market
        self.path, _, query = request_path.partition("?")
        self.query = urllib.parse.parse_qs(query)
        self.rng = random.Random(server.rng.getrandbits(64))
        self.cursor = self.market.head
        self.last: dict[str, Step] = {}
        self.symbols: set[str] = set()
        self.data_frames = 0
        self.garbage_sent = 0
        self._inbox: collections.deque[str | bytes | Callable[[], Any]] = collections.deque()
        self._wake = trio.Event()
        self._close: tuple[int, str] | None = None
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.held_book_updates: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------

    def wake(self) -> None:
        """Wake the pump (new step, new client frame, or a deferred action)."""
        self._wake.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close this connection now with a close frame ``code``/``reason``."""
        if self._close is None:
            self._close = (code, reason)
            LOGGER.info("sim.close venue=%s code=%s reason=%s", self.venue, code, reason)
        if self._scope is not None:
            self._scope.cancel(reason or "closed")

    @property
    def faults(self) -> Faults:
        """The live fault switches."""
        return self.server.options.faults

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        self.last = {name: st.latest for name, st in self.market.symbols.items()}
        self.market.add_listener(self.wake, lambda: self.symbols)
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                if self._close is not None:
                    nursery.cancel_scope.cancel("closed before start")
                nursery.start_soon(self._reader)
                await self.start(nursery)
                nursery.start_soon(self._pump)
        finally:
            self.market.remove_listener(self.wake)
        code, reason = self._close or (1000, "")
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await self.ws.aclose(code, reason)

    async def start(self, nursery: trio.Nursery) -> None:
        """Send greetings and start venue timers (override)."""

    def later(self, delay: float, action: Callable[[], Any]) -> None:
        """Run ``action`` in the pump after ``delay`` seconds (trio time)."""
        assert self._nursery is not None

        async def _deferred() -> None:
            await trio.sleep(delay)
            self._inbox.append(action)
            self.wake()

        self._nursery.start_soon(_deferred)

    async def _reader(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                self._inbox.append(message)
                self.wake()
                if len(self._inbox) > INBOX_LIMIT:
                    self.close(1008, "too many unanswered client messages")
        except ConnectionClosed:
            self.close(1000, "client closed")

    async def _pump(self) -> None:
        market = self.market
        try:
            while True:
                self._wake = trio.Event()
                while self._inbox:
                    item = self._inbox.popleft()
                    if callable(item):
                        result = item()
                        if result is not None:
                            await result
                    else:
                        await self.on_text(item)
                if self.cursor < market.base:
                    LOGGER.warning(
                        "sim.client_lagging venue=%s skipped=%s",
                        self.venue,
                        market.base - self.cursor,
                    )
                    self.cursor = market.base
                if self.cursor < market.head:
                    step = market.get(self.cursor)
                    self.cursor += 1
                    if step is not None:
                        self.last[step.symbol] = step
                        if step.symbol in self.symbols:
                            await self.on_step(step)
                    continue
                if market.options.rate <= 0 and self.symbols and not self._inbox:
                    if self.server.is_silent():
                        # Nobody reads during silence: don't spin (and let MockClock jump).
                        with trio.move_on_after(0.05):
                            await self._wake.wait()
                    else:
                        market.advance(sorted(self.symbols))
                        await trio.lowlevel.checkpoint()
                    continue
                await self._wake.wait()
        except ConnectionClosed:
            self.close(1000, "client gone")

    # -- sending -------------------------------------------------------------------

    async def send_control(self, frame: str) -> None:
        """Send a control frame (acks, errors, pongs): never faulted or counted."""
        await self.ws.send_message(frame)

    async def send_data(
        self,
        frame: str,
        counts: dict[str, int] | str,
        trades: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a data frame, applying silence, garbage and drop-after faults.

        Args:
            frame: The JSON text.
            counts: Item counts by kind for :attr:`SimServer.sent`, or one kind.
            trades: ``(symbol, trade_id)`` of the trades in the frame.
        """
        server = self.server
        if server.is_silent():
            return
        faults = self.faults
        self.data_frames += 1
        every = faults.garbage_every
        if every and self.data_frames % every == 0:
            kind = self.garbage_sent % 4
            self.garbage_sent += 1
            server.garbage_sent += 1
            junk: str | bytes
            if kind == 0:
                junk = "sim garbage: this is not JSON {"
            elif kind == 1:
                junk = frame[: max(1, len(frame) // 2)]
            elif kind == 2:
                junk = self.unknown_frame()
            else:
                junk = JUNK
            await self.ws.send_message(junk)
        else:
            await self.ws.send_message(frame)
            server.frames_sent += 1
            if isinstance(counts, str):
                server.sent[counts] += 1
            else:
                server.sent.update(counts)
            if trades:
                server.sent_trades.extend(trades)
        limit = faults.drop_after
        if limit is not None and self.data_frames >= limit:
            self.close(1001, "sim: drop_after")
            await trio.lowlevel.checkpoint()

    async def send_book_update(self, stream: str, frame: str) -> None:
        """Send one book update of ``stream``, applying the book faults.

        ``book_skip`` drops it, ``book_reorder`` holds it back until the next
        update of the same stream has been sent, ``book_duplicate`` sends it
        twice (see :class:`~mdd.sim.Faults`).
        """
        faults = self.faults
        held = self.held_book_updates.pop(stream, None)
        if faults.book_skip > 0:
            faults.book_skip -= 1
            LOGGER.info("sim.book_fault venue=%s stream=%s fault=skip", self.venue, stream)
        elif faults.book_reorder > 0 and held is None:
            faults.book_reorder -= 1
            self.held_book_updates[stream] = frame
            LOGGER.info("sim.book_fault venue=%s stream=%s fault=reorder", self.venue, stream)
        else:
            await self.send_data(frame, "book")
            if faults.book_duplicate > 0:
                faults.book_duplicate -= 1
                LOGGER.info("sim.book_fault venue=%s stream=%s fault=duplicate", self.venue, stream)
                await self.send_data(frame, "book")
        if held is not None:
            await self.send_data(held, "book")

    # -- venue hooks -----------------------------------------------------------------

    async def on_text(self, message: str | bytes) -> None:
        """Handle one client frame (override)."""

    async def on_step(self, step: Step) -> None:
        """Render one market step of a subscribed symbol (override)."""

    def unknown_frame(self) -> str:
        """Valid JSON of a type the venue never sends (garbage fault)."""
        return dumps({"e": "simMystery", "E": self.market.clock.now_ns() // 1_000_000})


#: A venue: (session class for a path, or an HTTP status to reject with), URL builder.
Router = Callable[["SimServer", str], "type[Session] | int"]


class SimServer:
    """A running simulated venue (what ``serve_sim`` hands to ``task_status``).

    Attributes:
        venue: ``binance``, ``bybit`` or ``alpaca``.
        host: Bound host.
        port: Bound port.
        url: What a provider config ``url`` should be.
        rest_url: Binance: base URL of the REST depth endpoint
            (:mod:`mdd.sim.rest`, ``GET /api/v3/depth``) for a provider's
            ``rest_url``; empty for other venues.
        rest: Binance: the running :class:`~mdd.sim.rest.DepthRest` (``fail_next``).
        options: The options; ``options.faults`` is live.
        connections: Connections attempted so far (refused ones included).
        active: Connections open now.
        sent: Data items sent by kind (``trade`` per trade, ``quote``, ``book``,
            ``aggTrade``, ``bar``); garbage-replaced frames are not counted.
        frames_sent: Data frames sent (garbage excluded).
        garbage_sent: Garbage frames sent.
        sent_trades: ``(symbol, trade_id)`` of every trade sent, in order, with
            the symbol and id as they appear on the wire.
        subscriptions: Every topic a client subscribed successfully, in order
            (Binance stream names, Bybit topics, Alpaca ``channel:SYMBOL``).
    """

    def __init__(self, venue: str, options: SimOptions, host: str, router: Router) -> None:
        self.venue = venue
        self.host = host
        self.port = 0
        self.url = ""
        self.rest_url = ""
        self.rest: DepthRest | None = None
        self.options = options
        self.connections = 0
        self.active = 0
        self.sent: collections.Counter[str] = collections.Counter()
        self.frames_sent = 0
        self.garbage_sent = 0
        self.sent_trades: list[tuple[str, str]] = []
        self.subscriptions: list[str] = []
        self.market = Market(options, track_deltas=venue == "bybit")
        self.rng = random.Random(None if options.seed is None else options.seed + 1)
        self.sessions: set[Session] = set()
        self._router = router
        self._silent_until = float("-inf")
        self._refuse_until = float("-inf")
        #: Alpaca: endpoint path -> trio time until which a dead session holds its slot.
        self.linger_until: dict[str, float] = {}

    def is_silent(self) -> bool:
        """Whether data frames are suppressed right now."""
        return self.options.faults.silent or trio.current_time() < self._silent_until

    def go_silent(self, seconds: float) -> None:
        """Send no data frames for ``seconds`` (trio time), then resume."""
        self._silent_until = max(self._silent_until, trio.current_time() + seconds)

    def refuse_for(self, seconds: float) -> None:
        """Refuse new connections for ``seconds`` (trio time), then accept again."""
        self._refuse_until = max(self._refuse_until, trio.current_time() + seconds)

    def is_refusing(self) -> bool:
        """Whether new connections are refused right now."""
        return self.options.faults.refuse_connections or trio.current_time() < self._refuse_until

    def statistics(self) -> dict[str, Any]:
        """Counters for logs and assertions."""
        return {
            "venue": self.venue,
            "connections": self.connections,
            "active": self.active,
            "frames_sent": self.frames_sent,
            "garbage_sent": self.garbage_sent,
            "sent": dict(self.sent),
            "subscriptions": len(self.subscriptions),
        }

    def disconnect_all(self) -> None:
        """Close every open connection now."""
        for session in list(self.sessions):
            session.close(1001, "sim: disconnect_all")

    def sessions_on(self, path: str) -> list[Session]:
        """Open sessions on one endpoint path."""
        return [s for s in self.sessions if s.path == path]

    async def handle(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: route, apply connection faults, run the session."""
        self.connections += 1
        target = self._router(self, request.path)
        if isinstance(target, int):
            LOGGER.info("sim.reject venue=%s status=%s", self.venue, target)
            await request.reject(target, body=b"rejected by mdd.sim")
            return
        if self.is_refusing() and self.venue != "alpaca":
            LOGGER.info("sim.refuse venue=%s", self.venue)
            await request.reject(503, body=b"mdd.sim: refusing connections")
            return
        ws = await request.accept()
        session = target(self, ws, request.path, request.headers)
        self.active += 1
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:
            # A simulator bug ends this connection, never the whole server.
            LOGGER.exception("sim.session_failed venue=%s path=%s", self.venue, session.path)
        finally:
            self.active -= 1
            self.sessions.discard(session)


async def serve(
    venue: str,
    router: Router,
    url_for: Callable[[str, int], str],
    options: SimOptions,
    host: str,
    port: int,
    task_status: trio.TaskStatus[SimServer],
) -> NoReturn:
    """Run one venue server (used by :func:`mdd.sim.serve_sim`)."""
    server = SimServer(venue, options, host, router)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.market.run)
        ws_server = await nursery.start(
            partial(
                serve_websocket,
                server.handle,
                host,
                port,
                None,
                message_queue_size=64,
                connect_timeout=10.0,
                disconnect_timeout=CLOSE_TIMEOUT,
            )
        )
        server.port = ws_server.port
        server.url = url_for(host, server.port)
        if venue == "binance":
            # Binance books sync from a REST depth snapshot: serve one from the true book.
            from .rest import market_depth, serve_depth_rest

            server.rest = await nursery.start(
                partial(serve_depth_rest, market_depth(server.market), host)
            )
            server.rest_url = server.rest.url
        LOGGER.info("sim.listening venue=%s url=%s", venue, server.url)
        task_status.started(server)
        await trio.sleep_forever()
    raise AssertionError("unreachable")
