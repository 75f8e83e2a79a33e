"""NATS side of the consumer: the inbox with the tiered drop policy, and the connection.

nats-py is an asyncio library; it runs under trio-asyncio inside one
``trio_asyncio.open_loop()`` owned by the service. Messages cross into Trio in
the subscription callback, which does nothing but :meth:`Inbox.offer` (a
synchronous ``send_nowait`` into a bounded trio memory channel): asyncio
callbacks run in the trio-asyncio loop, in Trio's own thread, so touching a
Trio channel synchronously is safe there, while awaiting a Trio object is not.

The inbox applies the daemon's tiered drop policy (see :mod:`mdd.bus`) by the
event type read from the subject (``md.events.{type}.{symbol}``), before
anything is decoded: heartbeats are shed at 80 % fill, quotes and books at
90 %, and at 100 % the oldest message is evicted, so trades are kept longest.

Outgoing messages cross the other way in batches: one ``aio_as_trio`` call per
batch, not per message.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from nats.aio.client import Client as NatsClient
from trio_asyncio import aio_as_trio

from ..bus import HEARTBEAT_DROP_AT, QUOTE_BOOK_DROP_AT
from ..errors import MddError
from ..redact import redact_text, redact_url
from ..sinks.nats import server_list

if TYPE_CHECKING:
    from .config import NatsConfig
    from .metrics import ConsumerMetrics
    from .publisher import Message

LOGGER = logging.getLogger("mdd.consumer.subscriber")

#: One received message: (subject, payload, wall-clock receive time in ns).
RawMessage = tuple[str, bytes, int]

#: Seconds allowed for unsubscribing, flushing and closing NATS at shutdown.
CLOSE_TIMEOUT: Final = 5.0

_SHED_AT_90: Final = frozenset({"quote", "book"})


class NatsUnavailableError(MddError):
    """The NATS server could not be reached (connect failed)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = redact_url(url)
        super().__init__(f"cannot connect to NATS at {self.url}: {redact_text(reason)}")


def subject_type(subject: str) -> str:
    """The event type in ``<prefix>.{type}.{symbol}``: the second-to-last token."""
    parts = subject.rsplit(".", 2)
    return parts[-2] if len(parts) >= 2 else "unknown"


@attrs.frozen
class InboxStats:
    """A snapshot of the inbox, for ``/stats``."""

    capacity: int
    queued: int
    peak_queued: int
    offered: dict[str, int]
    dropped: dict[str, int]
    evicted: dict[str, int]
    delivered: int


class Inbox:
    """Bounded hand-over from the NATS callback to the processing task.

    Args:
        capacity: channel size; the drop tiers are fractions of it.
        metrics: where drops are counted (``senpai_events_dropped_total``).
    """

    def __init__(self, capacity: int, metrics: ConsumerMetrics | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"inbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        send, receive = trio.open_memory_channel[RawMessage](capacity)
        self._send = send
        self._receive = receive
        self._evictor = receive.clone()
        self._hb_limit = math.ceil(capacity * HEARTBEAT_DROP_AT)
        self._qb_limit = math.ceil(capacity * QUOTE_BOOK_DROP_AT)
        self._metrics = metrics
        self.sent = 0
        self.delivered = 0
        self.evicted_total = 0
        self.peak_queued = 0
        self.offered: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.evicted: collections.Counter[str] = collections.Counter()
        self.closed = False

    @property
    def queued(self) -> int:
        """Messages waiting for the processing task."""
        return self.sent - self.delivered - self.evicted_total

    def _count_drop(self, counter: collections.Counter[str], kind: str) -> None:
        counter[kind] += 1
        if self._metrics is not None:
            self._metrics.dropped.labels(kind).inc()

    def offer(self, subject: str, data: bytes, recv_ns: int | None = None) -> bool:
        """Queue one message under the tiered policy; never blocks. False if dropped."""
        if self.closed:
            return False
        kind = subject_type(subject)
        self.offered[kind] += 1
        queued = self.sent - self.delivered - self.evicted_total
        if queued >= self._qb_limit and kind in _SHED_AT_90:
            self._count_drop(self.dropped, kind)
            return False
        if queued >= self._hb_limit and kind == "heartbeat":
            self._count_drop(self.dropped, kind)
            return False
        item = (subject, data, time.time_ns() if recv_ns is None else recv_ns)
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            old = self._evictor.receive_nowait()
            self.evicted_total += 1
            self._count_drop(self.evicted, subject_type(old[0]))
            self._send.send_nowait(item)
        self.sent += 1
        if queued >= self.peak_queued:
            self.peak_queued = queued + 1
        return True

    async def receive_batch(self, max_items: int = 1000) -> list[RawMessage]:
        """Wait for one message, then take whatever else is queued, up to ``max_items``.

        Raises:
            trio.EndOfChannel: the inbox is closed and empty.
        """
        batch = [await self._receive.receive()]
        receive_nowait = self._receive.receive_nowait
        try:
            while len(batch) < max_items:
                batch.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        self.delivered += len(batch)
        return batch

    def close(self) -> None:
        """Stop accepting messages: the reader drains what is queued, then sees EndOfChannel."""
        self.closed = True
        self._send.close()
        self._evictor.close()

    def stats(self) -> InboxStats:
        """A snapshot of the counters."""
        return InboxStats(
            capacity=self.capacity,
            queued=self.queued,
            peak_queued=self.peak_queued,
            offered=dict(self.offered),
            dropped=dict(self.dropped),
            evicted=dict(self.evicted),
            delivered=self.delivered,
        )


class NatsSubscriber:
    """One nats-py connection: subscribes into an :class:`Inbox`, publishes batches.

    Every method must be awaited inside ``trio_asyncio.open_loop()``.

    Args:
        config: ``[nats]``.
        inbox: where received messages go.
        metrics: connection state and publish errors.
        name: client name shown by the NATS server.
    """

    def __init__(
        self,
        config: NatsConfig,
        inbox: Inbox,
        metrics: ConsumerMetrics,
        name: str = "mdd-consumer",
    ) -> None:
        self.config = config
        #: ``config.url`` without user and password: what logs and errors show.
        self.safe_url = redact_url(config.url)
        self.inbox = inbox
        self.metrics = metrics
        self.name = name
        self._nc: Any = None
        self._sub: Any = None
        self.connected = False
        self.reconnects = 0

    # -- asyncio-side callbacks (run in the trio-asyncio loop; never await trio) --

    async def _on_msg(self, msg: Any) -> None:
        self.inbox.offer(msg.subject, msg.data)

    async def _on_disconnected(self) -> None:
        self.connected = False
        self.metrics.nats_connected.set(0)
        LOGGER.warning("nats.disconnected url=%s", self.safe_url)

    async def _on_reconnected(self) -> None:
        self.connected = True
        self.reconnects += 1
        self.metrics.nats_connected.set(1)
        self.metrics.nats_reconnects.inc()
        LOGGER.info("nats.reconnected url=%s", self.safe_url)

    async def _on_closed(self) -> None:
        self.connected = False
        self.metrics.nats_connected.set(0)

    async def _on_error(self, exc: Exception) -> None:
        LOGGER.warning("nats.error error=%s", type(exc).__name__)

    # -- trio-side API --

    async def connect(self) -> None:
        """Connect once (nats-py then reconnects by itself forever).

        Raises:
            NatsUnavailableError: the server could not be reached.
        """
        nc = NatsClient()
        try:
            await aio_as_trio(nc.connect)(
                servers=server_list(self.config.url),
                name=self.name,
                connect_timeout=self.config.connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                error_cb=self._on_error,
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await aio_as_trio(nc.close)()
            if isinstance(exc, Exception):
                raise NatsUnavailableError(self.config.url, f"{type(exc).__name__}: {exc}") from exc
            raise
        self._nc = nc
        self.connected = True
        self.metrics.nats_connected.set(1)
        LOGGER.info("nats.connected url=%s", self.safe_url)

    async def subscribe(self) -> None:
        """Subscribe ``subject`` in the queue group (or as a JetStream durable)."""
        cfg = self.config
        nc = self._nc
        if cfg.jetstream_durable:
            js = nc.jetstream()
            self._sub = await aio_as_trio(js.subscribe)(
                cfg.subject,
                queue=cfg.queue_group or None,
                durable=cfg.jetstream_durable,
                cb=self._on_msg,
            )
        else:
            self._sub = await aio_as_trio(nc.subscribe)(
                cfg.subject, queue=cfg.queue_group, cb=self._on_msg
            )
        await aio_as_trio(nc.flush)()
        LOGGER.info(
            "nats.subscribed subject=%s queue_group=%s durable=%s",
            cfg.subject,
            cfg.queue_group,
            cfg.jetstream_durable or "-",
        )

    async def unsubscribe(self) -> None:
        """Stop receiving (shielded: runs during shutdown)."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await aio_as_trio(sub.unsubscribe)()
            except Exception as exc:  # connection already gone: nothing to undo
                LOGGER.debug("nats.unsubscribe_failed error=%s", type(exc).__name__)

    async def publish_batch(self, messages: list[Message]) -> int:
        """Publish a batch with one crossing into asyncio. Returns how many failed."""
        if not messages:
            return 0
        if self._nc is None:
            self.metrics.publish_errors.inc(len(messages))
            return len(messages)
        failed: int = await aio_as_trio(self._publish_all)(messages)
        if failed:
            self.metrics.publish_errors.inc(failed)
        return failed

    async def _publish_all(self, messages: list[Message]) -> int:
        # asyncio side: nc.publish only buffers; the flusher task writes.
        publish = self._nc.publish
        failed = 0
        error = ""
        for subject, payload in messages:
            try:
                await publish(subject, payload)
            except Exception as exc:
                failed += 1
                error = type(exc).__name__
        if failed:
            LOGGER.warning("nats.publish_failed error=%s dropped=%d", error, failed)
        return failed

    async def close(self) -> None:
        """Flush and close the connection (shielded, bounded by :data:`CLOSE_TIMEOUT`)."""
        nc, self._nc = self._nc, None
        if nc is None:
            return
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await aio_as_trio(nc.flush)()
                except Exception as exc:
                    LOGGER.debug("nats.flush_failed error=%s", type(exc).__name__)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await aio_as_trio(nc.close)()
        self.connected = False
        self.metrics.nats_connected.set(0)
        LOGGER.info("nats.closed url=%s", self.safe_url)
