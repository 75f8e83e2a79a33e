"""Unit tests: provider health states and windows, the dedup window, gate replay, venues."""

from __future__ import annotations

import trio
import trio.testing

from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.events import QuoteEvent, TradeEvent
from mdd.failover import venue_of
from mdd.health import HEALTH_WINDOW, MAX_RECONNECTS_IN_WINDOW, ProviderHealth
from mdd.supervisor import DedupWindow, FeedGate


def trade(trade_id: int, provider: str = "p", symbol: str = "AAA") -> TradeEvent:
    return TradeEvent(provider, symbol, 1_000, 2_000, 1.0, 1.0, "buy", str(trade_id))


async def test_health_states_and_reasons(autojump_clock: trio.testing.MockClock) -> None:
    h = ProviderHealth("p")
    h.started_at = trio.current_time()
    assert h.state(10) == ("down", "not connected")
    h.connected = True
    assert h.state(10) == ("degraded", "connected, not subscribed")
    h.subscribed = True
    assert h.state(10) == ("degraded", "subscribed, no data yet")
    assert not h.delivering(10)
    await trio.sleep(10)
    assert h.state(10) == ("down", "no data for 10.0s")  # never sent anything
    assert h.stale(10)
    h.mark_data(3)
    assert h.state(10) == ("up", "data flowing")
    assert h.delivering(10)
    await trio.sleep(9.5)
    assert h.delivering(10)
    await trio.sleep(0.5)
    assert h.state(10) == ("down", "no data for 10.0s")
    assert not h.delivering(10)
    h.running = False
    assert h.state(10) == ("down", "not running (idle backup)")


async def test_restarted_run_counts_from_its_own_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = ProviderHealth("p")
    h.connected = h.subscribed = True
    h.started_at = trio.current_time()
    h.mark_data()
    await trio.sleep(20)
    h.started_at = trio.current_time()  # a new run; the old run's data is older
    assert h.state(10) == ("degraded", "subscribed, no data yet")
    assert not h.delivering(10)
    assert not h.stale(10)
    assert h.silent_for() == 20  # heartbeats still see the whole silence


async def test_reconnects_in_window_degrade_then_age_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = ProviderHealth("p")
    h.connected = h.subscribed = True
    h.started_at = trio.current_time()
    h.sample()
    h.reconnects += MAX_RECONNECTS_IN_WINDOW - 1
    h.restarts += 1
    h.requested_restarts += 1  # a restart the supervisor asked for is not churn
    h.mark_data()
    assert h.reconnects_in_window() == MAX_RECONNECTS_IN_WINDOW - 1
    assert h.state(10)[0] == "up"
    h.restarts += 1  # a crash restart is
    assert h.state(10) == ("degraded", f"{MAX_RECONNECTS_IN_WINDOW} reconnects in 60s")
    assert h.delivering(10)  # degraded, but the feed can still use it
    for _ in range(int(HEALTH_WINDOW) + 1):
        await trio.sleep(1)
        h.mark_data()
        h.sample()
    assert h.reconnects_in_window() == 0
    assert h.state(10)[0] == "up"


async def test_parse_error_rate_and_latency(autojump_clock: trio.testing.MockClock) -> None:
    h = ProviderHealth("p")
    h.connected = h.subscribed = True
    h.started_at = trio.current_time()
    h.sample()
    for _ in range(90):
        h.mark_data()
    h.parse_errors += 10
    assert h.parse_error_rate() == 0.1
    assert h.state(10) == ("degraded", "parse errors 10% of frames")
    for _ in range(int(HEALTH_WINDOW) + 1):  # the supervisor samples once per check
        await trio.sleep(1)
        h.sample()
    h.mark_data()
    assert h.parse_error_rate() == 0.0
    h.note_latency(0.010)
    h.note_latency(0.020)
    assert h.latency == 0.020
    assert h.latency_avg is not None
    assert 0.010 < h.latency_avg < 0.020
    d = h.as_dict(10)
    assert d["latency"] == 0.02
    assert d["parse_error_rate"] == 0.0
    assert d["running"] is True


async def test_dedup_window_refuses_known_keys_until_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    window = DedupWindow()
    assert not window.is_duplicate(("AAA", "1"))
    window.open([("AAA", "1"), ("AAA", "2")], until=30.0)
    assert window.is_duplicate(("AAA", "1"))
    assert not window.is_duplicate(("BBB", "1"))  # the key includes the symbol
    assert not window.is_duplicate(("AAA", "3"))
    window.expire(29.9)
    assert window.is_duplicate(("AAA", "2"))
    window.expire(30.0)
    assert window.keys is None
    assert not window.is_duplicate(("AAA", "2"))
    assert window.dropped == 2
    window.open([], until=60.0)
    assert window.keys is None  # nothing to refuse: no window


async def test_gate_dedups_the_overlap_of_a_same_venue_switch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    lane = bus.add_sink("probe", 1000)
    old = FeedGate(bus, "p", active=True)
    new = FeedGate(bus, "b")
    for i in range(1, 11):
        old.publish(trade(i, "p"))
        new.publish(trade(i + 5, "b"))  # held: the standby gate is closed
    assert new.held == 10
    # The switch: the old gate closes, the new one refuses what the old one published.
    old.active = False
    new.dedup.open(old.recent_keys(), trio.current_time() + 30)
    new.active = True
    for i in range(8, 16):
        new.publish(trade(i, "b"))
    old.publish(trade(11, "p"))  # closed now: held
    ids = [int(e.trade_id) for e in await lane.receive_batch(1000) if isinstance(e, TradeEvent)]
    assert ids == [*range(1, 11), *range(11, 16)]
    assert new.dedup.dropped == 3
    quote = QuoteEvent("b", "AAA", None, 1, 1.0, 1.0, 2.0, 1.0)
    new.publish(quote)  # non-trades are never deduped
    assert new.passed == 6


async def test_standby_buffer_replays_since_the_cutoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    lane = bus.add_sink("probe", 1000)
    gate = FeedGate(bus, "b", buffer_standby=True)
    for i in range(1, 6):
        gate.publish(trade(i, "b"))
        await trio.sleep(1)
    assert gate.standby is not None
    assert len(gate.standby) == 5
    gate.trim_standby(1.0)  # received at 0, 1, 2, 3, 4: drops the one at 0
    assert len(gate.standby) == 4
    replay = gate.take_standby(since=3.0)
    assert [e.trade_id for e in replay] == ["4", "5"]
    assert not gate.standby
    gate.active = True
    assert gate.replay(replay) == 2
    assert gate.replayed == 2
    assert [e.trade_id for e in await lane.receive_batch(100)] == ["4", "5"]
    assert gate.take_standby(None) == []


def test_venues() -> None:
    def cfg(name: str, kind: str, seed: int | None = None) -> ProviderConfig:
        return ProviderConfig(name=name, kind=kind, url="", seed=seed)

    assert venue_of(cfg("binance", "binance")) == venue_of(cfg("binance_2", "binance"))
    assert venue_of(cfg("binance", "binance")) != venue_of(cfg("bybit", "bybit"))
    assert venue_of(cfg("a", "sim", 1)) == venue_of(cfg("b", "sim", 1))
    assert venue_of(cfg("a", "sim", 1)) != venue_of(cfg("b", "sim", 2))
    assert venue_of(cfg("a", "sim")) != venue_of(cfg("b", "sim"))


async def test_gate_publish_many_matches_publish_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    quote = QuoteEvent("b", "AAA", None, 1, 1.0, 1.0, 2.0, 1.0)
    reads = [[trade(1, "b"), quote, trade(2, "b")], [], [trade(3, "b")], [trade(4, "b"), quote]]
    gates = []
    for many in (False, True):
        bus = Bus()
        lane = bus.add_sink("probe", 1000)
        gate = FeedGate(bus, "b", buffer_standby=True)
        for active in (False, True):  # closed (held, standby), then open
            gate.active = active
            if active:  # just after a switch: the previous provider sent 2 and 3
                gate.dedup.open([("AAA", "2"), ("AAA", "3")], trio.current_time() + 30)
            for _ in range(2):  # the second round runs with no dedup window
                for events in reads:
                    if many:
                        gate.publish_many(list(events))
                    else:
                        for event in events:
                            gate.publish(event)
                gate.dedup.expire(trio.current_time() + 60)
        got = await lane.receive_batch(1000)
        assert gate.standby is not None
        standby = [e for _, e in gate.standby]
        gates.append((got, gate.passed, gate.held, list(gate.recent), standby, gate.last))
    assert gates[0] == gates[1]
    got, passed, held, recent, standby, last = gates[1]
    assert [getattr(e, "trade_id", "q") for e in got] == "1 q 4 q 1 q 2 3 4 q".split()
    assert (passed, held) == (10, 12)
    assert [e.trade_id for e in recent] == ["1", "4", "1", "2", "3", "4"]  # trades only
    assert [e.trade_id for e in standby] == ["1", "2", "3", "4"] * 2
    assert last == quote
