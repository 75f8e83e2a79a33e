"""mdd.sim Alpaca market data over real WebSockets on loopback: auth flow, data, error codes."""

from __future__ import annotations

import re
from functools import partial

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed

from mdd.sim import SimOptions, SimServer, serve_sim

CRYPTO = "/v1beta3/crypto/us"
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
STOCK_TRADE_KEYS = ["T", "S", "i", "x", "p", "s", "c", "z", "t"]
STOCK_QUOTE_KEYS = ["T", "S", "bx", "bp", "bs", "ax", "ap", "as", "c", "z", "t"]
BAR_KEYS = ["T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"]
CRYPTO_TRADE_KEYS = ["T", "S", "p", "s", "t", "i", "tks"]
CRYPTO_QUOTE_KEYS = ["T", "S", "bp", "bs", "ap", "as", "t"]


async def start(nursery: trio.Nursery, **kw: object) -> SimServer:
    opts = SimOptions(**{"symbols": (), "rate": 10.0, "seed": 5, **kw})  # type: ignore[arg-type]
    return await nursery.start(partial(serve_sim, "alpaca", opts))


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def recv(ws):
    frame = orjson.loads(await ws.get_message())
    assert isinstance(frame, list)  # every Alpaca frame is an array
    return frame


async def login(ws, key="key", secret="secret"):
    assert await recv(ws) == [{"T": "success", "msg": "connected"}]
    await ws.send_message(dumps({"action": "auth", "key": key, "secret": secret}))
    return await recv(ws)


async def drain(ws):
    frames = []
    try:
        while True:
            frames.append(orjson.loads(await ws.get_message()))
    except ConnectionClosed as exc:
        return frames, exc.reason.code


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


async def test_stock_flow_and_shapes(nursery, autojump_clock, ws_client):
    server = await start(nursery, trades_per_frame=2)
    assert server.url == f"ws://127.0.0.1:{server.port}/v2/iex"
    async with ws_client(server.port, "/v2/iex") as ws:
        assert await login(ws) == [{"T": "success", "msg": "authenticated"}]
        await ws.send_message(
            dumps({"action": "subscribe", "trades": ["AAPL"], "quotes": ["AAPL", "AMD"]})
        )
        ack = await recv(ws)
        assert ack == [
            {
                "T": "subscription",
                "trades": ["AAPL"],
                "quotes": ["AAPL", "AMD"],
                "bars": [],
                "updatedBars": [],
                "dailyBars": [],
                "statuses": [],
                "lulds": [],
                "corrections": ["AAPL"],
                "cancelErrors": ["AAPL"],
            }
        ]
        kinds: set[str] = set()
        mixed = False
        for _ in range(30):
            frame = await recv(ws)
            types = {p["T"] for p in frame}
            mixed |= types == {"t", "q"}
            for point in frame:
                kinds.add(point["T"])
                assert RFC3339_NS.match(point["t"])
                if point["T"] == "t":
                    assert list(point) == STOCK_TRADE_KEYS
                    assert point["S"] == "AAPL"
                    assert isinstance(point["i"], int)
                    assert isinstance(point["s"], int)
                    assert is_number(point["p"])
                    assert "@" in point["c"]
                else:
                    assert list(point) == STOCK_QUOTE_KEYS
                    assert point["S"] in ("AAPL", "AMD")
                    assert point["bp"] < point["ap"]
        assert kinds == {"t", "q"}
        assert mixed
        await ws.send_message(dumps({"action": "unsubscribe", "quotes": ["AMD"]}))
        while True:
            frame = await recv(ws)
            if frame[0]["T"] == "subscription":
                break
        assert frame[0]["quotes"] == ["AAPL"]
        assert frame[0]["trades"] == ["AAPL"]
    assert server.sent["trade"] == len(server.sent_trades)
    assert "trades:AAPL" in server.subscriptions


async def test_minute_bars(nursery, autojump_clock, ws_client):
    server = await start(nursery, rate=2.0)
    async with ws_client(server.port, "/v2/test") as ws:
        await login(ws)
        await ws.send_message(dumps({"action": "subscribe", "bars": ["FAKEPACA"]}))
        assert (await recv(ws))[0]["bars"] == ["FAKEPACA"]
        frame = await recv(ws)
        bar = frame[0]
        assert list(bar) == BAR_KEYS
        assert bar["t"].endswith(":00Z")
        assert bar["l"] <= min(bar["o"], bar["c"]) <= max(bar["o"], bar["c"]) <= bar["h"]
        assert isinstance(bar["n"], int)
        nxt = (await recv(ws))[0]
        assert trio.current_time() >= 60.0
        assert nxt["t"] > bar["t"]


async def test_crypto_shapes_and_orderbook(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, CRYPTO) as ws:
        await login(ws)
        await ws.send_message(
            dumps(
                {
                    "action": "subscribe",
                    "trades": ["BTC/USD"],
                    "quotes": ["BTC/USD"],
                    "orderbooks": ["ETH/USD"],
                }
            )
        )
        ack = (await recv(ws))[0]
        assert list(ack) == [
            "T",
            "trades",
            "quotes",
            "orderbooks",
            "bars",
            "updatedBars",
            "dailyBars",
        ]
        reset = (await recv(ws))[0]
        assert reset["T"] == "o"
        assert reset["r"] is True
        assert reset["S"] == "ETH/USD"
        book = {("b", lvl["p"]): lvl["s"] for lvl in reset["b"]}
        book.update({("a", lvl["p"]): lvl["s"] for lvl in reset["a"]})
        seen = set()
        for _ in range(40):
            for point in await recv(ws):
                seen.add(point["T"])
                if point["T"] == "t":
                    assert list(point) == CRYPTO_TRADE_KEYS
                    assert point["tks"] in ("B", "S")
                    assert point["i"] > 2**53  # exact big integer on the wire
                    assert is_number(point["s"])
                elif point["T"] == "q":
                    assert list(point) == CRYPTO_QUOTE_KEYS
                else:
                    assert point["T"] == "o"
                    assert "r" not in point
                    for side in ("b", "a"):
                        for lvl in point[side]:
                            if lvl["s"] == 0:
                                book.pop((side, lvl["p"]), None)
                            else:
                                book[(side, lvl["p"])] = lvl["s"]
                    best_bid = max(p for s, p in book if s == "b")
                    best_ask = min(p for s, p in book if s == "a")
                    assert best_bid < best_ask
        assert seen == {"t", "q", "o"}
    assert server.sent_trades[0][1] == str(int(server.sent_trades[0][1]))


async def test_auth_errors(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/v2/iex") as ws:
        assert await recv(ws) == [{"T": "success", "msg": "connected"}]
        await ws.send_message(dumps({"action": "subscribe", "trades": ["AAPL"]}))
        assert await recv(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        await ws.send_message(dumps({"action": "auth", "key": "key", "secret": "wrong"}))
        frames, code = await drain(ws)
        assert frames == [[{"T": "error", "code": 402, "msg": "auth failed"}]]
        assert code == 1008
    async with ws_client(server.port, "/v2/iex") as ws:
        assert await login(ws) == [{"T": "success", "msg": "authenticated"}]
        await ws.send_message(dumps({"action": "auth", "key": "key", "secret": "secret"}))
        assert await recv(ws) == [{"T": "error", "code": 403, "msg": "already authenticated"}]
    async with ws_client(server.port, "/v2/iex") as ws:
        t0 = trio.current_time()
        frames, _ = await drain(ws)
        assert frames[-1] == [{"T": "error", "code": 404, "msg": "auth timeout"}]
        assert trio.current_time() - t0 == pytest.approx(10.0, abs=0.1)


async def test_header_auth(nursery, autojump_clock, raw_connect):
    server = await start(nursery)
    headers = [(b"APCA-API-KEY-ID", b"key"), (b"APCA-API-SECRET-KEY", b"secret")]
    client, _ = await raw_connect(server.port, "/v2/sip", headers)
    assert orjson.loads(await client.next_text()) == [{"T": "success", "msg": "connected"}]
    assert orjson.loads(await client.next_text()) == [{"T": "success", "msg": "authenticated"}]


async def test_connection_limit_and_refuse(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/v2/iex") as first:
        assert (await login(first))[0]["msg"] == "authenticated"
        async with ws_client(server.port, "/v2/iex") as second:
            assert await login(second) == [
                {"T": "error", "code": 406, "msg": "connection limit exceeded"}
            ]
            _, code = await drain(second)
            assert code == 1008
        async with ws_client(server.port, CRYPTO) as other_endpoint:
            assert (await login(other_endpoint))[0]["msg"] == "authenticated"
    server.options.faults.refuse_connections = True
    async with ws_client(server.port, "/v2/iex") as ws:
        assert (await login(ws))[0]["code"] == 406


async def test_syntax_errors_and_rejected_subscribe(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, "/v2/iex") as ws:
        await login(ws)
        for bad in (
            "not json",
            dumps({"action": "dance"}),
            dumps({"action": "subscribe", "trades": "AAPL"}),
            dumps({"action": "subscribe", "trades": ["bad symbol"]}),
        ):
            await ws.send_message(bad)
            assert await recv(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        await ws.send_message(
            dumps({"action": "subscribe", "trades": [f"S{i}" for i in range(31)]})
        )
        assert (await recv(ws))[0]["code"] == 405
        server.options.faults.reject_subscribe = True
        await ws.send_message(dumps({"action": "subscribe", "trades": ["AAPL"]}))
        assert await recv(ws) == [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]
    assert server.subscriptions == []


async def test_garbage_and_drop(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.garbage_every = 3
    server.options.faults.drop_after = 6
    async with ws_client(server.port, CRYPTO) as ws:
        await login(ws)
        await ws.send_message(dumps({"action": "subscribe", "trades": ["BTC/USD"]}))
        await recv(ws)
        frames = []
        code = None
        try:
            while True:
                frames.append(await ws.get_message())
        except ConnectionClosed as exc:
            code = exc.reason.code
    assert code == 1001
    assert len(frames) == 6
    assert frames[2] == "sim garbage: this is not JSON {"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[5])  # truncated


async def test_session_linger_gives_406_for_a_while(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.session_linger = 90.0
    async with ws_client(server.port, "/v2/iex") as ws:
        assert (await login(ws))[0]["msg"] == "authenticated"
        server.disconnect_all()  # the "network drop"
        await drain(ws)
    t0 = trio.current_time()
    async with ws_client(server.port, "/v2/iex") as ws:
        assert (await login(ws))[0]["code"] == 406
    await trio.sleep(90.0 - (trio.current_time() - t0))
    async with ws_client(server.port, "/v2/iex") as ws:
        assert (await login(ws))[0]["msg"] == "authenticated"
