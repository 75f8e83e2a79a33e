"""Provider supervision: restart with backoff, the feed gate, the per-feed supervisor.

Each provider run lives in its own :class:`trio.CancelScope`, owned by its
:class:`ProviderRunner`, which restarts it after a crash or an exit with
exponential backoff and jitter (1 s doubling to 60 s, reset after a healthy
period). A crash is contained here: it never reaches the daemon's root nursery.

A :class:`FeedGate` sits between a provider and the bus: only the feed's active
provider passes events on (a hot standby keeps its health fresh but publishes
nothing, and may buffer its trades for replay at a switch). Its
:class:`DedupWindow` drops trades the previous provider already published
after a same-venue switch. :class:`FeedSupervisor` owns the runners of one
feed; :class:`mdd.failover.FailoverSupervisor` adds switching by health.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import TYPE_CHECKING, Final

import trio

from .errors import MddError
from .events import StatusEvent, TradeEvent, now_ns
from .health import ProviderHealth
from .providers import create_provider

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .bus import Bus
    from .config import Config, FeedConfig, ProviderConfig
    from .events import Event

LOGGER = logging.getLogger("mdd.supervisor")

#: Restart backoff, seconds: first delay, cap, and the healthy run time that resets it.
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 60.0
BACKOFF_RESET_AFTER: Final = 30.0
#: Jitter: each delay is multiplied by a uniform factor in [1 - JITTER, 1 + JITTER].
JITTER: Final = 0.2
#: Trade keys (symbol, trade_id) the active gate remembers, for dedup at the next switch.
RECENT_TRADES: Final = 8192
#: Trades a hot-standby gate buffers while closed, for replay at a switch (a bound, not a target:
#: the supervisor trims the buffer by age every check).
STANDBY_BUFFER: Final = 65536


class FailoverError(MddError):
    """A feed switch could not be made as asked."""


class UnknownProviderError(FailoverError):
    """The provider asked for is not one of the feed's providers."""

    def __init__(self, feed: str, provider: str, known: Iterable[str]) -> None:
        self.feed = feed
        self.provider = provider
        super().__init__(
            f"provider {provider!r} is not in feed {feed!r}; its providers: {', '.join(known)}"
        )


class Backoff:
    """Capped exponential backoff with jitter."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        maximum: float = BACKOFF_MAX,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._next = initial

    def next(self) -> float:
        """The next delay (jittered), doubling the base up to the cap."""
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        return min(self.maximum, base * self._rng.uniform(1 - JITTER, 1 + JITTER))

    def reset(self) -> None:
        """Start again from the initial delay (after a healthy period)."""
        self._next = self.initial


class DedupWindow:
    """Trade keys published by the previous active provider, refused for a while after a switch.

    Opened by the supervisor at a switch between two providers of the same
    venue (same trade ids), expired by its check loop: nothing here reads the
    clock per event.
    """

    def __init__(self) -> None:
        self.keys: frozenset[tuple[str, str]] | None = None
        self.until = 0.0
        self.dropped = 0

    def open(self, keys: Iterable[tuple[str, str]], until: float) -> None:
        """Refuse ``keys`` until trio time ``until`` (an empty set closes the window)."""
        frozen = frozenset(keys)
        self.keys = frozen or None
        self.until = until

    def expire(self, now: float) -> None:
        """Close the window once its time is up."""
        if self.keys is not None and now >= self.until:
            self.keys = None

    def is_duplicate(self, key: tuple[str, str]) -> bool:
        """True (and counted) when ``key`` was already published by the previous provider."""
        keys = self.keys
        if keys is not None and key in keys:
            self.dropped += 1
            return True
        return False


#: ``isinstance(x, TradeEvent)`` as a C call (for ``filter``).
_is_trade: Final = TradeEvent.__instancecheck__


class FeedGate:
    """The outlet a provider publishes into: passes events to the bus only while active.

    While active it remembers the keys of the last :data:`RECENT_TRADES` trades it
    passed (for dedup at the next switch) and drops trades its :class:`DedupWindow`
    refuses. While closed it only counts, unless it buffers trades for a hot-standby
    switch (``standby`` is a deque then). The last event seen, open or closed, is kept
    for the supervisor's exchange-latency sample. All of it is O(1) per event.
    """

    def __init__(
        self, bus: Bus, provider: str, active: bool = False, *, buffer_standby: bool = False
    ) -> None:
        self.bus = bus
        self.provider = provider
        self.active = active
        self.passed = 0
        self.held = 0
        self.replayed = 0
        self.last: Event | None = None
        # The last trades passed (not their keys: no tuple per event on the hot path).
        self.recent: collections.deque[TradeEvent] = collections.deque(maxlen=RECENT_TRADES)
        self.dedup = DedupWindow()
        self.standby: collections.deque[tuple[float, TradeEvent]] | None = (
            collections.deque(maxlen=STANDBY_BUFFER) if buffer_standby else None
        )

    def publish(self, event: Event) -> None:
        """Forward to the bus when this provider is the feed's active one."""
        self.last = event
        if self.active:
            if type(event) is TradeEvent:
                if self.dedup.keys is not None and self.dedup.is_duplicate(
                    (event.symbol, event.trade_id)
                ):
                    return
                self.recent.append(event)
            self.passed += 1
            self.bus.publish(event)
        else:
            self.held += 1
            if self.standby is not None and type(event) is TradeEvent:
                self.standby.append((trio.current_time(), event))

    def publish_many(self, events: list[Event]) -> None:
        """:meth:`publish` for each event in order, in one call (a socket read's worth)."""
        if not events:
            return
        self.last = events[-1]
        if self.active:
            if self.dedup.keys is not None:  # just after a switch: the slow way
                for event in events:
                    self.publish(event)
                return
            self.recent.extend(filter(_is_trade, events))  # type: ignore[arg-type]
            self.passed += len(events)
            self.bus.publish_many(events)
        else:
            for event in events:
                self.publish(event)

    @property
    def congested(self) -> bool:
        """The bus wants producers to wait (a blocking sink is full)."""
        return self.active and self.bus.congested

    async def wait_for_room(self) -> None:
        """Wait for blocking sinks to catch up."""
        await self.bus.wait_for_room()

    def recent_keys(self) -> list[tuple[str, str]]:
        """``(symbol, trade_id)`` of the last trades passed (what the next switch dedups)."""
        return [(e.symbol, e.trade_id) for e in self.recent]

    def trim_standby(self, older_than: float) -> None:
        """Forget buffered standby trades received before trio time ``older_than``."""
        buf = self.standby
        while buf and buf[0][0] < older_than:
            buf.popleft()

    def take_standby(self, since: float | None) -> list[TradeEvent]:
        """Buffered trades received at or after ``since`` (all if None); empties the buffer."""
        buf = self.standby
        if not buf:
            return []
        out = [event for at, event in buf if since is None or at >= since]
        buf.clear()
        return out

    def replay(self, events: list[TradeEvent]) -> int:
        """Publish buffered trades through the open gate (dedup applies); returns how many."""
        before = self.passed
        for event in events:
            self.publish(event)
        passed = self.passed - before
        self.replayed += passed
        return passed


class ProviderRunner:
    """Runs one provider forever, each run in its own cancel scope, restarting with backoff."""

    def __init__(
        self,
        config: ProviderConfig,
        feed: FeedConfig,
        gate: FeedGate,
        *,
        health: ProviderHealth | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.feed = feed
        self.gate = gate
        self.name = config.name
        self.health = health or ProviderHealth(config.name)
        self.backoff = Backoff(rng=rng)
        self._scope: trio.CancelScope | None = None
        self._restart_now = False
        self._restart_reason: str | None = None
        self.runs = 0

    def reconnect(self) -> None:
        """Cancel the current run and start a new one at once (no backoff)."""
        self._restart_now = True
        if self._scope is not None:
            self._scope.cancel("reconnect requested")

    def restart(self, reason: str) -> bool:
        """Cancel the current run as failed: the next one starts after the backoff delay.

        The failover supervisor uses it on a provider that is connected but sends
        nothing (a reconnect is what cures that). Returns False between runs.
        """
        if self._scope is None or self._restart_reason is not None:
            return False  # between runs, or a restart is already under way
        self._restart_reason = reason
        self._scope.cancel(reason)
        return True

    def _take_restart_reason(self) -> str | None:
        reason, self._restart_reason = self._restart_reason, None
        return reason

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run and restart the provider until cancelled. Never raises provider errors."""
        task_status.started()
        health = self.health
        while True:
            self.runs += 1
            started = trio.current_time()
            health.started_at = started
            LOGGER.info(
                "provider.start provider=%s feed=%s run=%d", self.name, self.feed.name, self.runs
            )
            reason = "exited"
            self._restart_reason = None
            try:
                with trio.CancelScope() as self._scope:
                    # Built inside the try: a provider that cannot even be built
                    # (unregistered kind, bad option) is retried like a crash.
                    provider = create_provider(
                        self.config, self.feed.symbols, self.feed.channels, health
                    )
                    await provider.run(self.gate)
                if (asked := self._take_restart_reason()) is not None:
                    reason = health.last_error = asked
                    health.requested_restarts += 1
            except Exception as exc:
                reason = f"crashed: {type(exc).__name__}: {exc}"
                health.last_error = reason
                LOGGER.error(
                    "provider.crash provider=%s feed=%s error=%r",
                    self.name,
                    self.feed.name,
                    reason,
                    exc_info=exc,
                )
            finally:
                self._scope = None
                health.connected = False
                health.subscribed = False
            health.restarts += 1
            if self._restart_now:
                self._restart_now = False
                LOGGER.info("provider.reconnect provider=%s", self.name)
                continue
            if trio.current_time() - started >= BACKOFF_RESET_AFTER:
                self.backoff.reset()
            delay = self.backoff.next()
            LOGGER.warning(
                "provider.restart provider=%s reason=%r delay=%.2f", self.name, reason, delay
            )
            await trio.sleep(delay)


class FeedSupervisor:
    """Owns the provider runners of one feed and decides which one is active.

    This base version runs and activates the primary (first) provider only; the
    failover supervisor (:class:`mdd.failover.FailoverSupervisor`) builds on it.
    The daemon, /health, metrics and mdd-ctl read :attr:`runners`, :attr:`active`,
    :attr:`feed`, :meth:`state` and :meth:`as_dict`, and call :meth:`force`.
    """

    def __init__(
        self,
        config: Config,
        feed: FeedConfig,
        bus: Bus,
        *,
        buffer_standby: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.feed = feed
        self.bus = bus
        self.runners = {
            name: ProviderRunner(
                config.provider(name),
                feed,
                FeedGate(bus, name, buffer_standby=buffer_standby),
                rng=rng,
            )
            for name in feed.providers
        }
        self.primary = feed.providers[0]
        self.active: str | None = None

    def activate(self, name: str, reason: str) -> str | None:
        """Make ``name`` the feed's active provider; publish a status event on a change.

        The event is ``StatusEvent(provider=name, symbol=<feed name>, status="failover",
        detail="<from> -> <to>: <reason>")``. Returns the previous active provider.
        """
        previous = self.active
        for runner in self.runners.values():
            runner.gate.active = runner.name == name
            runner.health.active = runner.name == name
        self.active = name
        LOGGER.info(
            "feed.active feed=%s provider=%s previous=%s reason=%r",
            self.feed.name,
            name,
            previous,
            reason,
        )
        if previous is not None and previous != name:
            ts = now_ns()
            self.bus.publish(
                StatusEvent(
                    name, self.feed.name, None, ts, "failover", f"{previous} -> {name}: {reason}"
                )
            )
        return previous

    def force(self, provider: str, reason: str = "forced") -> bool:
        """Make ``provider`` active now (mdd-ctl failover). This base runs the primary only.

        Raises:
            UnknownProviderError: ``provider`` is not one of the feed's.
            FailoverError: the base supervisor cannot run another provider.
        """
        if provider not in self.runners:
            raise UnknownProviderError(self.feed.name, provider, self.runners)
        if provider != self.primary:
            raise FailoverError(f"feed {self.feed.name!r} runs its primary only (no failover)")
        return False

    def state(self) -> tuple[str, str]:
        """The feed's health, (``up`` | ``degraded`` | ``down``, reason), from its active one."""
        if self.active is None:
            return "down", "not started"
        state, reason = self.runners[self.active].health.state(self.config.failover.stale_after)
        return state, f"{self.active}: {reason}"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready feed snapshot for /health and mdd-ctl (no credentials)."""
        stale = self.config.failover.stale_after
        state, reason = self.state()
        return {
            "state": state,
            "reason": reason,
            "active": self.active,
            "primary": self.primary,
            "symbols": list(self.feed.symbols),
            "providers": {r.name: r.health.as_dict(stale) for r in self.runners.values()},
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the primary provider under its runner until cancelled."""
        self.activate(self.primary, "primary")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runners[self.primary].run)
            task_status.started()
