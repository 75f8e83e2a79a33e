"""Metrics: names, types and label sets asserted from the real exposition text."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mdd.bus import Bus
from mdd.config import load_config
from mdd.daemon import Daemon
from mdd.events import HeartbeatEvent, QuoteEvent, TradeEvent
from mdd.metrics import REGISTRY, BatchHistogram, register_daemon, unregister_daemon
from mdd.sinks import SinkHealth, run_sink
from mdd.sinks.metrics import MetricsSink
from mdd.storage import open_reader

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_700_000_000_000_000_000
_ids = itertools.count()


def exposition(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """Families by name, parsed back from ``generate_latest``."""
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "", **labels: str) -> list[Any]:
    return [
        s
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]


async def test_seed_metrics_from_batches(autojump_clock: trio.testing.MockClock) -> None:
    provider = f"prov{next(_ids)}"  # the registry is process-wide: own label values
    bus = Bus()
    inbox = bus.add_sink("metrics", 10_000)
    sink = MetricsSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, inbox, SinkHealth("metrics"))
        for i in range(100):
            # 3 ms exchange -> receive
            bus.publish(
                TradeEvent(provider, "BTCUSDT", T0, T0 + 3_000_000, 1.0, 1.0, "buy", str(i))
            )
        for _ in range(20):
            bus.publish(QuoteEvent(provider, "ETHUSDT", T0, T0 + 40_000_000, 1, 1, 2, 2))
        bus.publish(HeartbeatEvent(provider, "BTCUSDT", None, T0, 6.0))  # no exchange time
        await trio.sleep(1.5)
        bus.publish(HeartbeatEvent(provider, "BTCUSDT", None, T0, 6.0))  # next second: rate
        await trio.sleep(0.1)
        bus.close()

    fams = exposition()
    events = fams["market_events"]
    assert events.type == "counter"
    got = {
        (s.labels["type"], s.labels["symbol"]): s.value
        for s in samples(events, "_total", provider=provider)
    }
    assert got == {("trade", "BTCUSDT"): 100, ("quote", "ETHUSDT"): 20, ("heartbeat", "BTCUSDT"): 2}
    assert {tuple(sorted(s.labels)) for s in samples(events, "_total")} == {
        ("provider", "symbol", "type")
    }

    latency = fams["market_exchange_latency_ms"]
    assert latency.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in samples(latency, "_bucket", provider=provider)}
    assert buckets["2.5"] == 0
    assert buckets["5.0"] == 100  # the trades (3 ms)
    assert buckets["25.0"] == 100
    assert buckets["50.0"] == 120  # plus the quotes (40 ms)
    assert buckets["+Inf"] == 120
    assert samples(latency, "_count", provider=provider)[0].value == 120
    assert samples(latency, "_sum", provider=provider)[0].value == 100 * 3.0 + 20 * 40.0

    rate = fams["market_events_per_second"]
    assert rate.type == "gauge"
    assert samples(rate)[0].value == 121 / 5  # 121 events in the last 5 whole seconds


def test_batch_histogram_matches_cumulative_buckets() -> None:
    registry = CollectorRegistry()
    hist = BatchHistogram("x_ms", "test", ["p"], (1, 10), registry=registry)
    hist.labels("a").observe_many([0.5, 1.0, 5, 50])
    hist.labels("a").observe(10)
    fam = exposition(registry)["x_ms"]
    assert {s.labels["le"]: s.value for s in samples(fam, "_bucket")} == {
        "1.0": 2,
        "10.0": 4,
        "+Inf": 5,
    }
    assert samples(fam, "_sum")[0].value == 66.5


@given(
    st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=20_000_000),
            st.sampled_from([1_000_000, 10_000_000, 999_999, 10_000_001]),  # on the bounds
        ),
        max_size=50,
    )
)
def test_ns_batch_path_buckets_like_one_value_at_a_time(diffs_ns: list[int]) -> None:
    hist = BatchHistogram("y_ms", "test", ["p"], (1, 10))
    hist.labels("batch").observe_ns_diffs([1_000 + d for d in diffs_ns], [1_000] * len(diffs_ns))
    hist.labels("each").observe_many([d / 1e6 for d in diffs_ns])
    batch, each = hist.labels("batch"), hist.labels("each")
    assert batch.counts == each.counts
    assert math.isclose(batch.total, each.total, abs_tol=1e-9)


def daemon_config(tmp_path: Path) -> Any:
    base = {
        "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 5},
        "http": {"enabled": False},
        "bus": {"heartbeat_after": 1},
        "providers": {"sim": {"rate": 40, "seed": 3}},
        "feeds": [{"name": "f", "symbols": ["AAA", "BBB"], "providers": ["sim"]}],
        "sinks": {"sqlite": {"path": "mdd.sqlite"}, "metrics": {}},
    }
    return load_config(None, base=base, env={})


async def test_daemon_collector_exports_bus_provider_and_sink_state(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = Daemon(daemon_config(tmp_path), install_signal_handlers=False)
    register_daemon(daemon)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            await trio.sleep(2.5)
            fams = exposition()
            daemon.request_stop("test")
    finally:
        unregister_daemon()

    expected = {
        # name: (type, label names)
        "mdd_bus_published": ("counter", set()),
        "mdd_bus_queued": ("gauge", {"sink"}),
        "mdd_bus_capacity": ("gauge", {"sink"}),
        "mdd_bus_fill_ratio": ("gauge", {"sink"}),
        "mdd_bus_peak_queued": ("gauge", {"sink"}),
        "mdd_bus_offered": ("counter", {"sink", "type"}),
        "mdd_bus_delivered": ("counter", {"sink"}),
        "mdd_bus_lost": ("counter", {"sink"}),
        "mdd_provider_state": ("gauge", {"feed", "provider", "state"}),
        "mdd_provider_active": ("gauge", {"feed", "provider"}),
        "mdd_provider_connected": ("gauge", {"feed", "provider"}),
        "mdd_provider_last_message_age_seconds": ("gauge", {"feed", "provider"}),
        "mdd_provider_messages": ("counter", {"feed", "provider"}),
        "mdd_provider_events": ("counter", {"feed", "provider"}),
        "mdd_provider_reconnects": ("counter", {"feed", "provider"}),
        "mdd_provider_restarts": ("counter", {"feed", "provider"}),
        "mdd_parse_errors": ("counter", {"feed", "provider"}),
        "mdd_sink_state": ("gauge", {"sink", "state"}),
        "mdd_sink_errors": ("counter", {"sink"}),
        "mdd_sink_batches": ("counter", {"sink"}),
        "mdd_sink_events": ("counter", {"sink"}),
        "mdd_uptime_seconds": ("gauge", set()),
    }
    for name, (kind, labels) in expected.items():
        family = fams[name]
        assert family.type == kind, name
        assert family.samples, name
        for s in family.samples:
            assert set(s.labels) == labels, (name, s.labels)

    up = samples(fams["mdd_provider_state"], feed="f", provider="sim", state="up")
    assert up[0].value == 1
    assert samples(fams["mdd_provider_active"], provider="sim")[0].value == 1
    assert {s.labels["sink"] for s in samples(fams["mdd_bus_queued"])} == {"sqlite", "metrics"}
    assert samples(fams["mdd_sink_state"], sink="sqlite", state="ok")[0].value == 1
    assert samples(fams["mdd_sink_errors"], "_total", sink="sqlite")[0].value == 0
    offered = samples(fams["mdd_bus_offered"], "_total", sink="sqlite", type="trade")
    assert offered[0].value > 100
    events = samples(fams["market_events"], "_total", provider="sim", type="trade", symbol="AAA")
    assert events[0].value > 50
    # The seed metrics and the pushed mdd_* families are all there too.
    for name in ("market_gaps", "mdd_failovers", "mdd_sqlite_rows", "mdd_nats_published"):
        assert fams[name].type == "counter", name
    assert fams["mdd_sink_batch_seconds"].type == "histogram"
    assert samples(fams["mdd_sink_batch_seconds"], "_count", sink="sqlite")[0].value > 0

    # Unregistered: the daemon's families are gone, the pushed ones stay.
    after = exposition()
    assert "mdd_bus_queued" not in after
    assert "market_events" in after

    # Everything the daemon published reached SQLite (the factory-built sink).
    conn = open_reader(tmp_path / "mdd.sqlite")
    trades = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
    conn.close()
    assert trades == daemon.bus.offered["trade"]
