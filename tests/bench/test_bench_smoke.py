"""``mdd bench`` smoke tests with tiny event counts (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
import trio

from mdd.bench import BenchError, BenchOptions, run_bench
from mdd.bench_blaster import TradeFrames, accept_key
from mdd.cli import main
from mdd.natsserver import NatsServer
from mdd.providers import binance, bybit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_accept_key_is_rfc6455() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_blaster_frames_parse_with_unique_ids() -> None:
    frames = TradeFrames("binance", ["BTCUSDT", "ETHUSDT"])
    events = [e for _ in range(10) for e in binance.parse(frames.frame(), 1)]
    assert [e.trade_id for e in events] == [str(i) for i in range(1, 11)]
    assert {e.symbol for e in events} == {"BTCUSDT", "ETHUSDT"}
    multi = TradeFrames("bybit", ["BTCUSDT"], per_frame=5)
    parsed = bybit.parse(multi.frame(), 1)
    assert len(parsed) == 5
    assert all(e.type == "trade" for e in parsed)
    with pytest.raises(ValueError, match="one trade per frame"):
        TradeFrames("binance", ["BTCUSDT"], per_frame=2)


@pytest.mark.parametrize("transport", ["trio-websocket", "picows"])
async def test_all_sinks_receive_every_event(
    transport: str, tmp_path: Path, nats_server: NatsServer
) -> None:
    opts = BenchOptions(
        sinks=("jsonl", "sqlite", "nats", "metrics"),
        events=400,
        symbols=("BTCUSDT", "ETHUSDT"),
        transport=transport,
        data_dir=str(tmp_path),
        nats_url=nats_server.url,
    )
    with trio.fail_after(60):
        report = await run_bench(opts)
    assert report["events"] == 400
    assert report["delivered_to_every_sink"] == 400
    assert report["drops"] == {"jsonl": 0, "sqlite": 0, "nats": 0, "metrics": 0}
    assert set(report["stages"]) >= {"receive", "parse", "bus", "jsonl", "sqlite", "nats"}
    assert report["rss_kib"]["peak"] > 0
    db = apsw.Connection(str(tmp_path / "mdd.sqlite"))
    assert db.execute("select count(*) from trades").fetchone() == (400,)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 400


async def test_latency_is_recorded_at_a_fixed_rate(tmp_path: Path) -> None:
    opts = BenchOptions(sinks=("sqlite",), events=200, rate=2000, data_dir=str(tmp_path))
    with trio.fail_after(60):
        report = await run_bench(opts)
    lat = report["latency_ms"]["sqlite"]
    assert lat["n"] == 200
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]


async def test_unknown_sink_or_transport_is_refused() -> None:
    with pytest.raises(BenchError, match="unknown sink"):
        await run_bench(BenchOptions(sinks=("nope",), events=1))
    with pytest.raises(BenchError, match="unknown transport"):
        await run_bench(BenchOptions(transport="carrier-pigeon", events=1))


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--sinks",
            "none",
            "--events",
            "300",
            "--quiet",
            "--json",
            str(out),
            "--transport",
            "both",
        ]
    )
    assert code == 0
    reports = json.loads(out.read_text())
    assert [r["transport"] for r in reports] == ["trio-websocket", "picows"]
    assert all(r["events"] == 300 for r in reports)
    assert all(r["steal_pct"] is None or 0 <= r["steal_pct"] <= 100 for r in reports)
    assert "events/s end to end" in capsys.readouterr().out


def test_cli_book_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--book", "--events", "2000"]) == 0
    assert "level changes/s" in capsys.readouterr().out


def test_cli_consumer_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.json"
    assert main(["bench", "--consumer", "--events", "3000", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bench"] == "consumer"
    assert report["events"] == 3000
    assert report["features_computed"] > 0
    assert "events/s (decode, state, features, signals)" in capsys.readouterr().out


async def test_simulator_as_the_load_generator(tmp_path: Path) -> None:
    opts = BenchOptions(sinks=("sqlite",), events=60, server="sim", data_dir=str(tmp_path))
    with trio.fail_after(60):
        report = await run_bench(opts)
    assert report["server"] == "sim"
    assert report["events"] == 60
    db = apsw.Connection(str(tmp_path / "mdd.sqlite"))
    assert db.execute("select count(*) from trades").fetchone() == (60,)
    with pytest.raises(BenchError, match="binance only"):
        await run_bench(BenchOptions(server="sim", venue="bybit", events=1))


def test_latency_histogram_percentiles_are_within_a_bucket() -> None:
    from mdd.bench import LatencyHistogram, percentiles
    from mdd.events import TradeEvent

    hist = LatencyHistogram()
    now = 10**18
    batch = [
        TradeEvent("b", "X", None, now - i * 1_000_000, 1.0, 1.0, "buy", str(i))
        for i in range(1, 1001)
    ]  # 1 ms .. 1000 ms
    hist.add_batch(now, batch)
    p = percentiles(hist)
    assert p is not None
    assert p["n"] == 1000
    assert p["p50"] == pytest.approx(500, rel=0.01)
    assert p["p99"] == pytest.approx(990, rel=0.01)
    assert p["max"] == pytest.approx(1000, rel=0.01)
    assert len(hist.counts) < 1000  # bounded buckets
    assert percentiles(LatencyHistogram()) is None


async def test_one_loop_shares_asyncio_between_picows_and_nats(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    opts = BenchOptions(
        sinks=("nats",),
        events=300,
        transport="picows",
        one_loop=True,
        data_dir=str(tmp_path),
        nats_url=nats_server.url,
    )
    with trio.fail_after(60):
        report = await run_bench(opts)
    assert report["one_loop"] is True
    assert report["delivered_to_every_sink"] == 300
