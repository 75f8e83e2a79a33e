"""Event model: JSON round trip, decimal fidelity, decode errors."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdd.errors import EventDecodeError
from mdd.events import (
    BookEvent,
    HeartbeatEvent,
    QuoteEvent,
    StatusEvent,
    TradeEvent,
    dumps,
    event_from_dict,
    event_to_dict,
    loads,
)

TRADE = TradeEvent(
    "binance",
    "BTCUSDT",
    1_700_000_000_123_000_000,
    1_700_000_000_124_500_000,
    83034.29,
    0.00062,
    "sell",
    "6720857582",
)
QUOTE = QuoteEvent("bybit", "ETHUSDT", None, 1, 1632.46, 0.34305, 1632.47, 2.5)
BOOK = BookEvent(
    "binance",
    "BNBBTC",
    5,
    6,
    ((0.0024, 10.0),),
    ((0.0026, 100.0), (0.0027, 0.0)),
    False,
    157,
    160,
    None,
)
HEARTBEAT = HeartbeatEvent("mdd", "__system__", None, 9, 0.0)
STATUS = StatusEvent("bybit", "crypto", None, 10, "failover", "binance -> bybit: stale")
ALL = [TRADE, QUOTE, BOOK, HEARTBEAT, STATUS]


@pytest.mark.parametrize("event", ALL, ids=lambda e: e.type)
def test_round_trip(event: object) -> None:
    data = event_to_dict(event)  # type: ignore[arg-type]
    assert data["type"] == event.type  # type: ignore[attr-defined]
    assert event_from_dict(data) == event
    assert loads(dumps(event)) == event  # type: ignore[arg-type]


def test_dict_shape_of_a_trade() -> None:
    assert event_to_dict(TRADE) == {
        "type": "trade", "provider": "binance", "symbol": "BTCUSDT",
        "ts_exchange": 1_700_000_000_123_000_000, "ts_recv": 1_700_000_000_124_500_000,
        "price": 83034.29, "qty": 0.00062, "side": "sell", "trade_id": "6720857582",
    }  # fmt: skip
    assert event_to_dict(BOOK)["asks"] == [[0.0026, 100.0], [0.0027, 0.0]]


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        TRADE.price = 1.0  # type: ignore[misc]


# Decimal strings with at most 15 significant digits, as venues send them.
decimals = st.builds(
    lambda digits, exp: Decimal(digits).scaleb(exp),
    st.integers(min_value=1, max_value=10**15 - 1).map(str),
    st.integers(min_value=-12, max_value=6),
)


@given(price=decimals, qty=decimals)
def test_decimals_round_trip_exactly(price: Decimal, qty: Decimal) -> None:
    wire_price, wire_qty = f"{price:f}", f"{qty:f}"
    event = TradeEvent("x", "S", None, 0, float(wire_price), float(wire_qty), "buy", "1")
    back = loads(dumps(event))
    assert isinstance(back, TradeEvent)
    assert Decimal(repr(back.price)) == Decimal(wire_price)
    assert Decimal(repr(back.qty)) == Decimal(wire_qty)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"type":"candle"}', "unknown event type"),
        (b'{"provider":"x"}', "unknown event type"),
        (b'{"type":"trade","provider":"x"}', "bad trade event"),
        (
            b'{"type":"trade","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1,'
            b'"price":"1.0","qty":1,"side":"buy","trade_id":"1"}',
            r"bad trade event: Expected `float`, got `str` - at `\$.price`",
        ),
        (
            b'{"type":"trade","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1,'
            b'"price":1.0,"qty":1,"side":"up","trade_id":"1"}',
            r"bad trade event: Invalid enum value 'up' - at `\$.side`",
        ),
        (
            b'{"type":"trade","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1.5,'
            b'"price":1.0,"qty":1,"side":"buy","trade_id":"1"}',
            r"bad trade event: Expected `int`, got `float` - at `\$.ts_recv`",
        ),
        (
            b'{"type":"trade","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1,'
            b'"price":1.0,"qty":1,"side":"buy","trade_id":1}',
            r"bad trade event: Expected `str`, got `int` - at `\$.trade_id`",
        ),
        (
            b'{"type":"book","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1,'
            b'"bids":[[1]],"asks":[],"is_snapshot":true}',
            "bad book event",
        ),
        (
            b'{"type":"quote","provider":"x","symbol":"S","ts_exchange":null,"ts_recv":1,'
            b'"bid_px":1,"bid_qty":1,"ask_px":1,"ask_qty":1,"extra":2}',
            "bad quote event",
        ),
    ],
)
def test_decode_errors(payload: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        loads(payload)


def test_null_side_allowed_for_venues_without_aggressor() -> None:
    data = orjson.loads(dumps(TRADE))
    data["side"] = None
    assert event_from_dict(data).side is None  # type: ignore[union-attr]
