"""Helpers for the failover tests: configs, a running supervisor, a probe on the bus."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from mdd.bus import Bus, SinkInbox
from mdd.config import Config, load_config
from mdd.events import Event, StatusEvent, TradeEvent
from mdd.failover import FailoverSupervisor
from mdd.metrics import REGISTRY


def make_config(
    *,
    providers: dict[str, dict[str, Any]] | None = None,
    feed: str = "f",
    order: tuple[str, ...] = ("p", "b"),
    channels: tuple[str, ...] = ("trade",),
    **failover: Any,
) -> Config:
    """Two sim providers ``p`` (primary) and ``b`` (backup) on one feed, small thresholds."""
    settings = {
        "stale_after": 2.0,
        "failover_after": 3.0,
        "recover_after": 10.0,
        "check_interval": 0.5,
        **failover,
    }
    base = {
        "daemon": {"shutdown_grace": 5},
        "http": {"enabled": False},
        "failover": settings,
        "providers": providers
        or {
            "p": {"kind": "sim", "rate": 20, "seed": 1},
            "b": {"kind": "sim", "rate": 20, "seed": 2},
        },
        "feeds": [
            {"name": feed, "symbols": ["AAA"], "providers": list(order), "channels": list(channels)}
        ],
        "sinks": {"jsonl": {"enabled": False}, "metrics": {"enabled": False}},
    }
    return load_config(None, base=base, env={})


class Probe:
    """Everything the bus delivered to one lane, drained on demand."""

    def __init__(self, lane: SinkInbox) -> None:
        self.lane = lane
        self.events: list[Event] = []

    async def drain(self) -> list[Event]:
        while self.lane.queued:
            self.events.extend(await self.lane.receive_batch(100_000))
        return self.events

    def trades(self, provider: str | None = None) -> list[TradeEvent]:
        return [
            e
            for e in self.events
            if isinstance(e, TradeEvent) and (provider is None or e.provider == provider)
        ]

    def statuses(self) -> list[StatusEvent]:
        return [e for e in self.events if isinstance(e, StatusEvent)]


@asynccontextmanager
async def running_feed(config: Config) -> AsyncIterator[tuple[FailoverSupervisor, Probe]]:
    """A started FailoverSupervisor for the config's only feed, and a probe on its bus."""
    bus = Bus()
    probe = Probe(bus.add_sink("probe", 1_000_000))
    sup = FailoverSupervisor(config, config.feeds[0], bus, rng=random.Random(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        yield sup, probe
        nursery.cancel_scope.cancel("test done")
    await probe.drain()


async def wait_until(pred: Callable[[], bool], within: float, step: float = 0.01) -> float:
    """Poll ``pred`` in virtual time; return the trio time it first held.

    Polling (not an Event) on purpose: the predicates read health that changes
    with the clock, and nothing in the code under test signals it.
    """
    with trio.fail_after(within):
        while not pred():  # noqa: ASYNC110
            await trio.sleep(step)
    return trio.current_time()


def failovers_metric(feed: str, src: str, dst: str) -> float:
    value = REGISTRY.get_sample_value("mdd_failovers_total", {"feed": feed, "from": src, "to": dst})
    return value or 0.0
