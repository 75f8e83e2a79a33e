"""Alpaca provider: dry-run mode, and end to end against ``mdd.sim`` (loopback)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from prov_rig import Rig, config, until

from mdd.events import HeartbeatEvent
from mdd.providers.alpaca import AlpacaProvider
from mdd.sim import SimOptions, serve_sim

SECRET = "s3cr3t-never-logged"
KEY = "AKIAKEY-never-logged"


@pytest.mark.parametrize(
    ("keys", "reason"),
    [({}, "no ALPACA_KEY"), ({"key": KEY, "secret": SECRET, "dry_run": True}, "dry_run=true")],
)
async def test_dry_run_emits_heartbeats_and_opens_no_connection(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    keys: dict[str, Any],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig("alpaca")
    # Port 9 on loopback: nothing listens; a connection attempt would fail loudly.
    provider = AlpacaProvider(
        config("alpaca", "ws://127.0.0.1:9/v2/iex", **keys),
        ("AAPL", "MSFT"),
        ("trade",),
        rig.health,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.collect)
            await nursery.start(provider.run, rig.gate)
            await trio.sleep(12)
            nursery.cancel_scope.cancel()
    beats = rig.of("heartbeat")
    assert all(isinstance(b, HeartbeatEvent) for b in beats)
    assert {b.symbol for b in beats} == {"AAPL", "MSFT"}
    assert len(beats) == 2 * 3  # at 0, 5 and 10 s
    assert not rig.of("trade")
    assert rig.health.last_error.startswith("dry_run:")
    assert reason in rig.health.last_error
    assert not rig.health.connected
    assert rig.health.dry_run
    assert rig.health.state(stale_after=10.0) == ("up", rig.health.last_error)
    assert rig.statuses() == ["up", "up"]
    assert "alpaca.dry_run" in caplog.text
    assert SECRET not in caplog.text
    assert KEY not in caplog.text


async def _start(
    nursery: trio.Nursery,
    rig: Rig,
    sim: SimOptions,
    *,
    wait: bool = True,
    path: str = "",
    **kw: Any,
) -> tuple[Any, AlpacaProvider]:
    server = await nursery.start(partial(serve_sim, "alpaca", sim))
    nursery.start_soon(rig.collect)
    url = server.url if not path else server.url.rsplit("/v2/", 1)[0] + path
    keys = {k: kw.pop(k) for k in ("key", "secret") if k in kw}
    channels = kw.pop("channels", ("trade", "quote"))
    symbols = kw.pop("symbols", ("AAPL",))
    provider = AlpacaProvider(config("alpaca", url, **keys), symbols, channels, rig.health, **kw)
    if wait:
        await nursery.start(provider.run, rig.gate)
    else:
        nursery.start_soon(partial(provider.run, rig.gate))
    return server, provider


async def test_stocks_end_to_end_into_the_bus(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("alpaca")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(
                symbols=("AAPL", "MSFT"), rate=20, alpaca_key=KEY, alpaca_secret=SECRET
            )
            server, provider = await _start(
                nursery, rig, sim, key=KEY, secret=SECRET, symbols=("AAPL", "MSFT")
            )
            assert not provider.crypto
            await until(lambda: len(rig.of("trade")) >= 20 and len(rig.of("quote")) >= 5)
            nursery.cancel_scope.cancel()
    trades = rig.of("trade")
    assert {t.symbol for t in trades} == {"AAPL", "MSFT"}
    assert all(t.side is None for t in trades)  # stocks carry no aggressor side
    assert all(t.ts_exchange for t in trades)
    sent = list(server.sent_trades)
    # Stock ids are qualified with the exchange code ("V:123"): unique per symbol.
    assert all(":" in t.trade_id for t in trades)
    got = [(t.symbol, t.trade_id.split(":", 1)[1]) for t in trades]
    assert got == sent[: len(trades)]
    assert rig.statuses("AAPL")[:2] == ["connected", "subscribed"]
    assert rig.health.parse_errors == 0


async def test_crypto_end_to_end(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("alpaca")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("BTC/USD",), rate=20, alpaca_key=KEY, alpaca_secret=SECRET)
            _, provider = await _start(
                nursery,
                rig,
                sim,
                path="/v1beta3/crypto/us",
                key=KEY,
                secret=SECRET,
                symbols=("BTC/USD",),
            )
            assert provider.crypto
            await until(lambda: len(rig.of("trade")) >= 10)
            nursery.cancel_scope.cancel()
    trades = rig.of("trade")
    assert {t.symbol for t in trades} == {"BTCUSD"}
    assert {t.side for t in trades} <= {"buy", "sell"}
    assert any(int(t.trade_id) > 2**53 for t in trades)


async def test_auth_failure_is_retried_slowly_and_never_logs_the_secret(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig("alpaca")
    with trio.fail_after(400):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("AAPL",), rate=5, alpaca_key="other", alpaca_secret="other")
            server, _ = await _start(nursery, rig, sim, wait=False, key=KEY, secret=SECRET)
            await trio.sleep(150)
            attempts = server.connections
            nursery.cancel_scope.cancel()
    # One attempt at 0 s, then no faster than every 60 s: 3 in 150 s, never a tight loop.
    assert attempts == 3
    assert "authentication failed: 402 auth failed" in rig.health.last_error
    assert "alpaca.auth_failed" in caplog.text
    errors = [e.detail for e in rig.of("status") if e.status == "error"]
    assert errors
    for text in (caplog.text, rig.health.last_error, *errors, repr(rig.events)):
        assert SECRET not in text
        assert KEY not in text
    assert not rig.of("trade")


async def test_connection_limit_is_retried_slowly_then_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("alpaca")
    with trio.fail_after(400):
        async with trio.open_nursery() as nursery:
            sim = SimOptions(symbols=("AAPL",), rate=5, alpaca_key=KEY, alpaca_secret=SECRET)
            sim.faults.refuse_connections = True
            server, _ = await _start(nursery, rig, sim, wait=False, key=KEY, secret=SECRET)
            await until(lambda: "406" in rig.health.last_error)
            await trio.sleep(30)
            assert server.connections == 1  # the 60 s floor holds
            sim.faults.refuse_connections = False
            await until(lambda: len(rig.of("trade")) >= 5)
            assert trio.current_time() >= 60
            nursery.cancel_scope.cancel()
    assert server.connections == 2


def test_quiet_markets_get_a_long_stale_threshold() -> None:
    """Stocks are silent after hours: only a long silence reopens the connection."""
    from mdd.providers.binance import BinanceProvider

    health = Rig("x").health
    url = "ws://127.0.0.1:9/v2/iex"
    assert AlpacaProvider(config("alpaca", url), ("AAPL",), ("trade",), health).stale_after == 600
    assert (
        BinanceProvider(config("binance", url), ("BTCUSDT",), ("trade",), health).stale_after == 30
    )
    short = AlpacaProvider(config("alpaca", url), ("AAPL",), ("trade",), health, stale_after=5.0)
    assert short.stale_after == 5.0
