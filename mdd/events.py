"""The normalized event model every provider emits and every sink consumes.

Events are immutable, slotted attrs classes shared by all sinks without copying.
Timestamps are integer nanoseconds since the epoch; ``ts_exchange`` is None where
the venue gives no time. Prices and sizes are floats parsed from the wire's
decimal strings: any decimal with at most 15 significant digits survives the
float and the JSON round trip unchanged (``repr`` of a float is the shortest
string that reads back to it).

``event_to_dict`` / ``event_from_dict`` are the only serializer the sinks use;
``dumps`` / ``loads`` wrap them with orjson.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final

import attrs
import orjson

from .errors import EventDecodeError

#: Symbol used for daemon-wide events (system heartbeats).
SYSTEM_SYMBOL: Final = "__system__"

#: Allowed aggressor sides; None where the venue does not say (Alpaca stocks).
SIDES: Final = frozenset({"buy", "sell"})

#: StatusEvent.status values and what they mean.
STATUS_KINDS: Final = frozenset(
    {
        "connected",  # socket open, handshake done
        "subscribed",  # venue acknowledged the subscription; data should flow
        "disconnected",  # connection lost or closed; a reconnect follows
        "up",  # provider healthy (data flowing)
        "down",  # provider unhealthy (stale, failing)
        "failover",  # a feed switched its active provider
        "gap",  # a sequence gap was detected (book resync follows)
        "error",  # venue-reported error (auth failure, rejected subscription, ...)
    }
)


def now_ns() -> int:
    """Wall-clock time in integer nanoseconds, the unit of every event timestamp."""
    return time.time_ns()


@attrs.frozen(slots=True)
class TradeEvent:
    """One executed trade. ``side`` is the aggressor (taker) side."""

    type: ClassVar[str] = "trade"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    price: float
    qty: float
    side: str | None
    trade_id: str


@attrs.frozen(slots=True)
class QuoteEvent:
    """Best bid and offer."""

    type: ClassVar[str] = "quote"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    bid_px: float
    bid_qty: float
    ask_px: float
    ask_qty: float


#: One price level: (price, size). A size of 0 in a delta deletes the level.
Level = tuple[float, float]


@attrs.frozen(slots=True)
class BookEvent:
    """An L2 book message: a full snapshot or a delta of changed levels.

    ``first_update_id``/``last_update_id`` carry the venue's sequence (Binance
    ``U``/``u``; Bybit ``u`` in both), ``cross_seq`` Bybit's ``seq``.
    """

    type: ClassVar[str] = "book"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    is_snapshot: bool
    first_update_id: int | None = None
    last_update_id: int | None = None
    cross_seq: int | None = None


@attrs.frozen(slots=True)
class HeartbeatEvent:
    """Liveness marker: synthetic for a silent provider, or the daemon's own.

    ``symbol`` is :data:`SYSTEM_SYMBOL` for the system heartbeat.
    """

    type: ClassVar[str] = "heartbeat"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    silent_for: float = 0.0


@attrs.frozen(slots=True)
class StatusEvent:
    """A change of state: provider up/down, failover switch, gap detected.

    For feed-level events (failover) ``symbol`` is the feed name.
    """

    type: ClassVar[str] = "status"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    status: str
    detail: str = ""


Event = TradeEvent | QuoteEvent | BookEvent | HeartbeatEvent | StatusEvent

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.type: cls for cls in (TradeEvent, QuoteEvent, BookEvent, HeartbeatEvent, StatusEvent)
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready dict of an event: ``{"type": ..., <field>: <value>, ...}``.

    Book levels become lists of ``[price, size]`` pairs.
    """
    match event:
        case TradeEvent():
            return {
                "type": "trade",
                "provider": event.provider,
                "symbol": event.symbol,
                "ts_exchange": event.ts_exchange,
                "ts_recv": event.ts_recv,
                "price": event.price,
                "qty": event.qty,
                "side": event.side,
                "trade_id": event.trade_id,
            }
        case QuoteEvent():
            return {
                "type": "quote",
                "provider": event.provider,
                "symbol": event.symbol,
                "ts_exchange": event.ts_exchange,
                "ts_recv": event.ts_recv,
                "bid_px": event.bid_px,
                "bid_qty": event.bid_qty,
                "ask_px": event.ask_px,
                "ask_qty": event.ask_qty,
            }
        case BookEvent():
            return {
                "type": "book",
                "provider": event.provider,
                "symbol": event.symbol,
                "ts_exchange": event.ts_exchange,
                "ts_recv": event.ts_recv,
                "bids": [list(level) for level in event.bids],
                "asks": [list(level) for level in event.asks],
                "is_snapshot": event.is_snapshot,
                "first_update_id": event.first_update_id,
                "last_update_id": event.last_update_id,
                "cross_seq": event.cross_seq,
            }
        case HeartbeatEvent():
            return {
                "type": "heartbeat",
                "provider": event.provider,
                "symbol": event.symbol,
                "ts_exchange": event.ts_exchange,
                "ts_recv": event.ts_recv,
                "silent_for": event.silent_for,
            }
        case StatusEvent():
            return {
                "type": "status",
                "provider": event.provider,
                "symbol": event.symbol,
                "ts_exchange": event.ts_exchange,
                "ts_recv": event.ts_recv,
                "status": event.status,
                "detail": event.detail,
            }


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((float(px), float(qty)) for px, qty in raw)


def event_from_dict(data: Any) -> Event:
    """Rebuild an event from :func:`event_to_dict` output.

    Raises:
        EventDecodeError: not a dict, unknown ``type``, missing or mistyped fields.
    """
    if not isinstance(data, dict):
        raise EventDecodeError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown event type {kind!r}")
    fields = {k: v for k, v in data.items() if k != "type"}
    try:
        if cls is BookEvent:
            fields["bids"] = _levels(fields.get("bids", ()))
            fields["asks"] = _levels(fields.get("asks", ()))
        event = cls(**fields)
        _check_types(event)
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"bad {kind} event: {exc}") from exc
    return event


def _check_types(event: Event) -> None:
    if not isinstance(event.provider, str) or not isinstance(event.symbol, str):
        raise TypeError("provider and symbol must be strings")
    if not isinstance(event.ts_recv, int) or not (
        event.ts_exchange is None or isinstance(event.ts_exchange, int)
    ):
        raise TypeError("timestamps must be integer nanoseconds")
    match event:
        case TradeEvent():
            _check_numbers(event.price, event.qty)
            if event.side is not None and event.side not in SIDES:
                raise ValueError(f"side must be 'buy', 'sell' or null, not {event.side!r}")
            if not isinstance(event.trade_id, str):
                raise TypeError("trade_id must be a string")
        case QuoteEvent():
            _check_numbers(event.bid_px, event.bid_qty, event.ask_px, event.ask_qty)
        case _:
            pass


def _check_numbers(*values: object) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")


def dumps(event: Event) -> bytes:
    """One event as compact JSON bytes (no trailing newline)."""
    return orjson.dumps(event_to_dict(event))


def loads(raw: bytes | str) -> Event:
    """Parse JSON bytes produced by :func:`dumps`.

    Raises:
        EventDecodeError: not JSON, or not a valid event.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from exc
    return event_from_dict(data)
