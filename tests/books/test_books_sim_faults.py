"""Injected book faults from ``mdd.sim`` (skip, duplicate, reorder) against the providers.

Binance: a skipped or reordered ``depthUpdate`` is a gap, resynced from a
fresh REST snapshot on the same WebSocket; a duplicate is ignored. Bybit: a
skipped or reordered ``orderbook.50`` delta is a gap, resynced by
resubscribing the topic; a duplicate is ignored. After each fault the local
book equals the simulator's true book at the book's update id.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.events import Event, StatusEvent
from mdd.health import ProviderHealth
from mdd.metrics import REGISTRY
from mdd.providers.binance import BinanceProvider
from mdd.providers.bybit import BybitProvider
from mdd.sim import SimOptions, serve_sim
from mdd.sim._market import fmt_fixed, fmt_min
from mdd.supervisor import FeedGate

SYMBOL = "BTCUSDT"
DEPTH = 20


def gaps_total(name: str) -> float:
    return REGISTRY.get_sample_value("market_gaps_total", {"provider": name}) or 0.0


def true_top(server: Any, update_id: int) -> tuple[tuple, tuple] | None:
    """The simulator's top levels after the step ending at ``update_id``, as floats."""
    market = server.market
    for step in [s for s in market.steps if s.symbol == SYMBOL] + [market.latest(SYMBOL)]:
        if step.last_update_id == update_id:
            dp, dq = step.spec.price_decimals, step.spec.qty_decimals

            def conv(levels: Any, dp: int = dp, dq: int = dq) -> tuple:
                return tuple(
                    (float(fmt_fixed(p, dp, 8)), float(fmt_fixed(q, dq, 8))) for p, q in levels
                )

            return conv(step.bids[:DEPTH]), conv(step.asks[:DEPTH])
    return None


async def until(predicate: Any, step: float = 0.01) -> None:
    while not predicate():  # noqa: ASYNC110 - polling state other tasks change
        await trio.sleep(step)


@pytest.mark.parametrize(
    ("fault", "gaps"),
    [("book_skip", 1), ("book_reorder", 1), ("book_duplicate", 0)],
)
async def test_binance_book_faults(
    autojump_clock: trio.testing.MockClock, fault: str, gaps: int
) -> None:
    name = f"bnc-fault-{fault}"
    bus = Bus()
    inbox = bus.add_sink("collect", 100_000)
    events: list[Event] = []
    before = gaps_total(name)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=(SYMBOL,), rate=50, seed=2)
            server = await nursery.start(partial(serve_sim, "binance", sim))
            config = ProviderConfig(
                name=name, kind="binance", url=server.url, rest_url=server.rest_url
            )
            provider = BinanceProvider(config, (SYMBOL,), ("book",), ProviderHealth(name))

            async def collect() -> None:
                while True:
                    events.extend(await inbox.receive_batch())

            nursery.start_soon(collect)
            await nursery.start(provider.run, FeedGate(bus, name, active=True))
            assert provider.books is not None
            assert provider.snapshots is not None
            book = provider.books.book(SYMBOL)

            def matches() -> bool:
                truth = true_top(server, book.update_id or -1)
                return book.synced and truth is not None and book.top(DEPTH) == truth

            await until(matches)
            fetched = provider.snapshots.fetched
            setattr(sim.faults, fault, 1)
            await until(lambda: getattr(sim.faults, fault) == 0)
            await trio.sleep(1.0)  # ten more depth updates
            await until(matches)
            nursery.cancel_scope.cancel()

    assert gaps_total(name) == before + gaps
    assert provider.snapshots.fetched == fetched + gaps  # one resync per gap
    assert server.connections == 1  # never reconnected
    gap_statuses = [e for e in events if isinstance(e, StatusEvent) and e.status == "gap"]
    assert len(gap_statuses) == gaps
    if fault == "book_duplicate":
        assert provider.books.statistics().ignored >= 1


def bybit_view(server: Any, update_id: int) -> tuple[dict, dict] | None:
    """The simulator's orderbook.50 view after the step with ``u == update_id``."""
    market = server.market
    for step in reversed([s for s in market.steps if s.symbol == SYMBOL]):
        if step.u50 == update_id:
            dp, dq = step.spec.price_decimals, step.spec.qty_decimals
            return (
                {float(fmt_min(p, dp)): float(fmt_min(q, dq)) for p, q in step.bids},
                {float(fmt_min(p, dp)): float(fmt_min(q, dq)) for p, q in step.asks},
            )
    return None


@pytest.mark.parametrize(
    ("fault", "gaps"),
    [("book_skip", 1), ("book_reorder", 1), ("book_duplicate", 0)],
)
async def test_bybit_book_faults(
    autojump_clock: trio.testing.MockClock, fault: str, gaps: int
) -> None:
    name = f"bybit-fault-{fault}"
    bus = Bus()
    bus.add_sink("collect", 100_000)
    before = gaps_total(name)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=(SYMBOL,), rate=50, seed=4)
            server = await nursery.start(partial(serve_sim, "bybit", sim))
            config = ProviderConfig(name=name, kind="bybit", url=server.url, book_depth=50)
            provider = BybitProvider(config, (SYMBOL,), ("book",), ProviderHealth(name))
            await nursery.start(provider.run, FeedGate(bus, name, active=True))
            assert provider.books is not None
            book = provider.books.book(SYMBOL)

            def matches() -> bool:
                return book.synced and bybit_view(server, book.update_id or -1) == book.levels()

            await until(matches)
            setattr(sim.faults, fault, 1)
            await until(lambda: getattr(sim.faults, fault) == 0)
            await trio.sleep(1.0)
            await until(matches)
            nursery.cancel_scope.cancel()

    assert gaps_total(name) == before + gaps
    topic = f"orderbook.50.{SYMBOL}"
    assert server.subscriptions.count(topic) == 1 + gaps  # one resubscribe per gap
    assert server.connections == 1
