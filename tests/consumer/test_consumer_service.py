"""The processing core and the inbox: bad payloads, drop policy, stale alerts, stats."""

from __future__ import annotations

import orjson
import pytest
import trio

from mdd.consumer.config import load_consumer_config
from mdd.consumer.service import ConsumerService
from mdd.consumer.state import NS
from mdd.consumer.subscriber import Inbox, subject_type
from mdd.events import HeartbeatEvent, QuoteEvent, StatusEvent, TradeEvent, dumps

T0 = 1_700_000_000 * NS


def msg(event, recv_ns: int | None = None) -> tuple[str, bytes, int]:
    subject = f"md.events.{event.type}.{event.symbol}"
    return subject, dumps(event), recv_ns if recv_ns is not None else event.ts_recv


def trade(t: float, price: float, qty: float = 1.0, side: str = "buy", sym: str = "BTCUSDT"):
    ts = T0 + int(t * NS)
    return TradeEvent("sim", sym, ts, ts, price, qty, side, str(ts))


def quote(t: float, bid: float = 99.99, ask: float = 100.01, sym: str = "BTCUSDT"):
    ts = T0 + int(t * NS)
    return QuoteEvent("sim", sym, ts, ts, bid, 1.0, ask, 1.0)


def make_service(**overrides) -> ConsumerService:
    cfg = load_consumer_config(None, env={}, overrides=overrides)
    return ConsumerService(cfg)


def test_subject_type() -> None:
    assert subject_type("md.events.trade.BTCUSDT") == "trade"
    assert subject_type("custom.prefix.quote.ETHUSDT") == "quote"
    assert subject_type("heartbeat.__system__") == "heartbeat"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2, 3]",
        b'{"type": "nope"}',
        b'{"type": "trade", "provider": "x", "symbol": "BTCUSDT"}',  # missing fields
        orjson.dumps(
            {
                "type": "trade",
                "provider": "x",
                "symbol": "BTCUSDT",
                "ts_exchange": 1,
                "ts_recv": 1,
                "price": "100",  # a string, not a number
                "qty": 1.0,
                "side": "buy",
                "trade_id": "1",
            }
        ),
        b"",
    ],
)
def test_bad_payloads_are_counted_and_skipped(payload: bytes) -> None:
    svc = make_service()
    good = trade(0, 100.0)
    svc.process_batch([("md.events.trade.BTCUSDT", payload, T0), msg(good)], now=0.0)
    assert svc.parse_errors == 1
    assert svc.metrics.parse_errors._value.get() == 1
    assert svc.consumed == {"trade": 1}
    assert svc.features_of("BTCUSDT")["last_price"] == 100.0


def test_process_batch_features_signal_and_outbox() -> None:
    svc = make_service(**{"signals.return_threshold": 0.01, "signals.cooldown": 30.0})
    batch = [msg(quote(0)), msg(trade(1, 100.0)), msg(trade(2, 101.5))]
    svc.process_batch(batch, now=0.0)
    out = svc.publisher.take_outbox()
    subjects = [s for s, _ in out]
    assert subjects == ["senpai.features.BTCUSDT", "senpai.signals.BTCUSDT"]
    sig = orjson.loads(out[1][1])
    assert sig["side"] == "long"
    assert sig["features"]["return_10s"] == pytest.approx(0.015)
    assert svc.signal_counts == {"long": 1}
    assert svc.metrics.signals.labels("long")._value.get() == 1
    # Heartbeats and status events are counted but create no symbol state.
    hb = HeartbeatEvent("mdd", "__system__", None, T0, 0.0)
    stat = StatusEvent("sim", "main", None, T0, "up")
    svc.process_batch([msg(hb), msg(stat)], now=0.1)
    assert svc.consumed["heartbeat"] == 1
    assert svc.consumed["status"] == 1
    assert set(svc.state.symbols) == {"BTCUSDT"}
    stats = svc.stats()
    assert stats["consumed"] == {"quote": 1, "trade": 2, "heartbeat": 1, "status": 1}
    assert stats["signals"] == {"long": 1}
    assert stats["symbols"]["BTCUSDT"]["window_trades"] == 2
    text = svc.render_metrics().decode()
    assert 'senpai_events_consumed_total{type="trade"} 2.0' in text
    assert 'senpai_window_trades{symbol="BTCUSDT"} 2.0' in text


def test_spread_and_latency_alerts_from_events() -> None:
    svc = make_service(**{"alerts.spread_bps": 50.0, "alerts.latency_ms": 100.0})
    wide = quote(0, bid=99.0, ask=101.0)  # 200 bps
    svc.process_batch([msg(wide, recv_ns=wide.ts_recv + 500 * 1_000_000)], now=0.0)
    alerts = [orjson.loads(p) for s, p in svc.publisher.take_outbox() if "alerts" in s]
    assert sorted(a["kind"] for a in alerts) == ["latency", "spread"]
    assert svc.alert_counts == {"latency": 1, "spread": 1}


def test_inbox_tiered_drop_policy() -> None:
    inbox = Inbox(10)
    t = b"{}"
    for _ in range(8):
        assert inbox.offer("md.events.trade.X", t, 0)
    # 80 %: heartbeats shed, quotes still pass.
    assert not inbox.offer("md.events.heartbeat.X", t, 0)
    assert inbox.offer("md.events.quote.X", t, 0)
    # 90 %: quotes and books shed, trades pass.
    assert not inbox.offer("md.events.quote.X", t, 0)
    assert not inbox.offer("md.events.book.X", t, 0)
    assert inbox.offer("md.events.trade.X", t, 1)
    # 100 %: the oldest is evicted for a new trade.
    assert inbox.offer("md.events.trade.X", t, 2)
    s = inbox.stats()
    assert s.queued == 10
    assert s.dropped == {"heartbeat": 1, "quote": 1, "book": 1}
    assert s.evicted == {"trade": 1}
    assert sum(s.offered.values()) == 14
    assert s.offered["trade"] - s.evicted["trade"] + s.offered["quote"] - s.dropped["quote"] == 10


async def test_inbox_batches_and_close() -> None:
    inbox = Inbox(100)
    for i in range(5):
        inbox.offer(f"md.events.trade.S{i}", b"x", i)
    batch = await inbox.receive_batch(3)
    assert [m[2] for m in batch] == [0, 1, 2]
    inbox.close()
    assert not inbox.offer("md.events.trade.X", b"x", 9)
    assert [m[2] for m in await inbox.receive_batch()] == [3, 4]
    with pytest.raises(trio.EndOfChannel):
        await inbox.receive_batch()
    assert inbox.stats().delivered == 5


async def test_stale_checker_and_releaser_on_mock_clock(autojump_clock) -> None:
    """The service's background loops, run on virtual time without NATS."""
    svc = make_service(**{"alerts.stale_after": 3.0, "publish.features_per_second": 1.0})
    published: list[str] = []

    async def fake_flush() -> None:  # capture what would cross into NATS
        published.extend(s for s, _ in svc.publisher.take_outbox())

    svc._flush = fake_flush  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc._stale_checker)
        nursery.start_soon(svc._releaser)
        svc.process_batch([msg(trade(0, 100.0))], trio.current_time())
        await fake_flush()
        svc.process_batch([msg(trade(0.1, 100.0))], trio.current_time())  # rate limited
        assert svc.publisher.pending
        await trio.sleep(1.01)
        assert published == ["senpai.features.BTCUSDT"] * 2  # released after 1 s
        await trio.sleep(2.5)
        assert "senpai.alerts.stale" in published
        assert svc.health()[1]["stale_symbols"] == ["BTCUSDT"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("symbol", ["BTC.USDT", "BTC USDT", "BTC>", "", "X" * 65])
def test_symbols_that_cannot_be_subject_tokens_are_skipped(symbol: str) -> None:
    svc = make_service()
    bad = trade(0, 100.0, sym=symbol)
    svc.process_batch([msg(bad), msg(trade(1, 101.0))], now=0.0)
    assert svc.parse_errors == 1
    assert set(svc.state.symbols) == {"BTCUSDT"}
    assert [s for s, _ in svc.publisher.take_outbox()] == ["senpai.features.BTCUSDT"]


async def test_window_expiry_on_mock_clock(autojump_clock) -> None:
    """A live-like feed stamped from the (virtual) clock: trades leave the window after 60 s."""
    svc = make_service()

    def stamp() -> float:
        return trio.current_time()

    async def tick(price: float, qty: float) -> None:
        svc.process_batch([msg(trade(stamp(), price, qty))], trio.current_time())

    await tick(100.0, 1.0)  # t = 0
    await trio.sleep(30)
    await tick(110.0, 3.0)  # t = 30
    f = svc.latest_features["BTCUSDT"]
    assert f.volume_60s == 4.0
    assert f.vwap_60s == pytest.approx((100 + 330) / 4)
    assert f.return_60s == pytest.approx(0.1)
    assert f.return_10s == 0.0  # only the t=30 trade is in the last 10 s
    await trio.sleep(30)
    await tick(121.0, 1.0)  # t = 60: the t=0 trade has just left the (t-60, t] window
    f = svc.latest_features["BTCUSDT"]
    assert f.trades_60s == 2
    assert f.volume_60s == 4.0
    assert f.vwap_60s == pytest.approx((330 + 121) / 4)
    assert f.return_60s == pytest.approx(0.1)
    assert f.volatility_60s == 0.0  # one return left: 110 -> 121
    await trio.sleep(45)
    await tick(121.0, 2.0)  # t = 105: only t=60 and t=105 remain
    f = svc.latest_features["BTCUSDT"]
    assert f.trades_60s == 2
    assert f.volume_60s == 3.0
    assert f.return_60s == 0.0
    assert svc.render_metrics().count(b'senpai_window_trades{symbol="BTCUSDT"} 2.0') == 1
