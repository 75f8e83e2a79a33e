"""The daemon: the supervision tree of DESIGN.md and graceful shutdown.

::

    root nursery
    ├─ sinks nursery       one runner per sink, each reading its own bus lane
    ├─ producers nursery   one FeedSupervisor per feed, and the heartbeat monitor
    ├─ services            HTTP, control socket, ... (started with nursery.start)
    └─ signal watcher      SIGTERM/SIGINT -> graceful stop; a second one exits at once

Shutdown runs in the seed system's order: cancel the producers (WebSockets
close), wait for blocking sinks, close the bus, let every sink drain what it
accepted and flush, close the database last; all within ``shutdown_grace``
seconds, after which what is left is cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from .bus import Bus
from .events import SYSTEM_SYMBOL, HeartbeatEvent, now_ns
from .failover import FailoverSupervisor
from .sinks import SinkHealth, build_sinks, sink_runner

if TYPE_CHECKING:
    from .config import Config
    from .supervisor import FeedSupervisor

LOGGER = logging.getLogger("mdd.daemon")

#: Provider name on daemon-wide events (system heartbeats).
SYSTEM_PROVIDER: Final = "mdd"

#: A service is started with ``await nursery.start(service, daemon)``.
Service = Callable[..., Awaitable[Any]]


class Daemon:
    """One running mdd: bus, sinks, feeds and services, under one root nursery.

    Other parts plug in through :attr:`services` (async callables started with
    ``nursery.start(service, daemon)`` after sinks and producers are up) and read
    state through :attr:`bus`, :attr:`feeds` and :attr:`sink_health`.
    """

    def __init__(self, config: Config, *, install_signal_handlers: bool = True) -> None:
        self.config = config
        self.bus = Bus()
        self.install_signal_handlers = install_signal_handlers
        self.feeds: dict[str, FeedSupervisor] = {}
        self.sink_health: dict[str, SinkHealth] = {}
        self.services: list[Service] = []
        self.started_at: float | None = None
        self.started_wall: float | None = None
        self.stopping = False
        self._stop = trio.Event()
        self._producers_scope: trio.CancelScope | None = None
        self._sinks: list[Any] = []
        self.ready = trio.Event()
        #: Called (synchronously) when a graceful shutdown begins, e.g. sd_notify STOPPING=1.
        self.on_stopping: list[Callable[[], None]] = []

    # -- control -----------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Begin graceful shutdown (idempotent)."""
        if not self._stop.is_set():
            LOGGER.info("daemon.stop_requested reason=%s", reason)
            self._stop.set()

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return 0.0 if self.started_at is None else trio.current_time() - self.started_at

    # -- tree --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop` or a signal, then shut down gracefully."""
        cfg = self.config
        self.started_at = trio.current_time()
        self.started_wall = trio.current_time()
        LOGGER.info(
            "daemon.start name=%s feeds=%d source=%s", cfg.daemon.name, len(cfg.feeds), cfg.source
        )
        async with trio.open_nursery() as root:
            if self.install_signal_handlers:
                await root.start(self._watch_signals)
            sinks_done = trio.Event()
            await root.start(self._run_sinks, sinks_done)
            producers_done = trio.Event()
            await root.start(self._run_producers, producers_done)
            for service in self.services:
                await root.start(service, self)
            self.ready.set()
            LOGGER.info(
                "daemon.ready sinks=%s feeds=%s", [s.name for s, _ in self._sinks], list(self.feeds)
            )
            task_status.started(self)
            await self._stop.wait()
            self.stopping = True
            for callback in list(self.on_stopping):
                try:
                    callback()
                except Exception:
                    LOGGER.exception("daemon.on_stopping_failed callback=%r", callback)
            await self._shutdown(producers_done, sinks_done)
            root.cancel_scope.cancel("daemon stopped")
        LOGGER.info("daemon.stopped published=%d", self.bus.published)

    async def _shutdown(self, producers_done: trio.Event, sinks_done: trio.Event) -> None:
        grace = self.config.daemon.shutdown_grace
        LOGGER.info("daemon.shutdown step=producers")
        assert self._producers_scope is not None
        self._producers_scope.cancel("shutdown")
        await producers_done.wait()
        LOGGER.info("daemon.shutdown step=bus published=%d", self.bus.published)
        with trio.move_on_after(grace):
            await self.bus.wait_for_room()
        self.bus.close()
        LOGGER.info("daemon.shutdown step=sinks grace=%.1f", grace)
        with trio.move_on_after(grace) as scope:
            await sinks_done.wait()
        if scope.cancelled_caught:
            queued = {lane.name: lane.queued for lane in self.bus.lanes if lane.queued}
            LOGGER.error("daemon.shutdown_timeout grace=%.1f undelivered=%s", grace, queued)
        else:
            LOGGER.info("daemon.shutdown step=done")

    async def _run_sinks(
        self, done: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self._sinks = build_sinks(cfg)
        try:
            async with trio.open_nursery() as nursery:
                for sink, section in self._sinks:
                    capacity = section.capacity or cfg.bus.capacity
                    inbox = self.bus.add_sink(sink.name, capacity, section.policy)
                    health = self.sink_health[sink.name] = SinkHealth(sink.name)
                    await nursery.start(sink_runner(sink), inbox, health)
                task_status.started()
        finally:
            done.set()

    async def _run_producers(
        self, done: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with trio.CancelScope() as self._producers_scope:
                async with trio.open_nursery() as nursery:
                    for feed in self.config.feeds:
                        supervisor = self.make_feed_supervisor(feed)
                        self.feeds[feed.name] = supervisor
                        await nursery.start(supervisor.run)
                    nursery.start_soon(self._heartbeats)
                    task_status.started()
        finally:
            done.set()

    def make_feed_supervisor(self, feed: Any) -> FeedSupervisor:
        """The supervisor for one feed (a seam for failover and tests)."""
        return FailoverSupervisor(self.config, feed, self.bus)

    async def _heartbeats(self) -> None:
        """Synthetic heartbeats for silent active providers, plus the system heartbeat."""
        every = self.config.bus.heartbeat_after
        while True:
            await trio.sleep(every)
            now = trio.current_time()
            ts = now_ns()
            publish = self.bus.publish
            publish(HeartbeatEvent(SYSTEM_PROVIDER, SYSTEM_SYMBOL, None, ts, 0.0))
            for supervisor in self.feeds.values():
                for runner in supervisor.runners.values():
                    if not runner.gate.active:
                        continue
                    silent = runner.health.silent_for(now)
                    if silent is not None and silent >= every:
                        for symbol in supervisor.feed.symbols:
                            publish(HeartbeatEvent(runner.name, symbol, None, ts, silent))

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stop.is_set():
                    LOGGER.error("daemon.forced_exit signal=%s", name)
                    logging.shutdown()
                    os._exit(1)
                self.request_stop(f"signal {name}")

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary for /health, mdd-ctl and sd_notify STATUS."""
        stale = self.config.failover.stale_after
        return {
            "name": self.config.daemon.name,
            "uptime": round(self.uptime(), 3),
            "stopping": self.stopping,
            "feeds": {
                name: {
                    "active": sup.active,
                    "symbols": list(sup.feed.symbols),
                    "providers": {r.name: r.health.as_dict(stale) for r in sup.runners.values()},
                }
                for name, sup in self.feeds.items()
            },
            "sinks": {name: h.as_dict() for name, h in self.sink_health.items()},
            "bus": self.bus.stats().as_dict(),
        }
