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

A lane with ``policy="block"`` never drops: when it is full, events still queue
(at most a frame's worth past capacity, the "overflow") and the bus reports
itself ``congested``; producers then ``await bus.wait_for_room()`` once per
frame, which is real backpressure without a per-event await.

For every lane the counters satisfy, at any checkpoint::

    offered == delivered + dropped + evicted + queued (+ overflow for "block")
"""

from __future__ import annotations

import collections
import logging
import math
import operator
import sys
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

_TYPE: Final = operator.attrgetter("type")


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
    """One sink's lane: a bounded FIFO the bus offers events to and the sink reads from.

    It behaves like a ``trio.open_memory_channel(capacity)`` receive end read in
    batches, but is a plain deque with a parking lot for the waiting sink: the
    bus needs the fill level per event (for the tiers) and to evict the oldest
    entry, and a memory channel's per-item ``send_nowait`` plus ``statistics()``
    cost ~8 us per event across five sinks, against ~1.5 us here (measured with
    ``mdd bench``). Sinks read in batches: everything queued, up to a cap.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        policy: Policy,
        offered: collections.Counter[str] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"lane capacity must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.name = name
        self.capacity = capacity
        self.policy: Policy = policy
        self._queue: collections.deque[Event] = collections.deque()
        self._hb_limit = math.ceil(capacity * HEARTBEAT_DROP_AT)
        self._qb_limit = math.ceil(capacity * QUOTE_BOOK_DROP_AT)
        self._tiered = policy == "tiered"
        # Below this fill an offer is a plain append (the bus inlines it).
        self._fast_limit = self._hb_limit if self._tiered else sys.maxsize
        self._closed = False
        self._receiver_waiting = False
        # A waiting receiver is woken once this many events are queued (more
        # than 1 while it collects a batch over ``max_wait``: no wake per event).
        self._wake_at = 1
        self._data_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self.delivered = 0
        self.lost = 0
        self._peak = 0
        # Offers are the same for every lane, so the bus counts them once; a lane
        # reports the bus's count minus what was offered before it was added.
        self._bus_offered = offered if offered is not None else collections.Counter()
        self._offered_base = collections.Counter(self._bus_offered)
        self.dropped: collections.Counter[str] = collections.Counter()
        self.evicted: collections.Counter[str] = collections.Counter()

    @property
    def offered(self) -> collections.Counter[str]:
        """Events offered to this lane, by type."""
        return self._bus_offered - self._offered_base

    @property
    def queued(self) -> int:
        """Events waiting for the sink (for a blocking lane, including any overflow)."""
        return len(self._queue)

    @property
    def peak_queued(self) -> int:
        """The most events this lane has held at once."""
        # The fill only grows between two takes, so the peak is the fill seen
        # at each take (or now): no per-event bookkeeping on the hot path.
        return max(self._peak, len(self._queue))

    def _wake(self) -> None:
        self._receiver_waiting = False
        self._data_lot.unpark_all()

    def offer(self, event: Event, kind: str) -> bool:
        """Hand one event of type ``kind`` to this lane. Returns False if the policy dropped it.

        ``offered`` is counted by the bus, once per event for all lanes.
        """
        queue = self._queue
        n = len(queue)
        if n >= self._hb_limit and self._tiered:
            if kind == "heartbeat" or (n >= self._qb_limit and kind in _SHED_AT_90):
                self.dropped[kind] += 1
                return False
            if n >= self.capacity:
                self.evicted[queue.popleft().type] += 1
                n -= 1
        queue.append(event)
        if n >= self._peak:
            self._peak = n + 1
        if self._receiver_waiting and n >= self._wake_at - 1:
            self._wake()
        return True

    @property
    def congested(self) -> bool:
        """True while a blocking lane holds more than its capacity."""
        return len(self._queue) > self.capacity

    async def wait_for_room(self) -> None:
        """Wait until a blocking lane is back within its capacity."""
        while len(self._queue) > self.capacity and not self._closed:
            await self._room_lot.park()

    async def receive_batch(self, max_items: int = 1000, max_wait: float = 0.0) -> list[Event]:
        """The next batch of events, oldest first.

        Waits for at least one event; then takes what is queued up to
        ``max_items``; then, if ``max_wait`` > 0 and the batch is not full,
        keeps collecting for up to ``max_wait`` seconds. If cancelled while
        collecting, the events already taken go back to the head of the lane.

        Raises:
            trio.EndOfChannel: the bus is closed and this lane is drained.
        """
        queue = self._queue
        if queue:
            await trio.lowlevel.checkpoint()
        while not queue:
            if self._closed:
                raise trio.EndOfChannel
            self._receiver_waiting = True
            await self._data_lot.park()
        batch = self._take(max_items, [])
        if max_wait > 0 and len(batch) < max_items and not self._closed:
            try:
                with trio.move_on_after(max_wait):
                    while len(batch) < max_items and not self._closed:
                        if len(queue) < max_items - len(batch):
                            # Sleep until the batch could be full (or the window
                            # ends), not until the next event.
                            self._wake_at = min(max_items - len(batch), self.capacity)
                            self._receiver_waiting = True
                            await self._data_lot.park()
                        self._take(max_items, batch)
            except BaseException:
                queue.extendleft(reversed(batch))
                raise
            finally:
                self._wake_at = 1
                self._receiver_waiting = False
            self._take(max_items, batch)  # what arrived since the last wake-up
        self.delivered += len(batch)
        if self._room_lot and len(queue) <= self.capacity:
            self._room_lot.unpark_all()
        return batch

    def _take(self, max_items: int, batch: list[Event]) -> list[Event]:
        queue = self._queue
        if len(queue) > self._peak:
            self._peak = len(queue)
        want = max_items - len(batch)
        if len(queue) <= want:
            batch.extend(queue)
            queue.clear()
        else:
            popleft = queue.popleft
            batch.extend([popleft() for _ in range(want)])
        return batch

    def note_lost(self, count: int) -> None:
        """Record events a sink accepted but had to give up (after retries)."""
        self.lost += count

    def close(self) -> None:
        """No more events: the sink drains what is queued, then sees EndOfChannel."""
        self._closed = True
        self._data_lot.unpark_all()
        self._room_lot.unpark_all()

    def stats(self) -> LaneStats:
        """A snapshot of this lane's counters."""
        queued = len(self._queue)
        return LaneStats(
            sink=self.name,
            policy=self.policy,
            capacity=self.capacity,
            queued=min(queued, self.capacity),
            fill_pct=100.0 * min(queued, self.capacity) / self.capacity,
            peak_queued=self.peak_queued,
            offered=dict(self.offered),
            delivered=self.delivered,
            dropped=dict(self.dropped),
            evicted=dict(self.evicted),
            overflow=max(0, queued - self.capacity),
            lost=self.lost,
        )


class Bus:
    """Fan-out of events to every sink lane, synchronously, under the drop policy."""

    def __init__(self) -> None:
        self._lanes: list[SinkInbox] = []
        # (queue, fast limit, lane) per lane: what publish reads, unpacked per lane.
        self._fast: list[tuple[collections.deque[Event], int, SinkInbox]] = []
        self._blocking: list[SinkInbox] = []
        self.offered: collections.Counter[str] = collections.Counter()
        self.closed = False

    def add_sink(self, name: str, capacity: int, policy: Policy = "tiered") -> SinkInbox:
        """Create the lane for one sink and return the inbox the sink reads from."""
        if self.closed:
            raise RuntimeError("bus is closed")
        if any(lane.name == name for lane in self._lanes):
            raise ValueError(f"a sink named {name!r} is already on the bus")
        inbox = SinkInbox(name, capacity, policy, self.offered)
        self._lanes.append(inbox)
        self._fast.append((inbox._queue, inbox._fast_limit, inbox))
        if policy == "block":
            self._blocking.append(inbox)
        return inbox

    @property
    def published(self) -> int:
        """Events published so far (every type)."""
        return sum(self.offered.values())

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
        kind = event.type
        self.offered[kind] += 1
        for queue, limit, lane in self._fast:
            # SinkInbox.offer's common case, inlined: a lane below its first
            # drop tier (or a blocking lane) just appends.
            if len(queue) < limit:
                queue.append(event)
                if lane._receiver_waiting and len(queue) >= lane._wake_at:
                    lane._wake()
            else:
                lane.offer(event, kind)

    def publish_many(self, events: list[Event]) -> None:
        """Offer a list of events (one socket read's worth) to every lane, in order.

        The same as :meth:`publish` for each event, at a fraction of the cost:
        a lane with room for the whole list takes it in one ``extend``.
        """
        if self.closed or not events:
            return
        self.offered.update(map(_TYPE, events))
        n = len(events)
        for queue, limit, lane in self._fast:
            if len(queue) + n <= limit:
                queue.extend(events)
                if lane._receiver_waiting and len(queue) >= lane._wake_at:
                    lane._wake()
            else:  # near a drop tier: the lane's own policy, event by event
                for event in events:
                    lane.offer(event, event.type)

    @property
    def congested(self) -> bool:
        """True while some blocking lane has parked events: call :meth:`wait_for_room`."""
        # Asked once per frame by every producer: a plain loop, no generator.
        for lane in self._blocking:
            if len(lane._queue) > lane.capacity:
                return True
        return False

    async def wait_for_room(self) -> None:
        """Backpressure point for producers: returns once no blocking lane is parked."""
        for lane in self._blocking:
            await lane.wait_for_room()

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
