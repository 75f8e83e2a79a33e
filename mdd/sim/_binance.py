"""Binance spot market streams, as the simulator speaks them.

Endpoints: combined ``/stream?streams=a/b`` (frames wrapped
``{"stream":..,"data":..}``), raw ``/ws/<stream>`` and ``/ws`` (subscribe with
``{"method":"SUBSCRIBE",...}``); ``?timeUnit=MICROSECOND`` switches every time
field to µs. Streams: ``<sym>@trade``, ``@aggTrade``, ``@bookTicker`` (no
``e``/``E``), ``@depth`` / ``@depth@100ms`` (``depthUpdate`` with ``U``/``u``
chained from the symbol's true book, one event per 1000/100 ms merging the
steps in between), ``@depth5/10/20[@100ms]`` (no symbol, no time). The server pings every
``ping_interval`` seconds and drops a client whose pong is ``pong_timeout`` late;
``max_lifetime`` sends ``serverShutdown`` then cuts. A client sending more than
``max_incoming_per_second`` frames in a second is disconnected.
"""

from __future__ import annotations

import collections
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio
from trio_websocket import ConnectionClosed

from ._market import QUOTE_CURRENCIES, fmt_fixed
from ._server import Session, dumps

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._market import Step
    from ._server import SimServer
    from .book import Level

#: Streams allowed per connection (venue limit).
MAX_STREAMS: Final = 1024
#: Decimals Binance prints for prices and quantities.
WIRE_DECIMALS: Final = 8
STREAM_RE: Final = re.compile(
    r"^(?P<sym>[a-z0-9]{2,20})@(?P<kind>trade|aggTrade|bookTicker|depth(?:5|10|20)?)"
    r"(?:@(?P<speed>100ms|1000ms))?$"
)
KIND_COUNTS: Final = {"trade": "trade", "aggTrade": "aggTrade", "bookTicker": "quote"}
ERR_INVALID_STREAM: Final = "Invalid request: invalid stream"
ERR_BAD_ID: Final = "Invalid request: request ID must be an unsigned integer"


def _valid_symbol(server: SimServer, symbol: str) -> bool:
    if symbol in server.market.symbols:
        return True
    return any(symbol.endswith(q) and len(symbol) > len(q) for q in QUOTE_CURRENCIES)


def parse_stream(server: SimServer, name: str) -> tuple[str, str] | None:
    """``(SYMBOL, kind)`` of a valid stream name, else None."""
    m = STREAM_RE.match(name)
    if m is None:
        return None
    kind = m["kind"]
    if m["speed"] and kind in ("trade", "aggTrade", "bookTicker"):
        return None
    symbol = m["sym"].upper()
    if not _valid_symbol(server, symbol):
        return None
    return symbol, kind


def interval_ns(name: str) -> int:
    """Update interval of a depth stream (``@100ms`` or the default 1000 ms)."""
    return 100_000_000 if name.endswith("@100ms") else 1_000_000_000


class _DepthPacer:
    """Batches a depth stream's steps into one event per update interval.

    ``@depth`` pushes every 1000 ms and ``@depth@100ms`` every 100 ms: the
    changes of every step in between are merged (last size per price wins) and
    sent as one ``depthUpdate`` with the first step's ``U`` and the last
    step's ``u``, so the chain stays contiguous. Partial depth sends the
    latest top levels once per interval. At ``rate == 0`` every step is sent.
    """

    def __init__(self, interval: int, pace: bool) -> None:
        self.interval = interval
        self.pace = pace
        self.due = 0
        self.first: int | None = None
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def add(self, step: Step) -> bool:
        """Take a step; True when an event is due now."""
        if self.first is None:
            self.first = step.first_update_id
        self.bids.update(step.bid_changes)
        self.asks.update(step.ask_changes)
        if self.pace and step.ts_ns < self.due:
            return False
        # 1 ms slack so steps exactly one interval apart are not skipped.
        self.due = step.ts_ns + self.interval - 1_000_000
        return True

    def take(self) -> tuple[int, list[Level], list[Level]]:
        """``(U, bids high->low, asks low->high)`` and reset."""
        first = self.first if self.first is not None else 0
        bids = sorted(self.bids.items(), reverse=True)
        asks = sorted(self.asks.items())
        self.first = None
        self.bids = {}
        self.asks = {}
        return first, bids, asks


def _px(v: int, dec: int) -> str:
    return fmt_fixed(v, dec, WIRE_DECIMALS)


class BinanceSession(Session):
    """One Binance market-stream connection."""

    venue = "binance"

    def __init__(
        self,
        server: SimServer,
        ws: Any,
        request_path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(server, ws, request_path, headers)
        self.combined = self.path.startswith("/stream")
        self.micro = self.query.get("timeUnit", [""])[0].upper() in ("MICROSECOND", "MICROSECONDS")
        self.streams: dict[str, tuple[str, str]] = {}
        self.by_symbol: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        self.incoming: collections.deque[float] = collections.deque()
        self.pacers: dict[str, _DepthPacer] = {}
        self._ping_no = 0
        initial: list[str] = []
        if self.combined:
            initial = [s for s in self.query.get("streams", [""])[0].split("/") if s]
        elif self.path.startswith("/ws/"):
            initial = [s for s in self.path[4:].split("/") if s]
        for name in initial:
            self._add(name)

    # -- streams -----------------------------------------------------------------

    def _add(self, name: str) -> None:
        parsed = parse_stream(self.server, name)
        if parsed is None or name in self.streams:
            return
        symbol, kind = parsed
        self.market.ensure(symbol)
        self.streams[name] = parsed
        self.by_symbol[symbol].append((name, kind))
        if kind.startswith("depth"):
            self.pacers[name] = _DepthPacer(interval_ns(name), self.market.options.rate > 0)
        self.symbols.add(symbol)
        self.server.subscriptions.append(name)

    def _remove(self, name: str) -> None:
        parsed = self.streams.pop(name, None)
        if parsed is None:
            return
        symbol, kind = parsed
        self.pacers.pop(name, None)
        self.by_symbol[symbol].remove((name, kind))
        if not self.by_symbol[symbol]:
            del self.by_symbol[symbol]
            self.symbols.discard(symbol)

    def _time(self, ts_ns: int) -> int:
        return ts_ns // 1000 if self.micro else ts_ns // 1_000_000

    def _wrap(self, stream: str, data: dict[str, Any]) -> str:
        if self.combined:
            return dumps({"stream": stream, "data": data})
        return dumps(data)

    # -- timers --------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the server pinger and the lifetime cut."""
        nursery.start_soon(self._pinger, nursery)
        if self.server.options.max_lifetime is not None:
            nursery.start_soon(self._lifetime, self.server.options.max_lifetime)

    async def _pinger(self, nursery: trio.Nursery) -> None:
        options = self.server.options
        while True:
            await trio.sleep(options.ping_interval)
            if self.faults.ignore_pings:
                continue
            self._ping_no += 1
            nursery.start_soon(self._ping_once, str(self._ping_no).encode(), options.pong_timeout)

    async def _ping_once(self, payload: bytes, pong_within: float) -> None:
        with trio.move_on_after(pong_within) as scope:
            try:
                await self.ws.ping(payload)
            except ConnectionClosed:
                return
        if scope.cancelled_caught:
            self.close(1008, "pong timeout")

    async def _lifetime(self, lifetime: float) -> None:
        notice = min(self.server.options.shutdown_notice, lifetime)
        await trio.sleep(lifetime - notice)
        event = {"e": "serverShutdown", "E": self._time(self.market.clock.now_ns())}
        try:
            await self.send_control(self._wrap("!serverShutdown", event))
        except ConnectionClosed:
            return
        await trio.sleep(notice)
        self.close(1000, "max lifetime")

    # -- client frames -------------------------------------------------------------

    def _rate_ok(self) -> bool:
        limit = self.server.options.max_incoming_per_second
        if limit is None:
            return True
        now = trio.current_time()
        self.incoming.append(now)
        while self.incoming and self.incoming[0] <= now - 1.0:
            self.incoming.popleft()
        return len(self.incoming) <= limit

    async def _error(self, code: int, msg: str, req_id: Any) -> None:
        await self.send_control(dumps({"error": {"code": code, "msg": msg}, "id": req_id}))

    async def on_text(self, message: str | bytes) -> None:
        """Answer SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_ / GET_PROPERTY."""
        if not self._rate_ok():
            self.close(1008, "Too many requests")
            return
        try:
            req = orjson.loads(message)
        except orjson.JSONDecodeError:
            await self._error(3, "Invalid JSON: expected value at line 1 column 1", None)
            return
        if not isinstance(req, dict):
            await self._error(3, "Invalid JSON: expected an object", None)
            return
        req_id = req.get("id")
        if not (
            req_id is None
            or (isinstance(req_id, int) and not isinstance(req_id, bool) and 0 <= req_id < 2**63)
            or (isinstance(req_id, str) and len(req_id) <= 36 and req_id.isalnum())
        ):
            await self._error(2, ERR_BAD_ID, None)
            return
        method = req.get("method")
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                await self._error(1, "Invalid value type: expected array of strings", req_id)
                return
            if method == "UNSUBSCRIBE":
                for name in params:
                    self._remove(name)
                await self.send_control(dumps({"result": None, "id": req_id}))
                return
            await self._subscribe(params, req_id)
        elif method == "LIST_SUBSCRIPTIONS":
            await self.send_control(dumps({"result": list(self.streams), "id": req_id}))
        elif method == "SET_PROPERTY":
            if (
                isinstance(params, list)
                and len(params) == 2
                and params[0] == "combined"
                and isinstance(params[1], bool)
            ):
                self.combined = params[1]
                await self.send_control(dumps({"result": None, "id": req_id}))
            else:
                await self._error(1, "Invalid value type: expected Boolean", req_id)
        elif method == "GET_PROPERTY":
            if isinstance(params, list) and params == ["combined"]:
                await self.send_control(dumps({"result": self.combined, "id": req_id}))
            else:
                await self._error(2, "Invalid request: unknown property", req_id)
        else:
            await self._error(2, f"Invalid request: unknown method {method!r}", req_id)

    async def _subscribe(self, params: list[str], req_id: Any) -> None:
        if self.faults.reject_subscribe or any(
            parse_stream(self.server, p) is None for p in params
        ):
            await self._error(2, ERR_INVALID_STREAM, req_id)
            return
        if len(set(self.streams) | set(params)) > MAX_STREAMS:
            await self._error(4, "Too many subscriptions", req_id)
            return
        delay = self.faults.subscribe_delay

        async def _done() -> None:
            for name in params:
                self._add(name)
            await self.send_control(dumps({"result": None, "id": req_id}))

        if delay > 0:
            self.later(delay, _done)
        else:
            await _done()

    # -- market data -----------------------------------------------------------------

    async def on_step(self, step: Step) -> None:
        """Send this step on every subscribed stream of its symbol."""
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        symbol = step.symbol
        event_time = self._time(step.ts_ns)
        for name, kind in list(self.by_symbol.get(symbol, ())):
            if kind == "trade" or kind == "aggTrade":
                for t in step.trades:
                    tt = self._time(t.ts_ns)
                    data: dict[str, Any]
                    if kind == "trade":
                        data = {
                            "e": "trade",
                            "E": event_time,
                            "s": symbol,
                            "t": t.trade_id,
                            "p": _px(t.price, dec_p),
                            "q": _px(t.qty, dec_q),
                            "T": tt,
                            "m": not t.taker_buy,
                            "M": True,
                        }
                    else:
                        data = {
                            "e": "aggTrade",
                            "E": event_time,
                            "s": symbol,
                            "a": t.trade_id,
                            "p": _px(t.price, dec_p),
                            "q": _px(t.qty, dec_q),
                            "f": t.trade_id,
                            "l": t.trade_id,
                            "T": tt,
                            "m": not t.taker_buy,
                            "M": True,
                        }
                    await self.send_data(self._wrap(name, data), kind, [(symbol, str(t.trade_id))])
            elif kind == "bookTicker":
                if step.top_changed and step.bids and step.asks:
                    (bp, bq), (ap, aq) = step.bids[0], step.asks[0]
                    data = {
                        "u": step.last_update_id,
                        "s": symbol,
                        "b": _px(bp, dec_p),
                        "B": _px(bq, dec_q),
                        "a": _px(ap, dec_p),
                        "A": _px(aq, dec_q),
                    }
                    await self.send_data(self._wrap(name, data), "quote")
            elif kind == "depth":
                pacer = self.pacers[name]
                if not pacer.add(step):
                    continue
                first, bids, asks = pacer.take()
                data = {
                    "e": "depthUpdate",
                    "E": event_time,
                    "s": symbol,
                    "U": first,
                    "u": step.last_update_id,
                    "b": [[_px(p, dec_p), _px(q, dec_q)] for p, q in bids],
                    "a": [[_px(p, dec_p), _px(q, dec_q)] for p, q in asks],
                }
                await self.send_book_update(name, self._wrap(name, data))
            else:
                pacer = self.pacers[name]
                if not pacer.add(step):
                    continue
                pacer.take()
                n = int(kind[5:])
                data = {
                    "lastUpdateId": step.last_update_id,
                    "bids": [[_px(p, dec_p), _px(q, dec_q)] for p, q in step.bids[:n]],
                    "asks": [[_px(p, dec_p), _px(q, dec_q)] for p, q in step.asks[:n]],
                }
                await self.send_data(self._wrap(name, data), "book")

    def unknown_frame(self) -> str:
        """A well-formed event of a type Binance spot streams never send."""
        data = {"e": "simMystery", "E": self._time(self.market.clock.now_ns()), "s": "SIM"}
        return self._wrap("sim@mystery", data)


def depth_snapshot(server: SimServer, symbol: str, limit: int = 100) -> dict[str, Any]:
    """``GET /api/v3/depth`` body for a symbol: the live book, aligned with the streams.

    Its ``lastUpdateId`` is the book's current update id, so a client that
    buffered ``@depth`` events can sync by Binance's rule (drop ``u <=
    lastUpdateId``; the first applied event has ``U <= lastUpdateId+1 <= u``).
    """
    state = server.market.ensure(symbol.upper())
    dec_p, dec_q = state.spec.price_decimals, state.spec.qty_decimals
    last, bids, asks = state.book.snapshot(limit)
    return {
        "lastUpdateId": last,
        "bids": [[_px(p, dec_p), _px(q, dec_q)] for p, q in bids],
        "asks": [[_px(p, dec_p), _px(q, dec_q)] for p, q in asks],
    }


def route(server: SimServer, path: str) -> type[Session] | int:
    """Session class for a request path, or the HTTP status to reject it with."""
    base, _, query = path.partition("?")
    if base in ("/stream", "/ws") or base.startswith("/ws/"):
        if base == "/stream":
            names = [s for s in urllib_streams(query) if s]
        elif base.startswith("/ws/"):
            names = [s for s in base[4:].split("/") if s]
        else:
            names = []
        if len(names) > MAX_STREAMS:
            return 400
        if any(parse_stream(server, n) is None for n in names):
            return 400
        if names and server.options.faults.reject_subscribe:
            return 400
        return BinanceSession
    return 404


def urllib_streams(query: str) -> list[str]:
    """Stream names of a combined-stream query string."""
    return urllib.parse.parse_qs(query).get("streams", [""])[0].split("/")


def url_for(host: str, port: int) -> str:
    """Base URL a Binance provider config points at (it appends /stream or /ws)."""
    return f"ws://{host}:{port}"
