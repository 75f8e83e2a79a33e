"""Bybit V5 public spot: a pure ``parse()`` and the provider.

Wire rules (PROTOCOLS.md, bybit-exchange/docs v5 websocket):

* ``publicTrade.SYM``: ``data[]`` holds one or many trades; ``S`` is the
  **taker** side; ``T`` the fill time (ms); ``i`` a string id.
* ``orderbook.{1,50,200,1000}.SYM``: snapshot then deltas, ``u`` update id,
  ``seq`` cross sequence, ``cts`` matching-engine time. Level 1 becomes a
  :class:`~mdd.events.QuoteEvent`, deeper books :class:`~mdd.events.BookEvent`.
* Subscribe with ``{"op":"subscribe","args":[..]}``, at most 10 args per
  request; the ack is ``{"success":true,"ret_msg":"subscribe",..}``, a failure
  ``success:false`` with a text-only ``ret_msg``. The first snapshot may arrive
  before the ack.
* The client pings (``{"op":"ping"}``) every 20 s or is cut.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import orjson
import trio

from ..books import BookKeeper, feed_books, flush_forever
from ..config import normalize_symbol
from ..errors import SubscribeError
from ..events import BookEvent, QuoteEvent, Side, TradeEvent
from ._parse import PARSE_FAILURES, Control, bad_frame, levels
from ._ws import Plan, WsProvider

if TYPE_CHECKING:
    from ._parse import Parsed
    from ._ws import Session
    from .base import Outlet

LOGGER = logging.getLogger("mdd.providers.bybit")

#: Spot allows at most this many args per subscribe request.
MAX_ARGS_PER_REQUEST: Final = 10
#: Seconds to wait for the snapshot after a book resubscribe before asking again.
BOOK_RESYNC_TIMEOUT: Final = 5.0
_MS: Final = 1_000_000
_INF: Final = math.inf
_SIDES: Final[dict[str, Side]] = {"Buy": "buy", "Sell": "sell"}


def _ms(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"time must be an integer, got {value!r}")
    return value * _MS


class _WireTrade(msgspec.Struct, gc=False):
    """One fill of a ``publicTrade`` frame as it comes (prices and sizes are strings)."""

    s: str
    S: Literal["Buy", "Sell"]
    p: str
    v: str
    i: str | int
    T: int | msgspec.UnsetType | None = msgspec.UNSET


class _TradeFrame(msgspec.Struct, gc=False):
    topic: str
    data: list[_WireTrade]
    ts: int | None = None


# Strict typed decoding of the hot frames; anything it or the checks in
# _fast_trades do not take goes to the general parser, which names the problem.
_TRADE_DECODER: Final = msgspec.json.Decoder(_TradeFrame)
_DECODE_FAILURES: Final = (msgspec.ValidationError, msgspec.DecodeError, ValueError)
_TRADE_PREFIX: Final = '{"topic":"publicTrade.'
_TRADE_BPREFIX: Final = b'{"topic":"publicTrade.'


def _fast_trades(raw: str | bytes, ts_recv: int, provider: str) -> Parsed | None:
    """A ``publicTrade`` frame typed-decoded; None: not one, or a check failed.

    Frames start with their topic (``{"topic":"publicTrade.BTCUSDT",...``),
    which picks this path for the price of one ``startswith``.
    """
    if type(raw) is str:
        if not raw.startswith(_TRADE_PREFIX):
            return None
    elif not raw.startswith(_TRADE_BPREFIX):  # type: ignore[arg-type]
        return None
    try:
        frame = _TRADE_DECODER.decode(raw)
        out: Parsed = []
        append = out.append
        frame_ts = frame.ts
        for item in frame.data:
            price = float(item.p)
            qty = float(item.v)
            if not (0.0 < price < _INF and 0.0 <= qty < _INF) or not item.s:
                return None
            t = frame_ts if item.T is msgspec.UNSET else item.T
            side: Side = "buy" if item.S == "Buy" else "sell"
            append(
                TradeEvent(
                    provider,
                    item.s,
                    None if t is None else t * _MS,
                    ts_recv,
                    price,
                    qty,
                    side,
                    str(item.i),
                )
            )
    except _DECODE_FAILURES:
        return None
    return out


def _trades(msg: dict[str, Any], ts_recv: int, provider: str) -> Parsed:
    frame_ts = msg.get("ts")
    out: Parsed = []
    for item in msg["data"]:
        symbol = item["s"]
        if type(symbol) is not str or not symbol:
            raise TypeError(f"bad symbol {symbol!r}")
        t = item.get("T", frame_ts)
        price = float(item["p"])
        qty = float(item["v"])
        if not (0.0 < price < _INF and 0.0 <= qty < _INF):
            raise ValueError(f"bad price/qty {item['p']!r}/{item['v']!r}")
        trade_id = item["i"]
        if trade_id is None or isinstance(trade_id, bool | float | dict | list):
            raise TypeError(f"bad trade id {trade_id!r}")
        out.append(
            TradeEvent(
                provider,
                symbol,
                None if t is None else _ms(t),
                ts_recv,
                price,
                qty,
                _SIDES[item["S"]],
                str(trade_id),
            )
        )
    return out


def _book(msg: dict[str, Any], topic: str, ts_recv: int, provider: str, quote_depth: int) -> Parsed:
    _, depth_text, topic_symbol = topic.split(".", 2)
    data = msg["data"]
    symbol = data.get("s") or topic_symbol
    kind = msg["type"]
    if kind not in ("snapshot", "delta"):
        raise ValueError(f"orderbook type {kind!r}")
    cts = msg.get("cts")
    ts = _ms(cts) if cts is not None else (None if msg.get("ts") is None else _ms(msg["ts"]))
    bids = levels(data["b"])
    asks = levels(data["a"])
    if int(depth_text) == quote_depth:
        if not bids or not asks:
            return []  # one side empty: no best bid/offer to report
        (bid_px, bid_qty), (ask_px, ask_qty) = bids[0], asks[0]
        if not (0.0 < bid_px < _INF and 0.0 < ask_px < _INF):
            raise ValueError("bad level-1 prices")
        return [QuoteEvent(provider, symbol, ts, ts_recv, bid_px, bid_qty, ask_px, ask_qty)]
    seq = data.get("seq")
    return [
        BookEvent(
            provider,
            symbol,
            ts,
            ts_recv,
            bids,
            asks,
            kind == "snapshot",
            None,
            int(data["u"]),
            None if seq is None else int(seq),
        )
    ]


def _dispatch(msg: Any, ts_recv: int, provider: str, quote_depth: int) -> Parsed:
    match msg:
        case {"topic": str(topic)} if topic.startswith("publicTrade."):
            return _trades(msg, ts_recv, provider)
        case {"topic": str(topic)} if topic.startswith("orderbook."):
            return _book(msg, topic, ts_recv, provider, quote_depth)
        case {"topic": str(topic)} if topic.startswith("tickers."):
            data = msg["data"]
            ts = msg.get("ts")
            return [
                Control(
                    "ticker",
                    provider,
                    symbol=data.get("symbol"),
                    ts_exchange=None if ts is None else _ms(ts),
                    data=data,
                )
            ]
        case {"topic": str(topic)}:
            return [Control("unknown", provider, message=f"topic {topic!r}")]
        case {"op": "pong"}:
            return [Control("pong", provider, op="pong", data=msg.get("args"))]
        case {"op": "ping", "success": True}:
            return [Control("pong", provider, op="ping", message=str(msg.get("ret_msg", "")))]
        case {"op": str(op), "success": True}:
            kind = "subscribed" if op == "subscribe" else "command_ack"
            return [
                Control(
                    kind,
                    provider,
                    op=op,
                    request_id=msg.get("req_id"),
                    message=str(msg.get("ret_msg", "")),
                    data=msg.get("conn_id"),
                )
            ]
        case {"op": str(op), "success": False}:
            return [
                Control(
                    "error",
                    provider,
                    op=op,
                    request_id=msg.get("req_id"),
                    message=str(msg.get("ret_msg", "")),
                    data=msg.get("conn_id"),
                )
            ]
        case dict():
            return [Control("unknown", provider, message=f"keys {sorted(msg)[:8]}")]
        case _:
            raise TypeError(f"expected a JSON object, got {type(msg).__name__}")


def parse(
    raw: str | bytes, ts_recv: int, provider: str = "bybit", *, quote_depth: int = 1
) -> Parsed:
    """Turn one Bybit V5 public frame into events and controls. Pure, no I/O.

    Args:
        raw: the frame text.
        ts_recv: receive time, ns.
        provider: the provider name put on events.
        quote_depth: the orderbook depth read as quotes (level 1); other depths are books.

    Returns:
        Events in wire order (a ``publicTrade`` frame gives one trade per
        fill), or one :class:`Control`: ``subscribed``/``command_ack`` acks,
        ``pong``, ``error`` (``message`` = the venue's ``ret_msg``, ``code``
        None: the public stream sends none), ``ticker``, ``unknown``.

    Raises:
        ParseError: not JSON, or a known message with missing/bad fields.
    """
    fast = _fast_trades(raw, ts_recv, provider)
    if fast is not None:
        return fast
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_frame(raw, exc) from None
    try:
        return _dispatch(msg, ts_recv, provider, quote_depth)
    except PARSE_FAILURES as exc:
        raise bad_frame(raw, exc) from None


def topics(symbols: tuple[str, ...], channels: tuple[str, ...], book_depth: int = 50) -> list[str]:
    """Subscription args for the symbols and channels."""
    out: list[str] = []
    for symbol in symbols:
        if "trade" in channels:
            out.append(f"publicTrade.{symbol}")
        if "quote" in channels:
            out.append(f"orderbook.1.{symbol}")
        if "book" in channels and book_depth != 1:
            out.append(f"orderbook.{book_depth}.{symbol}")
    return out


def subscribe_requests(args: list[str], first_req_id: int = 1) -> list[dict[str, Any]]:
    """Subscribe requests of at most :data:`MAX_ARGS_PER_REQUEST` args each."""
    return [
        {
            "req_id": str(first_req_id + n),
            "op": "subscribe",
            "args": args[start : start + MAX_ARGS_PER_REQUEST],
        }
        for n, start in enumerate(range(0, len(args), MAX_ARGS_PER_REQUEST))
    ]


class BybitProvider(WsProvider):
    """Bybit V5 public spot: trades, level-1 quotes, ``book_depth`` books.

    The subscription counts as done when every request is acknowledged; a
    rejected one raises :class:`~mdd.errors.SubscribeError` with the venue's
    message, and the loop backs off and retries.

    With the ``book`` channel, ``orderbook.{book_depth}`` keeps a local L2 book
    per symbol (:mod:`mdd.books`: snapshot resets, ``u`` chaining, ``seq``);
    what is published is a throttled top-N ``BookEvent`` snapshot, and a gap
    resubscribes the topic to get a new snapshot.
    """

    kind = "bybit"
    max_send_rate = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keepalive_interval = self.config.ping_interval
        self.books: BookKeeper | None = None
        if "book" in self.channels and self.config.book_depth != 1:
            self.books = BookKeeper(
                self.name,
                "bybit",
                depth=self.config.book_levels,
                max_rate=self.config.book_rate,
            )
        self._resubscribes = 0
        self._resyncing: dict[str, float] = {}  # symbol -> trio time of the last resubscribe

    async def run(
        self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The shared loop, plus the throttled book flushes."""
        if self.books is None:
            await super().run(outlet, task_status=task_status)
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flush_forever, self.books, outlet.publish)
                await super().run(outlet, task_status=task_status)
                nursery.cancel_scope.cancel("provider run ended")
        finally:
            self.books.reset()  # a stopped provider's books are no longer live

    def plans(self) -> list[Plan]:
        """One connection carrying every topic."""
        symbols = tuple(normalize_symbol(s) for s in self.symbols)
        args = topics(symbols, self.channels, self.config.book_depth)
        return [Plan(self.config.url, symbols, tuple(args))]

    def parse_frame(self, raw: str | bytes, ts_recv: int, session: Session) -> Parsed:
        """The module's :func:`parse`; book messages go through the books."""
        items = parse(raw, ts_recv, self.name)
        if self.books is not None:
            now = trio.current_time()
            items, actions = feed_books(self.books, items, now)
            for symbol, _ in actions:
                # A gap: on_control resubscribes the topic (it may await the send).
                items.append(Control("book_resync", self.name, symbol=symbol))
            if self._resyncing:
                self._check_resyncs(items, now)
        return items

    def _check_resyncs(self, items: Parsed, now: float) -> None:
        """Forget resynced books; resubscribe again when a snapshot is overdue."""
        assert self.books is not None
        for symbol, since in list(self._resyncing.items()):
            if self.books.book(symbol).synced:
                del self._resyncing[symbol]
            elif now - since >= BOOK_RESYNC_TIMEOUT:
                self._resyncing[symbol] = now
                items.append(Control("book_resync", self.name, symbol=symbol))

    def keepalive_message(self) -> Any:
        """Bybit's client heartbeat."""
        return {"op": "ping"}

    async def on_open(self, session: Session) -> None:
        """Send the subscribe requests, 10 args each; acks are counted in :meth:`on_control`."""
        if self.books is not None:
            for symbol in session.plan.symbols:
                self.books.reset(symbol)  # a new connection starts from a new snapshot
                self._resyncing.pop(symbol, None)
        requests = subscribe_requests(list(session.plan.topics))
        pending = {r["req_id"] for r in requests}
        session.state["pending"] = pending
        for request in requests:
            await session.send(request)

    async def on_control(self, session: Session, ctl: Control) -> None:
        """Count subscribe acks; a rejected subscribe ends the session."""
        pending: set[str] = session.state.get("pending", set())
        if ctl.kind == "book_resync" and ctl.symbol is not None:
            await self.resubscribe_book(session, ctl.symbol)
        elif ctl.kind == "subscribed":
            if ctl.request_id in pending:
                pending.discard(ctl.request_id)
            elif pending:
                pending.pop()  # ack without our req_id echoed
            if not pending:
                self.mark_subscribed(session)
        elif ctl.kind == "error":
            if ctl.op == "subscribe":
                LOGGER.error(
                    "bybit.subscribe_failed provider=%s req_id=%s ret_msg=%r",
                    self.name,
                    ctl.request_id,
                    ctl.message,
                )
                raise SubscribeError(self.name, ctl.message)
            self.venue_error(session.plan, ctl)

    async def resubscribe_book(self, session: Session, symbol: str) -> None:
        """Unsubscribe and subscribe ``orderbook.{book_depth}.{symbol}``: the venue then
        sends a fresh snapshot, which resets the book (the WebSocket stays open).
        """
        topic = f"orderbook.{self.config.book_depth}.{symbol}"
        self._resubscribes += 1
        n = self._resubscribes
        self._resyncing[symbol] = trio.current_time()
        LOGGER.info("bybit.book_resubscribe provider=%s topic=%s", self.name, topic)
        await session.send({"req_id": f"resync-u{n}", "op": "unsubscribe", "args": [topic]})
        await session.send({"req_id": f"resync-s{n}", "op": "subscribe", "args": [topic]})
