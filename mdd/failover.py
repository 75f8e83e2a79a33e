"""The failover supervisor: per-feed provider switching by health, with hysteresis.

A feed has an ordered list of providers; the first is the primary. The
:class:`FailoverSupervisor` runs each provider it needs under its
:class:`~mdd.supervisor.ProviderRunner` (restart with capped, jittered backoff),
every runner task in its own :class:`trio.CancelScope` inside the supervisor's
nursery, and evaluates health every ``check_interval`` seconds:

* **Failover.** When the active provider has not been *delivering* (connected,
  subscribed, data within ``stale_after``) for ``failover_after`` seconds, the
  next delivering provider in order becomes active; with none, the next one not
  running is started on demand and made active (it gets ``failover_after`` to
  come up); with every provider running and none delivering, the feed stays and
  the runners keep retrying with backoff, forever.
* **Recovery.** When the active provider is not the primary and the primary has
  been ``up`` for ``recover_after`` seconds without a break, the primary becomes
  active again and on-demand backups are cancelled.
* **Stale restarts.** A running provider that is connected but silent for
  ``stale_after + failover_after`` (when it counts as failed) is restarted by
  its runner through the backoff, so a silent venue is retried, not just
  waited for.

Both edges are time-hysteresis: a primary that flaps faster than
``failover_after`` never causes a switch away from it, and one that flaps
faster than ``recover_after`` never gets the feed back until it is stable.

Each switch publishes a ``StatusEvent(status="failover", symbol=<feed>)``
(NATS ``md.events.status.<feed>``, the SQLite ``status`` table), increments
``mdd_failovers_total{feed,from,to}`` and logs ``feed.failover`` with the
reason. At a switch between two providers of the same venue, trades the new
provider sends that the old one already published are dropped for
:data:`SWITCH_WINDOW` seconds (by ``(symbol, trade_id)``); with
``hot_standby`` the new provider's buffered trades since the old one's last
data are replayed first, so the switch loses no trade the backup received.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .metrics import FAILOVERS
from .supervisor import FailoverError, FeedSupervisor, UnknownProviderError

if TYPE_CHECKING:
    import random

    from .bus import Bus
    from .config import Config, FeedConfig, ProviderConfig
    from .events import TradeEvent
    from .supervisor import ProviderRunner

__all__ = ["SWITCH_WINDOW", "FailoverError", "FailoverSupervisor", "UnknownProviderError"]

LOGGER = logging.getLogger("mdd.failover")

#: Seconds after a switch during which the new provider's trades are checked
#: against the keys the old one published (same venue only).
SWITCH_WINDOW: Final = 30.0


def venue_of(config: ProviderConfig) -> str:
    """The venue a provider connects to: providers of one venue share trade ids.

    Two ``binance`` providers (say two endpoints) see the same trades; two sim
    providers are the same venue only when they share a seed (they generate the
    same stream), else each is its own venue.
    """
    if config.kind == "sim":
        return f"sim/{config.seed}" if config.seed is not None else f"sim#{config.name}"
    return config.kind


@attrs.define
class _RunnerTask:
    """One running runner task: the scope that cancels it and its completion."""

    scope: trio.CancelScope
    done: trio.Event


@attrs.define
class _Track:
    """Per-provider edges seen by the check loop (trio clock seconds)."""

    bad_since: float | None = None  # not delivering since
    up_since: float | None = None  # state "up" since
    latency_event: object = None  # the gate event last sampled for latency


@attrs.frozen
class Switch:
    """One switch of the active provider."""

    at: float
    from_: str | None
    to: str
    reason: str
    forced: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "at": round(self.at, 3),
            "from": self.from_,
            "to": self.to,
            "reason": self.reason,
            "forced": self.forced,
        }


class FailoverSupervisor(FeedSupervisor):
    """Runs one feed's providers and switches the active one by health (see module doc).

    Args:
        config: the daemon config; ``config.failover`` gives the thresholds.
        feed: the feed, with its ordered providers (first = primary).
        bus: where the active provider's events go.
        rng: randomness of the runners' backoff jitter (tests pass a seeded one).

    Resource handling:
        :meth:`run` owns a nursery holding the check loop and one task per
        running provider; each provider task enters its own cancel scope, which
        the supervisor keeps to stop that provider alone (an on-demand backup
        after recovery). Cancelling :meth:`run` stops everything.

    Error handling:
        Provider crashes stay inside their runners (restart with backoff); the
        supervisor never raises because a venue is away.
    """

    def __init__(
        self, config: Config, feed: FeedConfig, bus: Bus, *, rng: random.Random | None = None
    ) -> None:
        self.settings = config.failover
        self.hot_standby = self.settings.hot_standby and len(feed.providers) > 1
        super().__init__(config, feed, bus, buffer_standby=self.hot_standby, rng=rng)
        self.venues = {name: venue_of(r.config) for name, r in self.runners.items()}
        self.pinned: str | None = None
        self.failovers = 0
        self.switches: list[Switch] = []
        self.switched_at = 0.0
        self._tasks: dict[str, _RunnerTask] = {}
        self._stopping: dict[str, trio.Event] = {}
        self._track = {name: _Track() for name in self.runners}
        self._nursery: trio.Nursery | None = None
        for runner in self.runners.values():
            runner.health.running = False

    # -- running providers -------------------------------------------------

    def running(self, name: str) -> bool:
        """Whether ``name`` has a runner task (started and not stopped)."""
        return name in self._tasks

    def _start(self, name: str) -> None:
        """Start ``name``'s runner in its own cancel scope (sync: usable from :meth:`force`)."""
        if name in self._tasks:
            return
        assert self._nursery is not None, "supervisor is not running"
        task = _RunnerTask(trio.CancelScope(), trio.Event())
        self._tasks[name] = task
        runner = self.runners[name]
        runner.health.running = True
        runner.health.connected = runner.health.subscribed = False
        runner.health.started_at = trio.current_time()
        self._track[name] = _Track()
        previous = self._stopping.get(name)
        LOGGER.info("feed.provider_start feed=%s provider=%s", self.feed.name, name)
        self._nursery.start_soon(
            self._run_runner, runner, task, previous, name=f"provider {self.feed.name}/{name}"
        )

    async def _run_runner(
        self, runner: ProviderRunner, task: _RunnerTask, previous: trio.Event | None
    ) -> None:
        """One runner task. The scope is entered here, in the task it cancels (STYLE 3)."""
        try:
            with task.scope:
                if previous is not None:
                    await previous.wait()  # the old run of this provider has cleaned up
                await runner.run()
        finally:
            task.done.set()
            if self._stopping.get(runner.name) is task.done:
                del self._stopping[runner.name]

    def _stop(self, name: str, reason: str) -> None:
        """Cancel ``name``'s runner task (its provider closes its connection)."""
        task = self._tasks.pop(name, None)
        if task is None:
            return
        LOGGER.info(
            "feed.provider_stop feed=%s provider=%s reason=%r", self.feed.name, name, reason
        )
        self._stopping[name] = task.done
        task.scope.cancel(reason)
        health = self.runners[name].health
        health.running = False
        self._track[name] = _Track()

    # -- the control loop --------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the feed until cancelled: providers, switching and recovery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self._start(self.primary)
                if self.hot_standby:
                    for name in self.feed.providers[1:]:
                        self._start(name)
                self.activate(self.primary, "primary")
                self.switched_at = trio.current_time()
                nursery.start_soon(self._check_loop, name=f"failover {self.feed.name}")
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _check_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.check_interval)
            self.check()

    def check(self, now: float | None = None) -> None:
        """One health evaluation: sample, restart stale providers, switch if due.

        Synchronous (no checkpoint inside), so a switch is atomic with respect to
        the providers publishing into the gates.
        """
        now = trio.current_time() if now is None else now
        fo = self.settings
        horizon = now - (fo.stale_after + fo.failover_after + 2 * fo.check_interval)
        # A silent provider is restarted once it counts as failed (when the feed
        # fails over), not at the first sign: shorter outages stay within the
        # failover hysteresis, and the restart backoff does not lengthen them.
        restart_after = fo.stale_after + fo.failover_after
        for name, runner in self.runners.items():
            gate = runner.gate
            gate.dedup.expire(now)
            if gate.standby is not None:
                gate.trim_standby(horizon)
            track = self._track[name]
            if not self.running(name):
                continue
            health = runner.health
            health.sample(now)
            event = gate.last
            if event is not None and event is not track.latency_event:
                track.latency_event = event
                if event.ts_exchange is not None:
                    health.note_latency((event.ts_recv - event.ts_exchange) / 1e9)
            if health.delivering(fo.stale_after, now):
                track.bad_since = None
            elif track.bad_since is None:
                track.bad_since = now
            if health.state(fo.stale_after, now)[0] == "up":
                if track.up_since is None:
                    track.up_since = now
            else:
                track.up_since = None
            if health.stale(restart_after, now) and runner.restart(
                f"no data for {restart_after:g}s"
            ):
                LOGGER.warning(
                    "feed.provider_stale feed=%s provider=%s silent=%.1f action=restart",
                    self.feed.name,
                    name,
                    restart_after,
                )
        self._decide(now)

    def _decide(self, now: float) -> None:
        fo = self.settings
        active = self.active
        if active is None:
            return
        track = self._track[active]
        if track.bad_since is not None:
            bad_for = now - max(track.bad_since, self.switched_at)
            if bad_for >= fo.failover_after:
                target = self._pick_backup(active)
                if target is not None:
                    health = self.runners[active].health
                    _state, why = health.state(fo.stale_after, now)
                    if health.last_error and health.last_error not in why:
                        why = f"{why} (last error: {health.last_error})"
                    self._switch(target, f"{active} unhealthy for {bad_for:.1f}s: {why}")
                return
        if active != self.primary and self.pinned is None:
            up_since = self._track[self.primary].up_since
            if up_since is not None and now - up_since >= fo.recover_after:
                self._switch(
                    self.primary, f"{self.primary} healthy for {now - up_since:.1f}s: recovered"
                )

    def _pick_backup(self, active: str) -> str | None:
        """The provider to switch to from an unhealthy ``active``, or None to stay."""
        providers = self.feed.providers
        i = providers.index(active)
        order = [*providers[i + 1 :], *providers[:i]]
        stale_after = self.settings.stale_after
        for name in order:
            if self.running(name) and self.runners[name].health.delivering(stale_after):
                return name
        for name in order:
            if not self.running(name):
                return name  # on demand: start it and give it failover_after to come up
        return None

    def _switch(self, to: str, reason: str, *, forced: bool = False) -> None:
        """Make ``to`` active now: start it if needed, dedup, replay, announce, clean up."""
        now = trio.current_time()
        previous = self.active
        if not self.running(to):
            self._start(to)
        new_gate = self.runners[to].gate
        new_gate.recent.clear()
        replay: list[TradeEvent] = []
        if previous is not None:
            old = self.runners[previous]
            if self.venues[previous] == self.venues[to]:
                new_gate.dedup.open(old.gate.recent_keys(), now + SWITCH_WINDOW)
            if new_gate.standby is not None:
                replay = new_gate.take_standby(old.health.last_data)
        self.activate(to, reason)
        replayed = new_gate.replay(replay) if replay else 0
        self.switched_at = now
        if not forced:
            self.pinned = None
        self.failovers += 1
        self.switches.append(Switch(now, previous, to, reason, forced))
        FAILOVERS.labels(self.feed.name, previous or "", to).inc()
        LOGGER.warning(
            "feed.failover feed=%s from=%s to=%s forced=%s replayed=%d reason=%r",
            self.feed.name,
            previous,
            to,
            forced,
            replayed,
            reason,
        )
        if not self.hot_standby:
            for name in list(self._tasks):
                if name not in (self.primary, to):
                    self._stop(name, f"feed switched to {to}")

    # -- operator and status API ------------------------------------------

    def force(self, provider: str, reason: str = "forced") -> bool:
        """Switch to ``provider`` now (``mdd-ctl failover FEED PROVIDER``); True if it switched.

        A forced backup is held: the feed does not return to the primary by
        itself until ``force(<primary>)`` or an automatic failover (the forced
        provider failing for ``failover_after``). Forcing the primary releases
        the hold. Starts the provider first when it is an idle on-demand backup.

        Raises:
            UnknownProviderError: ``provider`` is not one of the feed's.
            FailoverError: the supervisor is not running.
        """
        if provider not in self.runners:
            raise UnknownProviderError(self.feed.name, provider, self.runners)
        if self._nursery is None:
            raise FailoverError(f"feed {self.feed.name!r} is not running")
        self.pinned = None if provider == self.primary else provider
        if provider == self.active:
            return False
        self._switch(provider, reason, forced=True)
        return True

    def state(self) -> tuple[str, str]:
        """Feed health: ``up`` while the active provider is up; ``down`` when no provider delivers.

        ``degraded`` when the active provider is degraded, or down while another
        provider delivers (a switch is due within ``failover_after``).
        """
        if self.active is None:
            return "down", "not started"
        stale_after = self.settings.stale_after
        now = trio.current_time()
        state, why = self.runners[self.active].health.state(stale_after, now)
        where = self.active if self.active == self.primary else f"{self.active} (backup)"
        if state != "down":
            return state, f"{where}: {why}"
        delivering = [
            n
            for n in self.feed.providers
            if self.running(n) and self.runners[n].health.delivering(stale_after, now)
        ]
        if delivering:
            return "degraded", f"{where}: {why}; {delivering[0]} delivers, switch pending"
        return "down", f"no provider delivers; {where}: {why}"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready feed snapshot for /health and mdd-ctl (no credentials)."""
        out = super().as_dict()
        last = self.switches[-1] if self.switches else None
        out.update(
            {
                "hot_standby": self.hot_standby,
                "pinned": self.pinned,
                "failovers": self.failovers,
                "last_switch": None if last is None else last.as_dict(),
            }
        )
        return out
