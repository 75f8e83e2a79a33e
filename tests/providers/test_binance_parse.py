"""Binance parser: every message type, from frames in tests/data/binance/frames.jsonl."""

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
from mdd.providers.binance import MICROSECONDS, StreamDecoder, parse, stream_names

DATA = Path(__file__).resolve().parents[1] / "data"

FRAMES = {
    (row := orjson.loads(line))["id"]: row["raw"]
    for line in (DATA / "binance" / "frames.jsonl").read_bytes().splitlines()
}
RECV = 1_800_000_000_000_000_000


def one(case: str, **kwargs: object) -> object:
    (item,) = parse(FRAMES[case], RECV, "bn", **kwargs)  # type: ignore[arg-type]
    return item


def test_trade_buyer_is_maker_means_aggressor_sold() -> None:
    t = one("trade_buyer_maker")
    assert t == TradeEvent(
        "bn", "BTCUSDT", 1790649901913_000_000, RECV, 83034.29, 0.00062, "sell", "6720857582"
    )


def test_trade_taker_buy() -> None:
    t = one("trade_taker_buy")
    assert isinstance(t, TradeEvent)
    assert (t.side, t.price, t.qty, t.ts_exchange) == ("buy", 83034.3, 1.5, 1790649901919_000_000)


def test_trade_numbers_as_json_numbers() -> None:
    t = one("trade_json_numbers")
    assert isinstance(t, TradeEvent)
    assert (t.symbol, t.price, t.qty, t.trade_id) == ("ETHUSDT", 2500.25, 3.0, "42")


def test_trade_without_trade_time_falls_back_to_event_time() -> None:
    t = one("trade_no_T")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange == 1790649901920_000_000


def test_trade_without_any_time_has_no_exchange_time() -> None:
    t = one("trade_no_times")
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange is None
    assert t.ts_recv == RECV


def test_trade_id_beyond_2_53_stays_exact() -> None:
    t = one("trade_big_id")
    assert isinstance(t, TradeEvent)
    assert t.trade_id == "9007199254740993"


def test_agg_trade_uses_aggregate_id() -> None:
    t = one("agg_trade")
    assert isinstance(t, TradeEvent)
    assert (t.trade_id, t.side, t.ts_exchange) == ("3821253461", "sell", 1769224657583_000_000)


def test_micro_time_unit() -> None:
    t = one("trade_buyer_maker", time_unit_ns=MICROSECONDS)
    assert isinstance(t, TradeEvent)
    assert t.ts_exchange == 1790649901913_000


def test_book_ticker_has_no_exchange_time() -> None:
    q = one("book_ticker")
    assert q == QuoteEvent("bn", "BTCUSDT", None, RECV, 89879.78, 4.93986, 89879.79, 2.11027)


def test_book_ticker_with_futures_style_time() -> None:
    q = one("book_ticker_with_T")
    assert isinstance(q, QuoteEvent)
    assert q.ts_exchange == 1646199228121_000_000


def test_depth_update_is_a_delta_with_update_ids() -> None:
    b = one("depth_update")
    assert b == BookEvent(
        "bn",
        "BTCUSDT",
        1672515782136_000_000,
        RECV,
        ((0.0024, 10.0), (0.0023, 0.0)),
        ((0.0026, 100.0),),
        False,
        157,
        160,
        None,
    )


def test_depth_update_with_empty_sides() -> None:
    b = one("depth_update_empty")
    assert isinstance(b, BookEvent)
    assert (b.bids, b.asks, b.first_update_id, b.last_update_id) == ((), (), 161, 161)


def test_partial_depth_takes_symbol_from_stream() -> None:
    b = one("partial_depth")
    assert isinstance(b, BookEvent)
    assert (b.symbol, b.is_snapshot, b.last_update_id, b.ts_exchange) == (
        "BNBUSDT",
        True,
        13919791373,
        None,
    )


def test_partial_depth_raw_needs_the_stream_name() -> None:
    with pytest.raises(ParseError, match="stream"):
        parse(FRAMES["partial_depth_raw"], RECV)
    (b,) = parse(FRAMES["partial_depth_raw"], RECV, stream="bnbbtc@depth5")
    assert isinstance(b, BookEvent)
    assert b.symbol == "BNBBTC"


def test_server_shutdown_is_a_control() -> None:
    c = one("server_shutdown")
    assert c == Control("server_shutdown", "bn", ts_exchange=1770123456789_000_000)


def test_subscribe_ack() -> None:
    assert one("ack") == Control("command_ack", "bn", request_id=1, data=None)


@pytest.mark.parametrize(
    ("case", "code", "message", "request_id"),
    [
        ("error_nested", 2, "Invalid request: invalid stream", 2),
        ("error_flat", 1, "Invalid value type: expected Boolean", None),
    ],
)
def test_errors_flat_and_nested(case: str, code: int, message: str, request_id: int | None) -> None:
    c = one(case)
    assert isinstance(c, Control)
    assert (c.kind, c.code, c.message, c.request_id) == ("error", code, message, request_id)


@pytest.mark.parametrize("case", ["unknown_kline", "unknown_shape"])
def test_unknown_types_are_flagged(case: str) -> None:
    c = one(case)
    assert isinstance(c, Control)
    assert c.kind == "unknown"


@pytest.mark.parametrize(
    "case",
    [
        "garbage_text",
        "garbage_truncated",
        "garbage_array",
        "trade_missing_price",
        "trade_bad_price",
        "trade_nan_price",
        "trade_negative_price",
        "trade_m_not_bool",
        "trade_T_string",
        "depth_bad_level",
    ],
)
def test_malformed_frames_raise_parse_error(case: str) -> None:
    with pytest.raises(ParseError):
        parse(FRAMES[case], RECV)


def test_bytes_frames_parse_too() -> None:
    (t,) = parse(FRAMES["trade_taker_buy"].encode(), RECV)
    assert isinstance(t, TradeEvent)


def test_stream_names_lower_case_per_channel() -> None:
    assert stream_names(("BTCUSDT",), ("trade", "quote", "book")) == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "btcusdt@depth@100ms",
    ]
    assert stream_names(("ETHUSDT",), ("book",), 1000) == ["ethusdt@depth"]


# The typed fast path (combined trade/bookTicker frames) must agree with the
# general parser on everything, including what it refuses.
_decimal = st.one_of(
    st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False).map(lambda d: f"{d:f}"),
    st.sampled_from(["0", "-1.5", "nan", "inf", "1e5", "", "abc", "00.10"]),
)


@given(
    price=_decimal,
    qty=_decimal,
    maker=st.sampled_from(["true", "false", '"yes"', "1"]),
    trade_time=st.sampled_from(["1700000000122", '"1700000000122"', "null", None]),
    trade_id=st.sampled_from(["123456789", '"abc"', str(2**63 - 1), "1.5"]),
    kind=st.sampled_from(["trade", "aggTrade"]),
)
def test_fast_path_agrees_with_the_general_parser(
    price: str, qty: str, maker: str, trade_time: str | None, trade_id: str, kind: str
) -> None:
    id_key = "t" if kind == "trade" else "a"
    fields = [f'"e":"{kind}"', '"E":1700000000123', '"s":"BTCUSDT"', f'"{id_key}":{trade_id}']
    fields += [f'"p":"{price}"', f'"q":"{qty}"', f'"m":{maker}', '"M":true']
    if trade_time is not None:
        fields.append(f'"T":{trade_time}')
    data = "{" + ",".join(fields) + "}"
    combined = '{"stream":"btcusdt@' + kind + '","data":' + data + "}"
    general = outcome(lambda: parse(data, RECV))  # raw /ws form: never the fast path
    assert outcome(lambda: parse(combined, RECV)) == general
    assert outcome(lambda: parse(combined.encode(), RECV)) == general
    assert outcome(lambda: parse(combined, RECV, decoder=DECODER)) == general


@given(bid=_decimal, ask=_decimal, size=_decimal)
def test_fast_ticker_agrees_with_the_general_parser(bid: str, ask: str, size: str) -> None:
    data = f'{{"u":400900217,"s":"BNBUSDT","b":"{bid}","B":"{size}","a":"{ask}","A":"1.5"}}'
    combined = '{"stream":"bnbusdt@bookTicker","data":' + data + "}"
    general = outcome(lambda: parse(data, RECV))
    assert outcome(lambda: parse(combined, RECV)) == general
    assert outcome(lambda: parse(combined, RECV, decoder=DECODER)) == general


DECODER = StreamDecoder(
    ["btcusdt@trade", "btcusdt@aggTrade", "bnbusdt@bookTicker", "btcusdt@depth@100ms"]
)


def test_stream_decoder_leaves_other_streams_to_the_general_parser() -> None:
    frame = FRAMES["trade_buyer_maker"]
    assert parse(frame, RECV, decoder=DECODER) == parse(frame, RECV)
    other = '{"stream":"ethusdt@trade","data":{"e":"trade","E":1,"s":"ETHUSDT","t":5,'
    other += '"p":"1.5","q":"2","T":1,"m":false,"M":true}}'
    assert DECODER.parse(other, RECV, "bn", 1) is None  # not one of its streams
    (event,) = parse(other, RECV, decoder=DECODER)
    assert isinstance(event, TradeEvent)
    assert event.side == "buy"
    assert StreamDecoder(["btcusdt@depth"]).parse(other, RECV, "bn", 1) is None


# A socket read parsed at once (StreamDecoder.parse_many) must give exactly the
# events of parsing its frames one by one, or None (then the loop does that).
BATCH_DECODER = StreamDecoder(
    ["btcusdt@trade", "ethusdt@aggTrade", "bnbusdt@bookTicker", "btcusdt@depth@100ms"]
)
_GOOD = st.sampled_from(
    [
        FRAMES["trade_buyer_maker"],
        FRAMES["trade_taker_buy"],
        '{"stream":"ethusdt@aggTrade","data":{"e":"aggTrade","E":5,"s":"ETHUSDT","a":7,'
        '"p":"2.5","q":"1","f":1,"l":2,"T":4,"m":false,"M":true}}',
        '{"stream":"bnbusdt@bookTicker","data":{"u":1,"s":"BNBUSDT","b":"1.5","B":"2",'
        '"a":"1.6","A":"3"}}',
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
        '"U":1,"u":2,"b":[["1.0","2"]],"a":[]}}',
    ]
)
_ODD = st.sampled_from(
    [
        FRAMES["trade_json_numbers"],  # refused by the typed decoder: not a clean batch
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1}}',  # bad depth
        '{"stream":"btcusdt@depth@100ms","data":{"e":"avgPrice","s":"BTCUSDT"}}',  # a control
        '{"stream":"xrpusdt@trade","data":{}}',  # a stream the connection does not have
        '{"result":null,"id":1}',  # an ack: a control
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,'
        '"p":"0","q":"1","T":1,"m":true,"M":true}}',  # zero price: refused
        FRAMES["trade_buyer_maker"] + "," + FRAMES["trade_taker_buy"],  # two values
        "not json",
        "",
        "]",
        "[",
        "1",
    ]
)
# Mostly good frames, so that many batches are clean and taken at once.
_batch_frames = st.one_of(_GOOD, _GOOD, _GOOD, _GOOD, _ODD, st.text(max_size=20))


def _one_by_one(frames: list[str]) -> object:
    out: list[object] = []
    for raw in frames:
        got = outcome(lambda raw=raw: parse(raw, RECV, "bn", decoder=BATCH_DECODER))
        if got is ParseError or any(isinstance(x, Control) for x in got):  # type: ignore[attr-defined]
            return None  # the loop must handle this frame on its own
        out += got  # type: ignore[arg-type]
    return out


@given(frames=st.lists(_batch_frames, min_size=1, max_size=8), as_bytes=st.booleans())
def test_a_batch_gives_the_events_of_its_frames_one_by_one_or_nothing(
    frames: list[str], as_bytes: bool
) -> None:
    batch: list[str | bytes] = [f.encode() for f in frames] if as_bytes else list(frames)
    got = BATCH_DECODER.parse_many(batch, RECV, "bn", 1_000_000)
    if got is not None:
        assert got == _one_by_one(frames)


def test_a_clean_batch_is_taken_at_once_in_wire_order() -> None:
    frames = [
        FRAMES["trade_buyer_maker"],
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
        '"U":1,"u":2,"b":[["1.0","2"]],"a":[]}}',
        '{"stream":"bnbusdt@bookTicker","data":{"u":1,"s":"BNBUSDT","b":"1.5","B":"2",'
        '"a":"1.6","A":"3"}}',
        FRAMES["trade_taker_buy"],
    ]
    got = BATCH_DECODER.parse_many(frames, RECV, "bn", 1_000_000)
    assert got is not None
    assert [type(e) for e in got] == [TradeEvent, BookEvent, QuoteEvent, TradeEvent]
    assert got == _one_by_one(frames)
    # bytes frames too; a str and a bytes frame in one read are not joined
    assert BATCH_DECODER.parse_many([f.encode() for f in frames], RECV, "bn", 1_000_000) == got
    assert BATCH_DECODER.parse_many([frames[0], frames[3].encode()], RECV, "bn", 1) is None


@pytest.mark.parametrize(
    "odd",
    [
        FRAMES["trade_json_numbers"],
        '{"result":null,"id":1}',
        "not json",
        FRAMES["trade_buyer_maker"] + "," + FRAMES["trade_taker_buy"],  # two values in one frame
    ],
)
def test_a_batch_with_an_odd_frame_is_left_to_the_frame_by_frame_path(odd: str) -> None:
    frames = [FRAMES["trade_buyer_maker"], odd, FRAMES["trade_taker_buy"]]
    assert BATCH_DECODER.parse_many(frames, RECV, "bn", 1_000_000) is None
    assert StreamDecoder([]).parse_many([FRAMES["trade_buyer_maker"]], RECV, "bn", 1) is None
