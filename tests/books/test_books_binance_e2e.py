"""End to end: simulator -> Binance provider -> local book -> daemon HTTP ``/book``.

A real daemon (config, supervisor, bus, JSONL sink, hypercorn HTTP API) runs
one Binance feed with the ``book`` channel against ``mdd.sim`` on loopback:
WebSocket depth updates plus the REST depth snapshot. A gap is injected by
silencing the venue while its market keeps moving; the test checks that
``market_gaps_total`` goes up, a gap status is published, the book resyncs
from a new REST snapshot on the same connection, and ``/book`` serves exactly
the simulator's true top levels at the served update id.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import apsw
import httpx
import orjson
import trio

from mdd.config import load_config
from mdd.daemon import Daemon
from mdd.metrics import REGISTRY
from mdd.services import install
from mdd.sim import SimOptions, serve_sim
from mdd.sim._market import fmt_fixed

SYMBOL = "BTCUSDT"
PROVIDER = "bnc-books"
DEPTH = 20
#: Wall-clock cap for the whole test (real time: hypercorn, httpx, sockets).
LIMIT = 30.0


def gaps_total() -> float:
    return REGISTRY.get_sample_value("market_gaps_total", {"provider": PROVIDER}) or 0.0


def conv(step: Any, levels: Any) -> list[list[float]]:
    """Simulator levels (integer ticks/units) as the floats the provider parses."""
    dp, dq = step.spec.price_decimals, step.spec.qty_decimals
    return [[float(fmt_fixed(p, dp, 8)), float(fmt_fixed(q, dq, 8))] for p, q in levels]


def true_top(server: Any, update_id: int) -> tuple[list[list[float]], list[list[float]]] | None:
    """The simulator's top levels right after the step that ended at ``update_id``."""
    market = server.market
    candidates = [s for s in market.steps if s.symbol == SYMBOL]
    candidates.append(market.latest(SYMBOL))
    for step in candidates:
        if step.last_update_id == update_id:
            return conv(step, step.bids[:DEPTH]), conv(step, step.asks[:DEPTH])
    return None


async def get_book(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/book", params={"symbol": SYMBOL, "depth": str(DEPTH)})
    assert r.status_code == 200, r.text
    return r.json()


async def until(predicate: Any, step: float = 0.02) -> None:
    while not await predicate():  # noqa: ASYNC110 - polling a server over HTTP
        await trio.sleep(step)


async def test_binance_gap_resyncs_and_book_matches_simulator(tmp_path: Path) -> None:
    sim_options = SimOptions(symbols=(SYMBOL,), rate=40, seed=11)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "binance", sim_options))
            rest_url = server.rest_url  # the sim's /api/v3/depth (mdd.sim.rest)
            assert rest_url.startswith("http://127.0.0.1:")
            doc = {
                "daemon": {"name": "booksd", "state_dir": str(tmp_path), "shutdown_grace": 2.0},
                "http": {"port": 0},
                "providers": {
                    PROVIDER: {"kind": "binance", "url": server.url, "rest_url": rest_url}
                },
                "feeds": [
                    {
                        "name": "spot",
                        "symbols": [SYMBOL],
                        "providers": [PROVIDER],
                        "channels": ["trade", "book"],
                    }
                ],
                "sinks": {
                    "jsonl": {"path": "events.jsonl"},
                    "sqlite": {"path": "mdd.sqlite", "book_interval": 0.1},
                },
            }
            config = load_config(None, base=doc, env={})
            daemon = Daemon(config, install_signal_handlers=False)
            ops = install(daemon)
            async with trio.open_nursery() as daemon_nursery:
                await daemon_nursery.start(daemon.run)
                assert ops.http_address is not None
                async with httpx.AsyncClient(base_url=ops.http_address) as client:

                    async def synced() -> bool:
                        r = await client.get("/book", params={"symbol": SYMBOL})
                        return r.status_code == 200 and r.json()["synced"]

                    await until(synced)
                    connections = server.connections
                    gaps_before = gaps_total()

                    # Silence: the venue's market moves on but the updates never arrive.
                    server.go_silent(0.3)

                    async def gap_seen() -> bool:
                        return gaps_total() > gaps_before

                    await until(gap_seen)
                    await until(synced)
                    assert server.connections == connections  # resynced on the same WebSocket

                    # The stream goes on after the resync: the served book is the
                    # simulator's true book at the served update id.
                    await trio.sleep(0.3)
                    truth = None
                    for _ in range(20):
                        body = await get_book(client)
                        truth = true_top(server, body["update_id"])
                        if truth is not None:
                            break
                    assert truth is not None, f"update id {body['update_id']} not in the sim"
                    assert body["synced"] is True
                    assert body["bids"] == truth[0]
                    assert body["asks"] == truth[1]
                    assert body["provider"] == PROVIDER
                    assert len(body["bids"]) == DEPTH
                    assert len(body["asks"]) == DEPTH
                    assert body["bids"][0][0] < body["asks"][0][0]

                    r = await client.get("/book", params={"symbol": "ETHUSDT"})
                    assert r.status_code == 404
                    r = await client.get("/book", params={"symbol": SYMBOL, "depth": "0"})
                    assert r.status_code == 400
                    r = await client.get("/book", params={"symbol": SYMBOL, "provider": "other"})
                    assert r.status_code == 404
                    r = await client.get(
                        "/book", params={"symbol": SYMBOL, "provider": PROVIDER, "depth": "3"}
                    )
                    assert r.status_code == 200
                    assert len(r.json()["bids"]) == 3
                daemon.request_stop("test finished")
            nursery.cancel_scope.cancel()  # the simulator

    assert gaps_total() >= gaps_before + 1
    events = [
        orjson.loads(line)
        for line in (tmp_path / "events.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    gap_statuses = [e for e in events if e["type"] == "status" and e["status"] == "gap"]
    assert gap_statuses
    assert gap_statuses[0]["provider"] == PROVIDER
    assert "gap" in gap_statuses[0]["detail"]
    books = [e for e in events if e["type"] == "book"]
    # The SQLite sink keeps the (throttled) top-N snapshots in `books`.
    conn = apsw.Connection(str(tmp_path / "mdd.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute(
            "SELECT provider, symbol, is_snapshot, bids, last_update_id FROM books"
        ).fetchall()
    finally:
        conn.close()
    assert rows
    assert {(r[0], r[1], r[2]) for r in rows} == {(PROVIDER, SYMBOL, 1)}
    assert all(0 < len(orjson.loads(r[3])) <= DEPTH and r[4] is not None for r in rows)
    assert books
    assert all(b["is_snapshot"] and len(b["bids"]) <= DEPTH for b in books)
