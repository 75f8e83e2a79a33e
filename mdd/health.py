"""Provider health: what the supervisor, /health and mdd-ctl know of each provider run."""

from __future__ import annotations

from typing import Final

import trio

#: Health states, from best to worst.
STATES: Final = ("up", "degraded", "down")


class ProviderHealth:
    """Live facts about one provider, updated by the provider and its runner.

    The provider sets ``connected``/``subscribed`` and calls :meth:`mark_data`
    once per data frame (cheap: one clock read). Times are trio clock seconds.
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
        self.last_error = ""
        self.active = False

    def mark_data(self, events: int = 1) -> None:
        """Record one data frame carrying ``events`` events."""
        self.last_data = trio.current_time()
        self.messages += 1
        self.events += events

    def silent_for(self, now: float | None = None) -> float | None:
        """Seconds since the last data frame (or since start); None before start."""
        now = trio.current_time() if now is None else now
        ref = self.last_data if self.last_data is not None else self.started_at
        return None if ref is None else max(0.0, now - ref)

    def state(self, stale_after: float, now: float | None = None) -> tuple[str, str]:
        """(``up`` | ``degraded`` | ``down``, reason)."""
        if not self.connected:
            return "down", self.last_error or "not connected"
        if not self.subscribed:
            return "degraded", "connected, not subscribed"
        silent = self.silent_for(now)
        if self.last_data is None:
            return "degraded", "subscribed, no data yet"
        if silent is not None and silent >= stale_after:
            return "down", f"no data for {silent:.1f}s"
        return "up", "data flowing"

    def as_dict(self, stale_after: float) -> dict[str, object]:
        """JSON-ready snapshot (never contains credentials)."""
        state, reason = self.state(stale_after)
        silent = self.silent_for()
        return {
            "state": state,
            "reason": reason,
            "active": self.active,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "last_message_age": None if silent is None else round(silent, 3),
            "messages": self.messages,
            "events": self.events,
            "parse_errors": self.parse_errors,
            "reconnects": self.reconnects,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }
