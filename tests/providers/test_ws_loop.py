"""The shared connection loop and the trio-websocket transport, against tiny loopback servers."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from prov_rig import Rig, config, until

from mdd.errors import ParseError, ProviderError
from mdd.events import TradeEvent
from mdd.providers._parse import Control, Parsed
from mdd.providers._ws import (
    ConnectFailed,
    ConnectionLost,
    Plan,
    Session,
    TrioWebsocketTransport,
    WsProvider,
    make_transport,
)


class ToyProvider(WsProvider):
    """Frames ``t:<id>`` are trades, ``bye`` asks for a reconnect, anything else is garbage."""

    kind = "toy"

    def plans(self) -> list[Plan]:
        return [Plan(self.config.url, self.symbols, ("all",))]

    def parse_frame(self, raw: str | bytes, ts_recv: int, session: Session) -> Parsed:
        text = raw if isinstance(raw, str) else raw.decode()
        if text.startswith("t:"):
            return [TradeEvent(self.name, "SYM", None, ts_recv, 1.0, 1.0, "buy", text[2:])]
        if text == "bye":
            return [Control("server_shutdown", self.name)]
        raise ParseError(f"garbage {text!r}")

    async def on_open(self, session: Session) -> None:
        await session.send({"op": "hello"})
        self.mark_subscribed(session)

    async def on_control(self, session: Session, ctl: Control) -> None:
        from mdd.providers._ws import Reconnect

        if ctl.kind == "server_shutdown":
            raise Reconnect("toy: bye")


class ToyServer:
    """A scripted WebSocket server: ``script(ws)`` runs per connection."""

    def __init__(self) -> None:
        self.connections: list[float] = []
        self.received: list[tuple[float, str]] = []
        self.url = ""

    async def serve(self, nursery: trio.Nursery, script: Any) -> None:
        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            self.connections.append(trio.current_time())
            try:
                await script(self, request)
            except* trio_websocket.ConnectionClosed:
                pass  # the client went away: normal for these scripts

        server = await nursery.start(
            partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        )
        self.url = f"ws://127.0.0.1:{server.port}"


async def _stream(
    server: ToyServer, request: trio_websocket.WebSocketRequest, n: int = 10**9
) -> None:
    ws = await request.accept()

    async def reader() -> None:
        while True:
            message = await ws.get_message()
            server.received.append((trio.current_time(), message))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(n):
            await ws.send_message(f"t:{i}")
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    await ws.aclose()


def _provider(rig: Rig, url: str, **kw: Any) -> ToyProvider:
    return ToyProvider(
        config("sim", url), ("SYM",), ("trade",), rig.health, rng=random.Random(7), **kw
    )


async def test_streams_and_reports_status(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig("sim")
    server = ToyServer()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, _stream)
            nursery.start_soon(rig.collect)
            await nursery.start(_provider(rig, server.url).run, rig.gate)
            assert rig.health.connected
            assert rig.health.subscribed
            await until(lambda: len(rig.of("trade")) >= 10)
            nursery.cancel_scope.cancel()
    assert [t.trade_id for t in rig.of("trade")][:10] == [str(i) for i in range(10)]
    assert rig.statuses()[:2] == ["connected", "subscribed"]
    assert server.received[0][1] == '{"op":"hello"}'
    assert not rig.health.connected


async def test_backoff_grows_on_refused_connections_and_resets_after_healthy_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig("sim")
    server = ToyServer()
    refuse = True

    async def script(server: ToyServer, request: trio_websocket.WebSocketRequest) -> None:
        if refuse:
            await request.reject(503)
            return
        await _stream(server, request, n=5)

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, script)
            nursery.start_soon(rig.collect)
            nursery.start_soon(partial(_provider(rig, server.url).run, rig.gate))
            await until(lambda: len(server.connections) >= 6)
            gaps = [b - a for a, b in zip(server.connections, server.connections[1:], strict=False)]
            # 1, 2, 4, 8, 16 s with +-20 % jitter: exponential, never a tight loop.
            for gap, base in zip(gaps, [1, 2, 4, 8, 16], strict=True):
                assert base * 0.8 - 0.01 <= gap <= base * 1.2 + 0.5
            assert "HTTP 503" in rig.health.last_error
            refuse = False
            await until(lambda: len(rig.of("trade")) >= 5)  # healthy session, then closed by server
            n = len(server.connections)
            await until(lambda: len(server.connections) >= n + 1)
            # Backoff was reset by the healthy session: back to ~1 s.
            assert server.connections[-1] - server.connections[-2] < 5.0 + 1.5
            nursery.cancel_scope.cancel()
    assert rig.health.reconnects >= 6


async def test_connect_timeout_on_a_server_that_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    accepted: list[trio.SocketStream] = []

    async def mute(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            transport = TrioWebsocketTransport(connect_timeout=3.0)
            start = trio.current_time()
            async with trio.open_nursery() as inner:
                with pytest.raises(ConnectFailed, match="timed out"):
                    await transport.connect(inner, f"ws://127.0.0.1:{port}/x")
                inner.cancel_scope.cancel()
            assert 3.0 <= trio.current_time() - start < 3.5
            nursery.cancel_scope.cancel()
    assert accepted


async def test_close_is_bounded_when_the_server_never_answers_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """trio-websocket would wait for the server's close frame forever; we give up after 2 s."""

    async def never_close(server: ToyServer, request: trio_websocket.WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()  # never reads, so never answers the close frame

    server = ToyServer()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, never_close)
            transport = TrioWebsocketTransport(close_timeout=2.0)
            async with trio.open_nursery() as inner:
                conn = await transport.connect(inner, server.url)
                start = trio.current_time()
                await conn.aclose()
                assert trio.current_time() - start <= 2.5
                inner.cancel_scope.cancel()
            with pytest.raises(ConnectionLost):
                await conn.get_message()
            nursery.cancel_scope.cancel()


async def test_unreachable_port_is_a_connect_failure() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConnectFailed, match="connect failed"):
                await TrioWebsocketTransport().connect(nursery, f"ws://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()


async def test_bad_url_is_a_connect_failure() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConnectFailed, match="not a ws"):
            await TrioWebsocketTransport().connect(nursery, "http://127.0.0.1:1/")


def test_unknown_transport_is_refused() -> None:
    from mdd.providers._picows import PicowsTransport

    assert isinstance(make_transport(None), PicowsTransport)  # the default (mdd bench)
    assert isinstance(make_transport("picows"), PicowsTransport)
    assert isinstance(make_transport("trio-websocket"), TrioWebsocketTransport)
    with pytest.raises(ProviderError, match="carrier-pigeon"):
        make_transport("carrier-pigeon")


async def test_sends_never_exceed_the_venue_rate(autojump_clock: trio.testing.MockClock) -> None:
    async def sink(server: ToyServer, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            server.received.append((trio.current_time(), message))

    server = ToyServer()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, sink)
            async with trio.open_nursery() as inner:
                conn = await TrioWebsocketTransport().connect(inner, server.url)
                session = Session(conn, Plan(server.url, ()), max_send_rate=5.0)
                async with trio.open_nursery() as senders:
                    for i in range(6):
                        senders.start_soon(session.send, {"n": i})
                        senders.start_soon(session.send, {"m": i})
                await until(lambda: len(server.received) == 12)
                await conn.aclose()
                inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    times = [t for t, _ in server.received]
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 1.0 - 1e-6  # at most 5 in any 1 s window


async def test_planned_reconnect_skips_backoff_and_garbage_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(server: ToyServer, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(20):
            await ws.send_message(f"t:{i}")
            await ws.send_message("%%%")
            await trio.sleep(0.1)
        await ws.send_message("bye")
        await trio.sleep_forever()

    rig = Rig("sim")
    server = ToyServer()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, script)
            nursery.start_soon(rig.collect)
            await nursery.start(_provider(rig, server.url).run, rig.gate)
            await until(lambda: len(server.connections) >= 2)
            nursery.cancel_scope.cancel()
    assert server.connections[1] - server.connections[0] < 2.2  # no backoff after "bye"
    assert rig.health.parse_errors >= 20
    assert rig.health.last_error == ""


async def test_subscribe_timeout_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    class NeverAcked(ToyProvider):
        async def on_open(self, session: Session) -> None:
            pass  # waits for an ack that never comes

    rig = Rig("sim")
    server = ToyServer()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, _stream)
            nursery.start_soon(rig.collect)
            provider = NeverAcked(
                config("sim", server.url), ("SYM",), ("trade",), rig.health, subscribe_timeout=5.0
            )
            nursery.start_soon(partial(provider.run, rig.gate))
            await until(lambda: len(server.connections) >= 2)
            nursery.cancel_scope.cancel()
    assert "not acknowledged" in rig.health.last_error
    assert 5.0 <= server.connections[1] - server.connections[0] <= 5.0 + 1.3


async def test_cancelling_a_provider_closes_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Shutdown completes the close handshake at once instead of waiting out the close timeout."""
    rig = Rig("sim")
    server = ToyServer()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, _stream)
            nursery.start_soon(rig.collect)
            async with trio.open_nursery() as providers:
                await providers.start(_provider(rig, server.url).run, rig.gate)
                await until(lambda: len(rig.of("trade")) >= 3)
                cancelled_at = trio.current_time()
                providers.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 0.5
            nursery.cancel_scope.cancel()
    assert rig.statuses()[-1] == "disconnected"


async def test_a_blocking_sink_slows_the_provider_without_losing_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Backpressure: with a full ``block`` lane the loop waits once per frame; nothing is lost."""

    async def burst(server: ToyServer, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(200):
            await ws.send_message(f"t:{i}")
        await trio.sleep_forever()

    rig = Rig("sim")
    slow = rig.bus.add_sink("slow", 10, policy="block")
    got: list[str] = []
    peak = 0

    async def slow_sink() -> None:
        nonlocal peak
        while True:
            peak = max(peak, slow.queued)
            batch = await slow.receive_batch(max_items=5)
            got.extend(e.trade_id for e in batch if isinstance(e, TradeEvent))
            await trio.sleep(0.1)

    server = ToyServer()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await server.serve(nursery, burst)
            nursery.start_soon(rig.collect)
            nursery.start_soon(slow_sink)
            await nursery.start(_provider(rig, server.url).run, rig.gate)
            await until(lambda: len(got) >= 200)
            nursery.cancel_scope.cancel()
    assert got == [str(i) for i in range(200)]
    assert peak <= 10 + 1  # never more than one frame past the lane's capacity
    assert slow.stats().total_dropped == 0
