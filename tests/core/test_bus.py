"""Bus: the tiered drop policy at its exact thresholds, eviction, block policy, isolation."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mdd.bus import Bus, SinkInbox
from mdd.events import HeartbeatEvent, QuoteEvent, TradeEvent


def trade(n: int) -> TradeEvent:
    return TradeEvent("p", "S", None, n, 1.0, 1.0, "buy", str(n))


def quote(n: int) -> QuoteEvent:
    return QuoteEvent("p", "S", None, n, 1.0, 1.0, 2.0, 1.0)


def heartbeat(n: int) -> HeartbeatEvent:
    return HeartbeatEvent("p", "S", None, n, 0.0)


def balanced(lane: SinkInbox) -> bool:
    s = lane.stats()
    offered = sum(s.offered.values())
    return (
        offered
        == s.delivered + s.total_dropped + s.queued + s.overflow
        == lane.delivered + (s.total_dropped + lane.queued)
    )


def fill(bus: Bus, n: int) -> None:
    for i in range(n):
        bus.publish(trade(i))


async def trickle(bus: Bus, n: int, gap: float) -> None:
    """Publish trades 0..n-1, one every ``gap`` seconds (mock-clock time)."""
    for i in range(n):
        bus.publish(trade(i))
        await trio.sleep(gap)


@pytest.mark.parametrize(("capacity", "hb_at", "qb_at"), [(10, 8, 9), (100, 80, 90), (7, 6, 7)])
def test_tiers_at_exact_thresholds(capacity: int, hb_at: int, qb_at: int) -> None:
    bus = Bus()
    lane = bus.add_sink("s", capacity)
    fill(bus, hb_at - 1)
    bus.publish(heartbeat(0))  # fill just below 80 %: accepted
    assert lane.queued == hb_at
    assert lane.dropped["heartbeat"] == 0
    bus.publish(heartbeat(1))  # fill at 80 %: dropped
    assert lane.dropped["heartbeat"] == 1
    assert lane.queued == hb_at
    # Quotes still pass between 80 % and 90 %.
    while lane.queued < qb_at:
        bus.publish(quote(lane.queued))
    assert lane.dropped.get("quote", 0) == 0
    bus.publish(quote(99))  # at 90 %: dropped
    assert lane.dropped["quote"] == 1
    # Trades pass until full, then evict.
    while lane.queued < capacity:
        bus.publish(trade(1000 + lane.queued))
    assert lane.evicted.total() == 0
    assert lane.dropped.get("trade", 0) == 0
    bus.publish(trade(5000))
    assert lane.evicted.total() == 1
    assert lane.queued == capacity
    assert balanced(lane)


async def test_eviction_removes_the_oldest_first() -> None:
    bus = Bus()
    lane = bus.add_sink("s", 5)
    fill(bus, 5)
    for i in range(100, 103):
        bus.publish(trade(i))
    assert lane.evicted["trade"] == 3
    batch = await lane.receive_batch(100)
    assert [e.trade_id for e in batch] == ["3", "4", "100", "101", "102"]  # type: ignore[union-attr]
    assert balanced(lane)


async def test_eviction_counts_the_evicted_type() -> None:
    bus = Bus()
    lane = bus.add_sink("s", 10)
    bus.publish(heartbeat(0))
    bus.publish(quote(0))
    fill(bus, 8)
    bus.publish(trade(100))  # evicts the heartbeat at the head
    bus.publish(trade(101))  # evicts the quote
    assert lane.evicted == {"heartbeat": 1, "quote": 1}
    assert balanced(lane)


async def test_block_policy_never_drops_and_applies_backpressure() -> None:
    bus = Bus()
    lane = bus.add_sink("db", 4, policy="block")
    for i in range(10):
        bus.publish(heartbeat(i) if i % 3 == 0 else trade(i))
    assert lane.stats().total_dropped == 0
    assert lane.stats().queued == 4
    assert lane.stats().overflow == 6
    assert bus.congested
    received: list[object] = []

    async def consumer() -> None:
        while len(received) < 10:
            received.extend(await lane.receive_batch(3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await bus.wait_for_room()
        assert not bus.congested
    assert len(received) == 10
    assert [getattr(e, "ts_recv", None) for e in received] == list(range(10))
    assert balanced(lane)


async def test_stalled_sink_does_not_affect_others() -> None:
    bus = Bus()
    slow = bus.add_sink("slow", 10)
    fast = bus.add_sink("fast", 10)
    got: list[object] = []

    async def drain_fast() -> None:
        try:
            while True:
                got.extend(await fast.receive_batch(1000))
        except trio.EndOfChannel:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_fast)
        for i in range(1000):
            bus.publish(trade(i) if i % 2 else quote(i))
            if i % 5 == 0:
                await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        bus.close()
    assert len(got) == 1000
    assert fast.stats().total_dropped == 0
    assert slow.queued == 10
    assert slow.stats().total_dropped == 990
    assert balanced(slow)
    assert balanced(fast)


async def test_receive_batch_takes_what_is_queued_and_ends_after_close() -> None:
    bus = Bus()
    lane = bus.add_sink("s", 100)
    fill(bus, 25)
    assert len(await lane.receive_batch(10)) == 10
    assert len(await lane.receive_batch(100)) == 15
    fill(bus, 3)
    bus.close()
    bus.publish(trade(9))  # ignored after close
    assert len(await lane.receive_batch(100)) == 3
    with pytest.raises(trio.EndOfChannel):
        await lane.receive_batch(100)
    assert lane.delivered == 28
    assert bus.published == 28


async def test_receive_batch_waits_up_to_max_wait(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()
    lane = bus.add_sink("s", 100)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, bus, 5, 0.05)
        start = trio.current_time()
        batch = await lane.receive_batch(100, max_wait=0.12)
        assert len(batch) == 3  # t=0, 0.05, 0.10; the one at 0.15 is past the window
        assert trio.current_time() - start == pytest.approx(0.12)


async def test_a_collecting_receiver_returns_once_its_batch_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    lane = bus.add_sink("s", 100)
    wakes = 0
    original = lane._wake

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        original()

    lane._wake = counted  # type: ignore[method-assign]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, bus, 8, 0.01)
        start = trio.current_time()
        batch = await lane.receive_batch(5, max_wait=10.0)
        # Full at the fifth event (t=0.04), long before the window ends.
        assert [e.trade_id for e in batch] == ["0", "1", "2", "3", "4"]
        assert trio.current_time() - start == pytest.approx(0.04)
        # One wake for the first event, one when the batch could be full:
        # not one per event.
        assert wakes == 2


def test_stats_snapshot_and_backpressure_state() -> None:
    bus = Bus()
    lane = bus.add_sink("s", 10)
    bus.add_sink("t", 10)
    assert bus.stats().backpressure == "ok"
    fill(bus, 8)
    assert bus.stats().backpressure == "shedding"
    fill(bus, 2)
    stats = bus.stats()
    assert stats.backpressure == "full"
    d = stats.as_dict()
    assert d["sinks"]["s"]["fill_pct"] == 100.0  # type: ignore[index]
    assert d["sinks"]["s"]["offered"] == {"trade": 10}  # type: ignore[index]
    assert lane.stats().peak_queued == 10


def test_bad_lane_arguments() -> None:
    bus = Bus()
    with pytest.raises(ValueError, match="capacity"):
        bus.add_sink("a", 0)
    with pytest.raises(ValueError, match="policy"):
        bus.add_sink("a", 1, "drop")  # type: ignore[arg-type]
    bus.add_sink("a", 1)
    with pytest.raises(ValueError, match="already"):
        bus.add_sink("a", 1)


def _state(bus: Bus) -> list[tuple[object, ...]]:
    return [(list(lane._queue), lane.stats()) for lane in bus.lanes]


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from("tqh"), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_publish_many_is_publish_for_each_event(kinds: list[str], cuts: list[int]) -> None:
    make = {"t": trade, "q": quote, "h": heartbeat}
    events = [make[k](i) for i, k in enumerate(kinds)]
    one, many = Bus(), Bus()
    for bus in (one, many):
        bus.add_sink("tiered", 10)
        bus.add_sink("block", 12, "block")
        bus.add_sink("roomy", 1000)
    for event in events:
        one.publish(event)
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    for start, end in itertools.pairwise(bounds):
        many.publish_many(events[start:end])
    assert _state(many) == _state(one)
    assert many.published == one.published == len(events)
    assert all(balanced(lane) for lane in many.lanes)
