"""The HTTP API on a real hypercorn server (loopback, free port) with httpx."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from mdd.consumer.config import load_consumer_config
from mdd.consumer.http import METRICS_CONTENT_TYPE, ConsumerApp, serve_http
from mdd.consumer.service import ConsumerService
from mdd.consumer.state import NS
from mdd.events import QuoteEvent, TradeEvent, dumps

T0 = 1_700_000_000 * NS


def loaded_service(**overrides) -> ConsumerService:
    svc = ConsumerService(load_consumer_config(None, env={}, overrides=overrides))
    q = QuoteEvent("sim", "BTCUSDT", T0, T0, 99.0, 1.0, 101.0, 2.0)
    t = TradeEvent("sim", "BTCUSDT", T0 + NS, T0 + NS, 100.5, 0.25, "sell", "7")
    svc.process_batch(
        [("md.events.quote.BTCUSDT", dumps(q), T0), ("md.events.trade.BTCUSDT", dumps(t), T0 + NS)],
        now=0.0,
    )
    return svc


async def test_endpoints() -> None:
    svc = loaded_service()
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_http, ConsumerApp(svc), "127.0.0.1", 0, stop.wait)
            assert binds[0].startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                r = await client.get("/features/latest", params={"symbol": "BTCUSDT"})
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/json"
                f = r.json()
                assert f["mid"] == 100.0
                assert f["spread"] == 2.0
                assert f["last_price"] == 100.5
                assert f["volume_60s"] == 0.25
                assert f["trade_imbalance_60s"] == -1.0

                r = await client.get("/state/latest?symbol=btcusdt")  # case-insensitive
                assert r.status_code == 200
                s = r.json()
                assert s["last_trade"]["trade_id"] == "7"
                assert s["last_quote"]["ask_px"] == 101.0
                assert s["window"]["trades"] == 1

                r = await client.get("/metrics")
                assert r.status_code == 200
                assert r.headers["content-type"] == METRICS_CONTENT_TYPE
                assert 'senpai_events_consumed_total{type="quote"} 1.0' in r.text
                families = {
                    line.split()[2] for line in r.text.splitlines() if line.startswith("# TYPE")
                }
                assert len(families) >= 10

                r = await client.get("/stats")
                assert r.json()["consumed"] == {"quote": 1, "trade": 1}

                r = await client.get("/health")  # NATS not connected in this test
                assert r.status_code == 503
                assert r.json()["status"] == "degraded"

                r = await client.head("/stats")
                assert r.status_code == 200
                assert r.content == b""
            stop.set()


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/features/latest", 400, "missing query parameter: symbol"),
        ("GET", "/features/latest?symbol=", 400, "missing"),
        ("GET", "/state/latest?symbol=BTC%20USDT", 400, "malformed symbol"),
        ("GET", "/state/latest?symbol=%3Cscript%3E", 400, "malformed symbol"),
        ("GET", "/state/latest?symbol=A&symbol=B", 400, "once"),
        ("GET", "/features/latest?symbol=ETHUSDT", 404, "unknown symbol 'ETHUSDT'"),
        ("GET", "/state/latest?symbol=DOGEUSDT", 404, "unknown symbol"),
        ("GET", "/latest", 404, "no such endpoint"),
        ("POST", "/stats", 405, "not allowed"),
        ("DELETE", "/features/latest?symbol=BTCUSDT", 405, "not allowed"),
    ],
)
async def test_json_errors(method: str, path: str, status: int, text: str) -> None:
    svc = loaded_service()
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_http, ConsumerApp(svc), "127.0.0.1", 0, stop.wait)
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                r = await client.request(method, path)
            stop.set()
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == status
    assert text in body["error"]
    if status == 405:
        assert r.headers["allow"] == "GET, HEAD"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_service_without_nats_serves_degraded_health_and_stops() -> None:
    """NATS unreachable at start is not fatal: HTTP answers 503 and stop is clean."""
    url = f"nats://127.0.0.1:{_closed_port()}"
    cfg = load_consumer_config(
        None, env={}, overrides={"nats.url": url, "http.port": 0, "nats.connect_timeout": 0.5}
    )
    svc = ConsumerService(cfg)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run)
            while not svc.http_binds:  # noqa: ASYNC110 -- run() starts only once NATS is up
                await trio.sleep(0.01)
            async with httpx.AsyncClient(base_url=svc.http_binds[0]) as client:
                r = await client.get("/health")
                assert r.status_code == 503
                assert r.json()["nats_connected"] is False
            svc.request_stop("test")
