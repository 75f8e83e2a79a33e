"""BinanceBookSync: the documented depthUpdate + REST snapshot procedure."""

from __future__ import annotations

from mdd.books import (
    Applied,
    BinanceBookSync,
    Buffered,
    Gap,
    Ignored,
    L2Book,
    NeedSnapshot,
)

SNAP_BIDS = [(100.0, 1.0), (99.0, 2.0)]
SNAP_ASKS = [(101.0, 1.0), (102.0, 2.0)]


def new_sync() -> BinanceBookSync:
    return BinanceBookSync(L2Book("binance", "BTCUSDT"))


def synced_at(last_update_id: int) -> BinanceBookSync:
    sync = new_sync()
    assert isinstance(sync.on_update(last_update_id, last_update_id, [], []), NeedSnapshot)
    assert sync.on_snapshot(last_update_id, SNAP_BIDS, SNAP_ASKS) == Applied(4, snapshot=True)
    assert sync.synced
    return sync


def test_first_update_asks_for_snapshot_then_buffers():
    sync = new_sync()
    assert sync.on_update(10, 12, [(100.5, 1.0)], []) == NeedSnapshot("initial sync")
    assert sync.wants_snapshot
    assert sync.on_update(13, 15, [], []) == Buffered()
    assert sync.first_buffered == 10
    assert not sync.synced
    assert sync.book.top(5) == ((), ())


def test_in_order_stream_drops_stale_buffered_and_applies_the_rest():
    sync = new_sync()
    sync.on_update(10, 12, [(99.5, 9.0)], [])  # u <= lastUpdateId: dropped
    sync.on_update(13, 15, [(99.0, 7.0)], [])  # U <= 14 <= u: first applied
    sync.on_update(16, 16, [], [(101.0, 0.0)])
    result = sync.on_snapshot(13, SNAP_BIDS, SNAP_ASKS)
    assert result == Applied(4 + 2, snapshot=True)
    assert not sync.wants_snapshot
    assert sync.book.update_id == 16
    assert sync.book.top(5) == (((100.0, 1.0), (99.0, 7.0)), ((102.0, 2.0),))
    # live updates chain on U == previous u + 1
    assert sync.on_update(17, 20, [(100.0, 0.0)], [(101.5, 3.0)]) == Applied(2)
    assert sync.book.update_id == 20
    assert sync.book.best_bid() == (99.0, 7.0)
    assert sync.book.best_ask() == (101.5, 3.0)


def test_snapshot_older_than_first_buffered_u_is_refetched():
    sync = new_sync()
    sync.on_update(10, 12, [], [])
    result = sync.on_snapshot(9, SNAP_BIDS, SNAP_ASKS)
    assert isinstance(result, NeedSnapshot)
    assert "lastUpdateId=9 < U=10" in result.reason
    assert not sync.synced
    assert sync.wants_snapshot
    assert sync.on_snapshot(11, SNAP_BIDS, SNAP_ASKS) == Applied(4, snapshot=True)
    assert sync.book.update_id == 12


def test_buffered_events_all_older_than_snapshot_leave_snapshot_state():
    sync = new_sync()
    sync.on_update(10, 12, [(1.0, 1.0)], [])
    sync.on_update(13, 14, [(2.0, 1.0)], [])
    assert sync.on_snapshot(20, SNAP_BIDS, SNAP_ASKS) == Applied(4, snapshot=True)
    assert sync.book.update_id == 20
    assert sync.book.levels()[0] == dict(SNAP_BIDS)
    # the next live event must bridge lastUpdateId + 1
    assert sync.on_update(21, 22, [(99.0, 0.0)], []) == Applied(1)


def test_first_event_after_snapshot_not_bridging_is_a_gap():
    sync = new_sync()
    sync.on_update(10, 12, [], [])
    sync.on_update(15, 16, [], [])  # 13..14 missing
    result = sync.on_snapshot(12, SNAP_BIDS, SNAP_ASKS)
    assert isinstance(result, Gap)
    assert "U=15 > local+1=13" in result.reason
    assert not sync.synced
    assert sync.wants_snapshot
    assert sync.first_buffered == 15  # the breaking event starts the new buffer
    assert sync.on_snapshot(15, SNAP_BIDS, SNAP_ASKS) == Applied(4 + 0, snapshot=True)
    assert sync.book.update_id == 16


def test_skipped_update_is_a_gap_and_resyncs_from_new_snapshot():
    sync = synced_at(100)
    assert sync.on_update(101, 105, [(99.0, 5.0)], []) == Applied(1)
    result = sync.on_update(110, 112, [(98.0, 1.0)], [])  # 106..109 skipped
    assert isinstance(result, Gap)
    assert "U=110 > local+1=106" in result.reason
    assert sync.gaps == 1
    assert not sync.synced
    assert sync.book.top(5) == ((), ())
    # more updates while the snapshot is fetched are buffered, not re-requested
    assert sync.on_update(113, 113, [(97.0, 1.0)], []) == Buffered()
    assert sync.on_snapshot(111, [(96.0, 1.0)], [(120.0, 1.0)]) == Applied(2 + 2, snapshot=True)
    assert sync.synced
    assert sync.book.update_id == 113
    # 110..112 overlaps the snapshot (U <= 112 <= u) and is applied; then 113
    assert sync.book.levels() == ({96.0: 1.0, 98.0: 1.0, 97.0: 1.0}, {120.0: 1.0})


def test_duplicate_and_out_of_order_old_updates_are_ignored():
    sync = synced_at(100)
    assert sync.on_update(101, 102, [(99.0, 5.0)], []) == Applied(1)
    assert isinstance(sync.on_update(101, 102, [(99.0, 6.0)], []), Ignored)  # duplicate
    assert isinstance(sync.on_update(90, 95, [(99.0, 7.0)], []), Ignored)  # late, old
    assert sync.book.levels()[0][99.0] == 5.0
    assert sync.on_update(103, 103, [], []) == Applied(0)
    assert sync.book.update_id == 103


def test_reordered_updates_cause_gap_then_late_one_is_dropped_after_resync():
    sync = synced_at(100)
    assert isinstance(sync.on_update(103, 104, [], []), Gap)  # 101..102 comes late
    assert sync.on_update(101, 102, [(99.0, 9.0)], []) == Buffered()
    assert sync.on_snapshot(104, SNAP_BIDS, SNAP_ASKS) == Applied(4, snapshot=True)
    assert sync.book.levels()[0] == dict(SNAP_BIDS)  # the late 101..102 was dropped
    assert sync.book.update_id == 104


def test_unrequested_snapshot_older_than_book_is_ignored():
    sync = synced_at(100)
    sync.on_update(101, 101, [(99.0, 3.0)], [])
    assert isinstance(sync.on_snapshot(100, [], []), Ignored)
    assert sync.book.update_id == 101


def test_negative_size_invalidates_book():
    sync = synced_at(100)
    result = sync.on_update(101, 101, [(99.0, -1.0)], [])
    assert isinstance(result, Gap)
    assert "invalid size" in result.reason
    assert not sync.synced
    assert sync.wants_snapshot


def test_buffer_is_bounded_oldest_dropped():
    sync = BinanceBookSync(L2Book("binance", "X"), max_buffered=3)
    for i in range(1, 6):
        sync.on_update(i, i, [], [])
    assert sync.first_buffered == 3
    assert isinstance(sync.on_snapshot(2, [], []), NeedSnapshot)


def test_reset_forgets_and_asks_again():
    sync = synced_at(100)
    sync.reset()
    assert not sync.synced
    assert sync.on_update(500, 500, [], []) == NeedSnapshot("initial sync")
