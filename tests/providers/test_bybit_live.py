"""Bybit V5 provider end to end over real WebSockets against ``mdd.sim`` (loopback)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from prov_rig import Rig, config, until

from mdd.events import QuoteEvent, TradeEvent
from mdd.providers.bybit import BybitProvider
from mdd.sim import SimOptions, serve_sim


async def _start(
    nursery: trio.Nursery, rig: Rig, sim: SimOptions, *, wait: bool = True, **kw: Any
) -> tuple[Any, BybitProvider]:
    server = await nursery.start(partial(serve_sim, "bybit", sim))
    nursery.start_soon(rig.collect)
    cfg_keys = {k: kw.pop(k) for k in ("ping_interval", "book_depth") if k in kw}
    channels = kw.pop("channels", ("trade", "quote"))
    symbols = kw.pop("symbols", ("BTCUSDT",))
    provider = BybitProvider(
        config("bybit", server.url, **cfg_keys), symbols, channels, rig.health, **kw
    )
    if wait:
        await nursery.start(provider.run, rig.gate)
    else:
        nursery.start_soon(partial(provider.run, rig.gate))
    return server, provider


async def test_end_to_end_into_the_bus(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("bybit")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT", "ETHUSDT"), rate=20, trades_per_frame=3)
            server, _ = await _start(
                nursery,
                rig,
                sim,
                symbols=("BTCUSDT", "ETHUSDT"),
                channels=("trade", "quote", "book"),
            )
            await until(
                lambda: len(rig.of("trade")) >= 30 and len(rig.of("quote")) >= 5 and rig.of("book")
            )
            nursery.cancel_scope.cancel()
    trades = rig.of("trade")
    assert all(isinstance(t, TradeEvent) for t in trades)
    assert {t.symbol for t in trades} == {"BTCUSDT", "ETHUSDT"}
    assert {t.side for t in trades} <= {"buy", "sell"}
    sent = [(sym, tid) for sym, tid in server.sent_trades]
    got = [(t.symbol, t.trade_id) for t in trades]
    assert got == sent[: len(got)]
    assert all(isinstance(q, QuoteEvent) and q.bid_px < q.ask_px for q in rig.of("quote"))
    assert sorted(server.subscriptions[:6]) == sorted(
        f"{topic}.{sym}"
        for sym in ("BTCUSDT", "ETHUSDT")
        for topic in ("publicTrade", "orderbook.1", "orderbook.50")
    )
    assert rig.statuses("BTCUSDT")[:2] == ["connected", "subscribed"]
    assert rig.statuses("ETHUSDT")[:2] == ["connected", "subscribed"]
    assert rig.health.parse_errors == 0


async def test_more_than_ten_topics_are_split_and_all_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    symbols = tuple(f"{base}USDT" for base in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE"))
    rig = Rig("bybit")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=symbols, rate=5)
            server, _ = await _start(nursery, rig, sim, symbols=symbols)
            await until(lambda: rig.health.subscribed)
            nursery.cancel_scope.cancel()
    assert len(server.subscriptions) == 12  # two requests (10 + 2), both acknowledged


async def test_client_pings_keep_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("bybit")
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=2)
            sim.faults.idle_timeout = 30.0
            server, _ = await _start(nursery, rig, sim, ping_interval=20.0)
            await trio.sleep(150)
            nursery.cancel_scope.cancel()
    assert server.connections == 1
    assert rig.health.reconnects == 0


async def test_without_pings_the_venue_cuts_and_we_recover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("bybit")
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=5)
            sim.faults.idle_timeout = 30.0
            server, _ = await _start(nursery, rig, sim, ping_interval=1000.0)
            await until(lambda: rig.health.reconnects >= 1)
            assert "connection closed" in rig.health.last_error
            n = len(rig.of("trade"))
            await until(lambda: len(rig.of("trade")) >= n + 10 and rig.health.subscribed)
            nursery.cancel_scope.cancel()
    assert server.connections >= 2
    assert "disconnected" in rig.statuses()


async def test_rejected_subscription_is_an_error_with_the_venue_text(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "mdd.providers.bybit")
    rig = Rig("bybit")
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=5)
            sim.faults.reject_subscribe = True
            server, _ = await _start(nursery, rig, sim, wait=False)
            await until(lambda: server.connections >= 4)
            failures = [r for r in caplog.records if "bybit.subscribe_failed" in r.getMessage()]
            assert failures
            venue_text = rig.health.last_error
            assert "subscription rejected" in venue_text
            assert not rig.health.subscribed
            # Retried with backoff, not in a tight loop: ~1 + 2 + 4 s between the 4 attempts.
            assert trio.current_time() >= 5.0
            sim.faults.reject_subscribe = False
            await until(lambda: len(rig.of("trade")) >= 5)
            nursery.cancel_scope.cancel()
    assert "error" in rig.statuses()
    errors = [e.detail for e in rig.of("status") if e.status == "error"]
    assert any("subscription rejected" in d for d in errors)


async def test_data_before_the_ack_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("bybit")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=20)
            sim.faults.subscribe_delay = 3.0
            await _start(nursery, rig, sim, wait=False)
            await until(lambda: rig.health.subscribed)
            subscribed_at = len(rig.events)
            nursery.cancel_scope.cancel()
    before = [e for e in rig.events[:subscribed_at] if e.type in ("trade", "quote")]
    assert before, "frames that arrived before the delayed ack must be published"


async def test_garbage_frames_are_counted_and_survived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("bybit")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTCUSDT",), rate=20)
            sim.faults.garbage_every = 3
            server, _ = await _start(nursery, rig, sim)
            await until(lambda: server.garbage_sent >= 20)
            await until(lambda: rig.health.parse_errors >= 15)
            nursery.cancel_scope.cancel()
    assert rig.health.reconnects == 0
    assert rig.of("trade")
