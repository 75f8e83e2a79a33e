"""The event bus: one bounded memory channel per sink and the tiered drop policy.

``Bus.publish`` is synchronous (``send_nowait``): a provider never awaits per event.
Each sink has its own channel ("lane"), so a slow sink never stalls the others,
and the drop decision is made per lane from that lane's fill level:

======================  ==========================================================
fill of the lane        what is dropped
======================  ==========================================================
>= 80 %                 heartbeat events
>= 90 %                 quote and book events (trades still pass)
100 %                   the oldest queued event is evicted to make room
======================  ==========================================================

A lane with ``policy="block"`` never drops: when it is full, events wait in a
small overflow queue and the bus reports itself ``congested``; producers then
``await bus.wait_for_room()`` once per frame, which is real backpressure without
a per-event await.

For every lane the counters satisfy, at any checkpoint::

    offered == delivered + dropped + evicted + queued (+ overflow for "block")
"""

from __future__ import annotations

import collections
import logging
import math
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

if TYPE_CHECKING:
    from .events import Event

LOGGER = logging.getLogger("mdd.bus")

Policy = Literal["tiered", "block"]
POLICIES: Final = ("tiered", "block")

#: Fill fractions at which the tiered policy starts shedding each event type.
HEARTBEAT_DROP_AT: Final = 0.8
QUOTE_BOOK_DROP_AT: Final = 0.9

#: Event types shed at the 90 % tier. Trades are only ever evicted at 100 %.
_SHED_AT_90: Final = frozenset({"quote", "book"})


@attrs.frozen
class LaneStats:
    """A snapshot of one sink lane, as served by ``/bus-stats`` and ``mdd-ctl``."""

    sink: str
    policy: str
    capacity: int
    queued: int
    fill_pct: float
    peak_queued: int
    offered: dict[str, int]
    delivered: int
    dropped: dict[str, int]
    evicted: dict[str, int]
    overflow: int
    lost: int

    @property
    def total_dropped(self) -> int:
        """Events this lane shed by policy: dropped plus evicted."""
        return sum(self.dropped.values()) + sum(self.evicted.values())


@attrs.frozen
class BusStats:
    """Snapshot of every lane plus the overall backpressure state."""

    lanes: tuple[LaneStats, ...]
    published: int
    closed: bool

    @property
    def backpressure(self) -> str:
        """``ok`` below 80 % everywhere, ``shedding`` at 80 % or more, ``full`` at 100 %."""
        worst = max((lane.fill_pct for lane in self.lanes), default=0.0)
        if worst >= 100.0:
            return "full"
        if worst >= HEARTBEAT_DROP_AT * 100:
            return "shedding"
        return "ok"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the HTTP and control APIs."""
        return {
            "published": self.published,
            "closed": self.closed,
            "backpressure": self.backpressure,
            "sinks": {
                lane.sink: {
                    "policy": lane.policy,
                    "capacity": lane.capacity,
                    "queued": lane.queued,
                    "fill_pct": round(lane.fill_pct, 2),
                    "peak_queued": lane.peak_queued,
                    "offered": dict(lane.offered),
                    "delivered": lane.delivered,
                    "dropped": dict(lane.dropped),
                    "evicted": dict(lane.evicted),
                    "overflow": lane.overflow,
                    "lost": lane.lost,
                }
                for lane in self.lanes
            },
        }


class SinkInbox:
    """The receive side of one lane: what a sink reads its events from.

    Sinks read in batches: one ``await receive()``, then ``receive_nowait()``
    until the channel is empty or the batch is full (~20x faster than one await
    per event).
    """

    def __init__(self, name: str, capacity: int, policy: Policy) -> None:
        if capacity < 1:
            raise ValueError(f"lane capacity must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.name = name
        self.capacity = capacity
        self.policy: Policy = policy
        send, receive = trio.open_memory_channel["Event"](capacity)
        self._send = send
        self._receive = receive
        # The bus's own clone of the receive end, used only to evict the oldest event.
        self._evictor = receive.clone()
        self._overflow: collections.deque[Event] = collections.deque()
        self._hb_limit = math.ceil(capacity * HEARTBEAT_DROP_AT)
        self._qb_limit = math.ceil(capacity * QUOTE_BOOK_DROP_AT)
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.peak_queued = 0
        self.offered: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.evicted: collections.Counter[str] = collections.Counter()
        self._evicted_total = 0

    @property
    def queued(self) -> int:
        """Events in the channel, not yet handed to the sink."""
        return self.sent - self.delivered - self._evicted_total

    def offer(self, event: Event) -> bool:
        """Hand one event to this lane under its policy. Returns False if it was dropped.

        Returns True when the event was queued (possibly by evicting an older one)
        or parked in the overflow queue of a blocking lane.
        """
        kind = event.type
        self.offered[kind] += 1
        if self._overflow:
            self._overflow.append(event)
            return True
        queued = self.sent - self.delivered - self._evicted_total
        if self.policy == "tiered":
            if queued >= self._qb_limit and kind in _SHED_AT_90:
                self.dropped[kind] += 1
                return False
            if queued >= self._hb_limit and kind == "heartbeat":
                self.dropped[kind] += 1
                return False
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            if self.policy == "block":
                self._overflow.append(event)
                return True
            old = self._evictor.receive_nowait()
            self.evicted[old.type] += 1
            self._evicted_total += 1
            self._send.send_nowait(event)
        self.sent += 1
        if queued >= self.peak_queued:
            self.peak_queued = queued + 1
        return True

    @property
    def congested(self) -> bool:
        """True while a blocking lane has events waiting for room."""
        return bool(self._overflow)

    async def drain_overflow(self) -> None:
        """Wait until every parked event of a blocking lane is in the channel."""
        while self._overflow:
            await self._send.send(self._overflow[0])
            self._overflow.popleft()
            self.sent += 1

    async def receive_batch(self, max_items: int = 1000, max_wait: float = 0.0) -> list[Event]:
        """The next batch of events, oldest first.

        Waits for at least one event; then takes what is queued up to
        ``max_items``; then, if ``max_wait`` > 0 and the batch is not full,
        keeps collecting for up to ``max_wait`` seconds.

        Raises:
            trio.EndOfChannel: the bus is closed and this lane is drained.
        """
        batch: list[Event] = []
        receive = self._receive.receive
        try:
            batch.append(await receive())
            self._take_ready(batch, max_items)
            if max_wait > 0 and len(batch) < max_items:
                with trio.move_on_after(max_wait):
                    while len(batch) < max_items:
                        batch.append(await receive())
                        self._take_ready(batch, max_items)
        except trio.EndOfChannel:
            if not batch:
                raise
        finally:
            self.delivered += len(batch)
        return batch

    def _take_ready(self, batch: list[Event], max_items: int) -> None:
        receive_nowait = self._receive.receive_nowait
        try:
            while len(batch) < max_items:
                batch.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass

    def note_lost(self, count: int) -> None:
        """Record events a sink accepted but had to give up (after retries)."""
        self.lost += count

    def close(self) -> None:
        """Close the send side: the sink drains what is queued, then sees EndOfChannel."""
        self._send.close()
        self._evictor.close()

    def stats(self) -> LaneStats:
        """A snapshot of this lane's counters."""
        queued = self.queued
        return LaneStats(
            sink=self.name,
            policy=self.policy,
            capacity=self.capacity,
            queued=queued,
            fill_pct=100.0 * queued / self.capacity,
            peak_queued=self.peak_queued,
            offered=dict(self.offered),
            delivered=self.delivered,
            dropped=dict(self.dropped),
            evicted=dict(self.evicted),
            overflow=len(self._overflow),
            lost=self.lost,
        )


class Bus:
    """Fan-out of events to every sink lane, synchronously, under the drop policy."""

    def __init__(self) -> None:
        self._lanes: list[SinkInbox] = []
        self._blocking: list[SinkInbox] = []
        self.published = 0
        self.closed = False

    def add_sink(self, name: str, capacity: int, policy: Policy = "tiered") -> SinkInbox:
        """Create the lane for one sink and return the inbox the sink reads from."""
        if self.closed:
            raise RuntimeError("bus is closed")
        if any(lane.name == name for lane in self._lanes):
            raise ValueError(f"a sink named {name!r} is already on the bus")
        inbox = SinkInbox(name, capacity, policy)
        self._lanes.append(inbox)
        if policy == "block":
            self._blocking.append(inbox)
        return inbox

    @property
    def lanes(self) -> tuple[SinkInbox, ...]:
        """Every sink lane, in the order they were added."""
        return tuple(self._lanes)

    def publish(self, event: Event) -> None:
        """Offer one event to every lane. Never blocks, never awaits.

        After :meth:`close` events are ignored (the producers are already gone).
        """
        if self.closed:
            return
        self.published += 1
        for lane in self._lanes:
            lane.offer(event)

    def publish_many(self, events: list[Event]) -> None:
        """Offer a list of events (one frame's worth) to every lane."""
        for event in events:
            self.publish(event)

    @property
    def congested(self) -> bool:
        """True while some blocking lane has parked events: call :meth:`wait_for_room`."""
        return any(lane.congested for lane in self._blocking)

    async def wait_for_room(self) -> None:
        """Backpressure point for producers: returns once no blocking lane is parked."""
        for lane in self._blocking:
            await lane.drain_overflow()

    def close(self) -> None:
        """Stop accepting events and let every sink drain to EndOfChannel."""
        if self.closed:
            return
        self.closed = True
        for lane in self._lanes:
            lane.close()

    def stats(self) -> BusStats:
        """A snapshot for ``/bus-stats`` and ``mdd-ctl status``."""
        return BusStats(
            lanes=tuple(lane.stats() for lane in self._lanes),
            published=self.published,
            closed=self.closed,
        )
