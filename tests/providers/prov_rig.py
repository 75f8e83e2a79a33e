"""Test rig for provider integration tests: a real Bus, a FeedGate and a collecting sink."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import trio

from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.errors import ParseError
from mdd.events import Event, StatusEvent
from mdd.health import ProviderHealth
from mdd.supervisor import FeedGate


class Rig:
    """Bus + active FeedGate + a task collecting every event the bus delivers."""

    def __init__(self, name: str) -> None:
        self.bus = Bus()
        self.inbox = self.bus.add_sink("collect", 100_000)
        self.gate = FeedGate(self.bus, name, active=True)
        self.health = ProviderHealth(name)
        self.events: list[Event] = []

    async def collect(self) -> None:
        while True:
            self.events.extend(await self.inbox.receive_batch())

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]

    def statuses(self, symbol: str | None = None) -> list[str]:
        return [
            e.status
            for e in self.events
            if isinstance(e, StatusEvent) and (symbol is None or e.symbol == symbol)
        ]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(e.type for e in self.events)


def config(kind: str, url: str, **kwargs: Any) -> ProviderConfig:
    # These tests pin the trio-websocket transport (their error texts are its own);
    # the default transport, picows, is tested in tests/bench/test_picows_transport.py
    # and by every daemon-level test (failover, books, reliability, demo).
    kwargs.setdefault("transport", "trio-websocket")
    return ProviderConfig(name=kind, kind=kind, url=url, **kwargs)


async def until(predicate: Callable[[], bool], step: float = 0.05) -> None:
    """Poll ``predicate`` (callers cap the wait with ``trio.fail_after``)."""
    while not predicate():  # noqa: ASYNC110 - polling plain attributes of live objects
        await trio.sleep(step)


def outcome(call: Callable[[], object]) -> object:
    """What a parse call gives: its result, or ``ParseError`` (for comparing two paths)."""
    try:
        return call()
    except ParseError:
        return ParseError
