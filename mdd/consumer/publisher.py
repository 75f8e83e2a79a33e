"""The publisher: features, signals and alerts as JSON on ``senpai.*`` subjects.

Subjects (prefixes configurable in ``[publish]``):

* ``senpai.features.{symbol}``: at most ``features_per_second`` per symbol,
  enforced by a token bucket per symbol. An update that finds the bucket empty
  is not lost: it waits as the symbol's *pending* update, a newer one replaces
  it (latest wins), and it is published as soon as a token is back.
* ``senpai.signals.{symbol}`` and ``senpai.alerts.{kind}``: never rate limited
  (signals have their own cooldown, alerts are edge-triggered).

Nothing here awaits per message: offers only fill an outbox, and the service
hands the whole outbox to NATS in one crossing into asyncio per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from .alerts import Alert
    from .config import PublishConfig
    from .features import Features
    from .metrics import ConsumerMetrics
    from .signals import Signal

#: A message ready for NATS: (subject, payload).
Message = tuple[str, bytes]


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    Time is passed in (trio time in the service), so the bucket is a pure
    function of the call sequence and tests run on a mock clock.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def try_take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is now)."""
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate


class Publisher:
    """Turns features, signals and alerts into subjects and payloads.

    Args:
        config: prefixes and the per-symbol feature rate.
        metrics: counters for published and rate-limited messages.
    """

    def __init__(self, config: PublishConfig, metrics: ConsumerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._buckets: dict[str, TokenBucket] = {}
        self.pending: dict[str, Features] = {}
        self.outbox: list[Message] = []
        self.counts: dict[str, int] = {"features": 0, "signals": 0, "alerts": 0}
        self.rate_limited = 0
        self._limited = metrics.rate_limited.labels("features")

    def _bucket(self, symbol: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(symbol)
        if bucket is None:
            cfg = self.config
            bucket = TokenBucket(cfg.features_per_second, cfg.features_burst, now)
            self._buckets[symbol] = bucket
        return bucket

    def offer_features(self, features: Features, now: float) -> bool:
        """Publish ``features`` if the symbol's bucket allows, else keep it pending.

        Returns True if it went to the outbox now.
        """
        if not self.config.enabled:
            return False
        symbol = features.symbol
        if self._bucket(symbol, now).try_take(now):
            self.pending.pop(symbol, None)
            self._emit_features(features)
            return True
        self.pending[symbol] = features
        self.rate_limited += 1
        self._limited.inc()
        return False

    def _emit_features(self, features: Features) -> None:
        subject = f"{self.config.features_prefix}.{features.symbol}"
        self.outbox.append((subject, orjson.dumps(features.as_dict())))
        self.counts["features"] += 1

    def release_pending(self, now: float) -> int:
        """Move pending feature updates whose bucket has a token again to the outbox."""
        if not self.pending:
            return 0
        released = [s for s in self.pending if self._buckets[s].try_take(now)]
        for symbol in released:
            self._emit_features(self.pending.pop(symbol))
        return len(released)

    def next_release(self, now: float) -> float | None:
        """Seconds until some pending update can go out, or None if nothing is pending."""
        if not self.pending:
            return None
        return min(self._buckets[s].wait_time(now) for s in self.pending)

    def offer_signal(self, signal: Signal) -> None:
        """Queue a signal on ``{signals_prefix}.{symbol}`` (not rate limited)."""
        if not self.config.enabled:
            return
        subject = f"{self.config.signals_prefix}.{signal.symbol}"
        self.outbox.append((subject, orjson.dumps(signal.as_dict())))
        self.counts["signals"] += 1

    def offer_alert(self, alert: Alert) -> None:
        """Queue an alert on ``{alerts_prefix}.{kind}`` (not rate limited)."""
        if not self.config.enabled:
            return
        subject = f"{self.config.alerts_prefix}.{alert.kind}"
        self.outbox.append((subject, orjson.dumps(alert.as_dict())))
        self.counts["alerts"] += 1

    def take_outbox(self) -> list[Message]:
        """Everything queued since the last call, oldest first; empties the outbox."""
        out, self.outbox = self.outbox, []
        return out
