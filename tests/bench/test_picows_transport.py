"""The picows transport: a real provider end to end against the simulator, keepalive, close."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.events import Event, TradeEvent
from mdd.health import ProviderHealth
from mdd.providers._picows import PicowsTransport
from mdd.providers._ws import ConnectFailed, ConnectionLost, make_transport
from mdd.providers.binance import BinanceProvider
from mdd.sim import SimOptions, serve_sim
from mdd.supervisor import FeedGate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Rig:
    def __init__(self) -> None:
        self.bus = Bus()
        self.inbox = self.bus.add_sink("collect", 100_000)
        self.gate = FeedGate(self.bus, "binance", active=True)
        self.health = ProviderHealth("binance")
        self.events: list[Event] = []

    async def collect(self) -> None:
        while True:
            self.events.extend(await self.inbox.receive_batch())

    def trades(self) -> list[TradeEvent]:
        return [e for e in self.events if isinstance(e, TradeEvent)]


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling plain attributes of live objects
        await trio.sleep(0.01)


async def _read_until_lost(conn: Any) -> int:
    """Frames read before the connection reports ConnectionLost (which it must)."""
    frames = 0
    while True:
        try:
            await conn.get_message()
        except ConnectionLost as exc:
            reason = str(exc)
            break
        frames += 1
    assert "closed" in reason
    return frames


def _provider(rig: _Rig, url: str, **kw: Any) -> BinanceProvider:
    cfg = ProviderConfig(name="binance", kind="binance", url=url, transport="picows")
    return BinanceProvider(cfg, ("BTCUSDT", "ETHUSDT"), ("trade", "quote"), rig.health, **kw)


def test_config_selects_picows() -> None:
    assert isinstance(make_transport("picows"), PicowsTransport)


async def test_binance_provider_end_to_end_over_picows() -> None:
    rig = _Rig()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_sim, "binance", SimOptions(rate=200, seed=7))
            )
            nursery.start_soon(rig.collect)
            provider = _provider(rig, server.url)
            assert isinstance(provider.transport, PicowsTransport)
            await nursery.start(provider.run, rig.gate)
            await _until(lambda: len(rig.trades()) >= 50)
            nursery.cancel_scope.cancel()
    trades = rig.trades()
    assert {t.symbol for t in trades} == {"BTCUSDT", "ETHUSDT"}
    assert all(
        t.provider == "binance" and t.price > 0 and t.side in ("buy", "sell") for t in trades
    )
    # What the simulator sent is what we parsed, in order, without loss.
    sent = [tid for sym, tid in server.sent_trades if sym == "BTCUSDT"]
    got = [t.trade_id for t in trades if t.symbol == "BTCUSDT"]
    assert got == sent[: len(got)]
    assert any(e.type == "quote" for e in rig.events)
    assert rig.health.parse_errors == 0


async def test_server_pings_are_answered_so_the_connection_lives() -> None:
    rig = _Rig()
    opts = SimOptions(rate=20, ping_interval=0.1, pong_timeout=0.3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "binance", opts))
            nursery.start_soon(rig.collect)
            await nursery.start(_provider(rig, server.url).run, rig.gate)
            session = server.sessions_on("/stream")[0]
            # Ten pings, each answered within the 0.3 s pong timeout, else the sim cuts us.
            await _until(lambda: session._ping_no >= 10)
            assert rig.health.reconnects == 0
            assert rig.health.connected
            nursery.cancel_scope.cancel()


async def test_server_close_is_connection_lost_then_reconnect() -> None:
    rig = _Rig()
    opts = SimOptions(rate=200)
    opts.faults.drop_after = 20
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "binance", opts))
            transport = PicowsTransport()
            async with trio.open_nursery() as conn_nursery:
                conn = await transport.connect(
                    conn_nursery, server.url + "/stream?streams=btcusdt@trade"
                )
                frames = await _read_until_lost(conn)
                await conn.aclose()
            assert frames >= 20
            # The provider reconnects after such cuts and keeps streaming.
            nursery.start_soon(rig.collect)
            await nursery.start(_provider(rig, server.url).run, rig.gate)
            await _until(lambda: rig.health.reconnects >= 1 and len(rig.trades()) > 40)
            nursery.cancel_scope.cancel()


async def test_client_close_is_clean_and_bounded() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "binance", SimOptions(rate=50)))
            async with trio.open_nursery() as conn_nursery:
                conn = await PicowsTransport(close_timeout=2.0).connect(
                    conn_nursery, server.url + "/stream?streams=btcusdt@trade"
                )
                await conn.get_message()
                start = trio.current_time()
                await conn.aclose()
                assert trio.current_time() - start < 2.0
                await _read_until_lost(conn)
                with pytest.raises(ConnectionLost):
                    await conn.send_message("{}")
            nursery.cancel_scope.cancel()


async def test_refused_port_and_bad_url_are_connect_failures() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConnectFailed):
            await PicowsTransport().connect(nursery, f"ws://127.0.0.1:{port}/")
        with pytest.raises(ConnectFailed, match="not a ws"):
            await PicowsTransport().connect(nursery, "http://127.0.0.1:1/")


@pytest.mark.parametrize("batched", [False, True], ids=["get_message", "get_messages"])
async def test_reading_pauses_when_the_reader_lags_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    import orjson

    from mdd import bench_blaster
    from mdd.providers import _picows

    monkeypatch.setattr(_picows, "HIGH_WATER", 50)
    monkeypatch.setattr(_picows, "LOW_WATER", 10)
    n = 3000
    ids: list[int] = []
    sizes: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(bench_blaster.serve, "binance", ["BTCUSDT"], events=n)
            )
            async with trio.open_nursery() as conn_nursery:
                conn = await PicowsTransport().connect(conn_nursery, f"ws://127.0.0.1:{port}/")
                await _until(lambda: conn.paused)  # the reader has not read: reads pause
                assert len(conn.queue) <= 50 + 2000  # at most one socket read past the mark
                while len(ids) < n:
                    batch = await conn.get_messages() if batched else [await conn.get_message()]
                    sizes.append(len(batch))
                    ids.extend(orjson.loads(raw)["data"]["t"] for raw in batch)
                assert not conn.paused  # reads resumed as the queue drained
                await conn.aclose()
                if batched:
                    with pytest.raises(ConnectionLost):
                        await conn.get_messages()
            nursery.cancel_scope.cancel()
    assert ids == list(range(1, n + 1))
    if batched:
        assert max(sizes) <= _picows.BATCH_FRAMES
        assert max(sizes) > 1  # frames of one socket read come together


async def test_bybit_over_picows_sends_its_json_pings() -> None:
    from mdd.providers.bybit import BybitProvider

    rig = _Rig()
    opts = SimOptions(rate=50)
    opts.faults.idle_timeout = 0.5  # the sim cuts a client that sent no ping for 0.5 s
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_sim, "bybit", opts))
            nursery.start_soon(rig.collect)
            cfg = ProviderConfig(
                name="bybit", kind="bybit", url=server.url, transport="picows", ping_interval=0.1
            )
            provider = BybitProvider(cfg, ("BTCUSDT",), ("trade", "quote"), rig.health)
            await nursery.start(provider.run, rig.gate)
            start = trio.current_time()
            await _until(lambda: trio.current_time() - start > 1.5)  # three idle windows
            assert rig.health.reconnects == 0
            assert rig.health.subscribed
            nursery.cancel_scope.cancel()
    assert len(rig.trades()) > 10
