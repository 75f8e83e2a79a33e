"""End to end with a real nats-server: md.events.> in, senpai.* and HTTP out.

The tests publish events the way the daemon's NATS sink does (JSON from
``mdd.events.dumps`` on ``md.events.{type}.{symbol}``) with a nats-py client
under trio-asyncio, and read the consumer's output from NATS and its HTTP API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_asyncio
from nats.aio.client import Client as NatsClient
from trio_asyncio import aio_as_trio

from mdd.consumer.config import load_consumer_config
from mdd.consumer.service import ConsumerService
from mdd.events import QuoteEvent, TradeEvent, dumps

NS = 1_000_000_000


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[Any]:
    async with trio_asyncio.open_loop():
        nc = NatsClient()
        await aio_as_trio(nc.connect)(servers=[url])
        try:
            yield nc
        finally:
            with trio.CancelScope(shield=True):
                await aio_as_trio(nc.close)()


async def publish(nc: Any, events: list, prefix: str = "md.events") -> None:
    async def _all() -> None:
        for ev in events:
            await nc.publish(f"{prefix}.{ev.type}.{ev.symbol}", dumps(ev))
        await nc.flush()

    await aio_as_trio(_all)()


async def collect(nc: Any, subject: str) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []

    async def cb(msg: Any) -> None:
        got.append((msg.subject, orjson.loads(msg.data)))

    await aio_as_trio(nc.subscribe)(subject, cb=cb)
    await aio_as_trio(nc.flush)()
    return got


async def wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not cond():  # noqa: ASYNC110 -- polling state another task updates
            await trio.sleep(0.01)


def consumer_config(url: str, **overrides: Any):
    base = {"nats.url": url, "http.port": 0}
    base.update(overrides)
    return load_consumer_config(None, env={}, overrides=base)


def trades(symbol: str, start_ns: int, prices: list[float], side: str = "buy") -> list:
    return [
        TradeEvent(
            "sim",
            symbol,
            start_ns + i * NS // 10,
            start_ns + i * NS // 10,
            p,
            1.0,
            side,
            f"{symbol}-{i}",
        )
        for i, p in enumerate(prices)
    ]


async def test_features_and_signals_on_nats_and_http(nats_server_session) -> None:
    url = nats_server_session.url
    cfg = consumer_config(
        url,
        **{
            "nats.queue_group": "e2e-features",
            "signals.return_threshold": 0.005,
            "signals.min_volume": 3.0,
            "alerts.spread_bps": 50.0,
        },
    )
    svc = ConsumerService(cfg)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            async with nats_client(url) as nc:
                out = await collect(nc, "senpai.>")
                now = time.time_ns()
                await publish(nc, [QuoteEvent("sim", "BTCUSDT", now, now, 99.99, 1.0, 100.01, 1.0)])
                await publish(nc, trades("BTCUSDT", now, [100.0, 100.2, 100.4, 100.6, 101.0]))
                # A falling ETH with a wide spread: short signal blocked, spread alert raised.
                await publish(
                    nc, [QuoteEvent("sim", "ETHUSDT", now, now, 3000.0, 1.0, 3030.0, 1.0)]
                )
                await publish(nc, trades("ETHUSDT", now, [3000.0, 2950.0, 2900.0, 2850.0], "sell"))
                await publish(
                    nc, [TradeEvent("sim", "ETHUSDT", None, now, 1.0, 1.0, "diagonal", "x")]
                )
                await wait_for(lambda: svc.consumed["trade"] == 9 and svc.parse_errors == 1)

                def subjects() -> set[str]:
                    return {s for s, _ in out}

                await wait_for(
                    lambda: (
                        {
                            "senpai.features.BTCUSDT",
                            "senpai.signals.BTCUSDT",
                            "senpai.features.ETHUSDT",
                            "senpai.alerts.spread",
                        }
                        <= subjects()
                    )
                )
                signals = [m for s, m in out if s.startswith("senpai.signals.")]
                assert [(m["symbol"], m["side"]) for m in signals] == [("BTCUSDT", "long")]
                assert signals[0]["features"]["return_10s"] >= 0.005
                assert signals[0]["features"]["volume_60s"] >= 3.0
                alert = next(m for s, m in out if s == "senpai.alerts.spread")
                assert alert["symbol"] == "ETHUSDT"
                assert alert["value"] > 50.0
                # Rate-limited features still converge: the last published BTC
                # features carry the final state once the bucket refills.
                await wait_for(
                    lambda: (
                        [m for s, m in out if s == "senpai.features.BTCUSDT"][-1]["last_price"]
                        == 101.0
                    )
                )
            async with httpx.AsyncClient(base_url=svc.http_binds[0]) as client:
                r = await client.get("/features/latest?symbol=BTCUSDT")
                f = r.json()
                assert f["last_price"] == 101.0
                assert f["volume_60s"] == 5.0
                assert f["vwap_60s"] == pytest.approx((100 + 100.2 + 100.4 + 100.6 + 101) / 5)
                assert f["return_10s"] == pytest.approx(0.01)
                r = await client.get("/state/latest?symbol=ETHUSDT")
                assert r.json()["trades"] == 4
                r = await client.get("/health")
                assert r.status_code == 200
                assert r.json()["nats_connected"] is True
                stats = (await client.get("/stats")).json()
                assert stats["parse_errors"] == 1
                assert stats["signals"] == {"long": 1}
                metrics = (await client.get("/metrics")).text
                assert "senpai_nats_connected 1.0" in metrics
                assert 'senpai_published_total{stream="signals"} 1.0' in metrics
            svc.request_stop("test done")
    assert svc.nats.connected is False


async def test_queue_group_splits_the_stream(nats_server_session) -> None:
    url = nats_server_session.url
    a = ConsumerService(
        consumer_config(url, **{"nats.queue_group": "e2e-split", "http.enabled": False})
    )
    b = ConsumerService(
        consumer_config(url, **{"nats.queue_group": "e2e-split", "http.enabled": False})
    )
    seen: dict[str, list[str]] = {"a": [], "b": []}
    for name, svc in (("a", a), ("b", b)):
        offer = svc.inbox.offer

        def recording(
            subject: str, data: bytes, recv_ns: int | None = None, *, _o=offer, _n=name
        ) -> bool:
            seen[_n].append(orjson.loads(data)["trade_id"])
            return _o(subject, data, recv_ns)

        svc.inbox.offer = recording  # type: ignore[method-assign]
    total = 400
    now = time.time_ns()
    events = [
        TradeEvent("sim", f"SYM{i % 8}", now + i, now + i, 100.0 + i % 5, 1.0, "buy", f"t{i}")
        for i in range(total)
    ]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            async with nats_client(url) as nc:
                await publish(nc, events)
            await wait_for(lambda: a.consumed["trade"] + b.consumed["trade"] >= total)
            await trio.sleep(0.2)  # would reveal duplicates arriving late
            a.request_stop()
            b.request_stop()
    ids_a, ids_b = set(seen["a"]), set(seen["b"])
    assert ids_a, "both consumers get part of the stream"
    assert ids_b, "both consumers get part of the stream"
    assert len(ids_a) == len(seen["a"])
    assert len(ids_b) == len(seen["b"])
    assert not ids_a & ids_b, "no message is delivered to both"
    assert ids_a | ids_b == {f"t{i}" for i in range(total)}
    assert a.consumed["trade"] + b.consumed["trade"] == total


async def test_jetstream_durable_consumer(nats_server_session) -> None:
    url = nats_server_session.url
    async with nats_client(url) as nc:
        js = nc.jetstream()
        await aio_as_trio(js.add_stream)(name="E2E_CONSUMER_JS", subjects=["jsmd.events.>"])
        now = time.time_ns()
        # Published before the consumer exists: the durable consumer replays them.
        await publish(nc, trades("BTCUSDT", now, [100.0, 100.5]), prefix="jsmd.events")
    cfg = consumer_config(
        url,
        **{
            "nats.subject": "jsmd.events.>",
            "nats.jetstream_durable": "senpai-e2e",
            "nats.queue_group": "",
            "http.enabled": False,
        },
    )
    svc = ConsumerService(cfg)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            await wait_for(lambda: svc.consumed["trade"] == 2)
            assert svc.latest_features["BTCUSDT"].last_price == 100.5
            svc.request_stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_runs_and_stops_on_sigterm(nats_server_session, tmp_path: Path) -> None:
    port = _free_port()
    conf = tmp_path / "senpai.toml"
    conf.write_text(f"[http]\nport = {port}\n[nats]\nqueue_group = 'e2e-cli'\n")
    env = dict(os.environ, NATS_URL=nats_server_session.url)
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-c",
                "from mdd.consumer.cli import main; raise SystemExit(main())",
                "--config",
                str(conf),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        with trio.fail_after(20):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    try:
                        r = await client.get("/health")
                        if r.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_bytes().decode()
    assert proc.returncode == 0, text
    assert "consumer.stopped" in text


async def test_reconnects_after_nats_restart(nats_server) -> None:
    """The server goes away and comes back on the same port: health follows, data resumes."""
    url = nats_server.url
    svc = ConsumerService(consumer_config(url, **{"nats.queue_group": "e2e-restart"}))
    now = time.time_ns()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            async with nats_client(url) as nc:
                await publish(nc, trades("BTCUSDT", now, [100.0]))
            await wait_for(lambda: svc.consumed["trade"] == 1)
            await trio.to_thread.run_sync(nats_server.kill)
            await wait_for(lambda: not svc.nats.connected)
            async with httpx.AsyncClient(base_url=svc.http_binds[0]) as client:
                assert (await client.get("/health")).status_code == 503
            await trio.to_thread.run_sync(nats_server.start)
            await wait_for(lambda: svc.nats.connected, seconds=15)
            async with nats_client(url) as nc:
                # Retry: the resubscription may reach the server just after our publish.
                while svc.consumed["trade"] < 2:
                    await publish(nc, trades("BTCUSDT", now + NS, [101.0]))
                    await trio.sleep(0.05)
            assert svc.nats.reconnects == 1
            assert svc.latest_features["BTCUSDT"].last_price == 101.0
            svc.request_stop()


async def test_stop_drains_inbox_and_publishes(nats_server_session) -> None:
    """What was received before the stop is processed and its results reach NATS."""
    url = nats_server_session.url
    svc = ConsumerService(
        consumer_config(url, **{"nats.queue_group": "e2e-drain", "http.enabled": False})
    )
    now = time.time_ns()
    with trio.fail_after(20):
        async with nats_client(url) as nc:
            out = await collect(nc, "senpai.features.DRAIN")
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.run)
                for ev in trades("DRAIN", now, [10.0, 11.0, 12.0]):
                    svc.inbox.offer(f"md.events.trade.{ev.symbol}", dumps(ev))
                svc.request_stop("test")  # no checkpoint between the offers and the stop
            await wait_for(lambda: len(out) == 1)
    assert svc.consumed["trade"] == 3
    assert out[0][1]["last_price"] == 12.0
    assert out[0][1]["volume_60s"] == 3.0


async def test_connects_through_a_comma_separated_server_list(nats_server_session) -> None:
    """``[nats] url`` takes a cluster's seed list, as the daemon's sink does."""
    from mdd.natsserver import free_port

    dead = f"nats://127.0.0.1:{free_port()}"
    url = f"{dead},{nats_server_session.url}"
    svc = ConsumerService(consumer_config(url, **{"nats.queue_group": "e2e-seeds"}))
    now = time.time_ns()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            assert svc.nats.connected
            async with nats_client(nats_server_session.url) as nc:
                while svc.consumed["trade"] < 1:
                    await publish(nc, trades("SEEDUSDT", now, [10.0]))
                    await trio.sleep(0.05)
            svc.request_stop()
