"""Each of the 11 features against values computed by hand, including window expiry."""

from __future__ import annotations

import math

import pytest

from mdd.consumer.features import FEATURE_NAMES, compute_features
from mdd.consumer.state import NS, LatestState
from mdd.events import QuoteEvent, TradeEvent

T0 = 1_700_000_000 * NS


def trade(t: float, price: float, qty: float, side: str | None, sym: str = "BTCUSDT") -> TradeEvent:
    ts = T0 + int(t * NS)
    return TradeEvent("sim", sym, ts, ts, price, qty, side, str(ts))


def quote(t: float, bid: float, ask: float, sym: str = "BTCUSDT") -> QuoteEvent:
    ts = T0 + int(t * NS)
    return QuoteEvent("sim", sym, ts, ts, bid, 2.0, ask, 3.0)


def feed(state: LatestState, events: list, latency_ms: float = 0.0):
    st = None
    for ev in events:
        recv = (ev.ts_exchange or ev.ts_recv) + int(latency_ms * 1e6)
        if isinstance(ev, TradeEvent):
            st = state.apply_trade(ev, recv, 0.0)
        else:
            st = state.apply_quote(ev, recv, 0.0)
    assert st is not None
    return compute_features(st)


def test_feature_names_are_the_eleven() -> None:
    assert len(FEATURE_NAMES) == 11
    f = feed(LatestState(), [trade(0, 1.0, 1.0, "buy")]).as_dict()
    assert set(FEATURE_NAMES) <= set(f)


def test_quote_features() -> None:
    f = feed(LatestState(), [quote(0, 99.0, 101.0)])
    assert f.mid == 100.0
    assert f.spread == 2.0
    assert f.spread_bps == pytest.approx(200.0)  # 2 / 100 * 10_000
    # No trades yet: trade features are empty, volume is zero.
    assert f.last_price is None
    assert f.vwap_60s is None
    assert f.return_10s is None
    assert f.volatility_60s is None
    assert f.trade_imbalance_60s is None
    assert f.volume_60s == 0.0
    assert f.trades_60s == 0


def test_trade_features_by_hand() -> None:
    events = [
        trade(0, 100.0, 1.0, "buy"),
        trade(20, 102.0, 2.0, "sell"),
        trade(52, 101.0, 1.0, "buy"),
        trade(55, 105.0, 4.0, "buy"),
        quote(56, 104.0, 106.0),
    ]
    f = feed(LatestState(60, 10), events, latency_ms=250.0)
    assert f.last_price == 105.0
    # vwap = (100*1 + 102*2 + 101*1 + 105*4) / 8 = 825 / 8
    assert f.vwap_60s == pytest.approx(825 / 8)
    assert f.volume_60s == 8.0
    # buy 6, sell 2 -> (6 - 2) / 8
    assert f.trade_imbalance_60s == pytest.approx(0.5)
    # return_60s: last / first trade in the 60 s window - 1
    assert f.return_60s == pytest.approx(105 / 100 - 1)
    # return_10s: the short window at t=56 holds trades at 52 and 55
    assert f.return_10s == pytest.approx(105 / 101 - 1)
    # volatility: population std of the 3 log returns
    r = [math.log(102 / 100), math.log(101 / 102), math.log(105 / 101)]
    mean = sum(r) / 3
    assert f.volatility_60s == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in r) / 3))
    assert f.mid == 105.0
    assert f.spread == 2.0
    assert f.spread_bps == pytest.approx(2 / 105 * 10_000)
    assert f.latency_ms == pytest.approx(250.0)
    assert f.trades_60s == 4
    assert f.ts == T0 + 56 * NS


def test_window_expiry_changes_features() -> None:
    state = LatestState(60, 10)
    feed(state, [trade(0, 100.0, 1.0, "buy"), trade(20, 102.0, 2.0, "sell")])
    # A quote at t=65 moves the window clock: the trade at t=0 has expired,
    # the one at t=20 is still in; the short window (10 s) is empty.
    f = feed(state, [quote(65, 101.0, 103.0)])
    assert f.trades_60s == 1
    assert f.volume_60s == 2.0
    assert f.vwap_60s == 102.0
    assert f.trade_imbalance_60s == -1.0
    assert f.return_60s == 0.0
    assert f.return_10s is None
    assert f.volatility_60s is None  # no pair of trades left in the window
    assert f.last_price == 102.0  # the last trade stays known after expiry
    # At t=81 everything has expired.
    f = feed(state, [quote(81, 101.0, 103.0)])
    assert f.trades_60s == 0
    assert f.volume_60s == 0.0
    assert f.vwap_60s is None
    assert f.return_60s is None
    assert f.trade_imbalance_60s is None
    assert f.last_price == 102.0


def test_latency_uses_receive_time_when_exchange_time_missing() -> None:
    state = LatestState()
    ev = TradeEvent("alpaca", "AAPL", None, T0, 190.0, 5.0, None, "1")
    st = state.apply_trade(ev, T0 + 3_000_000, 0.0)
    f = compute_features(st)
    assert f.latency_ms == pytest.approx(3.0)
    # A trade without side counts in the volume but on neither side.
    assert f.trade_imbalance_60s == 0.0
    assert f.volume_60s == 5.0


def test_single_return_has_zero_volatility() -> None:
    f = feed(LatestState(), [trade(0, 100.0, 1.0, "buy"), trade(1, 101.0, 1.0, "buy")])
    assert f.volatility_60s == 0.0


def test_features_as_dict_is_json_ready() -> None:
    import orjson

    f = feed(LatestState(), [trade(0, 100.0, 1.0, "buy")])
    data = orjson.loads(orjson.dumps(f.as_dict()))
    assert data["symbol"] == "BTCUSDT"
    assert data["last_price"] == 100.0
    assert data["mid"] is None
