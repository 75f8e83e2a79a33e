"""Binance spot market data: combined streams, a pure ``parse()``, and the provider.

Wire rules (PROTOCOLS.md, Binance spot ``web-socket-streams.md``):

* Combined streams ``/stream?streams=btcusdt@trade/btcusdt@bookTicker/...``
  (lower-case names); every frame is ``{"stream": ..., "data": ...}``.
* ``m: true`` means the buyer is the maker, so the aggressor **sold**.
* Spot ``bookTicker`` has no event time: ``ts_exchange`` is None.
* Partial depth (``@depth5`` ...) carries no symbol: it comes from the stream name.
* Errors are flat in the docs (``{"code":..,"msg":..}``) and nested on the wire
  (``{"error":{..},"id":..}``): both are parsed.
* ``serverShutdown`` means reconnect now; a connection lives at most 24 h, so
  we reconnect proactively before that; at most 1024 streams per connection
  and 5 incoming messages per second (the server pings are answered by the
  transport).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final, Literal, Union

import msgspec
import orjson
import trio

from ..books import BookKeeper, DepthSnapshotFetcher, feed_books, flush_forever
from ..config import normalize_symbol
from ..errors import ParseError
from ..events import BookEvent, QuoteEvent, Side, TradeEvent
from ._parse import PARSE_FAILURES, Control, bad_frame, levels
from ._ws import Plan, Reconnect, WsProvider

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ..events import Event
    from ._parse import Parsed
    from ._ws import Session
    from .base import Outlet

LOGGER = logging.getLogger("mdd.providers.binance")

#: Reconnect before Binance's 24 h cut.
MAX_LIFETIME: Final = 23 * 3600 + 50 * 60
#: ms -> ns; with ``?timeUnit=MICROSECOND`` pass ``MICROSECONDS`` to :func:`parse`.
MILLISECONDS: Final = 1_000_000
MICROSECONDS: Final = 1_000
_INF: Final = math.inf


class _WireTrade(msgspec.Struct, gc=False):
    """A ``trade``/``aggTrade`` payload as it comes (prices and sizes are decimal strings)."""

    e: Literal["trade", "aggTrade"]
    s: str
    p: str
    q: str
    m: bool
    t: int | None = None
    a: int | None = None
    T: int | None = None
    E: int | None = None


class _CombinedTrade(msgspec.Struct, gc=False):
    stream: str
    data: _WireTrade


class _WireTicker(msgspec.Struct, gc=False):
    """A ``bookTicker`` payload (spot has no time; futures-style ``T`` is tolerated)."""

    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    T: int | None = None


class _CombinedTicker(msgspec.Struct, gc=False):
    stream: str
    data: _WireTicker


# Typed decoders for the hot frames (strict: no type coercion). Anything they
# reject goes through the general parser, which names the problem.
_TRADE_DECODER: Final = msgspec.json.Decoder(_CombinedTrade)
_TICKER_DECODER: Final = msgspec.json.Decoder(_CombinedTicker)
_DECODE_FAILURES: Final = (msgspec.ValidationError, msgspec.DecodeError, ValueError)
_QUOTE: Final[dict[type, str | bytes]] = {str: '"', bytes: b'"'}


def _fast(raw: str | bytes, ts_recv: int, provider: str, unit: int) -> Parsed | None:
    """Trades and tickers of the combined stream, typed-decoded; None: not one of those.

    Trusts nothing: a frame the typed decoders or the checks here do not take
    in full returns None, and the general parser has the last word on it. The
    stream name (``{"stream":"btcusdt@trade",...``) picks the decoder: its last
    three characters are ``ade`` for trades and ``ker`` for tickers. (A
    :class:`StreamDecoder` for known streams skips this look.)
    """
    end = raw.find(_QUOTE[type(raw)], 11)  # type: ignore[arg-type]
    tail = raw[end - 3 : end]
    if tail == "ade" or tail == b"ade":
        decoder = _TRADE_DECODER
    elif tail == "ker" or tail == b"ker":
        decoder = _TICKER_DECODER  # type: ignore[assignment]
    else:
        return None
    try:
        return _from_wire(decoder.decode(raw).data, ts_recv, provider, unit)
    except _DECODE_FAILURES:
        return None


def _from_wire(
    d: _WireTrade | _WireTicker, ts_recv: int, provider: str, unit: int
) -> Parsed | None:
    """The event of a typed-decoded payload; None if a check fails (the general parser decides).

    Raises:
        ValueError: a price or size is not a number.
    """
    if type(d) is _WireTrade:
        price = float(d.p)
        qty = float(d.q)
        trade_id = d.t if d.e == "trade" else d.a
        if not (0.0 < price < _INF and 0.0 <= qty < _INF) or trade_id is None or not d.s:
            return None
        t = d.T if d.T is not None else d.E
        side: Side = "sell" if d.m else "buy"  # buyer is maker: the aggressor sold
        ts = None if t is None else t * unit
        return [TradeEvent(provider, d.s, ts, ts_recv, price, qty, side, str(trade_id))]
    q: _WireTicker = d  # type: ignore[assignment]
    bid, bid_qty, ask, ask_qty = float(q.b), float(q.B), float(q.a), float(q.A)
    if not (0.0 <= bid < _INF and 0.0 <= ask < _INF and 0.0 <= bid_qty < _INF):
        return None
    if not (0.0 <= ask_qty < _INF) or not q.s:
        return None
    ts = None if q.T is None else q.T * unit
    return [QuoteEvent(provider, q.s, ts, ts_recv, bid, bid_qty, ask, ask_qty)]


class StreamDecoder:
    """Decodes the trade and bookTicker frames of known combined streams in one call.

    One msgspec tagged union over the connection's stream names (tag field
    ``stream``): the decoder picks the payload type from the stream name in
    C, so the frame is not inspected in Python first. Frames of other streams
    (depth) or that fail a check go to the general parser, as with
    :func:`parse` without a decoder.
    """

    def __init__(self, streams: Iterable[str]) -> None:
        classes: list[type[msgspec.Struct]] = []
        every: list[type[msgspec.Struct]] = []  # and the other streams, their payload raw
        for i, name in enumerate(dict.fromkeys(streams)):
            kind = name.rsplit("@", 1)[-1]
            if kind in ("trade", "aggTrade"):
                payload: Any = _WireTrade
            elif kind == "bookTicker":
                payload = _WireTicker
            else:
                payload = msgspec.Raw
            frame = msgspec.defstruct(
                f"_Frame{i}", [("data", payload)], tag_field="stream", tag=name, gc=False
            )
            every.append(frame)
            if payload is not msgspec.Raw:
                classes.append(frame)
        self.streams = tuple(name for name in dict.fromkeys(streams))
        self._decoder = msgspec.json.Decoder(Union[tuple(classes)]) if classes else None  # noqa: UP007
        self._many = msgspec.json.Decoder(list[Union[tuple(every)]]) if classes else None  # type: ignore[misc]  # noqa: UP007

    def parse(self, raw: str | bytes, ts_recv: int, provider: str, unit: int) -> Parsed | None:
        """The frame's events, or None: not a frame of these streams (or a check failed)."""
        if self._decoder is None:
            return None
        try:
            return _from_wire(self._decoder.decode(raw).data, ts_recv, provider, unit)
        except _DECODE_FAILURES:
            return None

    def parse_many(
        self, frames: Sequence[str | bytes], ts_recv: int, provider: str, unit: int
    ) -> list[Event] | None:
        """The events of a socket read's frames in wire order, with one decode call for all.

        The frames are joined into one JSON array and decoded at once (trades
        and tickers typed, other streams' payloads left raw and given to the
        general parser frame by frame). All or nothing: None when the batch
        is not a clean run of these streams' frames -- a frame that is not
        JSON or not one object of a known stream (an ack, garbage), a check
        that fails, a frame the general parser refuses or answers with a
        control. The caller then parses the frames one by one, which counts
        and reports the bad one. Pure: no state changes, so that retry is safe.
        """
        many = self._many
        if many is None or not frames:
            return None
        try:
            if type(frames[0]) is str:  # a bytes frame among str ones: TypeError
                wires = many.decode("[" + ",".join(frames) + "]")  # type: ignore[arg-type]
            else:
                wires = many.decode(b"[" + b",".join(frames) + b"]")  # type: ignore[arg-type]
        except (*_DECODE_FAILURES, TypeError):
            return None
        if len(wires) != len(frames):
            return None  # a frame held more than one value ("{..},{..}"): not a frame
        out: list[Event] = []
        append = out.append
        trade = TradeEvent
        for i, wire in enumerate(wires):
            d = wire.data
            if type(d) is _WireTrade:
                # _from_wire's trade branch, inlined (no call and no list per
                # trade); the batch/frame agreement test holds the two together.
                try:
                    price = float(d.p)
                    qty = float(d.q)
                except ValueError:
                    return None
                trade_id = d.t if d.e == "trade" else d.a
                if not (0.0 < price < _INF and 0.0 <= qty < _INF) or trade_id is None or not d.s:
                    return None
                t = d.T if d.T is not None else d.E
                append(
                    trade(
                        provider,
                        d.s,
                        None if t is None else t * unit,
                        ts_recv,
                        price,
                        qty,
                        "sell" if d.m else "buy",
                        str(trade_id),
                    )
                )
                continue
            try:
                items = (
                    _from_wire(d, ts_recv, provider, unit)
                    if type(d) is _WireTicker
                    else parse(frames[i], ts_recv, provider, time_unit_ns=unit)
                )
            except (ParseError, ValueError):
                return None
            if items is None or Control in map(type, items):
                return None
            out += items  # type: ignore[arg-type]
        return out


def _time(msg: dict[str, Any], key: str, unit_ns: int) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError(f"{key} must be an integer time, got {value!r}")
    return value * unit_ns


def _trade(msg: dict[str, Any], ts_recv: int, provider: str, id_key: str, unit: int) -> TradeEvent:
    symbol = msg["s"]
    if type(symbol) is not str or not symbol:
        raise TypeError(f"bad symbol {symbol!r}")
    maker = msg["m"]
    side: Side
    if maker is True:
        side = "sell"  # the buyer made the market: the aggressor sold
    elif maker is False:
        side = "buy"
    else:
        raise TypeError(f"m must be a boolean, got {maker!r}")
    t = msg.get("T")
    if type(t) is int:
        ts: int | None = t * unit
    elif t is None:
        ts = _time(msg, "E", unit)  # no trade time: the event time is the best we have
    else:
        raise TypeError(f"T must be an integer time, got {t!r}")
    price = float(msg["p"])
    qty = float(msg["q"])
    if not (0.0 < price < _INF and 0.0 <= qty < _INF):
        raise ValueError(f"bad price/qty {msg['p']!r}/{msg['q']!r}")
    trade_id = msg[id_key]
    if type(trade_id) is int:
        trade_id = str(trade_id)
    elif type(trade_id) is not str:
        raise TypeError(f"bad trade id {trade_id!r}")
    return TradeEvent(provider, symbol, ts, ts_recv, price, qty, side, trade_id)


def _symbol_of(stream: str | None) -> str:
    if not stream or "@" not in stream:
        raise ValueError("partial depth frame without a stream name: symbol unknown")
    return stream.split("@", 1)[0].upper()


def _dispatch(msg: Any, ts_recv: int, provider: str, stream: str | None, unit: int) -> Parsed:
    if type(msg) is dict:  # fast path for the hot message types
        kind = msg.get("e")
        if kind == "trade":
            return [_trade(msg, ts_recv, provider, "t", unit)]
        if kind == "aggTrade":
            return [_trade(msg, ts_recv, provider, "a", unit)]
    match msg:
        case {"e": "trade"}:
            return [_trade(msg, ts_recv, provider, "t", unit)]
        case {"e": "aggTrade"}:
            return [_trade(msg, ts_recv, provider, "a", unit)]
        case {"e": "depthUpdate"}:
            symbol = msg["s"]
            if type(symbol) is not str or not symbol:
                raise TypeError(f"bad symbol {symbol!r}")
            return [
                BookEvent(
                    provider,
                    symbol,
                    _time(msg, "E", unit),
                    ts_recv,
                    levels(msg["b"]),
                    levels(msg["a"]),
                    False,
                    int(msg["U"]),
                    int(msg["u"]),
                    None,
                )
            ]
        case {"e": "serverShutdown"}:
            return [Control("server_shutdown", provider, ts_exchange=_time(msg, "E", unit))]
        case {"e": str(kind)}:
            return [Control("unknown", provider, message=f"event type {kind!r}")]
        case {"u": int(), "s": str(symbol), "b": bid, "B": bid_qty, "a": ask, "A": ask_qty}:
            bid_px, bq, ask_px, aq = float(bid), float(bid_qty), float(ask), float(ask_qty)
            if not (0.0 <= bid_px < _INF and 0.0 <= ask_px < _INF and 0.0 <= bq < _INF):
                raise ValueError("bad bookTicker numbers")
            if not 0.0 <= aq < _INF:
                raise ValueError("bad bookTicker numbers")
            # Spot bookTicker has no time; tolerate the futures-style T if present.
            return [
                QuoteEvent(provider, symbol, _time(msg, "T", unit), ts_recv, bid_px, bq, ask_px, aq)
            ]
        case {"lastUpdateId": last, "bids": bids, "asks": asks}:
            return [
                BookEvent(
                    provider,
                    _symbol_of(stream),
                    None,
                    ts_recv,
                    levels(bids),
                    levels(asks),
                    True,
                    None,
                    int(last),
                    None,
                )
            ]
        case {"result": result, "id": request_id}:
            return [Control("command_ack", provider, request_id=request_id, data=result)]
        case {"error": {"code": code, "msg": text}}:
            return [
                Control(
                    "error", provider, code=_code(code), message=str(text), request_id=msg.get("id")
                )
            ]
        case {"code": code, "msg": text}:
            return [Control("error", provider, code=_code(code), message=str(text))]
        case dict():
            return [Control("unknown", provider, message=f"keys {sorted(msg)[:8]}")]
        case _:
            raise TypeError(f"expected a JSON object, got {type(msg).__name__}")


def _code(code: Any) -> int | None:
    return code if type(code) is int else None


def parse(
    raw: str | bytes,
    ts_recv: int,
    provider: str = "binance",
    *,
    stream: str | None = None,
    time_unit_ns: int = MILLISECONDS,
    decoder: StreamDecoder | None = None,
) -> Parsed:
    """Turn one Binance frame into events and controls. Pure, no I/O.

    Args:
        raw: the frame text (raw ``/ws`` or combined ``/stream`` form).
        ts_recv: receive time, ns.
        provider: the provider name put on events.
        stream: the stream name when the connection is a raw ``/ws/<stream>``
            one (partial depth frames carry no symbol); combined frames name it.
        time_unit_ns: ns per unit of the venue's times (ms, or µs with
            ``timeUnit=MICROSECOND``).
        decoder: the connection's :class:`StreamDecoder` (faster for its
            streams' trades and tickers; the result is the same).

    Returns:
        Events in wire order, or one :class:`Control` (acks, errors, shutdown,
        ``unknown`` for event types mdd does not normalize, e.g. ``avgPrice``).

    Raises:
        ParseError: not JSON, or a known message with missing/bad fields.
    """
    if decoder is not None:
        fast = decoder.parse(raw, ts_recv, provider, time_unit_ns)
    else:
        fast = _fast(raw, ts_recv, provider, time_unit_ns)
    if fast is not None:
        return fast
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_frame(raw, exc) from None
    try:
        if type(msg) is dict and "stream" in msg and "data" in msg:
            stream = msg["stream"]
            msg = msg["data"]
        return _dispatch(msg, ts_recv, provider, stream, time_unit_ns)
    except PARSE_FAILURES as exc:
        raise bad_frame(raw, exc) from None


def stream_names(
    symbols: tuple[str, ...], channels: tuple[str, ...], depth_interval_ms: int = 100
) -> list[str]:
    """Lower-case combined-stream names for the symbols and channels."""
    depth = "@depth" if depth_interval_ms >= 1000 else f"@depth@{depth_interval_ms}ms"
    names: list[str] = []
    for symbol in symbols:
        low = symbol.lower()
        if "trade" in channels:
            names.append(f"{low}@trade")
        if "quote" in channels:
            names.append(f"{low}@bookTicker")
        if "book" in channels:
            names.append(low + depth)
    return names


class BinanceProvider(WsProvider):
    """Binance spot over combined streams: trades, bookTicker quotes, depth deltas.

    Streams beyond ``max_streams_per_connection`` go to further connections.
    Keyword arguments are those of :class:`~mdd.providers._ws.WsProvider`;
    ``max_lifetime`` defaults to 23 h 50 min.

    With the ``book`` channel, depth deltas keep a local L2 book per symbol
    (:mod:`mdd.books`: REST snapshot from ``rest_url`` + ``U``/``u`` chaining);
    what is published is a throttled top-N ``BookEvent`` snapshot, and a gap
    resyncs from a fresh REST snapshot without dropping the WebSocket.
    """

    kind = "binance"
    max_send_rate = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_lifetime", MAX_LIFETIME)
        super().__init__(*args, **kwargs)
        self.books: BookKeeper | None = None
        self.snapshots: DepthSnapshotFetcher | None = None
        self._decoders: dict[Plan, StreamDecoder] = {}
        if "book" in self.channels:
            self.books = BookKeeper(
                self.name,
                "binance",
                depth=self.config.book_levels,
                max_rate=self.config.book_rate,
            )
            self.snapshots = DepthSnapshotFetcher(self.books, self.config.rest_url)

    async def run(
        self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The shared loop, plus the book tasks (REST snapshots, throttled flushes)."""
        if self.books is None or self.snapshots is None:
            await super().run(outlet, task_status=task_status)
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.snapshots.run, outlet.publish)
                nursery.start_soon(flush_forever, self.books, outlet.publish)
                await super().run(outlet, task_status=task_status)
                nursery.cancel_scope.cancel("provider run ended")
        finally:
            self.books.reset()  # a stopped provider's books are no longer live

    def plans(self) -> list[Plan]:
        """One combined-stream URL per ``max_streams_per_connection`` streams."""
        symbols = tuple(normalize_symbol(s) for s in self.symbols)
        names = stream_names(symbols, self.channels, self.config.depth_interval_ms)
        size = self.config.max_streams_per_connection
        base = self.config.url.rstrip("/")
        plans = []
        for start in range(0, len(names), size):
            chunk = tuple(names[start : start + size])
            symbols = tuple(dict.fromkeys(n.split("@", 1)[0].upper() for n in chunk))
            plans.append(Plan(f"{base}/stream?streams={'/'.join(chunk)}", symbols, chunk))
        return plans

    def parse_frame(self, raw: str | bytes, ts_recv: int, session: Session) -> Parsed:
        """Combined-stream frames name their stream; ms times. Depth goes through the books."""
        items = parse(raw, ts_recv, self.name, decoder=self._decoder(session))
        if self.books is not None and self.snapshots is not None:
            items, actions = feed_books(self.books, items, trio.current_time())
            for symbol, _ in actions:
                self.snapshots.request(symbol)
        return items

    def _decoder(self, session: Session) -> StreamDecoder:
        """The connection's decoder (one per plan: its streams are the union's tags)."""
        decoder = self._decoders.get(session.plan)
        if decoder is None:
            decoder = self._decoders[session.plan] = StreamDecoder(session.plan.topics)
        return decoder

    def parse_frames(
        self, frames: list[str | bytes], ts_recv: int, session: Session
    ) -> list[Event] | None:
        """A socket read's frames decoded in one call (:meth:`StreamDecoder.parse_many`)."""
        events = self._decoder(session).parse_many(frames, ts_recv, self.name, MILLISECONDS)
        if events is None or self.books is None or self.snapshots is None:
            return events
        events, actions = feed_books(self.books, events, trio.current_time())
        for symbol, _ in actions:
            self.snapshots.request(symbol)
        return events

    async def on_open(self, session: Session) -> None:
        """Combined streams in the URL are subscribed by connecting."""
        if self.books is not None:
            for symbol in session.plan.symbols:
                self.books.reset(symbol)  # a new connection starts a new sync
        self.mark_subscribed(session)

    async def on_control(self, session: Session, ctl: Control) -> None:
        """``serverShutdown`` -> reconnect now; venue errors -> status and log."""
        if ctl.kind == "server_shutdown":
            raise Reconnect("binance: serverShutdown")
        if ctl.kind == "error":
            self.venue_error(session.plan, ctl)
