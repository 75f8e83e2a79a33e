"""The HTTP API against the real hypercorn server of an in-process daemon."""

from __future__ import annotations

import socket
from pathlib import Path

import apsw
import httpx
import pytest
import trio
from ops_helpers import leaves, ops_config, running, start_daemon, wait_for

from mdd.config import Config
from mdd.daemon import Daemon
from mdd.http import HttpBindError, read_latest
from mdd.sinks import SINK_FACTORIES

JSON = "application/json"


async def test_health_bus_stats_providers_status_metrics(tmp_path: Path) -> None:
    config = ops_config(tmp_path)
    async with running(config) as (_d, ops), httpx.AsyncClient(base_url=ops.http_address) as c:
        assert ops.http_address is not None
        assert ops.http_address.startswith("http://127.0.0.1:")

        r = await c.get("/health")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == JSON
        body = r.json()
        assert body["status"] == "ok"
        assert body["reasons"] == []
        feed = body["feeds"]["crypto"]
        assert feed["active"] == "sim"
        assert feed["healthy"] is True
        assert feed["state"] == "up"
        assert feed["reason"].startswith("sim")
        assert feed["providers"]["sim"]["state"] == "up"
        assert feed["providers"]["sim"]["active"] is True
        assert body["sinks"]["jsonl"]["state"] in ("ok", "starting")

        r = await c.head("/health")
        assert r.status_code == 200
        assert r.content == b""

        r = await c.get("/bus-stats")
        assert r.status_code == 200
        assert r.headers["content-type"] == JSON
        stats = r.json()
        assert stats["backpressure"] == "ok"
        lane = stats["sinks"]["jsonl"]
        for key in ("policy", "capacity", "queued", "fill_pct", "dropped", "evicted"):
            assert key in lane
        assert lane["policy"] == "tiered"
        assert lane["capacity"] == config.bus.capacity

        r = await c.get("/providers")
        assert r.status_code == 200
        assert r.json()["feeds"]["crypto"]["primary"] == "sim"
        assert r.json()["feeds"]["crypto"]["state"] == "up"
        providers = r.json()["feeds"]["crypto"]["providers"]
        assert providers["sim"]["role"] == "active"
        assert providers["sim"]["kind"] == "sim"
        assert providers["sim2"]["role"] == "standby"
        assert providers["sim"]["last_message_age"] is not None
        assert providers["sim"]["events"] > 0

        r = await c.get("/status")
        assert r.status_code == 200
        status = r.json()
        assert status["name"] == "opsd"
        assert status["healthy"] is True
        assert "events_per_second" in status

        r = await c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# HELP mdd_failovers_total" in r.text
        assert 'mdd_bus_capacity{sink="jsonl"} 10000.0' in r.text
        assert 'mdd_provider_active{feed="crypto",provider="sim"} 1.0' in r.text

        r = await c.get("/metrics", headers={"accept": "application/openmetrics-text"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        assert r.text.rstrip().endswith("# EOF")


async def test_errors_are_json_and_never_500(tmp_path: Path) -> None:
    async with (
        running(ops_config(tmp_path)) as (_daemon, ops),
        httpx.AsyncClient(base_url=ops.http_address) as c,
    ):
        r = await c.get("/nope")
        assert r.status_code == 404
        assert r.headers["content-type"] == JSON
        assert "no such endpoint" in r.json()["error"]

        r = await c.post("/health", content=b"{}")
        assert r.status_code == 405
        assert r.headers["content-type"] == JSON
        assert r.headers["allow"] == "GET, HEAD"
        assert "not allowed" in r.json()["error"]

        # /latest without a sqlite sink configured: a clear error, not a crash.
        r = await c.get("/latest", params={"symbol": "BTCUSDT"})
        assert r.status_code == 503
        assert "no sqlite sink" in r.json()["error"]

        bad_queries = {
            "": "missing query parameter: symbol",
            "symbol=": "missing query parameter: symbol",
            "symbol": "missing query parameter: symbol",
            "symbol=BTC%20USD": "malformed symbol",
            "symbol=" + "A" * 33: "malformed symbol",
            "symbol=BTC;DROP": "malformed symbol",
            "symbol=%zz": "invalid percent-encoding",
            "symbol=BTC%2": "invalid percent-encoding",
            "symbol=%ff%fe": "not valid UTF-8",
            "symbol=BTCUSDT&symbol=ETHUSDT": "more than once",
            "&".join(f"k{i}=v" for i in range(40)): "too many query parameters",
        }
        for query, message in bad_queries.items():
            r = await c.get(httpx.URL(f"{ops.http_address}/latest", query=query.encode()))
            assert r.status_code == 400, (query, r.text)
            assert r.headers["content-type"] == JSON
            assert message in r.json()["error"], query

        r = await c.get(httpx.URL(f"{ops.http_address}/health", query=b"x=" + b"a" * 5000))
        assert r.status_code == 414
        assert r.headers["content-type"] == JSON

        # Past hypercorn's own request-head limit: rejected by the server, still no 500.
        r = await c.get(httpx.URL(f"{ops.http_address}/health", query=b"x=" + b"a" * 40000))
        assert 400 <= r.status_code < 500

        # The server is still fine after all that.
        r = await c.get("/health")
        assert r.status_code == 200


def _create_tables(path: Path) -> None:
    """The SQLite sink's two tables, with rows for BTCUSDT (as the sink writes them)."""
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE trades(provider TEXT, symbol TEXT, ts_exchange INTEGER, ts_recv INTEGER,"
        " price REAL, qty REAL, side TEXT, trade_id TEXT);"
        "CREATE TABLE quotes(provider TEXT, symbol TEXT, ts_exchange INTEGER, ts_recv INTEGER,"
        " bid_px REAL, bid_qty REAL, ask_px REAL, ask_qty REAL);"
    )
    conn.execute(
        "INSERT INTO trades VALUES('sim','BTCUSDT',1,2,100.0,1.5,'buy','1'),"
        "('sim','BTCUSDT',3,4,101.0,0.5,'sell','2')"
    )
    conn.execute("INSERT INTO quotes VALUES('sim','BTCUSDT',3,4,100.99,2.0,101.01,3.0)")
    conn.close()


async def test_latest_from_sqlite(tmp_path: Path) -> None:
    real_sink = "sqlite" in SINK_FACTORIES
    db = tmp_path / "md.sqlite"
    if not real_sink:
        _create_tables(db)
    config = ops_config(tmp_path, sinks={"jsonl": {}, "sqlite": {"path": "md.sqlite"}})
    async with running(config) as (_d, ops), httpx.AsyncClient(base_url=ops.http_address) as c:
        with trio.fail_after(10):
            while True:
                r = await c.get("/latest", params={"symbol": "btcusdt"})
                if r.status_code == 200 and r.json()["quote"] is not None:
                    break
                assert r.status_code == 404, r.text
                await trio.sleep(0.02)
        assert r.headers["content-type"] == JSON
        body = r.json()
        assert body["symbol"] == "BTCUSDT"
        trade, quote = body["trade"], body["quote"]
        assert set(trade) == {
            "provider",
            "symbol",
            "ts_exchange",
            "ts_recv",
            "price",
            "qty",
            "side",
            "trade_id",
        }
        assert trade["symbol"] == "BTCUSDT"
        assert trade["provider"] == "sim"
        assert quote["bid_px"] < quote["ask_px"]
        if not real_sink:
            assert trade["trade_id"] == "2"  # the latest by receive time
            assert trade["price"] == 101.0

        r = await c.get("/latest", params={"symbol": "NEVERSEEN"})
        assert r.status_code == 404
        assert r.json()["error"] == "symbol NEVERSEEN never seen"


def test_read_latest_before_any_table(tmp_path: Path) -> None:
    missing = read_latest(tmp_path / "missing.sqlite", "BTCUSDT")
    assert missing == {"symbol": "BTCUSDT", "trade": None, "quote": None}
    empty = tmp_path / "empty.sqlite"
    apsw.Connection(str(empty)).execute("CREATE TABLE other(x)")
    assert read_latest(empty, "BTCUSDT")["trade"] is None


async def test_unhealthy_503_with_reasons_and_no_secrets(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink wants a directory")
    secret = "SEKRETKEY0123456789"
    config = ops_config(
        tmp_path,
        # The failing sink cannot drain: keep the shutdown short.
        daemon={"name": "opsd", "state_dir": str(tmp_path), "shutdown_grace": 0.2},
        providers={
            "dead": {"kind": "binance", "url": "ws://127.0.0.1:9"},
            "alpaca": {"key": secret, "secret": "SHHHH-the-secret", "dry_run": True},
        },
        feeds=[{"name": "spot", "symbols": ["BTCUSDT"], "providers": ["dead"]}],
        sinks={"jsonl": {"path": str(blocker / secret / "events.jsonl")}},
    )
    async with running(config) as (daemon, ops), httpx.AsyncClient(base_url=ops.http_address) as c:
        await wait_for(lambda: daemon.sink_health["jsonl"].state == "failing")
        r = await c.get("/health")
        assert r.status_code == 503
        assert r.headers["content-type"] == JSON
        body = r.json()
        assert body["status"] == "unhealthy"
        reasons = " | ".join(body["reasons"])
        assert "feed spot: no healthy provider" in reasons
        assert "sink jsonl: failing" in reasons
        assert body["feeds"]["spot"]["healthy"] is False
        assert body["feeds"]["spot"]["providers"]["dead"]["state"] == "down"
        assert body["sinks"]["jsonl"]["state"] == "failing"
        for path in ("/health", "/providers", "/status", "/bus-stats"):
            text = (await c.get(path)).text
            assert secret not in text, path
            assert "SHHHH" not in text, path
        assert "***" in r.text  # the sink error mentioned the path: redacted, not dropped


async def test_http_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config: Config = ops_config(tmp_path, http={"port": port})
        daemon = Daemon(config, install_signal_handlers=False)
        from mdd.services import install

        install(daemon)
        with pytest.raises(BaseExceptionGroup) as info:
            await start_daemon(daemon)
        errors = [e for e in leaves(info.value) if isinstance(e, HttpBindError)]
        assert len(errors) == 1
        assert f"127.0.0.1:{port}" in str(errors[0])
        assert "Address already in use" in str(errors[0])
    # The control socket of the refused daemon is not left behind.
    assert not (tmp_path / "mdd.sock").exists()
