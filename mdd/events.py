"""The normalized event model every provider emits and every sink consumes.

Events are immutable msgspec Structs (slotted, not tracked by the garbage
collector) shared by all sinks without copying. They are msgspec, not attrs,
for speed on the hot path: building one costs ~0.2 µs against ~1.1 µs for a
frozen attrs class, and msgspec encodes them to JSON directly (the
``mdd bench`` figures in the README).
Timestamps are integer nanoseconds since the epoch; ``ts_exchange`` is None where
the venue gives no time. Prices and sizes are floats parsed from the wire's
decimal strings: any decimal with at most 15 significant digits survives the
float and the JSON round trip unchanged (``repr`` of a float is the shortest
string that reads back to it).

``dumps`` / ``dumps_lines`` / ``loads`` are the JSON form every sink and the
consumer use; ``event_to_dict`` / ``event_from_dict`` the same as plain dicts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import msgspec

from .errors import EventDecodeError

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Symbol used for daemon-wide events (system heartbeats).
SYSTEM_SYMBOL: Final = "__system__"

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


#: Trade aggressor side; None where the venue does not say (Alpaca stocks).
Side = Literal["buy", "sell"]


class _EventBase(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag_field="type"
):
    """Common base: immutable, slotted, untracked by the GC, JSON-tagged by ``type``."""


class TradeEvent(_EventBase, frozen=True, tag="trade"):
    """One executed trade. ``side`` is the aggressor (taker) side."""

    type: ClassVar[str] = "trade"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    price: float
    qty: float
    side: Side | None
    trade_id: str


class QuoteEvent(_EventBase, frozen=True, tag="quote"):
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


class BookEvent(_EventBase, frozen=True, tag="book"):
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


class HeartbeatEvent(_EventBase, frozen=True, tag="heartbeat"):
    """Liveness marker: synthetic for a silent provider, or the daemon's own.

    ``symbol`` is :data:`SYSTEM_SYMBOL` for the system heartbeat.
    """

    type: ClassVar[str] = "heartbeat"
    provider: str
    symbol: str
    ts_exchange: int | None
    ts_recv: int
    silent_for: float = 0.0


class StatusEvent(_EventBase, frozen=True, tag="status"):
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

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Event)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready dict of an event: ``{"type": ..., <field>: <value>, ...}``.

    Book levels become lists of ``[price, size]`` pairs.
    """
    data: dict[str, Any] = msgspec.to_builtins(event)
    if type(event) is BookEvent:
        data["bids"] = [list(level) for level in event.bids]
        data["asks"] = [list(level) for level in event.asks]
    return data


def event_from_dict(data: Any) -> Event:
    """Rebuild an event from :func:`event_to_dict` output.

    Raises:
        EventDecodeError: not a dict, unknown ``type``, missing or mistyped fields.
    """
    if not isinstance(data, dict):
        raise EventDecodeError(f"expected a JSON object, got {type(data).__name__}")
    try:
        event: Event = msgspec.convert(data, Event)
    except msgspec.ValidationError as exc:
        raise _decode_error(data.get("type"), exc) from None
    return event


def _decode_error(kind: Any, exc: msgspec.ValidationError) -> EventDecodeError:
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return EventDecodeError(f"unknown event type {kind!r}")
    return EventDecodeError(f"bad {kind} event: {exc}")


def dumps(event: Event) -> bytes:
    """One event as compact JSON bytes (no trailing newline)."""
    return _ENCODER.encode(event)


def dumps_lines(events: Iterable[Event]) -> bytes:
    """Events as newline-delimited JSON (one line each, each ending in a newline).

    One call into the encoder for a whole batch: the JSONL sink's hot path.
    """
    return _ENCODER.encode_lines(events)


def loads(raw: bytes | str) -> Event:
    """Parse JSON bytes produced by :func:`dumps`.

    Raises:
        EventDecodeError: not JSON, or not a valid event.
    """
    try:
        event: Event = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        kind = None
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            data = None
        if not isinstance(data, dict):
            raise EventDecodeError(f"expected a JSON object, got {type(data).__name__}") from None
        kind = data.get("type")
        raise _decode_error(kind, exc) from None
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    return event
