"""mdd.sim Binance server over real WebSockets on loopback: shapes, commands, faults."""

from __future__ import annotations

from functools import partial

import orjson
import pytest
import trio
import wsproto.events as we
from trio_websocket import ConnectionClosed

from mdd.sim import SimOptions, SimServer, serve_sim

TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
AGG_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
BOOK_TICKER_KEYS = ["u", "s", "b", "B", "a", "A"]
DEPTH_KEYS = ["e", "E", "s", "U", "u", "b", "a"]
PARTIAL_KEYS = ["lastUpdateId", "bids", "asks"]


async def start(nursery: trio.Nursery, **kw: object) -> SimServer:
    opts = SimOptions(**{"symbols": ("BTCUSDT", "ETHUSDT"), "rate": 20.0, "seed": 7, **kw})  # type: ignore[arg-type]
    return await nursery.start(partial(serve_sim, "binance", opts))


def is_decimal(text: object, places: int = 8) -> bool:
    if not isinstance(text, str):
        return False
    whole, _, frac = text.partition(".")
    return whole.isdigit() and len(frac) == places and frac.isdigit()


async def test_combined_streams_shapes_and_depth_chain(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    streams = (
        "btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker/btcusdt@depth@100ms/ethusdt@depth10"
    )
    seen: dict[str, int] = {}
    last_u = None
    last_trade_id = 0
    async with ws_client(server.port, f"/stream?streams={streams}") as ws:
        for _ in range(300):
            frame = orjson.loads(await ws.get_message())
            assert list(frame) == ["stream", "data"]
            stream, data = frame["stream"], frame["data"]
            seen[stream] = seen.get(stream, 0) + 1
            if stream == "btcusdt@trade":
                assert list(data) == TRADE_KEYS
                assert data["e"] == "trade"
                assert data["s"] == "BTCUSDT"
                assert is_decimal(data["p"])
                assert is_decimal(data["q"])
                assert isinstance(data["m"], bool)
                assert data["M"] is True
                assert data["t"] > last_trade_id
                last_trade_id = data["t"]
                assert len(str(data["E"])) == 13
                assert data["E"] >= data["T"]
            elif stream == "btcusdt@aggTrade":
                assert list(data) == AGG_KEYS
                assert data["f"] <= data["l"]
            elif stream == "btcusdt@bookTicker":
                assert list(data) == BOOK_TICKER_KEYS  # no e/E on spot
                assert float(data["b"]) < float(data["a"])
            elif stream == "btcusdt@depth@100ms":
                assert list(data) == DEPTH_KEYS
                assert data["e"] == "depthUpdate"
                assert data["U"] <= data["u"]
                if last_u is not None:
                    assert data["U"] == last_u + 1, "depth chain has a gap"
                last_u = data["u"]
                for price, qty in data["b"] + data["a"]:
                    assert is_decimal(price)
                    assert is_decimal(qty)
            else:
                assert stream == "ethusdt@depth10"
                assert list(data) == PARTIAL_KEYS  # no symbol, no time
                assert len(data["bids"]) == len(data["asks"]) == 10
                bids = [float(p) for p, _ in data["bids"]]
                asks = [float(p) for p, _ in data["asks"]]
                assert bids == sorted(bids, reverse=True)
                assert asks == sorted(asks)
                assert bids[0] < asks[0]
    assert set(seen) == set(streams.split("/"))
    assert server.sent["trade"] == seen["btcusdt@trade"]
    assert all(sym == "BTCUSDT" for sym, _ in server.sent_trades)
    assert server.subscriptions == streams.split("/")


async def test_raw_ws_commands(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/ws") as ws:
        await ws.send_message(dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
        assert orjson.loads(await ws.get_message()) == {"result": None, "id": 1}
        data = orjson.loads(await ws.get_message())
        assert list(data) == TRADE_KEYS  # raw: not wrapped
        await ws.send_message(dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        assert await until_id(ws, 3) == {"result": ["btcusdt@trade"], "id": 3}
        await trio.sleep(1)
        await ws.send_message(
            dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": "ab1"})
        )
        assert await until_id(ws, "ab1") == {"result": False, "id": "ab1"}
        await ws.send_message(
            dumps({"method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 4})
        )
        assert await until_id(ws, 4) == {
            "error": {"code": 2, "msg": "Invalid request: invalid stream"},
            "id": 4,
        }
        await trio.sleep(1)
        await ws.send_message("not json")
        err = await until_key(ws, "error")
        assert err["error"]["code"] == 3
        await ws.send_message(
            dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 5})
        )
        assert await until_id(ws, 5) == {"result": None, "id": 5}
        await ws.send_message(dumps({"method": "SUBSCRIBE", "params": [], "id": -1}))
        err = await until_key(ws, "error")
        assert err["error"]["code"] == 2
        assert "request ID" in err["error"]["msg"]
        # Unsubscribed: no more data arrives.
        with trio.move_on_after(5) as scope:
            await ws.get_message()
        assert scope.cancelled_caught


async def test_raw_single_stream_and_microseconds(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/ws/btcusdt@trade?timeUnit=MICROSECOND") as ws:
        data = orjson.loads(await ws.get_message())
        assert list(data) == TRADE_KEYS
        assert len(str(data["E"])) == 16
        assert len(str(data["T"])) == 16


async def test_reject_subscribe_and_refuse(nursery, autojump_clock, raw_connect, ws_client):
    server = await start(nursery)
    server.options.faults.reject_subscribe = True
    async with ws_client(server.port, "/ws") as ws:
        await ws.send_message(dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 9}))
        assert orjson.loads(await ws.get_message()) == {
            "error": {"code": 2, "msg": "Invalid request: invalid stream"},
            "id": 9,
        }
    _, event = await raw_connect(server.port, "/stream?streams=btcusdt@trade")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 400
    server.options.faults.reject_subscribe = False
    server.options.faults.refuse_connections = True
    _, event = await raw_connect(server.port, "/stream?streams=btcusdt@trade")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 503
    server.options.faults.refuse_connections = False
    _, event = await raw_connect(server.port, "/nope")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 404
    _, event = await raw_connect(server.port, "/stream?streams=btcusdt@bogus")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 400
    _, event = await raw_connect(server.port, "/stream?streams=btcusdt@trade")
    assert isinstance(event, we.AcceptConnection)
    assert server.connections == 6


async def test_subscribe_delay(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.subscribe_delay = 3.0
    async with ws_client(server.port, "/ws") as ws:
        t0 = trio.current_time()
        await ws.send_message(dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
        assert orjson.loads(await ws.get_message()) == {"result": None, "id": 1}
        assert trio.current_time() - t0 >= 3.0


async def test_drop_after_and_disconnect_all(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.drop_after = 5
    async with ws_client(server.port, "/ws/btcusdt@depth") as ws:
        frames, code = await drain(ws)
        assert len(frames) == 5
        assert code == 1001
    server.options.faults.drop_after = None
    async with ws_client(server.port, "/ws/btcusdt@depth") as ws:
        await ws.get_message()
        assert server.active == 1
        server.disconnect_all()
        _, code = await drain(ws)
        assert code == 1001
    await trio.testing.wait_all_tasks_blocked()
    assert server.active == 0


async def test_garbage_rotation(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.garbage_every = 2
    frames: list[str | bytes] = []
    async with ws_client(server.port, "/stream?streams=btcusdt@depth") as ws:
        for _ in range(16):
            frames.append(await ws.get_message())
    bad = frames[1::2]
    kinds = set()
    for frame in bad:
        if isinstance(frame, bytes):
            kinds.add("binary")
            continue
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            kinds.add("truncated" if frame.startswith('{"stream"') else "text")
            continue
        assert obj["data"]["e"] not in ("depthUpdate",)
        kinds.add("unknown")
    assert kinds == {"binary", "truncated", "text", "unknown"}
    for frame in frames[0::2]:
        assert orjson.loads(frame)["data"]["e"] == "depthUpdate"
    assert server.garbage_sent == 8


async def test_silence(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/ws/btcusdt@depth") as ws:
        await ws.get_message()
        server.go_silent(30.0)
        t0 = trio.current_time()
        await ws.get_message()
        assert trio.current_time() - t0 >= 29.9
        server.options.faults.silent = True
        with trio.move_on_after(10) as scope:
            await ws.get_message()
        assert scope.cancelled_caught
        server.options.faults.silent = False
        await ws.get_message()


async def test_incoming_rate_limit(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/ws") as ws:
        for i in range(7):
            await ws.send_message(dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        replies, code = await drain(ws)
        assert code == 1008
        assert len(replies) == 5


async def test_max_lifetime_sends_server_shutdown(nursery, autojump_clock, ws_client):
    server = await start(nursery, max_lifetime=30.0, shutdown_notice=2.0)
    async with ws_client(server.port, "/stream?streams=btcusdt@trade") as ws:
        t0 = trio.current_time()
        frames, code = await drain(ws, timed=True)
        assert code == 1000
        shutdowns = [(t, orjson.loads(f)) for t, f in frames if "!serverShutdown" in f]
        assert len(shutdowns) == 1
        at, frame = shutdowns[0]
        assert frame["data"]["e"] == "serverShutdown"
        assert list(frame["data"]) == ["e", "E"]
        assert at - t0 == pytest.approx(28.0, abs=0.1)
        assert trio.current_time() - t0 == pytest.approx(30.0, abs=0.1)


async def drain(ws, timed=False):
    """Read until the server closes; returns (frames, close code)."""
    frames = []
    try:
        while True:
            frame = await ws.get_message()
            frames.append((trio.current_time(), frame) if timed else frame)
    except ConnectionClosed as exc:
        return frames, exc.reason.code


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def until_id(ws, req_id):
    while True:
        obj = orjson.loads(await ws.get_message())
        if isinstance(obj, dict) and "id" in obj and obj["id"] == req_id:
            return obj


async def until_key(ws, key):
    while True:
        obj = orjson.loads(await ws.get_message())
        if key in obj:
            return obj


@pytest.mark.parametrize(
    ("stream", "per_second"), [("btcusdt@depth", 1), ("btcusdt@depth@100ms", 10)]
)
async def test_depth_update_speed_and_chain(nursery, autojump_clock, ws_client, stream, per_second):
    server = await start(nursery, rate=50.0)
    async with ws_client(server.port, f"/ws/{stream}") as ws:
        first = orjson.loads(await ws.get_message())
        t0 = trio.current_time()
        last_u = first["u"]
        count = 0
        while trio.current_time() - t0 < 10.0:
            event = orjson.loads(await ws.get_message())
            assert event["U"] == last_u + 1
            last_u = event["u"]
            bids = [float(p) for p, _ in event["b"]]
            assert bids == sorted(bids, reverse=True)
            count += 1
    assert count == pytest.approx(10 * per_second, abs=1)


async def test_partial_depth_speed(nursery, autojump_clock, ws_client):
    server = await start(nursery, rate=50.0)
    async with ws_client(server.port, "/stream?streams=ethusdt@depth5/ethusdt@depth20@100ms") as ws:
        await ws.get_message()
        t0 = trio.current_time()
        counts = {"ethusdt@depth5": 0, "ethusdt@depth20@100ms": 0}
        while trio.current_time() - t0 < 5.0:
            frame = orjson.loads(await ws.get_message())
            counts[frame["stream"]] += 1
            size = 5 if frame["stream"] == "ethusdt@depth5" else 20
            assert len(frame["data"]["bids"]) == size
    assert counts["ethusdt@depth5"] == pytest.approx(5, abs=1)
    assert counts["ethusdt@depth20@100ms"] == pytest.approx(50, abs=2)
