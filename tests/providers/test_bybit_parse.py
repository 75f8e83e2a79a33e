"""Bybit V5 parser: every message type, from frames in tests/data/bybit/frames.jsonl."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prov_rig import outcome

from mdd.errors import ParseError
from mdd.events import BookEvent, QuoteEvent, TradeEvent
from mdd.providers._parse import Control
from mdd.providers.bybit import parse, subscribe_requests, topics

DATA = Path(__file__).resolve().parents[1] / "data"

FRAMES = {
    (row := orjson.loads(line))["id"]: row["raw"]
    for line in (DATA / "bybit" / "frames.jsonl").read_bytes().splitlines()
}
RECV = 1_800_000_000_000_000_000


def items(case: str) -> list[object]:
    return list(parse(FRAMES[case], RECV, "by"))


def test_multi_trade_frame_gives_one_event_per_fill_with_taker_side() -> None:
    trades = items("trade_multi")
    assert [type(t) for t in trades] == [TradeEvent] * 3
    assert [t.side for t in trades] == ["buy", "sell", "buy"]  # type: ignore[attr-defined]
    assert [t.trade_id for t in trades] == [  # type: ignore[attr-defined]
        "2290000000587387108",
        "2290000000587387109",
        "2290000000587387110",
    ]
    assert trades[0] == TradeEvent(
        "by",
        "BTCUSDT",
        1735689653898_000_000,
        RECV,
        93611.04,
        0.000725,
        "buy",
        "2290000000587387108",
    )


def test_sell_trade_with_integer_looking_price() -> None:
    (t,) = items("trade_sell")
    assert isinstance(t, TradeEvent)
    assert (t.symbol, t.side, t.price) == ("ETHUSDT", "sell", 2243.0)


def test_trade_numbers_as_json_numbers_and_numeric_id() -> None:
    (t,) = items("trade_json_numbers")
    assert isinstance(t, TradeEvent)
    assert (t.price, t.qty, t.trade_id) == (43774.5, 1.0, "2290000000090712223")


def test_trade_without_fill_time_uses_frame_time() -> None:
    (t,) = items("trade_no_T")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange == 1703430744103_000_000


def test_trade_without_any_time() -> None:
    (t,) = items("trade_no_times")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange is None


def test_empty_trade_array_gives_nothing() -> None:
    assert items("trade_empty") == []


def test_level1_is_a_quote_with_matching_engine_time() -> None:
    (q,) = items("l1_snapshot")
    assert q == QuoteEvent(
        "by", "BTCUSDT", 1748980103098_000_000, RECV, 106285.8, 0.794865, 106285.9, 1.269905
    )


def test_level1_without_cts_uses_ts() -> None:
    (q,) = items("l1_no_cts")
    assert isinstance(q, QuoteEvent)
    assert q.ts_exchange == 1748980103101_000_000


def test_level1_with_an_empty_side_gives_no_quote() -> None:
    assert items("l1_empty_side") == []


def test_book_snapshot_and_delta() -> None:
    (snap,) = items("l50_snapshot")
    assert snap == BookEvent(
        "by",
        "BTCUSDT",
        1672304484976_000_000,
        RECV,
        ((16493.5, 0.006), (16493.0, 0.1)),
        ((16611.0, 0.029),),
        True,
        None,
        18521288,
        7961638724,
    )
    (delta,) = items("l50_delta")
    assert isinstance(delta, BookEvent)
    assert (delta.is_snapshot, delta.bids, delta.asks, delta.cross_seq) == (
        False,
        ((30240.0, 0.0),),
        (),
        66544703342,
    )


def test_ticker_is_a_control() -> None:
    (c,) = items("ticker")
    assert isinstance(c, Control)
    assert (c.kind, c.symbol, c.ts_exchange) == ("ticker", "BTCUSDT", 1673853746003_000_000)


@pytest.mark.parametrize(("case", "req_id"), [("ack", "1"), ("ack_no_req_id", None)])
def test_subscribe_acks(case: str, req_id: str | None) -> None:
    (c,) = items(case)
    assert isinstance(c, Control)
    assert (c.kind, c.op, c.request_id) == ("subscribed", "subscribe", req_id)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("subscribe_failed", "Invalid symbol :[publicTrade.BTCUSDX]"),
        ("args_too_many", "args size >10"),
    ],
)
def test_subscribe_failures_carry_the_venue_text(case: str, message: str) -> None:
    (c,) = items(case)
    assert isinstance(c, Control)
    assert (c.kind, c.op, c.code, c.message) == ("error", "subscribe", None, message)


@pytest.mark.parametrize("case", ["pong_spot", "pong_private"])
def test_both_pong_shapes(case: str) -> None:
    (c,) = items(case)
    assert isinstance(c, Control)
    assert c.kind == "pong"


def test_unsubscribe_ack_is_a_command_ack() -> None:
    (c,) = items("unsubscribe_ack")
    assert isinstance(c, Control)
    assert (c.kind, c.request_id) == ("command_ack", "9")


@pytest.mark.parametrize("case", ["unknown_topic", "unknown_shape"])
def test_unknown_messages_are_flagged(case: str) -> None:
    (c,) = items(case)
    assert isinstance(c, Control)
    assert c.kind == "unknown"


@pytest.mark.parametrize(
    "case",
    [
        "garbage_text",
        "garbage_truncated",
        "missing_data",
        "trade_bad_side",
        "trade_one_bad_of_two",
        "l50_bad_type",
        "l50_missing_u",
    ],
)
def test_malformed_frames_raise_parse_error(case: str) -> None:
    with pytest.raises(ParseError):
        parse(FRAMES[case], RECV)


def test_topics_and_at_most_ten_args_per_request() -> None:
    args = topics(tuple(f"S{i}USDT" for i in range(4)), ("trade", "quote", "book"), 50)
    assert len(args) == 12
    assert args[:3] == ["publicTrade.S0USDT", "orderbook.1.S0USDT", "orderbook.50.S0USDT"]
    requests = subscribe_requests(args)
    assert [len(r["args"]) for r in requests] == [10, 2]
    assert [r["req_id"] for r in requests] == ["1", "2"]
    assert all(r["op"] == "subscribe" for r in requests)


# The typed fast path for publicTrade frames must agree with the general parser
# on everything, refusals included. The general path is reached by putting a key
# before "topic" (the fast path only takes frames that start with their topic).
_decimal = st.one_of(
    st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False).map(lambda d: f"{d:f}"),
    st.sampled_from(["0", "-1", "nan", "inf", "", "x"]),
)
_fill = st.fixed_dictionaries(
    {
        "s": st.sampled_from(["BTCUSDT", "", 5]),
        "S": st.sampled_from(["Buy", "Sell", "buy", None]),
        "v": _decimal,
        "p": _decimal,
        "i": st.sampled_from(["20f43950-d8dd", 123, 1.5, None, True]),
        "BT": st.booleans(),
    },
    optional={"T": st.sampled_from([1672304486865, None, "1672304486865", False])},
)


@given(
    fills=st.lists(_fill, max_size=4),
    frame_ts=st.sampled_from([1672304486868, None]),
)
def test_fast_trades_agree_with_the_general_parser(
    fills: list[dict[str, object]], frame_ts: int | None
) -> None:
    body = {"type": "snapshot", "data": fills}
    if frame_ts is not None:
        body["ts"] = frame_ts
    fast = orjson.dumps({"topic": "publicTrade.BTCUSDT", **body})
    general = orjson.dumps({"type": "snapshot", "topic": "publicTrade.BTCUSDT", **body})
    assert fast.startswith(b'{"topic":"publicTrade.')
    expected = outcome(lambda: parse(general, RECV, "by"))
    assert outcome(lambda: parse(fast, RECV, "by")) == expected
    assert outcome(lambda: parse(fast.decode(), RECV, "by")) == expected


@pytest.mark.parametrize("case", ["trade_multi", "trade_sell"])
def test_valid_trade_frames_take_the_fast_path(case: str) -> None:
    from mdd.providers.bybit import _fast_trades

    raw = FRAMES[case]
    fast = _fast_trades(raw, RECV, "by")
    assert fast  # decoded by the typed path, not handed on
    assert all(isinstance(e, TradeEvent) for e in fast)
    general = parse(raw.replace('{"topic"', '{"x":1,"topic"', 1), RECV, "by")
    assert fast == general
