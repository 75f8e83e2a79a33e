"""Scale-out on a real 3-node NATS cluster: active-active dedup and sharding.

Two in-process daemons read the same Binance simulator and publish with
JetStream to an R3 stream on three nats-server processes (routes on
loopback). The simulator records every trade it sent (``sent_trades``); the
stream must hold each of them exactly once. The sharded pair must publish
every configured symbol from exactly one daemon.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_helpers import (
    daemon_doc,
    js_client,
    poll,
    stream_events,
    stream_info,
    stream_trades,
    wait_jetstream_cluster,
)

from mdd.config import load_config, shard_of
from mdd.daemon import Daemon
from mdd.natsserver import NatsCluster
from mdd.sim import SimOptions, SimServer, serve_sim


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-server processes with routes and JetStream, for this module."""
    with NatsCluster(3, workdir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


@asynccontextmanager
async def daemons(docs: list[dict[str, Any]]) -> AsyncIterator[list[Daemon]]:
    """Run in-process daemons; stop them gracefully on exit."""
    running: list[Daemon] = []
    async with trio.open_nursery() as nursery:
        for doc in docs:
            daemon = Daemon(load_config(None, env={}, base=doc), install_signal_handlers=False)
            await nursery.start(daemon.run)
            running.append(daemon)
        try:
            yield running
        finally:
            for daemon in running:
                daemon.request_stop("test done")


def nats_sink(daemon: Daemon) -> Any:
    """The daemon's NATS sink object."""
    return next(sink for sink, _ in daemon._sinks if sink.name == "nats")


async def test_active_active_stores_each_trade_once(
    cluster: NatsCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, stream = "aa.md", "AA_QUICK"
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    with trio.fail_after(60):
        async with js_client(cluster.url) as nc:
            await wait_jetstream_cluster(nc)
            async with trio.open_nursery() as nursery:
                sim: SimServer = await nursery.start(
                    partial(serve_sim, "binance", SimOptions(symbols=tuple(symbols), rate=40))
                )
                docs = [
                    daemon_doc(
                        tmp_path / f"d{i}",
                        sim_url=sim.url,
                        nats_url=cluster.url,
                        prefix=prefix,
                        stream=stream,
                        symbols=symbols,
                        name=f"mdd-{i}",
                    )
                    for i in (1, 2)
                ]
                async with daemons(docs) as (one, two):
                    sinks = [nats_sink(one), nats_sink(two)]
                    await poll(
                        lambda: all(s.published > 0 for s in sinks), 20, "both daemons publishing"
                    )
                    start = len(set(sim.sent_trades))
                    await poll(
                        lambda: len(set(sim.sent_trades)) >= start + 150, 20, "150 more trades"
                    )
                    sim.options.faults.silent = True  # the venue stops: sent_trades is final

                    stored: list[tuple[str, str]] = []

                    async def fetch() -> None:
                        stored[:] = await stream_trades(nc, stream, prefix)

                    with trio.move_on_after(20):
                        while set(stored) != set(sim.sent_trades):
                            await fetch()
                            if set(stored) != set(sim.sent_trades):
                                await trio.sleep(0.2)
                    # Both daemons' lanes drain into the stream (their copies are duplicates).
                    await poll(
                        lambda: all(nats_sink(d).published >= d.bus.published for d in (one, two)),
                        20,
                        "both daemons to publish all they read",
                    )
                    dup_one, dup_two = nats_sink(one).duplicates, nats_sink(two).duplicates
                nursery.cancel_scope.cancel()
            info = await stream_info(nc, stream)
    sent = set(sim.sent_trades)  # final: a frame in flight at the switch still counts
    copies = collections.Counter(sim.sent_trades)
    assert sum(1 for n in copies.values() if n == 2) >= 150, "both daemons received the trades"
    assert set(stored) == sent, f"missing from the stream: {sorted(sent - set(stored))[:5]}"
    assert len(stored) == len(sent), "a trade is stored twice"
    assert dup_one + dup_two >= 150, "the stream rejected the second copies as duplicates"
    refusals = [r.getMessage() for r in caplog.records if "10158" in r.getMessage()]
    assert not refusals, "concurrent copies are not refusals (409 in process is retried)"
    assert info.config.num_replicas == 3
    assert info.config.duplicate_window == 120


async def test_sharded_daemons_cover_every_symbol_once(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix, stream = "shard.md", "SHARD_QUICK"
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "BNBUSDT"]
    with trio.fail_after(60):
        async with js_client(cluster.url) as nc:
            await wait_jetstream_cluster(nc)
            async with trio.open_nursery() as nursery:
                sim: SimServer = await nursery.start(
                    partial(serve_sim, "binance", SimOptions(symbols=tuple(symbols), rate=20))
                )
                # Different provider names only so the test can tell who published what.
                docs = [
                    daemon_doc(
                        tmp_path / f"s{i}",
                        sim_url=sim.url,
                        nats_url=cluster.url,
                        prefix=prefix,
                        stream=stream,
                        symbols=symbols,
                        shard=f"{i}/2",
                        provider=f"node{i}",
                    )
                    for i in (0, 1)
                ]
                async with daemons(docs) as running:
                    feeds = [d.config.feeds[0] for d in running]
                    assert set(feeds[0].symbols).isdisjoint(feeds[1].symbols)
                    assert set(feeds[0].symbols) | set(feeds[1].symbols) == set(symbols)
                    sinks = [nats_sink(d) for d in running]
                    await poll(
                        lambda: all(s.published > 0 for s in sinks), 20, "both daemons publishing"
                    )
                    seen: dict[str, set[str]] = {}
                    with trio.move_on_after(20):
                        while set(seen) != set(symbols):
                            seen.clear()
                            for event in await stream_events(nc, stream, f"{prefix}.trade.>"):
                                seen.setdefault(event["symbol"], set()).add(event["provider"])
                            await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
    assert set(seen) == set(symbols), f"symbols never published: {set(symbols) - set(seen)}"
    for symbol, publishers in seen.items():
        assert publishers == {f"node{shard_of(symbol, 2)}"}, (symbol, publishers)
    # Both nodes got work: the hash spreads these symbols over the two shards.
    assert {p for ps in seen.values() for p in ps} == {"node0", "node1"}


async def test_two_pull_workers_share_one_durable_on_the_r3_stream(cluster: NatsCluster) -> None:
    """The README's pull-consumer recipe: workers fetching from one durable split the
    stream, and copies deduplicated by Nats-Msg-Id are never delivered."""
    from cluster_helpers import create_stream
    from nats.js.api import AckPolicy, ConsumerConfig
    from trio_asyncio import aio_as_trio

    prefix, stream, total = "pull.md", "PULL_QUICK", 300
    with trio.fail_after(60):
        async with js_client(cluster.url) as nc:
            await wait_jetstream_cluster(nc)
            await create_stream(nc, stream, prefix)
            js = nc.jetstream(timeout=5.0)
            for copy in (1, 2):  # two "daemons" publish the same trades
                for i in range(total):
                    ack = await aio_as_trio(js.publish)(
                        f"{prefix}.trade.SYM{i % 5}",
                        f'{{"trade_id": "t{i}"}}'.encode(),
                        headers={"Nats-Msg-Id": f"sim:SYM{i % 5}:t{i}"},
                    )
                    assert bool(ack.duplicate) == (copy == 2)
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
            workers = [
                await aio_as_trio(js.pull_subscribe)(
                    f"{prefix}.trade.>", durable="pull-workers", stream=stream, config=config
                )
                for _ in range(2)
            ]
            got: list[list[str]] = [[], []]

            async def work(n: int) -> None:
                import nats.errors

                while sum(map(len, got)) < total:
                    try:
                        msgs = await aio_as_trio(workers[n].fetch)(batch=25, timeout=0.5)
                    except (nats.errors.TimeoutError, TimeoutError):
                        # nats-py raises a bare asyncio.TimeoutError on one of
                        # its fetch paths (nothing pending for this worker).
                        continue
                    for msg in msgs:
                        got[n].append(msg.data.decode())
                        await aio_as_trio(msg.ack)()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(work, 0)
                nursery.start_soon(work, 1)
    assert got[0], "both workers get part of the stream"
    assert got[1], "both workers get part of the stream"
    assert not set(got[0]) & set(got[1]), "no message goes to both"
    assert len(got[0]) + len(got[1]) == total, "each stored trade once; copies never delivered"
