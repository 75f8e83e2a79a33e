"""Supervision: provider restart with backoff, sink retry, heartbeats, graceful shutdown."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from mdd.bus import Bus
from mdd.config import FeedConfig, ProviderConfig, load_config
from mdd.daemon import Daemon
from mdd.events import Event, HeartbeatEvent, TradeEvent
from mdd.health import ProviderHealth
from mdd.providers import PROVIDERS
from mdd.sinks import SinkHealth, run_sink
from mdd.supervisor import BACKOFF_MAX, Backoff, FeedGate, ProviderRunner


class CrashingProvider:
    """Publishes one trade per run, then crashes."""

    runs: list[float] = []

    def __init__(
        self, config: ProviderConfig, symbols: Any, channels: Any, health: ProviderHealth
    ) -> None:
        self.name = config.name
        self.health = health

    async def run(self, outlet: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        CrashingProvider.runs.append(trio.current_time())
        outlet.publish(TradeEvent(self.name, "S", None, 0, 1.0, 1.0, "buy", "1"))
        await trio.sleep(0.5)
        raise ConnectionError("venue went away")


def test_backoff_doubles_with_jitter_and_caps() -> None:
    backoff = Backoff(rng=random.Random(1))
    delays = [backoff.next() for _ in range(10)]
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.8 <= delay <= min(BACKOFF_MAX, base * 1.2)
    backoff.reset()
    assert 0.8 <= backoff.next() <= 1.2


async def test_crashing_provider_is_restarted_with_backoff(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(PROVIDERS, "crashy", CrashingProvider)
    CrashingProvider.runs = []
    bus = Bus()
    lane = bus.add_sink("s", 100)
    config = ProviderConfig(name="crashy", kind="crashy", url="")
    feed = FeedConfig(name="f", symbols=("S",), providers=("crashy",))
    runner = ProviderRunner(
        config, feed, FeedGate(bus, "crashy", active=True), rng=random.Random(0)
    )
    with trio.move_on_after(70):
        await runner.run()
    runs = CrashingProvider.runs
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # Each gap is the 0.5 s run plus a backoff of ~1, 2, 4, 8, 16, 32 s (+-20 %).
    for gap, base in zip(gaps, [1, 2, 4, 8, 16, 32], strict=False):
        assert 0.5 + base * 0.8 <= gap <= 0.5 + base * 1.2
    assert len(runs) == 7
    assert runner.health.restarts == 7  # the 7th run crashed at ~66.5 s too
    assert "venue went away" in runner.health.last_error
    assert lane.queued == 7  # one trade per run reached the bus
    assert sum("provider.crash" in r.getMessage() for r in caplog.records) == 7


async def test_reconnect_restarts_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PROVIDERS, "crashy", CrashingProvider)
    CrashingProvider.runs = []
    config = ProviderConfig(name="crashy", kind="crashy", url="")
    feed = FeedConfig(name="f", symbols=("S",), providers=("crashy",))
    runner = ProviderRunner(config, feed, FeedGate(Bus(), "crashy"))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(0.1)
        runner.reconnect()
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert len(CrashingProvider.runs) == 2
    assert CrashingProvider.runs[1] - CrashingProvider.runs[0] == pytest.approx(0.1)


class FlakySink:
    name = "flaky"
    batch_size = 100
    batch_interval = 0.0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[Event] = []
        self.closed = False

    async def open(self) -> None:
        pass

    async def write(self, batch: Sequence[Event]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk on fire")
        self.written.extend(batch)

    async def close(self) -> None:
        self.closed = True


async def test_failing_sink_retries_the_batch_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    flaky_lane = bus.add_sink("flaky", 1000)
    sink = FlakySink(failures=3)
    health = SinkHealth("flaky")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, flaky_lane, health)
        for i in range(50):
            bus.publish(TradeEvent("p", "S", None, i, 1.0, 1.0, "buy", str(i)))
        await trio.sleep(10)
        assert health.errors == 3
        assert health.state == "ok"
        bus.close()
    assert [e.ts_recv for e in sink.written] == list(range(50))
    assert sink.closed
    assert health.state == "closed"


async def test_sink_gives_up_after_max_attempts_and_counts_the_loss(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    lane = bus.add_sink("flaky", 1000)
    sink = FlakySink(failures=10**6)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_sink(sink, lane, max_attempts=2, task_status=task_status)
        )
        for i in range(5):
            bus.publish(TradeEvent("p", "S", None, i, 1.0, 1.0, "buy", str(i)))
        await trio.sleep(5)
        bus.close()
    assert lane.lost == 5


def daemon_config(tmp_path: Path, **sinks: dict[str, Any]) -> Any:
    base = {
        "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 5},
        "http": {"enabled": False},
        "bus": {"heartbeat_after": 1},
        "providers": {"sim": {"rate": 40, "seed": 7}},
        "feeds": [{"name": "f", "symbols": ["AAA", "BBB"], "providers": ["sim"]}],
        "sinks": {"jsonl": {}, "metrics": {"enabled": False}, **sinks},
    }
    return load_config(None, base=base, env={})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_shutdown_delivers_every_published_event(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = Daemon(daemon_config(tmp_path), install_signal_handlers=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        await trio.sleep(3)
        daemon.request_stop("test")
    published = daemon.bus.published
    rows = read_jsonl(tmp_path / "events.jsonl")
    assert published > 200
    assert len(rows) == published
    trades = [r for r in rows if r["type"] == "trade"]
    assert {r["symbol"] for r in trades} == {"AAA", "BBB"}
    lane = daemon.bus.lanes[0]
    assert lane.delivered == published
    assert daemon.sink_health["jsonl"].state == "closed"


async def test_shutdown_drains_a_backlog_through_a_block_sink(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = daemon_config(tmp_path, jsonl={"policy": "block", "capacity": 3, "batch_size": 2})
    daemon = Daemon(cfg, install_signal_handlers=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        await trio.sleep(2)
        daemon.request_stop("test")
    rows = read_jsonl(tmp_path / "events.jsonl")
    assert len(rows) == daemon.bus.published
    assert daemon.bus.lanes[0].stats().total_dropped == 0


async def test_heartbeats_for_silent_provider_and_system(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = Daemon(daemon_config(tmp_path), install_signal_handlers=False)
    beats: list[HeartbeatEvent] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        lane = daemon.bus.add_sink("probe", 100_000)
        # Silence the provider: deactivate its data by cancelling its runner's run.
        runner = daemon.feeds["f"].runners["sim"]
        runner.health.last_data = trio.current_time()
        original = runner.health.mark_data
        runner.health.mark_data = lambda events=1: None  # type: ignore[method-assign]
        await trio.sleep(3.5)
        runner.health.mark_data = original  # type: ignore[method-assign]
        daemon.request_stop("test")
        try:
            while True:
                beats.extend(
                    e for e in await lane.receive_batch(10_000) if isinstance(e, HeartbeatEvent)
                )
        except trio.EndOfChannel:
            pass
    system = [b for b in beats if b.symbol == "__system__"]
    provider = [b for b in beats if b.provider == "sim"]
    assert len(system) == 3
    assert {b.symbol for b in provider} == {"AAA", "BBB"}
    assert all(b.silent_for >= 1.0 for b in provider)


async def test_sink_crash_does_not_stop_other_sinks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    (tmp_path / "blocked").mkdir()
    # The log sink path is fine; the second JSONL-like sink cannot open its file.
    cfg = daemon_config(tmp_path)
    daemon = Daemon(cfg, install_signal_handlers=False)
    from mdd import sinks as sinks_mod
    from mdd.sinks.jsonl import JsonlSink

    def broken(config: Any, section: Any) -> Any:
        sink = JsonlSink(tmp_path / "blocked")  # a directory: open() fails
        sink.name = "broken"  # type: ignore[misc]
        return sink

    original = dict(sinks_mod.SINK_FACTORIES)
    sinks_mod.SINK_FACTORIES["log"] = broken
    try:
        cfg2 = daemon_config(tmp_path, log={})
        daemon = Daemon(cfg2, install_signal_handlers=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            await trio.sleep(2)
            assert daemon.sink_health["broken"].state == "failing"
            assert daemon.sink_health["jsonl"].state == "ok"
            daemon.request_stop("test")
    finally:
        sinks_mod.SINK_FACTORIES.clear()
        sinks_mod.SINK_FACTORIES.update(original)
    rows = read_jsonl(tmp_path / "events.jsonl")
    assert len(rows) == daemon.bus.published
    assert any("sink.open_failed" in r.getMessage() for r in caplog.records)
