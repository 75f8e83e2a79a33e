"""Reliability: venue faults against the whole daemon (in process, MockClock).

The simulator serves Binance (and Bybit as the backup) over real loopback
WebSockets; the daemon runs its real supervision tree with SQLite and JSONL.
Faults come one after another: disconnect every N frames, garbage frames,
silence, slow and missing subscribe acks, rejected subscriptions, refused
connections for a minute. The daemon keeps running, counts every fault in
its health (what /health and /metrics serve), fails over and back as
configured, and what it stored matches what the venue sent.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from rel_helpers import duplicates, jsonl_rows, jsonl_trades, sqlite_trades

from mdd.config import load_config
from mdd.daemon import Daemon
from mdd.metrics import DaemonCollector
from mdd.sim import SimOptions, serve_sim


async def until(pred: Callable[[], bool], within: float, what: str) -> None:
    """Poll in virtual time."""
    with trio.move_on_after(within):
        while not pred():  # noqa: ASYNC110 - daemon state changes under the clock
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {within}s: {what}")


def config(tmp_path: Path, providers: dict[str, Any], order: list[str], **failover: Any) -> Any:
    return load_config(
        None,
        env={},
        base={
            "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 10},
            "http": {"enabled": False},
            "bus": {"heartbeat_after": 1.0},
            "failover": failover or {"stale_after": 10, "failover_after": 5},
            "providers": providers,
            "feeds": [
                {"name": "spot", "symbols": ["BTCUSDT"], "providers": order, "channels": ["trade"]}
            ],
            "sinks": {
                "sqlite": {"path": "mdd.sqlite", "batch_interval": 0.2},
                "jsonl": {"path": "events.jsonl"},
                "metrics": {"enabled": False},
            },
        },
    )


async def test_venue_faults_one_after_another(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim_opts = SimOptions(symbols=("BTCUSDT",), rate=20, seed=3)
    faults = sim_opts.faults
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(partial(serve_sim, "binance", sim_opts))
        cfg = config(tmp_path, {"binance": {"url": sim.url}}, ["binance"])
        daemon = Daemon(cfg, install_signal_handlers=False)
        registry = CollectorRegistry()
        registry.register(DaemonCollector(daemon))
        await nursery.start(daemon.run)
        health = daemon.feeds["spot"].runners["binance"].health

        def h() -> dict[str, Any]:
            status: dict[str, Any] = daemon.status()["feeds"]["spot"]["providers"]["binance"]
            return status

        def trades_in() -> int:
            return health.events

        await until(lambda: trades_in() >= 40, 30, "first trades")

        # 1. Disconnect every 30 data frames: each drop is a counted reconnect.
        faults.drop_after = 30
        await until(lambda: h()["reconnects"] >= 3, 120, "three reconnects")
        faults.drop_after = None
        assert sim.connections >= 4

        # 2. Garbage: every one is a counted parse error; the connection stays up.
        conns = sim.connections
        faults.garbage_every = 5
        await until(lambda: sim.garbage_sent >= 12, 60, "garbage sent")
        faults.garbage_every = None
        await until(lambda: h()["parse_errors"] == sim.garbage_sent, 10, "parse errors counted")
        assert sim.connections == conns

        # 3. Silence (control frames still flow): heartbeats, then the supervisor
        # restarts the stale provider (counted as a restart).
        before = h()["restarts"]
        sim.go_silent(45)
        await until(lambda: h()["restarts"] > before, 60, "stale restart")
        await trio.sleep(15)
        n = trades_in()
        await until(lambda: trades_in() > n + 20, 30, "data after silence")

        # 4. Rejected subscriptions (Binance URL streams: HTTP 400 on the upgrade):
        # a clear error, retried with backoff until the venue accepts.
        faults.reject_subscribe = True
        sim.disconnect_all()
        await until(lambda: "400" in h()["last_error"], 60, "subscribe rejected")
        rejected_error = h()["last_error"]
        faults.reject_subscribe = False
        n = trades_in()
        await until(lambda: trades_in() > n + 20, 180, "data after rejection")

        # 5. Refused connections for a minute, then accepted again.
        sim.refuse_for(60)
        attempts = sim.connections
        sim.disconnect_all()
        await trio.sleep(59)
        assert sim.connections > attempts + 1  # it kept trying
        n = trades_in()
        await until(lambda: trades_in() > n + 20, 120, "data after refusals")

        # The daemon is still up; the venue goes quiet so `sent` is final.
        assert not daemon.stopping
        faults.silent = True
        await trio.sleep(3)
        final = h()
        exposition = generate_latest(registry).decode()
        daemon.request_stop("test")
        await until(lambda: daemon.bus.closed, 30, "stopped")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()

    assert final["reconnects"] >= 6
    assert final["restarts"] >= 1
    assert final["parse_errors"] == sim.garbage_sent
    assert "mdd_provider_reconnects_total" in exposition or "mdd_provider_reconnects" in exposition
    line = next(
        ln
        for ln in exposition.splitlines()
        if ln.startswith("mdd_parse_errors") and 'provider="binance"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == sim.garbage_sent
    assert rejected_error
    # Count check: both sinks hold the same trades, each once, all of them sent.
    sent = list(sim.sent_trades)
    in_sqlite = sqlite_trades(tmp_path / "mdd.sqlite")
    in_jsonl = jsonl_trades(tmp_path / "events.jsonl")
    assert not duplicates(in_jsonl)
    assert in_sqlite == in_jsonl
    assert set(in_sqlite) <= set(sent)
    unread = len(set(sent) - set(in_sqlite))
    # Only what was on the wire when a fault cut the connection may be missing.
    assert unread <= 10 * final["reconnects"], (unread, len(sent))
    statuses = [r["status"] for r in jsonl_rows(tmp_path / "events.jsonl") if r["type"] == "status"]
    # Every cut of a live connection is a status event (drops, stale, reject, refuse);
    # failed attempts while refused count as reconnects but were never connected.
    assert statuses.count("disconnected") >= 6
    assert "error" in statuses
    heartbeats = [r for r in jsonl_rows(tmp_path / "events.jsonl") if r["type"] == "heartbeat"]
    assert any(r["provider"] == "binance" and r["silent_for"] >= 5 for r in heartbeats)
    print(
        f"venue faults: sent={len(sent)} stored={len(in_sqlite)} unread_on_wire={unread} "
        f"reconnects={final['reconnects']} parse_errors={final['parse_errors']}"
    )


async def test_bybit_slow_missing_and_rejected_acks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim_opts = SimOptions(symbols=("BTCUSDT",), rate=20, seed=6)
    faults = sim_opts.faults
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(partial(serve_sim, "bybit", sim_opts))
        cfg = config(tmp_path, {"bybit": {"url": sim.url}}, ["bybit"])
        daemon = Daemon(cfg, install_signal_handlers=False)
        await nursery.start(daemon.run)
        health = daemon.feeds["spot"].runners["bybit"].health

        def h() -> dict[str, Any]:
            status: dict[str, Any] = daemon.status()["feeds"]["spot"]["providers"]["bybit"]
            return status

        async def flowing() -> None:
            n = health.events
            await until(lambda: health.events > n + 20, 120, "data flowing")

        await flowing()
        # A slow ack (5 s, under the 10 s limit) is waited for; data flows.
        faults.subscribe_delay = 5.0
        before = h()["reconnects"]
        sim.disconnect_all()
        await until(lambda: h()["reconnects"] > before and h()["subscribed"], 30, "slow ack")
        await flowing()
        # An ack later than 10 s: the connection is dropped, with the reason.
        faults.subscribe_delay = 15.0
        sim.disconnect_all()
        await until(lambda: "not acknowledged" in h()["last_error"], 60, "ack timeout")
        faults.subscribe_delay = 0.0
        await flowing()
        # A rejected subscription (success:false): a clear error, retried.
        faults.reject_subscribe = True
        sim.disconnect_all()
        await until(
            lambda: "subscri" in (e := h()["last_error"].lower()) and "not ack" not in e,
            60,
            "subscription rejected",
        )
        rejected = h()["last_error"]
        faults.reject_subscribe = False
        await flowing()
        faults.silent = True
        await trio.sleep(2)
        daemon.request_stop("test")
        await until(lambda: daemon.bus.closed, 30, "stopped")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert "subscri" in rejected.lower()
    sent = list(sim.sent_trades)
    in_sqlite = sqlite_trades(tmp_path / "mdd.sqlite")
    assert not duplicates(in_sqlite)
    assert set(in_sqlite) <= set(sent)
    assert in_sqlite == jsonl_trades(tmp_path / "events.jsonl")


@pytest.mark.slow
async def test_refused_for_a_minute_fails_over_and_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        binance = await nursery.start(
            partial(serve_sim, "binance", SimOptions(symbols=("BTCUSDT",), rate=20, seed=4))
        )
        bybit = await nursery.start(
            partial(serve_sim, "bybit", SimOptions(symbols=("BTCUSDT",), rate=20, seed=5))
        )
        cfg = config(
            tmp_path,
            {"binance": {"url": binance.url}, "bybit": {"url": bybit.url}},
            ["binance", "bybit"],
            stale_after=5,
            failover_after=3,
            recover_after=10,
            check_interval=0.5,
        )
        daemon = Daemon(cfg, install_signal_handlers=False)
        await nursery.start(daemon.run)
        sup = daemon.feeds["spot"]
        await until(lambda: sup.runners["binance"].health.events >= 20, 30, "primary data")
        assert sup.active == "binance"
        binance.refuse_for(60)
        binance.disconnect_all()
        await until(lambda: sup.active == "bybit", 30, "failover to bybit")
        switched_at = trio.current_time()
        n = sup.runners["bybit"].health.events
        await until(lambda: sup.runners["bybit"].health.events > n + 20, 30, "backup data")
        # Reconnect backoff reaches its 60 s cap during the refusals, so the first
        # accepted attempt may come up to a minute after they end.
        await until(lambda: sup.active == "binance", 240, "back to the primary")
        back_after = trio.current_time() - switched_at
        daemon.request_stop("test")
        await until(lambda: daemon.bus.closed, 30, "stopped")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # Back only after the refusals ended and the primary was healthy for recover_after.
    assert back_after >= 60 - 5
    assert sup.failovers >= 2
    rows = jsonl_rows(tmp_path / "events.jsonl")
    providers = {r["provider"] for r in rows if r["type"] == "trade"}
    assert providers == {"binance", "bybit"}
    assert [r["status"] for r in rows if r["type"] == "status"].count("failover") >= 2
    in_sqlite = sqlite_trades(tmp_path / "mdd.sqlite")
    assert not duplicates(in_sqlite)
    assert len(in_sqlite) == len([r for r in rows if r["type"] == "trade"])
