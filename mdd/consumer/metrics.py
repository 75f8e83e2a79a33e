"""Prometheus metrics of ``mdd-consumer``, on a registry of the consumer's own.

Each :class:`ConsumerMetrics` owns a fresh :class:`CollectorRegistry` (never the
daemon's ``mdd.metrics.REGISTRY`` nor the global default), so two consumers in
one process (the queue-group tests, ``mdd demo``) count separately.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

#: Content type of the Prometheus text format served on ``/metrics``.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Buckets of the per-batch processing time, seconds (10 µs .. 1 s).
PROCESSING_BUCKETS: Final = (
    0.00001,
    0.00005,
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
)


class ConsumerMetrics:
    """Every metric the consumer exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "senpai_events_consumed_total",
            "Events decoded from NATS, by event type.",
            ["type"],
            registry=r,
        )
        self.dropped = Counter(
            "senpai_events_dropped_total",
            "Messages shed by the inbox's tiered drop policy, by event type.",
            ["type"],
            registry=r,
        )
        self.parse_errors = Counter(
            "senpai_parse_errors_total",
            "Messages that were not valid events (skipped).",
            registry=r,
        )
        self.feature_computations = Counter(
            "senpai_feature_computations_total",
            "Feature vectors computed (one per symbol per processed batch).",
            registry=r,
        )
        self.signals = Counter(
            "senpai_signals_total", "Signals emitted, by side.", ["side"], registry=r
        )
        self.alerts = Counter(
            "senpai_alerts_total", "Alerts raised, by kind.", ["kind"], registry=r
        )
        self.published = Counter(
            "senpai_published_total",
            "Messages published to NATS, by stream (features, signals, alerts).",
            ["stream"],
            registry=r,
        )
        self.rate_limited = Counter(
            "senpai_publish_rate_limited_total",
            "Feature publishes held back by the per-symbol token bucket.",
            ["stream"],
            registry=r,
        )
        self.publish_errors = Counter(
            "senpai_publish_errors_total",
            "Messages that could not be published (NATS unavailable).",
            registry=r,
        )
        self.processing = Histogram(
            "senpai_processing_seconds",
            "Time to process one inbox batch (decode, state, features, signals).",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "senpai_batch_size",
            "Messages per processed inbox batch.",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000),
            registry=r,
        )
        self.window_trades = Gauge(
            "senpai_window_trades",
            "Trades currently in each symbol's rolling window.",
            ["symbol"],
            registry=r,
        )
        self.inbox_queued = Gauge(
            "senpai_inbox_queued", "Messages waiting in the inbox.", registry=r
        )
        self.symbols = Gauge("senpai_symbols", "Symbols with state.", registry=r)
        self.nats_connected = Gauge(
            "senpai_nats_connected", "1 while connected to NATS, else 0.", registry=r
        )
        self.nats_reconnects = Counter(
            "senpai_nats_reconnects_total", "Reconnections to NATS.", registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry)
