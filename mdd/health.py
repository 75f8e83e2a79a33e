"""Provider health: what the supervisor, /health and mdd-ctl know of each provider run.

Providers keep cheap counters (``connected``, ``subscribed``, :meth:`ProviderHealth.mark_data`,
``parse_errors``, ``reconnects``); nothing here runs per event. Rates over a
window (reconnects, parse errors) and the exchange latency are derived from
snapshots the failover supervisor takes once per check (:meth:`ProviderHealth.sample`),
so the hot path pays for none of it.

States, from best to worst:

``up``
    connected, subscribed, data within ``stale_after`` and no churn.
``degraded``
    usable but suspicious: connected and not yet subscribed or no data yet
    (warming up, for less than ``stale_after``), or data flowing with many
    reconnects or parse errors in the window.
``down``
    not connected (or not running), or no data for ``stale_after`` seconds.
"""

from __future__ import annotations

import collections
from typing import Final

import attrs
import trio

#: Health states, from best to worst.
STATES: Final = ("up", "degraded", "down")

#: Window (seconds) over which reconnects and parse errors are counted.
HEALTH_WINDOW: Final = 60.0
#: Reconnects (provider reconnects plus runner restarts) within the window that
#: make a provider that still delivers data ``degraded``.
MAX_RECONNECTS_IN_WINDOW: Final = 3
#: Share of frames within the window that failed to parse above which a provider is ``degraded``.
MAX_PARSE_ERROR_RATE: Final = 0.05
#: Weight of the newest sample in the exchange-latency moving average.
LATENCY_ALPHA: Final = 0.2
#: Samples kept (one per supervisor check); bounds memory if checks are very frequent.
MAX_SAMPLES: Final = 4096


@attrs.frozen
class HealthSample:
    """Counters at one supervisor check (trio clock seconds)."""

    at: float
    reconnects: int
    messages: int
    parse_errors: int


class ProviderHealth:
    """Live facts about one provider, updated by the provider and its runner.

    The provider sets ``connected``/``subscribed``, calls :meth:`mark_data`
    once per data frame (cheap: one clock read) and increments ``parse_errors``
    and ``reconnects``. The runner counts ``restarts`` and sets ``running``.
    Times are trio clock seconds.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.subscribed = False
        self.started_at: float | None = None
        self.last_data: float | None = None
        self.messages = 0
        self.events = 0
        self.parse_errors = 0
        self.reconnects = 0
        self.restarts = 0
        #: Restarts the supervisor asked for (a stale provider), part of ``restarts``:
        #: they are not connection churn, so the window counts leave them out.
        self.requested_restarts = 0
        self.last_error = ""
        self.active = False
        #: The provider has a task (False for an on-demand backup not started yet).
        self.running = True
        #: Deliberately not connected (Alpaca without credentials): heartbeats only.
        self.dry_run = False
        #: Exchange latency (``ts_recv - ts_exchange``), seconds: last sample and moving average.
        self.latency: float | None = None
        self.latency_avg: float | None = None
        self._samples: collections.deque[HealthSample] = collections.deque(maxlen=MAX_SAMPLES)

    # -- updated by providers (hot path: keep these trivial) -------------

    def mark_data(self, events: int = 1) -> None:
        """Record one data frame carrying ``events`` events."""
        self.last_data = trio.current_time()
        self.messages += 1
        self.events += events

    # -- updated by the supervisor, once per check -------------------------

    def note_latency(self, seconds: float) -> None:
        """Record one exchange-latency observation (receive time minus exchange time)."""
        self.latency = seconds
        if self.latency_avg is None:
            self.latency_avg = seconds
        else:
            self.latency_avg += LATENCY_ALPHA * (seconds - self.latency_avg)

    def sample(self, now: float | None = None, window: float = HEALTH_WINDOW) -> None:
        """Snapshot the counters, dropping snapshots older than ``window``."""
        now = trio.current_time() if now is None else now
        samples = self._samples
        samples.append(HealthSample(now, self._churn(), self.messages, self.parse_errors))
        # Keep one sample at or before the window start as the baseline.
        while len(samples) > 1 and samples[1].at <= now - window:
            samples.popleft()

    def _baseline(self) -> HealthSample | None:
        return self._samples[0] if self._samples else None

    def _churn(self) -> int:
        return self.reconnects + self.restarts - self.requested_restarts

    def reconnects_in_window(self) -> int:
        """Reconnects plus crash restarts since the oldest sample in the window."""
        base = self._baseline()
        total = self._churn()
        return total if base is None else total - base.reconnects

    def parse_error_rate(self) -> float:
        """Share of frames since the oldest sample in the window that failed to parse."""
        base = self._baseline()
        errors = self.parse_errors - (0 if base is None else base.parse_errors)
        frames = self.messages - (0 if base is None else base.messages) + errors
        return 0.0 if frames <= 0 else errors / frames

    # -- derived -----------------------------------------------------------

    def silent_for(self, now: float | None = None) -> float | None:
        """Seconds since the last data frame (or since start); None before start."""
        now = trio.current_time() if now is None else now
        ref = self.last_data if self.last_data is not None else self.started_at
        return None if ref is None else max(0.0, now - ref)

    def _data_age(self, now: float) -> float | None:
        """Seconds since the last data frame of the current run, or since its start."""
        refs = [t for t in (self.last_data, self.started_at) if t is not None]
        return None if not refs else max(0.0, now - max(refs))

    def delivering(self, stale_after: float, now: float | None = None) -> bool:
        """Connected, subscribed and data within ``stale_after``: the feed can use it."""
        now = trio.current_time() if now is None else now
        if not (self.running and self.connected and self.subscribed):
            return False
        if self.last_data is None or (
            self.started_at is not None and self.last_data < self.started_at
        ):
            return False
        return now - self.last_data < stale_after

    def stale(self, silent_for: float, now: float | None = None) -> bool:
        """Connected (the socket is open) but no data in this run for ``silent_for`` seconds."""
        now = trio.current_time() if now is None else now
        age = self._data_age(now)
        return self.running and self.connected and age is not None and age >= silent_for

    def state(self, stale_after: float, now: float | None = None) -> tuple[str, str]:
        """(``up`` | ``degraded`` | ``down``, reason)."""
        now = trio.current_time() if now is None else now
        if not self.running:
            return "down", "not running (idle backup)"
        if self.dry_run:
            return "up", self.last_error or "dry run: heartbeats only"
        if not self.connected:
            return "down", self.last_error or "not connected"
        age = self._data_age(now)
        if age is not None and age >= stale_after:
            return "down", f"no data for {age:.1f}s"
        if not self.subscribed:
            return "degraded", "connected, not subscribed"
        if self.last_data is None or (
            self.started_at is not None and self.last_data < self.started_at
        ):
            return "degraded", "subscribed, no data yet"
        churn = self.reconnects_in_window()
        if churn >= MAX_RECONNECTS_IN_WINDOW:
            return "degraded", f"{churn} reconnects in {HEALTH_WINDOW:.0f}s"
        rate = self.parse_error_rate()
        if rate > MAX_PARSE_ERROR_RATE:
            return "degraded", f"parse errors {rate:.0%} of frames"
        return "up", "data flowing"

    def as_dict(self, stale_after: float) -> dict[str, object]:
        """JSON-ready snapshot (never contains credentials)."""
        state, reason = self.state(stale_after)
        silent = self.silent_for()
        return {
            "state": state,
            "reason": reason,
            "active": self.active,
            "dry_run": self.dry_run,
            "running": self.running,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "last_message_age": None if silent is None else round(silent, 3),
            "messages": self.messages,
            "events": self.events,
            "parse_errors": self.parse_errors,
            "parse_error_rate": round(self.parse_error_rate(), 4),
            "reconnects": self.reconnects,
            "restarts": self.restarts,
            "reconnects_in_window": self.reconnects_in_window(),
            "latency": None if self.latency is None else round(self.latency, 6),
            "latency_avg": None if self.latency_avg is None else round(self.latency_avg, 6),
            "last_error": self.last_error,
        }
