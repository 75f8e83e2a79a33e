"""Property: whatever the network does to a venue's book stream (drop, duplicate,
reorder), a sync machine that says "synced" holds exactly the venue's book at
its update id, and it resyncs once given a fresh snapshot.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mdd.books import BinanceBookSync, BybitBookSync, Gap, L2Book, NeedSnapshot

# Bids and asks on disjoint price ranges: the true book is never crossed.
bid_levels = st.lists(
    st.tuples(st.integers(1, 12).map(float), st.sampled_from([0.0, 1.0, 2.0, 3.5])), max_size=4
)
ask_levels = st.lists(
    st.tuples(st.integers(20, 32).map(float), st.sampled_from([0.0, 1.0, 2.0, 3.5])), max_size=4
)
fates = st.sampled_from(["ok", "ok", "ok", "drop", "dup", "swap"])


def apply(book: dict[float, float], changes: list[tuple[float, float]]) -> None:
    for price, size in changes:
        if size:
            book[price] = size
        else:
            book.pop(price, None)


def venue_stream(data: st.DataObject, id_step: bool) -> tuple[list, dict]:
    """Events ``(U, u, bids, asks)`` and the true book after each ``u``."""
    bids: dict[float, float] = {5.0: 1.0}
    asks: dict[float, float] = {25.0: 1.0}
    uid = 100
    states = {uid: (dict(bids), dict(asks))}
    events = []
    for _ in range(data.draw(st.integers(3, 20))):
        b, a = data.draw(bid_levels), data.draw(ask_levels)
        apply(bids, b)
        apply(asks, a)
        first = uid + 1
        uid += data.draw(st.integers(1, 3)) if id_step else 1
        events.append((first, uid, b, a))
        states[uid] = (dict(bids), dict(asks))
    return events, states


def network(data: st.DataObject, events: list) -> list:
    """The events as delivered: some dropped, duplicated or swapped with the next."""
    out: list = []
    i = 0
    while i < len(events):
        fate = data.draw(fates)
        if fate == "drop":
            pass
        elif fate == "dup":
            out += [events[i], events[i]]
        elif fate == "swap" and i + 1 < len(events):
            out += [events[i + 1], events[i]]
            i += 1
        else:
            out.append(events[i])
        i += 1
    return out


def snapshot_of(states: dict, head: int) -> tuple[int, list, list]:
    bids, asks = states[head]
    return head, sorted(bids.items()), sorted(asks.items())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_binance_sync_is_never_silently_wrong(data):
    events, states = venue_stream(data, id_step=True)
    sync = BinanceBookSync(L2Book("p", "S"))
    head = 100
    for first, last, bids, asks in network(data, events):
        head = max(head, last)  # the venue's REST is at least as new as the stream
        result = sync.on_update(first, last, bids, asks)
        for _ in range(3):
            if not isinstance(result, NeedSnapshot | Gap):
                break
            result = sync.on_snapshot(*snapshot_of(states, head))
        if sync.synced:
            assert sync.book.levels() == states[sync.book.update_id]
        assert sync.book.problem() is None
    if not sync.synced and sync.wants_snapshot:
        sync.on_snapshot(*snapshot_of(states, head))
        assert sync.synced
        assert sync.book.levels() == states[sync.book.update_id]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bybit_sync_is_never_silently_wrong(data):
    events, states = venue_stream(data, id_step=False)
    sync = BybitBookSync(L2Book("p", "S"))
    uid, b, a = snapshot_of(states, 100)
    sync.on_snapshot(uid, 0, b, a)
    head = 100
    for _, last, bids, asks in network(data, events):
        head = max(head, last)
        result = sync.on_delta(last, last, bids, asks)
        if isinstance(result, Gap):  # resubscribe: a snapshot of the venue's head
            uid, b, a = snapshot_of(states, head)
            sync.on_snapshot(uid, uid, b, a)
        assert sync.synced  # a gap is answered at once with a new snapshot here
        assert sync.book.levels() == states[sync.book.update_id]
