"""NATS sink against a real nats-server (JetStream on), nats-py under trio-asyncio everywhere."""

from __future__ import annotations

import itertools
import logging
import socket
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
import trio_asyncio
from nats.aio.client import Client as NatsClient

from mdd.bus import Bus
from mdd.events import SYSTEM_SYMBOL, HeartbeatEvent, QuoteEvent, StatusEvent, TradeEvent, loads
from mdd.natsserver import NatsServer
from mdd.sinks import SINK_FACTORIES, SinkHealth, sink_runner
from mdd.sinks.nats import NatsSink, msg_id, redact

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T0 = 1_700_000_000_000_000_000
_ids = itertools.count()


def trade(i: int, symbol: str = "BTCUSDT") -> TradeEvent:
    return TradeEvent("binance", symbol, T0 + i, T0 + i + 5, 100.0 + i, 0.25, "sell", str(i))


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


async def wait_until(cond: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition set by the asyncio side (no trio object to wait on there)."""
    with trio.fail_after(limit):
        while not cond():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def connect(url: str) -> Any:
    nc = NatsClient()
    await trio_asyncio.aio_as_trio(nc.connect)(servers=[url], max_reconnect_attempts=-1)
    return nc


async def stream_count(nc: Any, stream: str) -> int:
    info = await trio_asyncio.aio_as_trio(nc.jetstream().stream_info)(stream)
    return int(info.state.messages)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("raw_publish", [True, False], ids=["pub-blocks", "publish-each"])
async def test_subjects_and_payloads(nats_server_session: NatsServer, raw_publish: bool) -> None:
    prefix = unique("t.subj")
    events = [
        trade(1),
        QuoteEvent("bybit", "ETHUSDT", T0, T0 + 1, 1.5, 2.0, 1.6, 3.0),
        HeartbeatEvent("mdd", SYSTEM_SYMBOL, None, T0, 0.0),
        StatusEvent("binance", "BTCUSDT", None, T0, "down", "stale"),
    ]
    got: list[Any] = []

    async def on_msg(msg: Any) -> None:  # asyncio side: plain state only
        got.append(msg)

    async with trio_asyncio.open_loop():
        nc = await connect(nats_server_session.url)
        await trio_asyncio.aio_as_trio(nc.subscribe)(f"{prefix}.>", cb=on_msg)
        await trio_asyncio.aio_as_trio(nc.flush)()
        bus = Bus()
        inbox = bus.add_sink("nats", 100)
        sink = NatsSink(nats_server_session.url, subject_prefix=prefix)
        sink.raw_publish = raw_publish
        async with trio.open_nursery() as nursery:
            await nursery.start(sink_runner(sink), inbox, SinkHealth("nats"))
            for e in events:
                bus.publish(e)
            await wait_until(lambda: len(got) == len(events))
            bus.close()
        await trio_asyncio.aio_as_trio(nc.close)()
    assert [m.subject for m in got] == [
        f"{prefix}.trade.BTCUSDT",
        f"{prefix}.quote.ETHUSDT",
        f"{prefix}.heartbeat.__system__",
        f"{prefix}.status.BTCUSDT",
    ]
    assert [loads(m.data) for m in got] == events
    assert all(not m.headers for m in got)  # no Msg-Id without JetStream
    assert sink.published == len(events)
    assert sink.outages == 0


async def test_jetstream_dedups_republished_trade(nats_server_session: NatsServer) -> None:
    prefix = unique("t.js")
    stream = unique("TJS")
    async with trio_asyncio.open_loop():
        bus = Bus()
        inbox = bus.add_sink("nats", 100)
        sink = NatsSink(
            nats_server_session.url,
            subject_prefix=prefix,
            jetstream=True,
            stream=stream,
            duplicate_window=60,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, inbox)
            for i in range(5):
                bus.publish(trade(i))
            await wait_until(lambda: sink.published == 5)
            bus.publish(trade(3))  # a replay of the same trade
            bus.publish(trade(9, "ETHUSDT"))
            await wait_until(lambda: sink.published == 7)
            bus.close()
        nc = await connect(nats_server_session.url)
        assert await stream_count(nc, stream) == 6
        info = await trio_asyncio.aio_as_trio(nc.jetstream().stream_info)(stream)
        assert info.config.subjects == [f"{prefix}.>"]
        assert info.config.duplicate_window == 60
        msg = await trio_asyncio.aio_as_trio(nc.jetstream().get_last_msg)(
            stream, f"{prefix}.trade.ETHUSDT"
        )
        assert msg.headers["Nats-Msg-Id"] == "binance:ETHUSDT:9"
        await trio_asyncio.aio_as_trio(nc.close)()
    assert sink.duplicates == 1


def test_msg_ids_and_redaction() -> None:
    assert msg_id(trade(7)) == "binance:BTCUSDT:7"
    assert msg_id(HeartbeatEvent("mdd", SYSTEM_SYMBOL, None, 42)) == "heartbeat:mdd:__system__:42"
    assert redact("nats://user:secret@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert redact("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_factory_builds_from_config() -> None:
    from mdd.config import Config, NatsSinkConfig, SinksConfig

    cfg = Config(sinks=SinksConfig(nats=NatsSinkConfig(url="nats://127.0.0.1:1", jetstream=True)))
    sink = SINK_FACTORIES["nats"](cfg, cfg.sinks.nats)
    assert isinstance(sink, NatsSink)
    assert sink.jetstream
    assert sink.subject_prefix == "md.events"
    assert sink.batch_size == 500
    assert sink_runner(sink) == sink.run


async def test_killed_and_restarted_mid_stream(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mdd.sinks.nats")
    stream = "KILLTEST"
    async with trio_asyncio.open_loop():
        bus = Bus()
        inbox = bus.add_sink("nats", 10_000)
        health = SinkHealth("nats")
        sink = NatsSink(nats_server.url, jetstream=True, stream=stream, ack_timeout=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, inbox, health)
            for i in range(100):
                bus.publish(trade(i))
            await wait_until(lambda: sink.published == 100)
            nats_server.kill()
            for i in range(100, 200):  # accepted while NATS is gone: held in the lane
                bus.publish(trade(i))
            await wait_until(lambda: health.state == "failing")
            await trio.sleep(0.3)
            assert sink.published == 100
            nats_server.start()  # same port, same store
            await wait_until(lambda: sink.published == 200)
            assert health.state == "ok"
            for i in range(200, 300):
                bus.publish(trade(i))
            await wait_until(lambda: sink.published == 300)
            bus.close()
        nc = await connect(nats_server.url)
        assert await stream_count(nc, stream) == 300
        await trio_asyncio.aio_as_trio(nc.close)()
    assert sink.outages == 1
    warnings = [r for r in caplog.records if "sink.nats.unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per retry
    assert any("sink.nats.recovered" in r.getMessage() for r in caplog.records)
    assert inbox.stats().lost == 0


async def test_absent_at_start_then_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mdd.sinks.nats")
    server = NatsServer(jetstream=True, workdir=tmp_path / "nats", port=free_port())
    try:
        async with trio_asyncio.open_loop():
            bus = Bus()
            inbox = bus.add_sink("nats", 1000)
            health = SinkHealth("nats")
            sink = NatsSink(server.url, jetstream=True, stream="LATE")
            async with trio.open_nursery() as nursery:
                # Starting does not wait for NATS: the daemon goes on.
                with trio.fail_after(1):
                    await nursery.start(sink.run, inbox, health)
                for i in range(50):
                    bus.publish(trade(i))
                await wait_until(lambda: health.state == "failing")
                await trio.sleep(1.2)  # several reconnect attempts
                assert sink.published == 0
                assert inbox.queued == 50
                server.start()
                await wait_until(lambda: sink.published == 50)
                assert health.state == "ok"
                bus.close()
            nc = await connect(server.url)
            assert await stream_count(nc, "LATE") == 50
            await trio_asyncio.aio_as_trio(nc.close)()
    finally:
        server.close()
    warnings = [r for r in caplog.records if "sink.nats.unavailable" in r.getMessage()]
    assert len(warnings) == 1


async def test_jetstream_unavailable_says_how_to_start_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with NatsServer(jetstream=False, workdir=tmp_path / "nats") as server:
        bus = Bus()
        inbox = bus.add_sink("nats", 100)
        health = SinkHealth("nats")
        sink = NatsSink(server.url, jetstream=True, stream="NOJS", ack_timeout=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, inbox, health)
            bus.publish(trade(1))
            await wait_until(lambda: "nats-server -js" in health.last_error)
            assert health.state == "failing"
            assert sink.published == 0
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "nats-server -js" in r.getMessage()]
    assert lines
    assert "JetStream is not available" in lines[0]


async def test_bare_run_sink_is_refused_clearly(autojump_clock: trio.testing.MockClock) -> None:
    from mdd.sinks import run_sink

    bus = Bus()
    inbox = bus.add_sink("nats", 10)
    health = SinkHealth("nats")
    sink = NatsSink("nats://127.0.0.1:1")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_sink, sink, inbox, health)
        await trio.sleep(1)
        assert "NatsSink.run" in health.last_error
        nursery.cancel_scope.cancel()


async def test_shutdown_while_nats_never_came(tmp_path: Path) -> None:
    """The daemon's shutdown grace cancels a sink still waiting for NATS: no hang, no crash."""
    bus = Bus()
    inbox = bus.add_sink("nats", 100)
    health = SinkHealth("nats")
    sink = NatsSink(f"nats://127.0.0.1:{free_port()}")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, inbox, health)
            bus.publish(trade(1))
            await wait_until(lambda: health.state == "failing")
            bus.close()
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel("shutdown grace over")
    assert health.state == "closed"
    assert sink.nc is None
    assert inbox.queued == 1  # never accepted by NATS: still counted as undelivered


def test_subject_tokens_are_sanitized() -> None:
    sink = NatsSink("nats://127.0.0.1:1")
    quote = QuoteEvent("alpaca", "BRK.B", None, T0, 1, 1, 2, 2)
    crypto = trade(1, "BTC/USD")
    (s1, p1, h1), (s2, _p2, _h2) = sink.encode([quote, crypto])
    assert s1 == "md.events.quote.BRK_B"  # one token: md.events.quote.* matches
    assert loads(p1) == quote  # the payload keeps the venue's symbol
    assert h1 is None
    assert s2 == "md.events.trade.BTC/USD"


async def test_server_refusal_goes_to_the_runner(nats_server_session: NatsServer) -> None:
    """A batch JetStream rejects (message too large) is an error the runner logs and retries."""
    prefix = unique("t.big")
    stream = unique("TBIG")
    async with trio_asyncio.open_loop():
        nc = await connect(nats_server_session.url)
        await trio_asyncio.aio_as_trio(nc.jetstream().add_stream)(
            name=stream, subjects=[f"{prefix}.>"], max_msg_size=64
        )
        bus = Bus()
        inbox = bus.add_sink("nats", 100)
        health = SinkHealth("nats")
        sink = NatsSink(
            nats_server_session.url,
            subject_prefix=prefix,
            jetstream=True,
            stream=stream,
            ack_timeout=0.5,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, inbox, health)
            bus.publish(trade(1))
            await wait_until(lambda: "refused the batch" in health.last_error)
            assert health.errors >= 1
            assert sink.outages == 0  # not mistaken for an outage
            nursery.cancel_scope.cancel()
        await trio_asyncio.aio_as_trio(nc.close)()


async def test_daemon_publishes_through_the_configured_sink(
    tmp_path: Path, nats_server_session: NatsServer
) -> None:
    """Config -> build_sinks -> sink_runner -> NATS, inside a real Daemon: every event stored."""
    from mdd.config import load_config
    from mdd.daemon import Daemon

    prefix = unique("t.daemon")
    stream = unique("TDAEMON")
    base = {
        "daemon": {"state_dir": str(tmp_path), "shutdown_grace": 5},
        "http": {"enabled": False},
        "bus": {"heartbeat_after": 0.2},
        "providers": {"sim": {"rate": 50, "seed": 5}},
        "feeds": [{"name": "f", "symbols": ["AAA", "BBB"], "providers": ["sim"]}],
        "sinks": {
            "metrics": {"enabled": False},
            "nats": {
                "url": nats_server_session.url,
                "subject_prefix": prefix,
                "jetstream": True,
                "stream": stream,
            },
        },
    }
    daemon = Daemon(load_config(None, base=base, env={}), install_signal_handlers=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        await trio.sleep(0.8)
        daemon.request_stop("test")
    lane = daemon.bus.stats().lanes[0]
    assert lane.sink == "nats"
    assert lane.total_dropped == 0
    assert daemon.sink_health["nats"].events == daemon.bus.published > 20
    async with trio_asyncio.open_loop():
        nc = await connect(nats_server_session.url)
        assert await stream_count(nc, stream) == daemon.bus.published
        await trio_asyncio.aio_as_trio(nc.close)()


def test_pinned_nats_py_has_the_internals_pub_blocks_use() -> None:
    # A nats-py upgrade that drops them would silently fall back to publish-each.
    from mdd.sinks.nats import _raw_capable

    assert _raw_capable(NatsClient())
