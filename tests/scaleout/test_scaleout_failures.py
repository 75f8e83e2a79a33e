"""Active-active under failures: a daemon killed with SIGKILL, then a NATS node killed.

Two ``python -m mdd`` processes read the same Binance simulator and publish
with JetStream to an R3 stream on a 3-node cluster. Mid-stream one daemon is
killed (-9): the other's copies keep the stream complete. Then the stream's
leader server is killed (-9): the survivors elect a new leader, the sink
retries its batch, and publishing goes on. At the end the stream holds every
trade the simulator sent, once each, with no gap in any symbol's trade ids.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from cluster_helpers import (
    create_stream,
    daemon_argv,
    daemon_doc,
    js_client,
    poll,
    stream_info,
    stream_trades,
    to_toml,
    wait_jetstream_cluster,
)

from mdd.natsserver import NatsCluster
from mdd.sim import SimOptions, SimServer, serve_sim

pytestmark = pytest.mark.slow

PREFIX, STREAM = "ha.md", "HA_FAILURES"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A private 3-node cluster: this test kills one of its servers."""
    with NatsCluster(3, workdir=tmp_path / "cluster") as c:
        yield c


async def stored_now(nc: object) -> list[tuple[str, str]]:
    return await stream_trades(nc, STREAM, PREFIX)


async def grows(nc: object, by: int, within: float, what: str) -> float:
    """Wait until the stream holds ``by`` more trades; return how long that took."""
    start = trio.current_time()
    before = len(await stored_now(nc))
    with trio.move_on_after(within):
        while len(await stored_now(nc)) < before + by:  # noqa: ASYNC110 -- polls the stream
            await trio.sleep(0.2)
        return trio.current_time() - start
    raise AssertionError(f"stream did not grow by {by} trades within {within}s: {what}")


async def test_daemon_and_nats_node_killed_nothing_lost(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    procs: list[trio.Process] = []
    logs: list[Path] = []
    with trio.fail_after(120):
        async with js_client(cluster.url) as nc:
            await wait_jetstream_cluster(nc)
            await create_stream(nc, STREAM, PREFIX)
            async with trio.open_nursery() as nursery:
                sim: SimServer = await nursery.start(
                    partial(serve_sim, "binance", SimOptions(symbols=tuple(SYMBOLS), rate=40))
                )
                for i in (1, 2):
                    doc = daemon_doc(
                        tmp_path / f"d{i}",
                        sim_url=sim.url,
                        nats_url=cluster.url,
                        prefix=PREFIX,
                        stream=STREAM,
                        symbols=SYMBOLS,
                        name=f"mdd-{i}",
                    )
                    (tmp_path / f"d{i}").mkdir()
                    conf = tmp_path / f"d{i}.toml"
                    conf.write_text(to_toml(doc))
                    logs.append(tmp_path / f"d{i}.log")
                    with logs[-1].open("wb") as err:
                        procs.append(
                            await trio.lowlevel.open_process(
                                daemon_argv(conf),
                                stdout=subprocess.DEVNULL,
                                stderr=err,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            )
                        )
                try:
                    await poll(lambda: sim.active == 2, 30, "both daemons connected")
                    await poll(lambda: len(sim.subscriptions) >= 2, 10, "both subscribed")
                    await grows(nc, 100, 20, "both daemons running")

                    # 1. One daemon dies (SIGKILL: no flush, no goodbye).
                    procs[0].kill()
                    await procs[0].wait()
                    await poll(lambda: sim.active == 1, 10, "the sim to see the daemon gone")
                    await grows(nc, 100, 10, "after the daemon kill\n" + logs[1].read_text())

                    # 2. The stream's leader server dies.
                    leader = (await stream_info(nc, STREAM)).cluster.leader
                    victim = next(
                        s for s in cluster.servers if f"-n{leader[-1]}" in " ".join(s.extra_args)
                    )
                    await trio.to_thread.run_sync(victim.kill)
                    stall = await grows(nc, 100, 30, "after the node kill\n" + logs[1].read_text())
                    new_leader = (await stream_info(nc, STREAM)).cluster.leader
                    assert new_leader
                    assert new_leader != leader
                    await grows(nc, 100, 10, "on two nodes")

                    # 3. The venue stops; the stream must now hold exactly what was sent.
                    sim.options.faults.silent = True
                    stored: list[tuple[str, str]] = []
                    with trio.move_on_after(30):
                        while set(stored) != set(sim.sent_trades):
                            stored = await stored_now(nc)
                            if set(stored) != set(sim.sent_trades):
                                await trio.sleep(0.3)
                    survivor = procs[1]
                    survivor.send_signal(signal.SIGTERM)
                    with trio.fail_after(15):
                        await survivor.wait()
                finally:
                    for proc in procs:
                        if proc.returncode is None:
                            proc.kill()
                            await proc.wait()
                nursery.cancel_scope.cancel()
    sent = set(sim.sent_trades)  # final: a frame in flight at the switch still counts
    missing = sent - set(stored)
    assert not missing, f"{len(missing)} trades missing, e.g. {sorted(missing)[:5]}"
    assert len(stored) == len(sent), "a trade is stored twice"
    by_symbol: dict[str, list[int]] = collections.defaultdict(list)
    for symbol, trade_id in stored:
        by_symbol[symbol].append(int(trade_id))
    assert set(by_symbol) == set(SYMBOLS)
    for symbol, ids in by_symbol.items():
        assert max(ids) - min(ids) + 1 == len(ids), f"gap in {symbol} trade ids"
    assert procs[1].returncode == 0, logs[1].read_text()[-2000:]
    print(f"publishing resumed {stall:.1f}s after the stream leader was killed")
