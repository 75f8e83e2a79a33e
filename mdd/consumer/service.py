"""The consumer's supervision tree and its processing core.

::

    trio.run(service.run)
    └─ root nursery
       ├─ http server        hypercorn.trio.serve, started with nursery.start
       ├─ signal watcher     SIGTERM/SIGINT -> graceful stop; a second one exits
       └─ trio_asyncio.open_loop()        the only asyncio in the process
          └─ work nursery
             ├─ processor    inbox batch -> decode -> state -> features ->
             │               signals/alerts -> publisher -> one NATS crossing
             ├─ releaser     publishes rate-limited feature updates when a
             │               token is back
             └─ stale check  every alerts.check_interval, trio time

Shutdown: unsubscribe, close the inbox, let the processor drain what was
already received and publish the results, then flush and close NATS
(shielded). NATS being unreachable at start is not fatal: the service serves
HTTP (``/health`` answers 503) and retries with capped backoff.

:meth:`ConsumerService.process_batch` is synchronous and pure apart from the
publisher's outbox, so the unit tests drive it directly.
"""

from __future__ import annotations

import collections
import logging
import re
import signal
import time
from typing import TYPE_CHECKING, Any, Final

import trio
import trio_asyncio

from ..errors import EventDecodeError
from ..events import QuoteEvent, TradeEvent, event_to_dict, loads
from ..redact import redact_url
from ..supervisor import Backoff
from .alerts import AlertEngine
from .features import compute_features
from .http import ConsumerApp, serve_http
from .metrics import ConsumerMetrics
from .publisher import Publisher
from .signals import SignalEngine
from .state import LatestState
from .subscriber import Inbox, NatsSubscriber, NatsUnavailableError

if TYPE_CHECKING:
    from .alerts import Alert
    from .config import ConsumerConfig
    from .features import Features
    from .signals import Signal
    from .subscriber import RawMessage

LOGGER = logging.getLogger("mdd.consumer.service")

#: Most messages taken from the inbox per processing round.
BATCH_MAX: Final = 1000

#: Recent signals and alerts kept for ``/stats``.
RECENT: Final = 20

#: Event types that carry market data for a symbol (heartbeats and status do not).
_MARKET_TYPES: Final = frozenset({"trade", "quote", "book"})

#: Symbols the consumer accepts: they become one NATS subject token and a metric label.
SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9_:-]{1,64}")


class ConsumerService:
    """The running consumer: state, engines, publisher, NATS and HTTP.

    Args:
        config: the validated configuration.
        install_signal_handlers: watch SIGTERM/SIGINT (the CLI does; tests do not).
    """

    def __init__(self, config: ConsumerConfig, *, install_signal_handlers: bool = False) -> None:
        self.config = config
        self.install_signal_handlers = install_signal_handlers
        self.metrics = ConsumerMetrics()
        self.state = LatestState(config.window.seconds, config.window.short_return_seconds)
        self.signal_engine = SignalEngine(config.signals)
        self.alert_engine = AlertEngine(config.alerts)
        self.publisher = Publisher(config.publish, self.metrics)
        self.inbox = Inbox(config.nats.capacity, self.metrics)
        self.nats = NatsSubscriber(config.nats, self.inbox, self.metrics, name=config.consumer.name)
        self.latest_features: dict[str, Features] = {}
        self.consumed: collections.Counter[str] = collections.Counter()
        self.parse_errors = 0
        self.feature_computations = 0
        self.signal_counts: collections.Counter[str] = collections.Counter()
        self.alert_counts: collections.Counter[str] = collections.Counter()
        self.recent_signals: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.recent_alerts: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.http_binds: list[str] = []
        self.started_wall = time.time()
        self._stop = trio.Event()
        self._http_stop = trio.Event()
        self._pending = trio.Event()
        self._stop_reason = ""
        self._event_counters = {
            kind: self.metrics.events.labels(kind)
            for kind in ("trade", "quote", "book", "heartbeat", "status")
        }

    # ------------------------------------------------------------------
    # Processing core (synchronous)

    def process_batch(self, batch: list[RawMessage], now: float) -> None:
        """Decode a batch and update state, features, signals, alerts and the outbox.

        Features, signals and alerts are evaluated once per symbol per batch,
        on the state after the whole batch. Bad payloads are counted and skipped.

        Args:
            batch: messages from the inbox.
            now: trio time (for the rate limiter and stale tracking).
        """
        t0 = time.perf_counter()
        symbol_ok = SYMBOL_RE.fullmatch
        state = self.state
        touched: dict[str, Any] = {}
        counts: collections.Counter[str] = collections.Counter()
        errors = 0
        for _subject, data, recv_ns in batch:
            try:
                event = loads(data)
            except EventDecodeError:
                errors += 1
                continue
            kind = event.type
            if kind not in _MARKET_TYPES:
                counts[kind] += 1
                continue
            if not symbol_ok(event.symbol):
                errors += 1  # would not make a valid subject token: skip, as a bad payload
                continue
            counts[kind] += 1
            if isinstance(event, TradeEvent):
                st = state.apply_trade(event, recv_ns, now)
            elif isinstance(event, QuoteEvent):
                st = state.apply_quote(event, recv_ns, now)
            else:
                st = state.apply_other(event, recv_ns, now)
            touched[st.symbol] = st
        if errors:
            self.parse_errors += errors
            self.metrics.parse_errors.inc(errors)
        for kind, n in counts.items():
            self.consumed[kind] += n
            counter = self._event_counters.get(kind)
            if counter is None:
                counter = self._event_counters[kind] = self.metrics.events.labels(kind)
            counter.inc(n)
        publisher = self.publisher
        for symbol, st in touched.items():
            features = compute_features(st)
            self.latest_features[symbol] = features
            publisher.offer_features(features, now)
            self.metrics.window_trades.labels(symbol).set(len(st.window))
            sig = self.signal_engine.evaluate(features)
            if sig is not None:
                self._emit_signal(sig)
            for alert in self.alert_engine.on_features(features):
                self._emit_alert(alert)
        if touched:
            self.feature_computations += len(touched)
            self.metrics.feature_computations.inc(len(touched))
            self.metrics.symbols.set(len(state.symbols))
        if publisher.pending:
            self._pending.set()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.processing.observe(time.perf_counter() - t0)

    def _emit_signal(self, sig: Signal) -> None:
        self.signal_counts[sig.side] += 1
        self.metrics.signals.labels(sig.side).inc()
        self.recent_signals.append(sig.as_dict())
        self.publisher.offer_signal(sig)
        LOGGER.info("signal side=%s symbol=%s", sig.side, sig.symbol)

    def _emit_alert(self, alert: Alert) -> None:
        self.alert_counts[alert.kind] += 1
        self.metrics.alerts.labels(alert.kind).inc()
        self.recent_alerts.append(alert.as_dict())
        self.publisher.offer_alert(alert)
        LOGGER.warning("alert kind=%s symbol=%s value=%.3f", alert.kind, alert.symbol, alert.value)

    def check_stale(self, now: float) -> list[Alert]:
        """Raise ``stale`` alerts for silent symbols (trio time ``now``)."""
        alerts = self.alert_engine.check_stale(self.state.symbols.values(), now)
        for alert in alerts:
            self._emit_alert(alert)
        return alerts

    # ------------------------------------------------------------------
    # Views for the HTTP API

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while NATS is connected and not stopping."""
        connected = self.nats.connected
        ok = connected and not self._stop.is_set()
        stale = sorted(s for s in self.state.symbols if self.alert_engine.is_stale(s))
        return ok, {
            "status": "ok" if ok else "degraded",
            "nats_connected": connected,
            "symbols": len(self.state.symbols),
            "stale_symbols": stale,
            "uptime_s": round(time.time() - self.started_wall, 3),
        }

    def stats(self) -> dict[str, Any]:
        """Every counter, for ``/stats``."""
        inbox = self.inbox.stats()
        return {
            "name": self.config.consumer.name,
            "uptime_s": round(time.time() - self.started_wall, 3),
            "consumed": dict(self.consumed),
            "parse_errors": self.parse_errors,
            "feature_computations": self.feature_computations,
            "signals": dict(self.signal_counts),
            "signals_suppressed_by_cooldown": self.signal_engine.suppressed,
            "alerts": dict(self.alert_counts),
            "published": dict(self.publisher.counts),
            "rate_limited": self.publisher.rate_limited,
            "pending_features": len(self.publisher.pending),
            "inbox": {
                "capacity": inbox.capacity,
                "queued": inbox.queued,
                "peak_queued": inbox.peak_queued,
                "offered": inbox.offered,
                "dropped": inbox.dropped,
                "evicted": inbox.evicted,
                "delivered": inbox.delivered,
            },
            "nats": {
                "url": redact_url(self.config.nats.url),
                "connected": self.nats.connected,
                "reconnects": self.nats.reconnects,
                "subject": self.config.nats.subject,
                "queue_group": self.config.nats.queue_group,
                "jetstream_durable": self.config.nats.jetstream_durable or None,
            },
            "symbols": {
                sym: {"events": st.events, "trades": st.trades, "window_trades": len(st.window)}
                for sym, st in sorted(self.state.symbols.items())
            },
            "recent_signals": list(self.recent_signals),
            "recent_alerts": list(self.recent_alerts),
        }

    def state_of(self, symbol: str) -> dict[str, Any] | None:
        """Latest trade, quote and window aggregates of ``symbol``."""
        st = self.state.get(symbol)
        if st is None:
            return None
        sums = st.window.sums()
        return {
            "symbol": symbol,
            "last_trade": event_to_dict(st.last_trade) if st.last_trade else None,
            "last_quote": event_to_dict(st.last_quote) if st.last_quote else None,
            "last_event_ts": st.last_event_ts,
            "events": st.events,
            "trades": st.trades,
            "quotes": st.quotes,
            "stale": self.alert_engine.is_stale(symbol),
            "window": {
                "seconds": self.config.window.seconds,
                "trades": sums.count,
                "volume": sums.volume,
                "notional": sums.notional,
                "buy_volume": sums.buy_volume,
                "sell_volume": sums.sell_volume,
            },
        }

    def features_of(self, symbol: str) -> dict[str, Any] | None:
        """The latest features of ``symbol``."""
        features = self.latest_features.get(symbol)
        return features.as_dict() if features is not None else None

    def render_metrics(self) -> bytes:
        """Prometheus text of the consumer's registry."""
        self.metrics.inbox_queued.set(self.inbox.queued)
        return self.metrics.render()

    # ------------------------------------------------------------------
    # Lifecycle

    def request_stop(self, reason: str = "requested") -> None:
        """Start a graceful shutdown (idempotent)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            LOGGER.info("consumer.stopping reason=%s", reason)
            self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[ConsumerService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`request_stop` (or a signal), then shut down gracefully.

        ``task_status.started(self)`` is called once HTTP listens and the NATS
        subscription is active.
        """
        cfg = self.config
        try:
            async with trio.open_nursery() as root:
                if cfg.http.enabled:
                    app = ConsumerApp(self)
                    self.http_binds = await root.start(
                        serve_http, app, cfg.http.host, cfg.http.port, self._http_stop.wait
                    )
                    LOGGER.info("http.listening binds=%s", ",".join(self.http_binds))
                if self.install_signal_handlers:
                    await root.start(self._watch_signals)
                async with trio_asyncio.open_loop():
                    await self._run_nats(task_status)
                self._http_stop.set()
                root.cancel_scope.cancel("consumer stopped")
        finally:
            self._http_stop.set()
        LOGGER.info("consumer.stopped reason=%s", self._stop_reason or "-")

    async def _run_nats(self, task_status: trio.TaskStatus[ConsumerService]) -> None:
        started = False
        try:
            if not await self._connect():
                task_status.started(self)
                return
            await self.nats.subscribe()
            async with trio.open_nursery() as work:
                work.start_soon(self._processor, work.cancel_scope)
                work.start_soon(self._releaser)
                work.start_soon(self._stale_checker)
                task_status.started(self)
                started = True
                await self._stop.wait()
                await self.nats.unsubscribe()
                self.inbox.close()
        finally:
            await self.nats.close()
            if not started:
                self.inbox.close()

    async def _connect(self) -> bool:
        """Connect to NATS, retrying with backoff. False if stopped before connecting."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        connected = False
        async with trio.open_nursery() as nursery:

            async def cancel_on_stop() -> None:
                await self._stop.wait()
                nursery.cancel_scope.cancel("stop requested while connecting")

            nursery.start_soon(cancel_on_stop)
            while True:
                try:
                    await self.nats.connect()
                except NatsUnavailableError as exc:
                    delay = backoff.next()
                    LOGGER.warning("nats.connect_failed error=%s retry_in=%.1f", exc, delay)
                    await trio.sleep(delay)
                    continue
                connected = True
                nursery.cancel_scope.cancel("connected")
                break
        return connected

    async def _flush(self) -> None:
        messages = self.publisher.take_outbox()
        if not messages:
            return
        failed = await self.nats.publish_batch(messages)
        ok = len(messages) - failed
        if ok:  # on a partial failure the split by stream is approximate
            by_stream = collections.Counter(self._stream_of(s) for s, _ in messages[:ok])
            for stream, n in by_stream.items():
                self.metrics.published.labels(stream).inc(n)

    def _stream_of(self, subject: str) -> str:
        cfg = self.config.publish
        if subject.startswith(cfg.signals_prefix + "."):
            return "signals"
        if subject.startswith(cfg.alerts_prefix + "."):
            return "alerts"
        return "features"

    async def _processor(self, work_scope: trio.CancelScope) -> None:
        """Inbox -> process -> publish, until the inbox is closed and drained."""
        inbox = self.inbox
        while True:
            try:
                batch = await inbox.receive_batch(BATCH_MAX)
            except trio.EndOfChannel:
                break
            self.process_batch(batch, trio.current_time())
            await self._flush()
        with trio.CancelScope(shield=True):
            await self._flush()
        work_scope.cancel("inbox drained")

    async def _releaser(self) -> None:
        """Publish rate-limited feature updates as soon as their bucket refills."""
        publisher = self.publisher
        while True:
            wait = publisher.next_release(trio.current_time())
            if wait is None:
                self._pending = trio.Event()
                await self._pending.wait()
                continue
            await trio.sleep(wait)
            if publisher.release_pending(trio.current_time()):
                await self._flush()

    async def _stale_checker(self) -> None:
        interval = self.config.alerts.check_interval
        while True:
            await trio.sleep(interval)
            if self.check_stale(trio.current_time()):
                await self._flush()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stop.is_set():
                    LOGGER.error("consumer.forced_exit signal=%s", name)
                    raise SystemExit(1)
                self.request_stop(f"signal {name}")
