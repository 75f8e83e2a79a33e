"""Provider supervision: restart with backoff, the feed gate, the per-feed supervisor.

Each provider run lives in its own :class:`trio.CancelScope`, owned by its
:class:`ProviderRunner`, which restarts it after a crash or an exit with
exponential backoff and jitter (1 s doubling to 60 s, reset after a healthy
period). A crash is contained here: it never reaches the daemon's root nursery.

A :class:`FeedGate` sits between a provider and the bus: only the feed's active
provider passes events on (a hot standby keeps its health fresh but publishes
nothing). :class:`FeedSupervisor` owns the runners of one feed.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Final

import trio

from .events import StatusEvent, now_ns
from .health import ProviderHealth
from .providers import create_provider

if TYPE_CHECKING:
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


class FeedGate:
    """The outlet a provider publishes into: passes events to the bus only while active."""

    def __init__(self, bus: Bus, provider: str, active: bool = False) -> None:
        self.bus = bus
        self.provider = provider
        self.active = active
        self.passed = 0
        self.held = 0

    def publish(self, event: Event) -> None:
        """Forward to the bus when this provider is the feed's active one."""
        if self.active:
            self.passed += 1
            self.bus.publish(event)
        else:
            self.held += 1

    @property
    def congested(self) -> bool:
        """The bus wants producers to wait (a blocking sink is full)."""
        return self.active and self.bus.congested

    async def wait_for_room(self) -> None:
        """Wait for blocking sinks to catch up."""
        await self.bus.wait_for_room()


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
        self.runs = 0

    def reconnect(self) -> None:
        """Cancel the current run and start a new one at once (no backoff)."""
        self._restart_now = True
        if self._scope is not None:
            self._scope.cancel("reconnect requested")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run and restart the provider until cancelled. Never raises provider errors."""
        task_status.started()
        health = self.health
        while True:
            self.runs += 1
            provider = create_provider(self.config, self.feed.symbols, self.feed.channels, health)
            started = trio.current_time()
            health.started_at = started
            LOGGER.info(
                "provider.start provider=%s feed=%s run=%d", self.name, self.feed.name, self.runs
            )
            reason = "exited"
            try:
                with trio.CancelScope() as self._scope:
                    await provider.run(self.gate)
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

    This base version activates the primary (first) provider only; failover
    between providers builds on it.
    """

    def __init__(self, config: Config, feed: FeedConfig, bus: Bus) -> None:
        self.config = config
        self.feed = feed
        self.bus = bus
        self.runners = {
            name: ProviderRunner(config.provider(name), feed, FeedGate(bus, name))
            for name in feed.providers
        }
        self.active: str | None = None

    def activate(self, name: str, reason: str) -> None:
        """Make ``name`` the feed's active provider and publish a status event."""
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the primary provider under its runner until cancelled."""
        primary = self.feed.providers[0]
        self.activate(primary, "primary")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runners[primary].run)
            task_status.started()
