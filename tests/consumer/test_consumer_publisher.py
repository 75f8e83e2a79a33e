"""The token bucket and the rate-limited publisher, on Trio's mock clock."""

from __future__ import annotations

import itertools

import orjson
import pytest
import trio

from mdd.consumer.alerts import Alert
from mdd.consumer.config import PublishConfig
from mdd.consumer.features import Features
from mdd.consumer.metrics import ConsumerMetrics
from mdd.consumer.publisher import Publisher, TokenBucket
from mdd.consumer.signals import Signal


def feats(sym: str = "BTCUSDT", ts: int = 0) -> Features:
    return Features(sym, ts, 1.0, 0.1, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1)


def test_token_bucket_arithmetic() -> None:
    b = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert b.try_take(0.0)
    assert b.try_take(0.0)
    assert not b.try_take(0.0)
    assert b.wait_time(0.0) == pytest.approx(0.5)
    assert not b.try_take(0.49)
    assert b.try_take(0.5)
    # Refill is capped at the burst size.
    assert b.wait_time(100.0) == 0.0
    assert b.try_take(100.0)
    assert b.try_take(100.0)
    assert not b.try_take(100.0)
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


async def test_features_limited_per_symbol_on_mock_clock(autojump_clock) -> None:
    metrics = ConsumerMetrics()
    pub = Publisher(PublishConfig(features_per_second=5.0, features_burst=1.0), metrics)
    sent: list[tuple[float, str, int]] = []
    start = trio.current_time()
    # Offer a feature update for two symbols every 10 ms for 2 s (200 offers each).
    for i in range(200):
        now = trio.current_time()
        for sym in ("BTCUSDT", "ETHUSDT"):
            pub.offer_features(feats(sym, ts=i), now)
        pub.release_pending(now)
        for subject, payload in pub.take_outbox():
            sent.append((now - start, subject, orjson.loads(payload)["ts"]))
        await trio.sleep(0.01)
    for sym in ("BTCUSDT", "ETHUSDT"):
        times = [t for t, s, _ in sent if s == f"senpai.features.{sym}"]
        # 5/s with a burst of 1 over ~2 s: the first at once, then one per 0.2 s.
        assert 10 <= len(times) <= 11
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.2 - 1e-6
    assert pub.rate_limited == 400 - len(sent)
    assert metrics.rate_limited.labels("features")._value.get() == pub.rate_limited


async def test_pending_update_is_latest_and_released(autojump_clock) -> None:
    pub = Publisher(PublishConfig(features_per_second=1.0), ConsumerMetrics())
    now = trio.current_time()
    assert pub.offer_features(feats(ts=1), now)
    assert not pub.offer_features(feats(ts=2), now)
    assert not pub.offer_features(feats(ts=3), now)  # replaces ts=2
    assert [orjson.loads(p)["ts"] for _, p in pub.take_outbox()] == [1]
    wait = pub.next_release(now)
    assert wait == pytest.approx(1.0)
    await trio.sleep(wait)
    assert pub.release_pending(trio.current_time()) == 1
    assert [orjson.loads(p)["ts"] for _, p in pub.take_outbox()] == [3]
    assert pub.next_release(trio.current_time()) is None


def test_signals_and_alerts_are_never_limited() -> None:
    pub = Publisher(PublishConfig(features_per_second=0.001), ConsumerMetrics())
    for i in range(50):
        pub.offer_signal(Signal("BTCUSDT", "long", i, {"return_10s": 0.1}, {}))
        pub.offer_alert(Alert("spread", "BTCUSDT", 80.0, 50.0, "wide"))
    out = pub.take_outbox()
    assert len(out) == 100
    assert {s for s, _ in out} == {"senpai.signals.BTCUSDT", "senpai.alerts.spread"}
    assert pub.take_outbox() == []


def test_custom_prefixes() -> None:
    cfg = PublishConfig(features_prefix="x.f", signals_prefix="x.s", alerts_prefix="x.a")
    pub = Publisher(cfg, ConsumerMetrics())
    pub.offer_features(feats(), 0.0)
    pub.offer_signal(Signal("BTCUSDT", "short", 1, {}, {}))
    pub.offer_alert(Alert("stale", "BTCUSDT", 9.0, 5.0, "quiet"))
    assert [s for s, _ in pub.take_outbox()] == ["x.f.BTCUSDT", "x.s.BTCUSDT", "x.a.stale"]
