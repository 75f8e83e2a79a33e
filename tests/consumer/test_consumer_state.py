"""RollingWindow and LatestState: running sums, expiry, a property test against recomputation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdd.consumer.state import NS, LatestState, RollingWindow, ShortWindow, event_time
from mdd.events import BookEvent, QuoteEvent, TradeEvent

T0 = 1_700_000_000 * NS


def trade(ts_s: float, price: float, qty: float, side: str | None = "buy", sym: str = "BTCUSDT"):
    ts = T0 + int(ts_s * NS)
    return TradeEvent("sim", sym, ts, ts + 1000, price, qty, side, f"{ts}")


def test_sums_by_hand() -> None:
    w = RollingWindow(60)
    w.add(T0, 100.0, 1.0, "buy")
    w.add(T0 + 1 * NS, 110.0, 2.0, "sell")
    w.add(T0 + 2 * NS, 99.0, 3.0, None)
    s = w.sums()
    assert s.count == 3
    assert s.volume == 6.0
    assert s.notional == pytest.approx(100 + 220 + 297)
    assert s.buy_volume == 1.0
    assert s.sell_volume == 2.0
    assert s.lr_count == 2
    r1, r2 = math.log(110 / 100), math.log(99 / 110)
    assert s.lr_sum == pytest.approx(r1 + r2)
    assert s.lr_sq_sum == pytest.approx(r1 * r1 + r2 * r2)
    assert w.first_price == 100.0
    assert w.last_price == 99.0


def test_expiry_drops_trade_and_its_successors_return() -> None:
    w = RollingWindow(60)
    w.add(T0, 100.0, 1.0, "buy")
    w.add(T0 + 30 * NS, 110.0, 2.0, "sell")
    w.add(T0 + 50 * NS, 121.0, 3.0, "buy")
    # At exactly T0 + 60 s the first trade leaves: the window is (t - 60 s, t].
    assert w.advance(T0 + 60 * NS) == 1
    s = w.sums()
    assert s.count == 2
    assert s.volume == 5.0
    assert s.buy_volume == 3.0
    assert s.sell_volume == 2.0
    # Only the return 110 -> 121 is between trades still in the window.
    assert s.lr_count == 1
    assert s.lr_sum == pytest.approx(math.log(121 / 110))
    assert w.first_price == 110.0
    assert s == w.recompute()
    # Everything expires: sums are exactly zero again, not rounding residue.
    assert w.advance(T0 + 200 * NS) == 2
    assert w.sums() == w.recompute()
    assert w.volume == 0.0
    assert w.lr_sum == 0.0
    assert len(w) == 0


def test_clock_never_runs_backwards() -> None:
    w = RollingWindow(10)
    w.add(T0 + 20 * NS, 100.0, 1.0, "buy")
    # A late trade (older timestamp) is placed at the window's current time.
    w.add(T0 + 5 * NS, 101.0, 1.0, "sell")
    assert len(w) == 2
    w.advance(T0 + 25 * NS)
    assert len(w) == 2
    w.advance(T0 + 30 * NS)
    assert len(w) == 0


def test_short_window() -> None:
    s = ShortWindow(10)
    s.add(T0, 100.0)
    s.add(T0 + 5 * NS, 101.0)
    assert s.first_price == 100.0
    s.advance(T0 + 10 * NS)
    assert s.first_price == 101.0
    s.advance(T0 + 16 * NS)
    assert s.first_price is None


def test_window_rejects_bad_length() -> None:
    with pytest.raises(ValueError, match="window"):
        RollingWindow(0)


def test_latest_state_tracks_trade_quote_book() -> None:
    state = LatestState(60, 10)
    t = trade(0, 100.0, 1.0)
    st = state.apply_trade(t, recv_ns=t.ts_exchange + 5_000_000, now=1.0)
    assert st.last_trade is t
    assert st.last_latency_ns == 5_000_000
    q = QuoteEvent("sim", "BTCUSDT", None, T0 + 2 * NS, 99.0, 1.0, 101.0, 1.0)
    assert event_time(q) == q.ts_recv  # no exchange time: receive time is used
    st = state.apply_quote(q, recv_ns=q.ts_recv + 1, now=2.0)
    assert st.last_quote is q
    assert st.last_event_ts == q.ts_recv
    b = BookEvent("sim", "BTCUSDT", T0 + 3 * NS, T0 + 3 * NS, ((99.0, 1.0),), (), True)
    st = state.apply_other(b, recv_ns=T0 + 3 * NS, now=3.0)
    assert (st.events, st.trades, st.quotes, st.last_seen) == (3, 1, 1, 3.0)
    assert state.get("ETHUSDT") is None


# --- property test -----------------------------------------------------------------

prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
qtys = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
sides = st.sampled_from(["buy", "sell", None])
steps = st.one_of(
    st.tuples(st.just("trade"), st.integers(0, 5 * NS), prices, qtys, sides),
    st.tuples(st.just("advance"), st.integers(0, 90 * NS)),
)


def _close(a: float, b: float, scale: float) -> bool:
    # Running sums carry rounding error from everything that passed through them:
    # compare relative to the largest magnitude the sum ever held.
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(scale, 1.0))


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=120), st.integers(1, 60))
def test_incremental_sums_equal_recomputation(ops: list[tuple], window_s: int) -> None:
    w = RollingWindow(window_s)
    now = T0
    scale = {"volume": 0.0, "notional": 0.0, "lr": 0.0, "lr_sq": 0.0}
    for op in ops:
        if op[0] == "trade":
            _, dt, price, qty, side = op
            now += dt
            if w.last_price is not None:
                lr = abs(math.log(price / w.last_price))
                scale["lr"] += lr
                scale["lr_sq"] += lr * lr
            scale["volume"] += qty
            scale["notional"] += price * qty
            w.add(now, price, qty, side)
        else:
            now += op[1]
            w.advance(now)
        inc, ref = w.sums(), w.recompute()
        assert inc.count == ref.count
        assert inc.lr_count == ref.lr_count
        assert _close(inc.volume, ref.volume, scale["volume"])
        assert _close(inc.buy_volume, ref.buy_volume, scale["volume"])
        assert _close(inc.sell_volume, ref.sell_volume, scale["volume"])
        assert _close(inc.notional, ref.notional, scale["notional"])
        assert _close(inc.lr_sum, ref.lr_sum, scale["lr"])
        assert _close(inc.lr_sq_sum, ref.lr_sq_sum, scale["lr_sq"])
