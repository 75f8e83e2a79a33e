"""Reliability: one sink stalled for 30 s while the feed runs.

The tiered policy sheds heartbeats, then quotes, and evicts the oldest only
when full; every other sink sees everything; the counters add up exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import trio
import trio.testing

from mdd.config import load_config
from mdd.daemon import Daemon
from mdd.events import Event
from mdd.sinks import SINK_FACTORIES


class StalledSink:
    """Blocks on its first write for ``stall`` seconds, then records everything."""

    name = "stalled"
    batch_size = 50
    batch_interval = 0.0

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.seen: list[Event] = []
        self.fill_at_first_drop: dict[str, float] = {}

    async def open(self) -> None:
        pass

    async def write(self, batch: Sequence[Event]) -> None:
        if self.stall:
            stall, self.stall = self.stall, 0.0
            await trio.sleep(stall)
        self.seen.extend(batch)

    async def close(self) -> None:
        pass


async def test_stalled_sink_sheds_by_tier_and_counts_add_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    stalled = StalledSink(stall=30.0)
    monkeypatch.setitem(SINK_FACTORIES, "log", lambda config, section: stalled)
    cfg = load_config(
        None,
        env={},
        base={
            "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 60},
            "http": {"enabled": False},
            "bus": {"heartbeat_after": 0.5, "capacity": 400},
            "providers": {"sim": {"rate": 10, "seed": 1}},
            "feeds": [{"name": "f", "symbols": ["AAA", "BBB"], "providers": ["sim"]}],
            "sinks": {"jsonl": {"capacity": 100_000}, "log": {}, "metrics": {"enabled": False}},
        },
    )
    daemon = Daemon(cfg, install_signal_handlers=False)
    fills: list[tuple[int, dict[str, int], dict[str, int]]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        lane = next(lane for lane in daemon.bus.lanes if lane.name == "stalled")
        for _ in range(58):
            await trio.sleep(0.5)
            fills.append((lane.queued, dict(lane.dropped), dict(lane.evicted)))
        daemon.request_stop("test")

    stats = {s.sink: s for s in daemon.bus.stats().lanes}
    s = stats["stalled"]
    # Each tier came into play, in order, as the lane filled.
    first_hb = next(i for i, (_, d, _) in enumerate(fills) if d.get("heartbeat"))
    first_quote = next(i for i, (_, d, _) in enumerate(fills) if d.get("quote"))
    first_evict = next(i for i, (_, _, e) in enumerate(fills) if e)
    assert first_hb <= first_quote <= first_evict
    assert fills[first_hb][0] >= 320 or fills[first_hb - 1][0] >= 300
    assert s.dropped.get("trade", 0) == 0  # trades are never dropped, only evicted when full
    assert max(q for q, _, _ in fills) == 400
    assert s.evicted.get("trade", 0) > 0
    # Exact accounting on both lanes.
    for lane_stats in stats.values():
        offered = sum(lane_stats.offered.values())
        assert offered == daemon.bus.published
        assert offered == (lane_stats.delivered + lane_stats.total_dropped + lane_stats.queued), (
            lane_stats
        )
    # The healthy sink saw everything; the stalled one saw what it did not shed.
    assert stats["jsonl"].total_dropped == 0
    rows = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert len(rows) == daemon.bus.published
    assert len(stalled.seen) == s.delivered == daemon.bus.published - s.total_dropped
    trade_ids = [orjson.loads(r).get("trade_id") for r in rows]
    assert len([t for t in trade_ids if t]) == len({t for t in trade_ids if t})
