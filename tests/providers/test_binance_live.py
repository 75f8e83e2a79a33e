"""Binance provider end to end over real WebSockets against ``mdd.sim`` (loopback)."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing
from prov_rig import Rig, config, until

from mdd.events import BookEvent, QuoteEvent, TradeEvent
from mdd.providers.binance import BinanceProvider
from mdd.sim import SimOptions, serve_sim


async def _start(nursery: trio.Nursery, rig: Rig, sim: SimOptions, **kw: object) -> tuple:
    server = await nursery.start(partial(serve_sim, "binance", sim))
    nursery.start_soon(rig.collect)
    cfg_keys = {k: kw.pop(k) for k in ("max_streams_per_connection",) if k in kw}
    # The book channel syncs local books from the sim's REST depth snapshot (mdd.books).
    cfg_keys["rest_url"] = server.rest_url
    channels = kw.pop("channels", ("trade", "quote", "book"))
    symbols = kw.pop("symbols", ("BTCUSDT",))
    provider = BinanceProvider(
        config("binance", server.url, **cfg_keys), symbols, channels, rig.health, **kw
    )
    await nursery.start(provider.run, rig.gate)
    return server, provider


async def test_end_to_end_into_the_bus(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("binance")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, _ = await _start(nursery, rig, SimOptions(symbols=("BTCUSDT",), rate=50))
            await until(lambda: len(rig.of("trade")) >= 20 and rig.of("book"))
            nursery.cancel_scope.cancel()
    trades = rig.of("trade")
    assert all(isinstance(t, TradeEvent) and t.symbol == "BTCUSDT" for t in trades)
    assert {t.side for t in trades} <= {"buy", "sell"}
    assert all(t.price > 0 and t.qty > 0 and t.ts_exchange for t in trades)
    # Every trade the venue sent arrives, in order, with its id.
    sent = [tid for sym, tid in server.sent_trades]
    assert [t.trade_id for t in trades] == sent[: len(trades)]
    quotes = rig.of("quote")
    assert quotes
    assert all(isinstance(q, QuoteEvent) and q.ts_exchange is None for q in quotes)
    # Depth deltas keep a local book (mdd.books); what is published are top-N snapshots.
    books = rig.of("book")
    assert all(isinstance(b, BookEvent) and b.is_snapshot for b in books)
    assert all(b.last_update_id is not None and b.bids and b.asks for b in books)
    assert rig.statuses()[:2] == ["connected", "subscribed"]
    assert rig.health.parse_errors == 0
    assert rig.health.messages >= 20
    assert server.subscriptions[:3] == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "btcusdt@depth@100ms",
    ]


async def test_reconnects_and_resubscribes_after_a_dropped_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("binance")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=50)
            server, _ = await _start(nursery, rig, sim, channels=("trade",))
            await until(lambda: len(rig.of("trade")) >= 5)
            sim.faults.drop_after = 10
            await until(lambda: rig.health.reconnects >= 2)
            sim.faults.drop_after = None
            before = len(rig.of("trade"))
            await until(lambda: len(rig.of("trade")) >= before + 20)
            nursery.cancel_scope.cancel()
    assert server.connections >= 3
    statuses = rig.statuses()
    assert statuses.count("disconnected") >= 2
    assert statuses.count("subscribed") >= 3
    # Each reconnect resubscribed the same stream.
    assert server.subscriptions.count("btcusdt@trade") >= 3


async def test_silence_means_reconnect_and_recovery(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("binance")
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=20)
            server, _ = await _start(nursery, rig, sim, channels=("trade",), stale_after=5.0)
            await until(lambda: len(rig.of("trade")) >= 5)
            silent_from = trio.current_time()
            server.go_silent(12.0)
            await until(lambda: rig.health.reconnects >= 1)
            assert trio.current_time() - silent_from >= 5.0
            assert "no message" in rig.health.last_error
            await until(lambda: trio.current_time() - silent_from > 13.0)
            before = len(rig.of("trade"))
            await until(lambda: len(rig.of("trade")) >= before + 10)
            nursery.cancel_scope.cancel()
    assert server.connections >= 2


async def test_garbage_frames_are_counted_and_survived(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig("binance")
    caplog.set_level(logging.WARNING, "mdd.providers")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=50)
            sim.faults.garbage_every = 4
            server, _ = await _start(nursery, rig, sim, channels=("trade", "quote"))
            await until(lambda: server.garbage_sent >= 30 and len(rig.of("trade")) >= 30)
            nursery.cancel_scope.cancel()
    assert rig.health.parse_errors >= 25
    assert rig.health.reconnects == 0
    assert server.connections == 1
    logged = [
        r for r in caplog.records if "parse_error" in r.getMessage() or "unknown" in r.getMessage()
    ]
    # Sampled: the first 10 are logged, not every one.
    assert 1 <= len(logged) <= 12


async def test_streams_are_split_across_connections(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("binance")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT", "ETHUSDT"), rate=20)
            server, provider = await _start(
                nursery,
                rig,
                sim,
                symbols=("BTCUSDT", "ETHUSDT"),
                channels=("trade", "quote"),
                max_streams_per_connection=2,
            )
            assert len(provider.plans()) == 2
            await until(lambda: {t.symbol for t in rig.of("trade")} == {"BTCUSDT", "ETHUSDT"})
            await until(lambda: rig.health.connected and rig.health.subscribed)
            assert server.active == 2
            nursery.cancel_scope.cancel()


async def test_proactive_reconnect_before_the_lifetime_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("binance")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=20)
            server, _ = await _start(nursery, rig, sim, channels=("trade",), max_lifetime=10.0)
            start = trio.current_time()
            await until(lambda: server.connections >= 3)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    # Planned reconnects skip the backoff: two lifetimes of 10 s, no 1-2 s waits on top.
    assert 19.0 <= elapsed < 21.0
    assert rig.health.last_error == ""


async def test_server_shutdown_reconnects_at_once(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("binance")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=20, max_lifetime=10.0, shutdown_notice=2.0)
            server, _ = await _start(nursery, rig, sim, channels=("trade",))
            start = trio.current_time()
            await until(lambda: server.connections >= 2)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    # The notice comes 2 s before the 10 s cut; we are gone (and back) before the cut.
    assert elapsed < 10.0
    assert rig.health.reconnects >= 1


def test_default_lifetime_is_under_24_hours() -> None:
    provider = BinanceProvider(
        config("binance", "ws://127.0.0.1:1"), ("BTCUSDT",), ("trade",), Rig("b").health
    )
    assert provider.max_lifetime is not None
    assert provider.max_lifetime < 24 * 3600


async def test_runs_under_the_supervisor_from_the_registry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The registry builds the provider from config; the runner runs it; data reaches the bus."""
    from mdd.config import FeedConfig
    from mdd.supervisor import ProviderRunner

    rig = Rig("binance")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_sim, "binance", SimOptions(symbols=("ETHUSDT",), rate=20))
            )
            nursery.start_soon(rig.collect)
            feed = FeedConfig(name="f", symbols=("ETHUSDT",), providers=("binance",))
            runner = ProviderRunner(
                config("binance", server.url), feed, rig.gate, health=rig.health
            )
            await nursery.start(runner.run)
            await until(lambda: len(rig.of("trade")) >= 5 and len(rig.of("quote")) >= 5)
            server.disconnect_all()
            n = len(rig.of("trade"))
            await until(lambda: len(rig.of("trade")) >= n + 5)
            nursery.cancel_scope.cancel()
    # The drop was handled inside the provider run (a reconnect), not by a restart.
    assert rig.health.reconnects >= 1
    assert rig.health.restarts == 0
    assert {t.symbol for t in rig.of("trade")} == {"ETHUSDT"}
