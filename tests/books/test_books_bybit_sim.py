"""Bybit provider books against ``mdd.sim`` (orderbook.50 on loopback): gap -> resubscribe."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
import trio.testing

from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.events import BookEvent, Event, StatusEvent
from mdd.health import ProviderHealth
from mdd.metrics import REGISTRY
from mdd.providers.bybit import BybitProvider
from mdd.sim import SimOptions, serve_sim
from mdd.sim._market import fmt_min
from mdd.supervisor import FeedGate

SYMBOL = "ETHUSDT"
NAME = "bybit-books-sim"


def gaps_total() -> float:
    return REGISTRY.get_sample_value("market_gaps_total", {"provider": NAME}) or 0.0


def view_at(server: Any, update_id: int) -> tuple[dict[float, float], dict[float, float]] | None:
    """The simulator's orderbook.50 view after the step with ``u == update_id``."""
    market = server.market
    steps = [s for s in market.steps if s.symbol == SYMBOL] + [market.latest(SYMBOL)]
    for step in reversed(steps):
        if step.u50 == update_id:
            dp, dq = step.spec.price_decimals, step.spec.qty_decimals
            return (
                {float(fmt_min(p, dp)): float(fmt_min(q, dq)) for p, q in step.bids},
                {float(fmt_min(p, dp)): float(fmt_min(q, dq)) for p, q in step.asks},
            )
    return None


async def until(predicate: Any, step: float = 0.01) -> None:
    while not predicate():  # noqa: ASYNC110 - polling state other tasks change
        await trio.sleep(step)


async def test_bybit_sim_gap_resubscribes_and_book_matches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    inbox = bus.add_sink("collect", 100_000)
    events: list[Event] = []
    gaps_before = gaps_total()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_sim, "bybit", SimOptions(symbols=(SYMBOL,), rate=20, seed=5))
            )
            config = ProviderConfig(name=NAME, kind="bybit", url=server.url, book_depth=50)
            provider = BybitProvider(config, (SYMBOL,), ("trade", "book"), ProviderHealth(NAME))

            async def collect() -> None:
                while True:
                    events.extend(await inbox.receive_batch())

            nursery.start_soon(collect)
            await nursery.start(provider.run, FeedGate(bus, NAME, active=True))
            assert provider.books is not None
            book = provider.books.book(SYMBOL)
            await until(lambda: book.synced)

            def matches() -> bool:
                return book.synced and view_at(server, book.update_id or -1) == book.levels()

            await until(matches)
            server.go_silent(1.0)  # deltas lost while the market moves: u jumps
            await until(lambda: gaps_total() > gaps_before)
            await until(lambda: book.synced)
            await trio.sleep(1.0)  # deltas flow again on the new subscription
            await until(matches)
            assert book.update_id is not None
            nursery.cancel_scope.cancel()

    assert gaps_total() == gaps_before + 1
    topic = f"orderbook.50.{SYMBOL}"
    assert server.subscriptions.count(topic) == 2  # subscribed, then resubscribed
    statuses = [e for e in events if isinstance(e, StatusEvent) and e.status == "gap"]
    assert [s.symbol for s in statuses] == [SYMBOL]
    books = [e for e in events if isinstance(e, BookEvent)]
    assert books
    assert all(b.is_snapshot and b.cross_seq is not None for b in books)
    assert server.connections == 1
