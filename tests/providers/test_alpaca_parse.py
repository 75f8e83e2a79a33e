"""Alpaca parser: every message type, from frames in tests/data/alpaca/frames.jsonl."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdd.errors import ParseError
from mdd.events import BookEvent, QuoteEvent, TradeEvent
from mdd.providers._parse import Control, rfc3339_ns
from mdd.providers.alpaca import is_crypto_url, parse, venue_symbol

DATA = Path(__file__).resolve().parents[1] / "data"

FRAMES = {
    (row := orjson.loads(line))["id"]: row["raw"]
    for line in (DATA / "alpaca" / "frames.jsonl").read_bytes().splitlines()
}
RECV = 1_800_000_000_000_000_000


def items(case: str) -> list[object]:
    return list(parse(FRAMES[case], RECV, "al"))


@pytest.mark.parametrize("what", ["connected", "authenticated"])
def test_handshake_controls(what: str) -> None:
    assert items(what) == [Control(what, "al")]


def test_subscription_ack_lists_the_whole_set() -> None:
    (c,) = items("subscription")
    assert isinstance(c, Control)
    assert c.kind == "subscription"
    assert c.data["trades"] == ["AAPL"]
    assert c.data["corrections"] == ["AAPL"]


@pytest.mark.parametrize(
    ("case", "code", "msg"),
    [("error_402", 402, "auth failed"), ("error_406", 406, "connection limit exceeded")],
)
def test_errors(case: str, code: int, msg: str) -> None:
    assert items(case) == [Control("error", "al", code=code, message=msg)]


def test_stock_trade_has_no_side_and_exact_time() -> None:
    (t,) = items("stock_trade")
    assert t == TradeEvent("al", "AAPL", 1614009104208_000_000, RECV, 126.55, 1.0, None, "D:96921")


def test_timestamp_without_fraction() -> None:
    (t,) = items("stock_trade_no_fraction")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange == 1614009104_000_000_000
    assert t.price == 126.0


def test_timestamp_with_offset_and_nine_digits() -> None:
    (t,) = items("stock_trade_offset")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange == 1614009104_123456789


def test_stock_quote_nanoseconds() -> None:
    (q,) = items("stock_quote")
    assert q == QuoteEvent("al", "AMD", 1614009105_335689322, RECV, 87.66, 1.0, 87.68, 4.0)


def test_crypto_trades_have_taker_side_and_big_ids() -> None:
    (sell,) = items("crypto_trade_sell")
    (buy,) = items("crypto_trade_buy")
    assert isinstance(sell, TradeEvent)
    assert isinstance(buy, TradeEvent)
    assert (sell.symbol, sell.side, sell.trade_id) == ("AVAXUSD", "sell", "3447222699101865076")
    assert (buy.symbol, buy.side, buy.price, buy.trade_id) == (
        "BTCUSD",
        "buy",
        41853.0,
        "8102483281662395354",
    )
    assert buy.ts_exchange == 1705275383_177990080


def test_crypto_quote() -> None:
    (q,) = items("crypto_quote")
    assert q == QuoteEvent(
        "al", "BATUSD", 1710239383_111588173, RECV, 0.35718, 13445.46, 0.3581, 13561.902
    )


def test_numbers_as_strings_are_accepted() -> None:
    (q,) = items("numbers_as_strings")
    assert isinstance(q, QuoteEvent)
    assert (q.bid_px, q.ask_qty, q.ts_exchange) == (64812.5, 0.41, 1710239383_100000000)


def test_mixed_array_keeps_wire_order() -> None:
    got = items("mixed")
    assert [type(g).__name__ for g in got] == ["TradeEvent", "QuoteEvent", "Control"]
    assert got[2].kind == "bar"  # type: ignore[attr-defined]
    # Not time sorted: the quote is older than the trade before it.
    assert got[1].ts_exchange < got[0].ts_exchange  # type: ignore[attr-defined]


def test_empty_array_gives_nothing() -> None:
    assert items("empty_array") == []


def test_orderbook_reset_and_update() -> None:
    (full,) = items("orderbook_reset")
    assert full == BookEvent(
        "al",
        "BTCUSD",
        1710239930_796132210,
        RECV,
        ((71859.53, 0.27994),),
        ((71939.7, 0.83953),),
        True,
    )
    (upd,) = items("orderbook_update")
    assert isinstance(upd, BookEvent)
    assert (upd.is_snapshot, upd.bids, upd.asks) == (False, ((0.7904, 0.0),), ())


def test_bars_are_controls_with_bar_start_time() -> None:
    kinds = [(c.kind, c.symbol, c.ts_exchange) for c in items("bars")]  # type: ignore[attr-defined]
    assert kinds == [
        ("bar", "AAPL", 1614009060_000_000_000),
        ("daily_bar", "AAPL", 1613970000_000_000_000),
        ("updated_bar", "AAPL", 1614009060_000_000_000),
    ]


def test_cancel_correction_status_luld_are_controls() -> None:
    kinds = [c.kind for c in items("cancel_correction_status")]  # type: ignore[attr-defined]
    assert kinds == ["trade_cancel", "trade_correction", "trading_status", "luld"]


def test_unknown_type_is_flagged() -> None:
    (c,) = items("unknown_type")
    assert isinstance(c, Control)
    assert c.kind == "unknown"


@pytest.mark.parametrize(
    "case",
    [
        "not_array",
        "garbage_text",
        "garbage_truncated",
        "bad_timestamp",
        "too_many_fraction_digits",
        "bad_taker",
        "missing_time",
        "item_not_object",
    ],
)
def test_malformed_frames_raise_parse_error(case: str) -> None:
    with pytest.raises(ParseError):
        parse(FRAMES[case], RECV)


def test_crypto_is_decided_from_the_url_path() -> None:
    assert is_crypto_url("wss://stream.data.alpaca.markets/v1beta3/crypto/us")
    assert not is_crypto_url("wss://stream.data.alpaca.markets/v2/iex")
    assert not is_crypto_url("ws://127.0.0.1:9/v2/test")
    assert venue_symbol("BTCUSD", crypto=True) == "BTC/USD"
    assert venue_symbol("ETHUSDT", crypto=True) == "ETH/USDT"
    assert venue_symbol("AAPL", crypto=False) == "AAPL"


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 12, 31), timezones=st.none()
    ),
    st.integers(0, 999),
)
def test_rfc3339_matches_datetime_and_keeps_nanoseconds(moment: dt.datetime, extra_ns: int) -> None:
    base = moment.replace(tzinfo=dt.UTC)
    whole = int(base.replace(microsecond=0).timestamp()) * 1_000_000_000
    ns = base.microsecond * 1000 + extra_ns
    text = base.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"
    assert rfc3339_ns(text) == whole + ns
    assert rfc3339_ns(base.strftime("%Y-%m-%dT%H:%M:%SZ")) == whole


@pytest.mark.parametrize(
    "text",
    [
        "2021-02-22 15:51:44",
        "2021-13-22T15:51:44Z",
        "2021-02-22T15:51:44.Z",
        "2021-02-22T15:51:44+0200",
        5,
    ],
)
def test_rfc3339_rejects_malformed(text: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        rfc3339_ns(text)
