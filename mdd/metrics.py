"""Prometheus metrics: one registry for the daemon, and the metrics shared across modules.

Every metric lives on :data:`REGISTRY` (not the global default registry), which
the HTTP ``/metrics`` endpoint serves. Metrics other modules increment are
defined here so each is registered exactly once.

Two kinds of metrics:

- **Pushed**: counters and histograms updated by the code that sees the
  events (the metrics sink, the SQLite and NATS sinks, the failover
  supervisor). Hot-path ones are updated once per batch, never per event:
  ``Histogram.observe`` costs ~1.8 us per call here and a labelled
  ``Counter.labels(...).inc()`` ~2.8 us, while counting into a local dict and
  bucketing with ``bisect`` cost ~0.3 us per event (measured with a small
  timing script on these 2-core machines). :class:`BatchHistogram` is the
  batched histogram.
- **Pulled**: state that lives in daemon objects (bus lanes, provider health,
  sink health) is read at scrape time by :class:`DaemonCollector`, registered
  with :func:`register_daemon`. Nothing is copied on the hot path.
"""

from __future__ import annotations

import bisect
import math
import operator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

REGISTRY = CollectorRegistry(auto_describe=True)

#: Feed failovers (the failover supervisor increments it), by feed and providers.
FAILOVERS = Counter(
    "mdd_failovers_total",
    "Active-provider switches, by feed and the providers switched from and to.",
    ["feed", "from", "to"],
    registry=REGISTRY,
)

#: Sequence gaps detected (book sync increments it), by provider (seed system name).
GAPS = Counter(
    "market_gaps_total",
    "Sequence gaps detected in venue streams, by provider.",
    ["provider"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------
# Batched histogram


class BatchHistogram(Collector):
    """A Prometheus histogram fed a whole batch of observations at a time.

    ``labels(*values).observe_many(xs)`` buckets every value with ``bisect``
    into plain integer lists; the exposition (cumulative ``_bucket``,
    ``_sum``, ``_count``) is built at scrape time. Single-threaded use only
    (the trio thread), which is how mdd runs.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = [*sorted(buckets), math.inf]
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        """The child for these label values (cached; create on first use)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        """Names only, so the registry can check for clashes without collecting."""
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        """The histogram family with one series per label set."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(self.bounds, child.counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
            family.add_metric(list(values), buckets, child.total)
        yield family


class _HistogramChild:
    __slots__ = ("bounds", "bounds_ns", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        # The same bounds in integer-valued ns (ms histograms fed ns differences).
        self.bounds_ns = [b * 1e6 for b in bounds]
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe_ns_diffs(self, ends: Sequence[int], starts: Sequence[int]) -> None:
        """Add ``(end - start)`` in ms for each pair: a batch of ns timestamps.

        The differences are sorted (in C; they arrive nearly sorted) and each
        bucket's count read off with one ``bisect`` per bound, instead of one
        ``bisect`` per value: the metrics sink calls this with whole batches.
        """
        diffs = sorted(map(operator.sub, ends, starts))
        counts = self.counts
        below = 0
        for index, bound in enumerate(self.bounds_ns):
            upto = bisect.bisect_right(diffs, bound)  # values <= bound: bisect_left's bucket
            counts[index] += upto - below
            below = upto
        self.total += sum(diffs) / 1e6

    def observe_many(self, values: Iterable[float]) -> None:
        """Add every value of a batch."""
        counts = self.counts
        bounds = self.bounds
        where = bisect.bisect_left
        total = 0.0
        for v in values:
            counts[where(bounds, v)] += 1
            total += v
        self.total += total

    def observe(self, value: float) -> None:
        """Add one value (convenience; prefer :meth:`observe_many`)."""
        self.observe_many((value,))


# ---------------------------------------------------------------------------
# Seed system metrics (names kept), updated by the metrics sink per batch

#: Events seen by the metrics sink, by provider, type and symbol (seed system name).
EVENTS = Counter(
    "market_events_total",
    "Events that passed the bus to the metrics sink, by provider, event type and symbol.",
    ["provider", "type", "symbol"],
    registry=REGISTRY,
)

#: Latency buckets for exchange timestamp -> receive timestamp, milliseconds.
LATENCY_BUCKETS_MS: Final = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

#: Exchange -> receive latency (seed system name), batched.
EXCHANGE_LATENCY = BatchHistogram(
    "market_exchange_latency_ms",
    "Milliseconds from the venue's event timestamp to our receive timestamp, by provider.",
    ["provider"],
    LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)

#: Events per second over the last few seconds (seed system name; set by the metrics sink).
EVENTS_PER_SECOND = Gauge(
    "market_events_per_second",
    "Events per second seen by the metrics sink, averaged over the last 5 whole seconds.",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------
# Sinks

#: Sink batch latency: how long one ``write(batch)`` took, by sink.
SINK_BATCH_SECONDS = Histogram(
    "mdd_sink_batch_seconds",
    "Seconds one sink write (one batch) took, by sink.",
    ["sink"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)

SQLITE_ROWS = Counter(
    "mdd_sqlite_rows_total",
    "Rows committed to SQLite, by table.",
    ["table"],
    registry=REGISTRY,
)
SQLITE_DUPLICATES = Counter(
    "mdd_sqlite_duplicate_trades_total",
    "Trades ignored by SQLite because (provider, symbol, trade_id) was already stored.",
    registry=REGISTRY,
)
SQLITE_ERRORS = Counter(
    "mdd_sqlite_errors_total",
    "SQLite failures by kind (disk_full, read_only, locked, io, cant_open, error).",
    ["kind"],
    registry=REGISTRY,
)
SQLITE_RETAINED = Counter(
    "mdd_sqlite_retention_deleted_total",
    "Rows deleted by the retention sweep (retain_days), by table.",
    ["table"],
    registry=REGISTRY,
)

NATS_PUBLISHED = Counter(
    "mdd_nats_published_total",
    "Events published to NATS (acknowledged by JetStream when it is on).",
    registry=REGISTRY,
)
NATS_OUTAGES = Counter(
    "mdd_nats_outages_total",
    "Times the NATS sink lost (or could not get) its server connection.",
    registry=REGISTRY,
)
NATS_CONNECTED = Gauge(
    "mdd_nats_connected",
    "1 while the NATS sink is connected (and JetStream is ready when required), else 0.",
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------
# Daemon state, read at scrape time

#: Health states exported as ``mdd_provider_state{state=...}`` (1 for the current one).
PROVIDER_STATES: Final = ("up", "degraded", "down")
#: Sink states exported as ``mdd_sink_state{state=...}``.
SINK_STATES: Final = ("starting", "ok", "failing", "closed")


class DaemonCollector(Collector):
    """Exports a running daemon's bus, provider and sink state at scrape time.

    Args:
        daemon: a :class:`mdd.daemon.Daemon` (duck-typed: ``bus.stats()``,
            ``feeds[name].runners[p].health``, ``sink_health``,
            ``config.failover.stale_after``, ``uptime()``).
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def describe(self) -> list[Metric]:
        """Nothing up front: the series depend on the daemon's config."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every pulled metric family (see the README table)."""
        yield from self._bus()
        yield from self._providers()
        yield from self._sinks()
        uptime = GaugeMetricFamily("mdd_uptime_seconds", "Seconds since the daemon started.")
        uptime.add_metric([], float(self.daemon.uptime()))
        yield uptime

    def _bus(self) -> Iterator[Metric]:
        stats = self.daemon.bus.stats()
        published = CounterMetricFamily(
            "mdd_bus_published", "Events published on the bus (before any drop)."
        )
        published.add_metric([], stats.published)
        yield published
        queued = GaugeMetricFamily(
            "mdd_bus_queued", "Events queued in a sink's bus lane.", labels=["sink"]
        )
        capacity = GaugeMetricFamily(
            "mdd_bus_capacity", "Capacity of a sink's bus lane.", labels=["sink"]
        )
        fill = GaugeMetricFamily(
            "mdd_bus_fill_ratio", "Fill of a sink's bus lane, 0 to 1.", labels=["sink"]
        )
        peak = GaugeMetricFamily(
            "mdd_bus_peak_queued", "Most events ever queued in a sink's lane.", labels=["sink"]
        )
        offered = CounterMetricFamily(
            "mdd_bus_offered", "Events offered to a sink's lane, by type.", labels=["sink", "type"]
        )
        delivered = CounterMetricFamily(
            "mdd_bus_delivered", "Events a sink took from its lane.", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            "mdd_bus_dropped",
            "Events shed by the drop policy, by sink, type and reason "
            "(policy: tier threshold; evicted: oldest evicted at 100 %).",
            labels=["sink", "type", "reason"],
        )
        lost = CounterMetricFamily(
            "mdd_bus_lost", "Events a sink accepted but gave up after retries.", labels=["sink"]
        )
        for lane in stats.lanes:
            s = [lane.sink]
            queued.add_metric(s, lane.queued)
            capacity.add_metric(s, lane.capacity)
            fill.add_metric(s, lane.queued / lane.capacity)
            peak.add_metric(s, lane.peak_queued)
            delivered.add_metric(s, lane.delivered)
            lost.add_metric(s, lane.lost)
            for kind, n in sorted(lane.offered.items()):
                offered.add_metric([lane.sink, kind], n)
            for kind, n in sorted(lane.dropped.items()):
                dropped.add_metric([lane.sink, kind, "policy"], n)
            for kind, n in sorted(lane.evicted.items()):
                dropped.add_metric([lane.sink, kind, "evicted"], n)
        yield from (queued, capacity, fill, peak, offered, delivered, dropped, lost)

    def _providers(self) -> Iterator[Metric]:
        labels = ["feed", "provider"]
        state = GaugeMetricFamily(
            "mdd_provider_state",
            "1 for the provider's current health state (up, degraded, down), else 0.",
            labels=[*labels, "state"],
        )
        active = GaugeMetricFamily(
            "mdd_provider_active", "1 if the provider is its feed's active one.", labels=labels
        )
        connected = GaugeMetricFamily(
            "mdd_provider_connected", "1 while the provider's socket is connected.", labels=labels
        )
        age = GaugeMetricFamily(
            "mdd_provider_last_message_age_seconds",
            "Seconds since the provider's last data frame.",
            labels=labels,
        )
        messages = CounterMetricFamily(
            "mdd_provider_messages", "Data frames received, by provider.", labels=labels
        )
        events = CounterMetricFamily(
            "mdd_provider_events", "Events parsed from the frames, by provider.", labels=labels
        )
        reconnects = CounterMetricFamily(
            "mdd_provider_reconnects", "WebSocket reconnects, by provider.", labels=labels
        )
        restarts = CounterMetricFamily(
            "mdd_provider_restarts", "Provider task restarts by the supervisor.", labels=labels
        )
        parse_errors = CounterMetricFamily(
            "mdd_parse_errors", "Venue frames that could not be parsed.", labels=labels
        )
        stale = self.daemon.config.failover.stale_after
        for feed, supervisor in self.daemon.feeds.items():
            for name, runner in supervisor.runners.items():
                h = runner.health
                lv = [feed, name]
                current, _reason = h.state(stale)
                for st in PROVIDER_STATES:
                    state.add_metric([*lv, st], 1.0 if st == current else 0.0)
                active.add_metric(lv, 1.0 if h.active else 0.0)
                connected.add_metric(lv, 1.0 if h.connected else 0.0)
                silent = h.silent_for()
                if silent is not None:
                    age.add_metric(lv, silent)
                messages.add_metric(lv, h.messages)
                events.add_metric(lv, h.events)
                reconnects.add_metric(lv, h.reconnects)
                restarts.add_metric(lv, h.restarts)
                parse_errors.add_metric(lv, h.parse_errors)
        yield from (state, active, connected, age, messages, events, reconnects, restarts)
        yield parse_errors

    def _sinks(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "mdd_sink_state",
            "1 for the sink's current state (starting, ok, failing, closed), else 0.",
            labels=["sink", "state"],
        )
        errors = CounterMetricFamily(
            "mdd_sink_errors", "Failed sink opens and writes (each retry counts).", labels=["sink"]
        )
        batches = CounterMetricFamily(
            "mdd_sink_batches", "Batches a sink wrote successfully.", labels=["sink"]
        )
        events = CounterMetricFamily(
            "mdd_sink_events", "Events a sink wrote successfully.", labels=["sink"]
        )
        for name, h in self.daemon.sink_health.items():
            for st in SINK_STATES:
                state.add_metric([name, st], 1.0 if st == h.state else 0.0)
            errors.add_metric([name], h.errors)
            batches.add_metric([name], h.batches)
            events.add_metric([name], h.events)
        yield from (state, errors, batches, events)


_daemon_collector: DaemonCollector | None = None


def register_daemon(daemon: Any, registry: CollectorRegistry = REGISTRY) -> DaemonCollector:
    """Export ``daemon``'s state on ``registry``, replacing any daemon registered before.

    One daemon per process is exported; registering a new one (tests, restarts)
    unregisters the previous collector so names never clash.
    """
    global _daemon_collector
    unregister_daemon(registry)
    collector = DaemonCollector(daemon)
    registry.register(collector)
    _daemon_collector = collector
    return collector


def unregister_daemon(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting the registered daemon (no-op if none)."""
    global _daemon_collector
    if _daemon_collector is not None:
        registry.unregister(_daemon_collector)
        _daemon_collector = None
