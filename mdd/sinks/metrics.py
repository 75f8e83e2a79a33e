"""Metrics sink: the seed system's per-event Prometheus metrics, updated per batch.

For each batch it counts events per (provider, type, symbol) in a local dict
and calls ``inc(n)`` once per label set on cached children, buckets the
exchange -> receive latencies with :class:`mdd.metrics.BatchHistogram`, and
keeps a per-second tally for ``market_events_per_second``. Per event this is
a dict update and a ``bisect``: ~20x cheaper than ``observe``/``inc`` per event.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

import trio

from ..metrics import EVENTS, EVENTS_PER_SECOND, EXCHANGE_LATENCY

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client.metrics import Counter

    from ..events import Event

#: Whole seconds averaged for ``market_events_per_second``.
RATE_WINDOW: Final = 5


class MetricsSink:
    """Updates ``market_events_total``, ``market_exchange_latency_ms`` and the rate gauge.

    The rate gauge is recomputed whenever a batch arrives in a new second; at
    worst it lags by one system heartbeat (``bus.heartbeat_after``) when no
    market data flows.
    """

    name = "metrics"
    batch_size = 5000
    batch_interval = 0.0

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str], Counter] = {}
        self._second: int | None = None
        self._in_second = 0
        self._seconds: collections.deque[tuple[int, int]] = collections.deque()
        self.seen = 0

    async def open(self) -> None:
        """Nothing to open: the metrics live on :data:`mdd.metrics.REGISTRY`."""

    async def write(self, batch: Sequence[Event]) -> None:
        """Account one batch."""
        counts: dict[tuple[str, str, str], int] = {}
        latencies: dict[str, list[float]] = {}
        get = counts.get
        for e in batch:
            key = (e.provider, e.type, e.symbol)
            counts[key] = get(key, 0) + 1
            tx = e.ts_exchange
            if tx is not None:
                lat = latencies.get(e.provider)
                if lat is None:
                    lat = latencies[e.provider] = []
                lat.append((e.ts_recv - tx) / 1e6)
        children = self._children
        for key, n in counts.items():
            child = children.get(key)
            if child is None:
                child = children[key] = EVENTS.labels(*key)
            child.inc(n)
        for provider, values in latencies.items():
            EXCHANGE_LATENCY.labels(provider).observe_many(values)
        self.seen += len(batch)
        self._tally(len(batch))

    def _tally(self, n: int) -> None:
        now = int(trio.current_time())
        if self._second is None:
            self._second = now
        if now != self._second:
            self._seconds.append((self._second, self._in_second))
            self._second = now
            self._in_second = 0
            first = now - RATE_WINDOW
            while self._seconds and self._seconds[0][0] < first:
                self._seconds.popleft()
            EVENTS_PER_SECOND.set(sum(c for _s, c in self._seconds) / RATE_WINDOW)
        self._in_second += n

    async def close(self) -> None:
        """Nothing to release."""
