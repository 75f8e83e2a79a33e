"""Signals at and around their thresholds, the cooldown, and the edge-triggered alerts."""

from __future__ import annotations

import attrs
import pytest

from mdd.consumer.alerts import AlertEngine
from mdd.consumer.config import AlertsConfig, SignalsConfig
from mdd.consumer.features import Features
from mdd.consumer.signals import SignalEngine
from mdd.consumer.state import NS, LatestState

T0 = 1_700_000_000 * NS
CFG = SignalsConfig(return_threshold=0.01, min_volume=5.0, max_spread_bps=10.0, cooldown=30.0)


def feats(
    ret: float | None = 0.01,
    volume: float = 5.0,
    spread_bps: float | None = 10.0,
    t: float = 0.0,
    sym: str = "BTCUSDT",
    latency_ms: float | None = 1.0,
) -> Features:
    return Features(
        symbol=sym,
        ts=T0 + int(t * NS),
        mid=100.0,
        spread=0.1,
        spread_bps=spread_bps,
        last_price=101.0,
        vwap_60s=100.5,
        return_10s=ret,
        return_60s=ret,
        volatility_60s=0.001,
        volume_60s=volume,
        trade_imbalance_60s=0.2,
        latency_ms=latency_ms,
        trades_60s=7,
    )


@pytest.mark.parametrize(
    ("ret", "volume", "spread", "side"),
    [
        (0.01, 5.0, 10.0, "long"),  # every condition exactly at its threshold
        (0.0099, 5.0, 10.0, None),  # return just below
        (0.02, 4.99, 5.0, None),  # volume just below
        (0.02, 50.0, 10.01, None),  # spread just above
        (-0.01, 5.0, 10.0, "short"),  # symmetric
        (-0.0099, 5.0, 10.0, None),
        (-0.5, 100.0, 0.0, "short"),
        (0.01, 5.0, None, None),  # no quote: no spread, no signal
        (None, 5.0, 1.0, None),  # no trades in the short window
    ],
)
def test_thresholds(ret, volume, spread, side) -> None:
    sig = SignalEngine(CFG).evaluate(feats(ret, volume, spread))
    assert (sig.side if sig else None) == side


def test_signal_carries_triggering_values() -> None:
    sig = SignalEngine(CFG).evaluate(feats(0.015, 6.0, 3.0))
    assert sig is not None
    data = sig.as_dict()
    assert data["side"] == "long"
    assert data["features"]["return_10s"] == 0.015
    assert data["features"]["volume_60s"] == 6.0
    assert data["features"]["spread_bps"] == 3.0
    assert data["thresholds"] == {
        "return_threshold": 0.01,
        "min_volume": 5.0,
        "max_spread_bps": 10.0,
    }


def test_cooldown_per_symbol() -> None:
    eng = SignalEngine(CFG)
    assert eng.evaluate(feats(t=0)) is not None
    # Within 30 s: suppressed, either side.
    assert eng.evaluate(feats(t=10)) is None
    assert eng.evaluate(feats(ret=-0.02, t=29.999)) is None
    assert eng.suppressed == 2
    # Another symbol has its own cooldown.
    assert eng.evaluate(feats(t=10, sym="ETHUSDT")) is not None
    # Exactly 30 s later the symbol may signal again.
    sig = eng.evaluate(feats(ret=-0.02, t=30))
    assert sig is not None
    assert sig.side == "short"
    # No condition, no signal and no cooldown consumed.
    assert eng.evaluate(feats(ret=0.0, t=100)) is None
    assert eng.evaluate(feats(t=100.5)) is not None


def test_disabled_signals() -> None:
    eng = SignalEngine(attrs.evolve(CFG, enabled=False))
    assert eng.evaluate(feats(0.5)) is None


ALERTS = AlertsConfig(stale_after=5.0, latency_ms=100.0, spread_bps=50.0)


def test_latency_and_spread_alerts_are_edge_triggered() -> None:
    eng = AlertEngine(ALERTS)
    assert eng.on_features(feats(latency_ms=100.0, spread_bps=50.0)) == []  # at threshold: fine
    alerts = eng.on_features(feats(latency_ms=150.0, spread_bps=80.0))
    assert sorted(a.kind for a in alerts) == ["latency", "spread"]
    lat = next(a for a in alerts if a.kind == "latency")
    assert (lat.value, lat.threshold, lat.symbol) == (150.0, 100.0, "BTCUSDT")
    # Still bad: no repeat.
    assert eng.on_features(feats(latency_ms=170.0, spread_bps=90.0)) == []
    # Recovers, then breaks again: fires again.
    assert eng.on_features(feats(latency_ms=10.0, spread_bps=1.0)) == []
    assert [a.kind for a in eng.on_features(feats(latency_ms=500.0, spread_bps=1.0))] == ["latency"]


async def test_stale_alert_on_trio_time(autojump_clock) -> None:
    import trio

    from mdd.events import TradeEvent

    state = LatestState()
    eng = AlertEngine(ALERTS)
    ev = TradeEvent("sim", "BTCUSDT", T0, T0, 100.0, 1.0, "buy", "1")
    state.apply_trade(ev, T0, trio.current_time())
    await trio.sleep(4.9)
    assert eng.check_stale(state.symbols.values(), trio.current_time()) == []
    await trio.sleep(0.1)
    alerts = eng.check_stale(state.symbols.values(), trio.current_time())
    assert [(a.kind, a.symbol) for a in alerts] == [("stale", "BTCUSDT")]
    assert eng.is_stale("BTCUSDT")
    await trio.sleep(60)
    assert eng.check_stale(state.symbols.values(), trio.current_time()) == []  # once
    # Data again: cleared by the next feature update, and it can fire again later.
    state.apply_trade(ev, T0, trio.current_time())
    eng.on_features(feats())
    assert not eng.is_stale("BTCUSDT")
    await trio.sleep(5)
    assert len(eng.check_stale(state.symbols.values(), trio.current_time())) == 1
