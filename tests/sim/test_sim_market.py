"""mdd.sim market and server mechanics: book, depth sync, rate 0, real time, several venues."""

from __future__ import annotations

from functools import partial

import orjson
import pytest
import trio
import wsproto.events as we
from trio_websocket import ConnectionClosed

from mdd.sim import SimOptions, binance_depth_snapshot, serve_sim, serve_sims
from mdd.sim._market import Market
from mdd.sim.book import SimBook, diff_levels


def test_book_stage_commit_and_ids():
    book = SimBook(last_update_id=100)
    first, last = book.apply([(101, 5), (100, 7)], [(102, 3)])
    assert (first, last) == (101, 103)
    assert book.best("bid") == (101, 5)
    assert book.best("ask") == (102, 3)
    first, last = book.apply([(101, 0), (99, 0)], [])  # deleting an absent level takes an id
    assert (first, last) == (104, 105)
    assert book.top("bid", 5) == [(100, 7)]
    assert book.apply([], []) == (106, 106)
    assert book.snapshot(10) == (106, [(100, 7)], [(102, 3)])
    assert sorted(diff_levels([(1, 1), (2, 2)], [(2, 3), (4, 4)])) == [(1, 0), (2, 3), (4, 4)]


async def test_depth_stream_syncs_with_rest_snapshot(nursery, autojump_clock, ws_client):
    """Binance's documented sync procedure rebuilds exactly the simulator's true book."""
    server = await nursery.start(partial(serve_sim, "binance", SimOptions(rate=20, seed=11)))
    book = server.market.symbols["BTCUSDT"].book
    async with ws_client(server.port, "/ws/btcusdt@depth@100ms") as ws:
        buffered = [orjson.loads(await ws.get_message()) for _ in range(3)]
        snap = binance_depth_snapshot(server, "BTCUSDT", limit=5000)
        assert list(snap) == ["lastUpdateId", "bids", "asks"]
        last = snap["lastUpdateId"]
        assert last >= buffered[0]["U"]
        bids = {p: q for p, q in snap["bids"]}
        asks = {p: q for p, q in snap["asks"]}
        applied = 0
        while True:
            event = buffered.pop(0) if buffered else orjson.loads(await ws.get_message())
            if event["u"] <= last:
                continue
            if applied == 0:
                assert event["U"] <= last + 1 <= event["u"]
            else:
                assert event["U"] == last + 1
            for side, levels in ((bids, event["b"]), (asks, event["a"])):
                for p, q in levels:
                    if float(q) == 0:
                        side.pop(p, None)
                    else:
                        side[p] = q
            last = event["u"]
            applied += 1
            if applied >= 50 and last == book.last_update_id:
                break
    truth = binance_depth_snapshot(server, "BTCUSDT", limit=5000)
    assert truth["lastUpdateId"] == last
    assert sorted(bids.items()) == sorted((p, q) for p, q in truth["bids"])
    assert sorted(asks.items()) == sorted((p, q) for p, q in truth["asks"])


async def test_rate_zero_is_as_fast_as_the_client_reads(nursery, autojump_clock, ws_client):
    server = await nursery.start(partial(serve_sim, "binance", SimOptions(rate=0, seed=1)))
    t0 = trio.current_time()
    async with ws_client(server.port, "/ws/btcusdt@trade") as ws:
        ids = [orjson.loads(await ws.get_message())["t"] for _ in range(500)]
    assert ids == list(range(ids[0], ids[0] + 500))
    assert trio.current_time() == t0  # no timer involved at all
    assert server.sent["trade"] >= 500


async def test_real_time_and_several_venues(nursery, ws_client):
    """Without MockClock: two venues at once on their own ports, data within a second."""
    servers = await nursery.start(
        partial(serve_sims, ["binance", "bybit"], SimOptions(rate=50, seed=2))
    )
    assert set(servers) == {"binance", "bybit"}
    assert servers["binance"].port != servers["bybit"].port
    with trio.fail_after(5):
        async with ws_client(servers["binance"].port, "/ws/ethusdt@bookTicker") as ws:
            quote = orjson.loads(await ws.get_message())
            assert quote["s"] == "ETHUSDT"
        async with ws_client(servers["bybit"].port, "/v5/public/spot") as ws:
            await ws.send_message('{"op":"subscribe","args":["orderbook.1.ETHUSDT"]}')
            assert orjson.loads(await ws.get_message())["success"] is True
            assert orjson.loads(await ws.get_message())["topic"] == "orderbook.1.ETHUSDT"
    assert servers["binance"].statistics()["sent"]["quote"] >= 1


async def test_refuse_for_a_while(nursery, autojump_clock, raw_connect):
    server = await nursery.start(partial(serve_sim, "bybit", SimOptions(seed=1)))
    server.refuse_for(10.0)
    _, event = await raw_connect(server.port, "/v5/public/spot")
    assert isinstance(event, we.RejectConnection)
    assert event.status_code == 503
    await trio.sleep(10.0)
    _, event = await raw_connect(server.port, "/v5/public/spot")
    assert isinstance(event, we.AcceptConnection)


async def test_lagging_client_skips_ahead(nursery, autojump_clock, raw_connect, caplog):
    """A client that stops reading is not buffered without bound; it resumes with newer data."""
    opts = SimOptions(symbols=("BTCUSDT",), rate=200, seed=4, backlog=100, trades_per_frame=10)
    server = await nursery.start(partial(serve_sim, "binance", opts))
    client, _ = await raw_connect(server.port, "/ws/btcusdt@trade", rcvbuf=4096)
    await client.send_text('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}')
    await client.next_text()
    await trio.sleep(10.0)  # 40,000 frames (~8 MB): more than the socket buffers hold
    assert len(server.market.steps) == 100
    frames = [orjson.loads(await client.next_text()) for _ in range(3000)]
    ids = [f["t"] for f in frames if f.get("e") == "trade"]
    assert ids == sorted(ids)
    assert any("sim.client_lagging" in r.getMessage() for r in caplog.records)
    assert server.active == 1


def test_unknown_venue():
    with pytest.raises(ValueError, match="unknown venue"):
        trio.run(partial(serve_sim, "kraken"))


def test_replay_option_points_elsewhere():
    with pytest.raises(ValueError, match="serve_replay"):
        trio.run(partial(serve_sim, "binance", SimOptions(replay="x.jsonl")))


async def test_a_failing_session_does_not_stop_the_server(
    nursery, autojump_clock, ws_client, monkeypatch, caplog
):
    from mdd.sim._binance import BinanceSession

    server = await nursery.start(partial(serve_sim, "binance", SimOptions(seed=1)))

    async def broken(self, message):
        raise RuntimeError("sim bug")

    monkeypatch.setattr(BinanceSession, "on_text", broken)
    async with ws_client(server.port, "/ws") as ws:
        await ws.send_message("{}")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    assert any("sim.session_failed" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    async with ws_client(server.port, "/ws/btcusdt@trade") as ws:
        assert orjson.loads(await ws.get_message())["e"] == "trade"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("symbol", ["BTCUSDT", "DOGEUSDT", "AAPL", "ETH/USD"])
def test_market_invariants(seed, symbol):
    """Never crossed, ids chain, trades hit resting levels, sizes positive, bars consistent."""

    async def run() -> None:
        market = Market(SimOptions(symbols=(symbol,), seed=seed, trades_per_frame=3))
        prev = market.latest(symbol)
        trade_id = None
        for _ in range(500):
            market.advance()
            step = market.steps[-1]
            assert step.first_update_id == prev.last_update_id + 1
            assert step.first_update_id <= step.last_update_id
            assert step.bids[0][0] < step.asks[0][0]
            assert all(q > 0 for _, q in step.bids + step.asks)
            for t in step.trades:
                assert trade_id is None or t.trade_id == trade_id + 1
                trade_id = t.trade_id
                assert t.qty > 0
                resting = {p for p, _ in (prev.asks if t.taker_buy else prev.bids)}
                assert t.price in resting  # at the touch, or through it when a trade sweeps
            if step.bar is not None:
                bar = step.bar
                assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
            prev = step
            await trio.lowlevel.checkpoint()

    trio.run(run)
