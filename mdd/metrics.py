"""Prometheus metrics: one registry for the daemon, and the metrics shared across modules.

Every metric lives on :data:`REGISTRY` (not the global default registry), which
the HTTP ``/metrics`` endpoint serves. Metrics other modules increment are
defined here so each is registered exactly once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
