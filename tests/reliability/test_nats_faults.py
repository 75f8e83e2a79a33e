"""Reliability: NATS faults with JetStream, the daemon as a subprocess.

nats-server is absent when the daemon starts, comes up during the stream, and
is then killed (-9) and restarted twice while trades flow. After recovery the
JetStream stream holds every trade SQLite holds, each exactly once (the sink
retries unacknowledged batches; ``Nats-Msg-Id`` de-duplicates the resends).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from rel_helpers import DaemonProcess, daemon_doc, duplicates, poll, sqlite_trades

from mdd.chaos import stream_trades
from mdd.natsserver import NatsServer, free_port
from mdd.sim import SimOptions, serve_sim

PREFIX = "rel.events"
STREAM = "REL"


@pytest.fixture
def late_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream nats-server on a fixed free port, not started yet."""
    server = NatsServer(jetstream=True, workdir=tmp_path / "nats", port=free_port())
    yield server
    server.close()


@pytest.mark.slow
async def test_nats_late_then_killed_twice_each_trade_once(
    tmp_path: Path, late_nats: NatsServer
) -> None:
    db = tmp_path / "mdd.sqlite"
    sinks = {
        "sqlite": {"path": "mdd.sqlite", "batch_interval": 0.2},
        "nats": {
            "url": late_nats.url,
            "subject_prefix": PREFIX,
            "jetstream": True,
            "stream": STREAM,
        },
        "metrics": {"enabled": False},
    }
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(
            partial(serve_sim, "binance", SimOptions(symbols=("BTCUSDT",), rate=100, seed=11))
        )
        daemon = DaemonProcess(tmp_path, daemon_doc(tmp_path, sim.url, sinks=sinks))
        await daemon.start()
        try:
            # NATS absent: the daemon runs and stores to SQLite regardless.
            await poll(lambda: len(sqlite_trades(db)) >= 200, 30, "trades with NATS absent")
            assert not daemon.exited()
            await trio.to_thread.run_sync(late_nats.start)
            for _ in range(2):
                n = len(sqlite_trades(db))
                await poll(lambda n=n: len(sqlite_trades(db)) >= n + 200, 30, "more trades")
                await trio.sleep(0.05)
                await trio.to_thread.run_sync(late_nats.kill)
                n = len(sqlite_trades(db))
                await poll(lambda n=n: len(sqlite_trades(db)) >= n + 100, 30, "trades, NATS down")
                await trio.to_thread.run_sync(late_nats.start)
            n = len(sqlite_trades(db))
            await poll(lambda n=n: len(sqlite_trades(db)) >= n + 200, 30, "trades after recovery")
            sim.options.faults.silent = True  # what the venue sent is final
            await trio.sleep(1.0)
            stored = sqlite_trades(db)
            # Wait for the stream to catch up with SQLite (the sink retries the backlog).
            in_stream: list[tuple[str, str]] = []

            async def caught_up() -> bool:
                nonlocal in_stream
                in_stream = await stream_trades(late_nats.url, STREAM, f"{PREFIX}.trade.>")
                return set(in_stream) >= set(stored)

            with trio.move_on_after(30):
                while not await caught_up():  # noqa: ASYNC110 - a server we poll
                    await trio.sleep(0.05)
            code = await daemon.stop(signal.SIGTERM, within=20)
        finally:
            await daemon.aclose()
        sent = list(sim.sent_trades)
        nursery.cancel_scope.cancel()
    log = daemon.stderr()
    assert code == 0, log
    stored = sqlite_trades(db)
    in_stream = await stream_trades(late_nats.url, STREAM, f"{PREFIX}.trade.>")
    assert not duplicates(stored)
    assert not duplicates(in_stream), "JetStream holds a trade twice"
    assert set(in_stream) == set(stored)
    assert set(stored) <= set(sent)
    # The outages were seen and reported, once each, without taking the daemon down.
    # An outage is logged when the sink notices it: the absence at start always,
    # a kill unless nats-py reconnected between two batches without a failed publish.
    recovered = log.count("sink.nats.recovered")
    assert 2 <= recovered <= 3, log
    print(
        f"nats faults: sent={len(sent)} sqlite={len(stored)} stream={len(in_stream)} "
        f"stream_duplicates=0 outages_logged={recovered} (absent at start, killed twice)"
    )
