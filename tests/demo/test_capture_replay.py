"""Raw capture -> replay simulator -> the same normalized events; events JSONL -> SQLite/NATS."""

from __future__ import annotations

import gzip
from functools import partial
from pathlib import Path
from typing import Any

import apsw
import nats
import pytest
import trio
import trio_asyncio

from mdd.bus import Bus
from mdd.capture import CaptureError, CaptureWriter, read_capture
from mdd.config import ProviderConfig
from mdd.events import Event, StatusEvent, TradeEvent, dumps
from mdd.health import ProviderHealth
from mdd.natsserver import NatsServer
from mdd.providers._ws import WsProvider
from mdd.providers.binance import BinanceProvider
from mdd.providers.bybit import BybitProvider
from mdd.replay import ReplayError, replay_events
from mdd.sim import SimOptions, serve_sim
from mdd.sim.replay import parse_speed, serve_replay
from mdd.sinks.sqlite import SqliteSink
from mdd.supervisor import FeedGate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROVIDERS: dict[str, Any] = {"binance": BinanceProvider, "bybit": BybitProvider}


class _Rig:
    def __init__(self, name: str) -> None:
        self.bus = Bus()
        self.inbox = self.bus.add_sink("collect", 100_000)
        self.gate = FeedGate(self.bus, name, active=True)
        self.health = ProviderHealth(name)
        self.events: list[Event] = []

    async def collect(self) -> None:
        while True:
            self.events.extend(await self.inbox.receive_batch())

    def market(self) -> list[tuple[Any, ...]]:
        """Normalized market events without the receive time (which differs by design)."""
        return [
            (type(e).__name__, *(getattr(e, f) for f in e.__slots__ if f != "ts_recv"))
            for e in self.events
            if not isinstance(e, StatusEvent)
        ]


async def _until(predicate: Any) -> None:
    while not predicate():  # noqa: ASYNC110 - polling plain attributes of live objects
        await trio.sleep(0.01)


async def _run_provider(venue: str, url: str, rig: _Rig, enough: Any) -> None:
    cfg = ProviderConfig(name=venue, kind=venue, url=url)
    provider = PROVIDERS[venue](cfg, ("BTCUSDT", "ETHUSDT"), ("trade", "quote"), rig.health)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.collect)
        await nursery.start(provider.run, rig.gate)
        await _until(enough)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("venue", ["binance", "bybit"])
async def test_capture_replayed_through_the_simulator_gives_the_same_events(
    venue: str, tmp_path: Path
) -> None:
    writer = CaptureWriter(tmp_path / "cap", max_bytes=10_000)
    live = _Rig(venue)
    previous = WsProvider.frame_tap
    WsProvider.frame_tap = writer.tap
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                sim = await nursery.start(
                    partial(serve_sim, venue, SimOptions(rate=100, seed=3, trades_per_frame=2))
                )
                await _run_provider(venue, sim.url, live, lambda: len(live.market()) >= 300)
                nursery.cancel_scope.cancel()
    finally:
        WsProvider.frame_tap = previous
    writer.close()
    assert len(writer.files) > 1  # rotated by size
    frames = [f for path in writer.files for f in read_capture(path)]
    assert len(frames) == writer.frames
    assert {f.provider for f in frames} == {venue}
    original = live.market()

    replayed = _Rig(venue)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_replay, writer.files, speed=parse_speed("max"))
            )
            await _run_provider(
                venue, server.url, replayed, lambda: len(replayed.market()) >= len(original)
            )
            nursery.cancel_scope.cancel()
    assert replayed.market()[: len(original)] == original
    assert any(e[0] == "TradeEvent" for e in original)


async def test_replay_paces_by_recorded_time(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path)
    t = 1_700_000_000_000_000_000
    for i in range(5):
        writer.tap("binance", "ws://x", t + i * 100_000_000, f'{{"result":null,"id":{i}}}')
    writer.close()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_replay, writer.files, speed=2.0))
        from mdd.providers._ws import TrioWebsocketTransport

        async with trio.open_nursery() as conn_nursery:
            conn = await TrioWebsocketTransport().connect(conn_nursery, server.url + "/stream")
            start = trio.current_time()
            got = [await conn.get_message() for _ in range(5)]
            elapsed = trio.current_time() - start
            await conn.aclose()
        nursery.cancel_scope.cancel()
    assert got == [f'{{"result":null,"id":{i}}}' for i in range(5)]
    assert 0.15 <= elapsed < 1.0  # 0.4 s of recorded time at speed 2


def test_capture_file_round_trip_binary_and_errors(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path)
    writer.tap("alpaca", "ws://a", 1, b"\x00\xffbinary")
    writer.tap("alpaca", "ws://a", 2, "text")
    writer.close()
    frames = list(read_capture(writer.files[0]))
    assert [(f.ts, f.raw) for f in frames] == [(1, b"\x00\xffbinary"), (2, "text")]
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b'{"ts": 1}\n')
    with pytest.raises(CaptureError, match=r"bad\.jsonl\.gz:1"):
        list(read_capture(bad))
    with pytest.raises(CaptureError, match="cannot read"):
        list(read_capture(tmp_path / "missing.jsonl.gz"))
    with pytest.raises(ValueError, match="speed"):
        parse_speed("0")


def _events_file(path: Path, n: int) -> list[TradeEvent]:
    events = [
        TradeEvent("binance", "BTCUSDT", 1_000 + i, 2_000 + i * 1000, 100.0 + i, 1.5, "buy", str(i))
        for i in range(n)
    ]
    path.write_bytes(b"".join(dumps(e) + b"\n" for e in events))
    return events


async def test_replay_events_into_a_fresh_sqlite_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    _events_file(src, 1200)
    db = tmp_path / "replay.sqlite"
    assert await replay_events([src], SqliteSink(db)) == 1200
    assert await replay_events([src], SqliteSink(db), speed=1000.0) == 1200
    conn = apsw.Connection(str(db))
    assert conn.execute("select count(*), min(price), max(price) from trades").fetchone() == (
        1200,
        100.0,
        1299.0,
    )
    (tmp_path / "broken.jsonl").write_text('{"type": "trade"}\n')
    with pytest.raises(ReplayError, match=r"broken\.jsonl:1"):
        await replay_events([tmp_path / "broken.jsonl"], SqliteSink(tmp_path / "x.sqlite"))


async def test_replay_events_to_nats(tmp_path: Path, nats_server: NatsServer) -> None:
    from mdd.sinks.nats import NatsSink

    src = tmp_path / "events.jsonl"
    _events_file(src, 300)
    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(nats_server.url)
        got: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await trio_asyncio.aio_as_trio(nc.subscribe)("md.events.>", cb=on_msg)
        await trio_asyncio.aio_as_trio(nc.flush)()
        n = await replay_events([src], NatsSink(nats_server.url))
        with trio.fail_after(10):
            await _until(lambda: len(got) >= 300)
        await trio_asyncio.aio_as_trio(nc.close)()
    assert n == 300
    assert got[0] == dumps(TradeEvent("binance", "BTCUSDT", 1000, 2000, 100.0, 1.5, "buy", "0"))


async def test_record_captures_a_running_daemon(tmp_path: Path) -> None:
    from mdd.capture import install_capture
    from mdd.config import load_config
    from mdd.daemon import Daemon

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(partial(serve_sim, "binance", SimOptions(rate=100)))
            cfg = load_config(
                None,
                env={},
                base={
                    "daemon": {"state_dir": str(tmp_path), "watchdog": False},
                    "http": {"enabled": False},
                    "providers": {"binance": {"kind": "binance", "url": sim.url}},
                    "feeds": [{"name": "f", "symbols": ["BTCUSDT"], "providers": ["binance"]}],
                    "sinks": {"metrics": {"enabled": False}},
                },
            )
            daemon = Daemon(cfg, install_signal_handlers=False)
            writer = CaptureWriter(tmp_path / "cap", flush_interval=0.05)
            install_capture(daemon, writer)
            assert WsProvider.frame_tap == writer.tap
            await nursery.start(daemon.run)
            await _until(lambda: writer.frames >= 50)
            daemon.request_stop("test")
            await _until(lambda: WsProvider.frame_tap is None)
            nursery.cancel_scope.cancel()
    frames = [f for path in writer.files for f in read_capture(path)]
    assert len(frames) == writer.frames >= 50
    assert all(f.provider == "binance" and "/stream?streams=" in f.conn for f in frames)
    assert [f.ts for f in frames] == sorted(f.ts for f in frames)


def test_mdd_sim_replay_command_serves_a_capture(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mdd.providers._ws import TrioWebsocketTransport

    writer = CaptureWriter(tmp_path)
    t = 1_700_000_000_000_000_000
    for i in range(3):
        writer.tap("binance", "ws://x", t + i, f'{{"result":null,"id":{i}}}')
    writer.close()

    async def fetch(url: str) -> list[str | bytes]:
        with trio.fail_after(10):
            async with trio.open_nursery() as conn_nursery:
                conn = await TrioWebsocketTransport().connect(conn_nursery, url + "/stream")
                got = [await conn.get_message() for _ in range(3)]
                await conn.aclose()
        return got

    proc = subprocess.Popen(
        [sys.executable, "-m", "mdd", "sim", "--replay", *map(str, writer.files), "--speed",
         "max", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("replay   ws://127.0.0.1:"), line
        assert "3 binance frames" in line
        got = trio.run(fetch, line.split()[1])
        assert got == [f'{{"result":null,"id":{i}}}' for i in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == 0


def test_mdd_sim_replay_bad_speed_is_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mdd", "sim", "--replay", "x.gz", "--speed", "-1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--speed" in result.stderr
