"""mdd.sim Bybit V5 public spot over real WebSockets on loopback: acks, data, pings, faults."""

from __future__ import annotations

from functools import partial

import orjson
import pytest
import trio
import wsproto.events as we
from trio_websocket import ConnectionClosed

from mdd.sim import SimOptions, SimServer, serve_sim
from mdd.sim._market import fmt_min

PATH = "/v5/public/spot"
TRADE_KEYS = ["i", "T", "p", "v", "S", "seq", "s", "BT", "RPI"]
ACK_KEYS = ["success", "ret_msg", "conn_id", "req_id", "op"]


async def start(nursery: trio.Nursery, **kw: object) -> SimServer:
    opts = SimOptions(**{"symbols": ("BTCUSDT", "ETHUSDT"), "rate": 20.0, "seed": 3, **kw})  # type: ignore[arg-type]
    return await nursery.start(partial(serve_sim, "bybit", opts))


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def subscribe(ws, *topics, req_id=None):
    req = {"op": "subscribe", "args": list(topics)}
    if req_id is not None:
        req["req_id"] = req_id
    await ws.send_message(dumps(req))


async def next_control(ws, op=None):
    while True:
        obj = orjson.loads(await ws.get_message())
        if "success" in obj and (op is None or obj["op"] == op):
            return obj


async def drain(ws):
    frames = []
    try:
        while True:
            frames.append(await ws.get_message())
    except ConnectionClosed as exc:
        return frames, exc.reason.code


def is_number_text(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return not text.endswith(".") and (text == "0" or not text.endswith("0") or "." not in text)


async def test_url_and_subscribe_ack(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    assert server.url == f"ws://127.0.0.1:{server.port}{PATH}"
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT", req_id="10001")
        ack = await next_control(ws)
        assert list(ack) == ACK_KEYS
        assert ack["success"] is True
        assert ack["ret_msg"] == "subscribe"
        assert ack["req_id"] == "10001"
        assert len(ack["conn_id"]) == 36
        await subscribe(ws, "publicTrade.ETHUSDT")
        ack2 = await next_control(ws)
        assert "req_id" not in ack2  # echoed only when sent
        assert ack2["conn_id"] == ack["conn_id"]
    assert server.subscriptions == ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT"]


async def test_public_trade_shape(nursery, autojump_clock, ws_client):
    server = await start(nursery, trades_per_frame=3)
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT")
        await next_control(ws)
        last_id = 0
        for _ in range(20):
            frame = orjson.loads(await ws.get_message())
            assert list(frame) == ["topic", "ts", "type", "data"]
            assert frame["topic"] == "publicTrade.BTCUSDT"
            assert frame["type"] == "snapshot"
            assert len(frame["data"]) == 3
            times = [t["T"] for t in frame["data"]]
            assert times == sorted(times)
            for t in frame["data"]:
                assert list(t) == TRADE_KEYS  # spot: no "L"
                assert t["i"].isdigit()
                assert int(t["i"]) > last_id
                last_id = int(t["i"])
                assert t["S"] in ("Buy", "Sell")
                assert is_number_text(t["p"])
                assert is_number_text(t["v"])
                assert t["s"] == "BTCUSDT"
                assert t["BT"] is False
                assert frame["ts"] >= t["T"]
                assert len(str(t["T"])) == 13
    assert server.sent["trade"] == len(server.sent_trades) == 60
    assert server.sent_trades[0][0] == "BTCUSDT"


async def test_orderbook50_snapshot_then_deltas(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "orderbook.50.ETHUSDT")
        await next_control(ws)
        snap = orjson.loads(await ws.get_message())
        assert snap["type"] == "snapshot"
        assert list(snap) == ["topic", "ts", "type", "data", "cts"]
        assert list(snap["data"]) == ["s", "b", "a", "u", "seq"]
        bids = {p: q for p, q in snap["data"]["b"]}
        asks = {p: q for p, q in snap["data"]["a"]}
        assert len(bids) == len(asks) == 50
        u, seq = snap["data"]["u"], snap["data"]["seq"]
        for _ in range(100):
            delta = orjson.loads(await ws.get_message())
            assert delta["type"] == "delta"
            data = delta["data"]
            assert data["u"] == u + 1
            assert data["seq"] > seq
            u, seq = data["u"], data["seq"]
            for book, levels in ((bids, data["b"]), (asks, data["a"])):
                for p, q in levels:
                    if q == "0":
                        book.pop(p, None)
                    else:
                        book[p] = q
            # The local book stays exactly the venue's top 50 and never crosses.
            assert len(bids) == len(asks) == 50
            assert max(map(float, bids)) < min(map(float, asks))


async def test_orderbook1_snapshot_only_and_resent(nursery, autojump_clock, ws_client):
    server = await start(nursery, rate=0.05)  # a market step every 20 s
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "orderbook.1.BTCUSDT")
        await next_control(ws)
        first = orjson.loads(await ws.get_message())
        t0 = trio.current_time()
        second = orjson.loads(await ws.get_message())
        assert trio.current_time() - t0 == pytest.approx(3.0, abs=0.8)
        assert first["type"] == second["type"] == "snapshot"
        assert second["data"] == first["data"]  # same u, same levels
        assert second["cts"] == first["cts"]
        assert second["ts"] > first["ts"]
        assert len(first["data"]["b"]) == len(first["data"]["a"]) == 1


async def test_ping_pong(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, PATH) as ws:
        await ws.send_message(dumps({"op": "ping"}))
        pong = await next_control(ws)
        assert list(pong) == ["success", "ret_msg", "conn_id", "op"]
        assert pong["ret_msg"] == "pong"
        assert pong["op"] == "ping"
        await ws.send_message(dumps({"req_id": "100001", "op": "ping"}))
        assert (await next_control(ws))["req_id"] == "100001"
        server.options.faults.ignore_pings = True
        await ws.send_message(dumps({"op": "ping"}))
        with trio.move_on_after(30) as scope:
            await next_control(ws)
        assert scope.cancelled_caught


async def test_subscribe_failures(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, *[f"publicTrade.S{i}USDT" for i in range(11)])
        raw = await ws.get_message()
        assert '"ret_msg":"args size \\u003e10"' in raw  # Go-escaped on the wire
        assert orjson.loads(raw)["success"] is False
        await subscribe(ws, "publicTrade.BTCUSDX", req_id="2")
        fail = await next_control(ws)
        assert fail["ret_msg"] == "Invalid symbol :[publicTrade.BTCUSDX]"
        assert fail["req_id"] == "2"
        assert "code" not in fail
        await subscribe(ws, "publicTrade.BTCUSDT")
        assert (await next_control(ws))["success"] is True
        await subscribe(ws, "publicTrade.BTCUSDT")
        dup = await next_control(ws, "subscribe")
        assert dup["success"] is False
        assert "already subscribed" in dup["ret_msg"]
        server.options.faults.reject_subscribe = True
        await subscribe(ws, "orderbook.1.ETHUSDT")
        rejected = await next_control(ws, "subscribe")
        assert rejected["success"] is False
        assert rejected["ret_msg"] == "Invalid symbol :[orderbook.1.ETHUSDT]"
        await ws.send_message("nonsense")
        assert (await next_control(ws))["success"] is False


async def test_unsubscribe_stops_data(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT")
        await next_control(ws)
        await ws.get_message()
        await ws.send_message(dumps({"op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]}))
        ack = await next_control(ws, "unsubscribe")
        assert ack["success"] is True
        with trio.move_on_after(5) as scope:
            await ws.get_message()
        assert scope.cancelled_caught


async def test_subscribe_delay_snapshot_before_ack(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    server.options.faults.subscribe_delay = 2.0
    async with ws_client(server.port, PATH) as ws:
        t0 = trio.current_time()
        await subscribe(ws, "orderbook.50.BTCUSDT")
        first = orjson.loads(await ws.get_message())
        assert first["type"] == "snapshot"
        ack = await next_control(ws)
        assert ack["success"] is True
        assert trio.current_time() - t0 >= 2.0


async def test_idle_cut(nursery, autojump_clock, ws_client):
    server = await start(nursery, rate=1.0)
    server.options.faults.idle_timeout = 30.0
    async with ws_client(server.port, PATH) as ws:
        t0 = trio.current_time()
        _, code = await drain(ws)
        assert trio.current_time() - t0 == pytest.approx(30.0, abs=1.1)
        assert code == 1000
    async with ws_client(server.port, PATH) as ws:
        t0 = trio.current_time()
        for _ in range(5):
            await trio.sleep(20)
            await ws.send_message(dumps({"op": "ping"}))
            await next_control(ws)
        assert ws.closed is None
        _, _ = await drain(ws)
        assert trio.current_time() - t0 == pytest.approx(130.0, abs=1.1)


async def test_drop_garbage_refuse(nursery, autojump_clock, ws_client, raw_connect):
    server = await start(nursery)
    server.options.faults.drop_after = 3
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT")
        frames, code = await drain(ws)
        assert len(frames) == 4  # the ack, then three data frames
        assert code == 1001
    server.options.faults.drop_after = None
    server.options.faults.garbage_every = 1
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT")
        await next_control(ws)
        junk = [await ws.get_message() for _ in range(4)]
    assert isinstance(junk[3], bytes)
    assert orjson.loads(junk[2])["topic"].startswith("simMystery")
    for text in junk[:2]:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
    server.options.faults.refuse_connections = True
    _, event = await raw_connect(server.port, PATH)
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 503
    server.options.faults.refuse_connections = False
    _, event = await raw_connect(server.port, "/v5/public/linear")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 404


async def test_orderbook200_whole_book_matches_truth(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    state = server.market.symbols["BTCUSDT"]
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "orderbook.200.BTCUSDT")
        await next_control(ws)
        snap = orjson.loads(await ws.get_message())
        assert snap["type"] == "snapshot"
        bids = dict(snap["data"]["b"])
        asks = dict(snap["data"]["a"])
        u = snap["data"]["u"]
        for n in range(1000):
            delta = orjson.loads(await ws.get_message())
            assert delta["type"] == "delta"
            assert delta["data"]["u"] == u + 1
            u = delta["data"]["u"]
            for book, levels in ((bids, delta["data"]["b"]), (asks, delta["data"]["a"])):
                for p, q in levels:
                    if q == "0":
                        book.pop(p, None)
                    else:
                        book[p] = q
            if n >= 20 and u == state.u_full:
                break
    dec = state.spec.price_decimals
    truth_b = {fmt_min(p, dec): fmt_min(q, 8) for p, q in state.book.levels("bid")}
    truth_a = {fmt_min(p, dec): fmt_min(q, 8) for p, q in state.book.levels("ask")}
    assert bids == truth_b
    assert asks == truth_a


async def test_tickers_snapshot(nursery, autojump_clock, ws_client):
    server = await start(nursery)
    async with ws_client(server.port, PATH) as ws:
        await subscribe(ws, "tickers.BTCUSDT")
        await next_control(ws)
        for _ in range(20):
            frame = orjson.loads(await ws.get_message())
        assert list(frame) == ["topic", "ts", "type", "cs", "data"]
        data = frame["data"]
        assert data["symbol"] == "BTCUSDT"
        assert "bid1Price" not in data  # spot tickers have no bid/ask
        assert float(data["lowPrice24h"]) <= float(data["lastPrice"]) <= float(data["highPrice24h"])
        assert float(data["volume24h"]) > 0
        assert float(data["turnover24h"]) > float(data["volume24h"])
    assert server.sent["ticker"] >= 20
