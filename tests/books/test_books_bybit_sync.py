"""BybitBookSync: snapshot resets, u chaining, u == 1 restart, seq ordering."""

from __future__ import annotations

from mdd.books import Applied, BybitBookSync, Gap, Ignored, L2Book


def synced() -> BybitBookSync:
    sync = BybitBookSync(L2Book("bybit", "BTCUSDT"))
    result = sync.on_snapshot(10, 1000, [(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.0)])
    assert result == Applied(3, snapshot=True)
    return sync


def test_deltas_before_snapshot_are_ignored():
    sync = BybitBookSync(L2Book("bybit", "BTCUSDT"))
    assert sync.on_delta(5, 1, [(1.0, 1.0)], []) == Ignored("no snapshot yet")
    assert not sync.synced


def test_in_order_deltas_apply():
    sync = synced()
    assert sync.on_delta(11, 1001, [(100.0, 0.0)], [(101.5, 2.0)]) == Applied(2)
    assert sync.on_delta(12, 1005, [(99.5, 4.0)], []) == Applied(1)
    assert sync.book.update_id == 12
    assert sync.seq == 1005
    assert sync.book.top(5) == (((99.5, 4.0), (99.0, 2.0)), ((101.0, 1.0), (101.5, 2.0)))


def test_skipped_delta_is_gap_and_book_waits_for_snapshot():
    sync = synced()
    result = sync.on_delta(13, 1002, [(98.0, 1.0)], [])
    assert isinstance(result, Gap)
    assert "u=13 != local+1=11" in result.reason
    assert sync.gaps == 1
    assert not sync.synced
    assert sync.book.top(3) == ((), ())
    assert isinstance(sync.on_delta(14, 1003, [], []), Ignored)
    # resubscribing delivers a new snapshot
    assert sync.on_snapshot(20, 1010, [(97.0, 1.0)], [(98.0, 1.0)]) == Applied(2, snapshot=True)
    assert sync.on_delta(21, 1011, [], [(98.0, 0.0)]) == Applied(1)
    assert sync.synced


def test_duplicate_and_stale_deltas_are_ignored():
    sync = synced()
    assert sync.on_delta(11, 1001, [(99.0, 5.0)], []) == Applied(1)
    assert isinstance(sync.on_delta(11, 1001, [(99.0, 6.0)], []), Ignored)
    assert isinstance(sync.on_delta(9, 999, [(99.0, 7.0)], []), Ignored)
    assert sync.book.levels()[0][99.0] == 5.0
    assert sync.synced


def test_out_of_order_deltas_are_a_gap():
    sync = synced()
    assert isinstance(sync.on_delta(12, 1002, [], []), Gap)  # 11 late
    assert isinstance(sync.on_delta(11, 1001, [], []), Ignored)  # no snapshot since


def test_mid_stream_snapshot_resets_book():
    sync = synced()
    sync.on_delta(11, 1001, [(98.0, 1.0)], [])
    assert sync.on_snapshot(500, 2000, [(50.0, 1.0)], [(51.0, 1.0)]) == Applied(2, snapshot=True)
    assert sync.book.levels() == ({50.0: 1.0}, {51.0: 1.0})
    assert sync.book.update_id == 500
    assert sync.on_delta(501, 2001, [(50.5, 1.0)], []) == Applied(1)


def test_u_equals_one_is_a_service_restart_snapshot():
    sync = synced()
    sync.on_delta(11, 1001, [], [])
    result = sync.on_delta(1, 5, [(10.0, 1.0)], [(11.0, 2.0)])
    assert result == Applied(2, snapshot=True)
    assert sync.book.levels() == ({10.0: 1.0}, {11.0: 2.0})
    assert sync.book.update_id == 1
    assert sync.on_delta(2, 6, [(10.5, 1.0)], []) == Applied(1)


def test_seq_not_increasing_is_a_gap():
    sync = synced()
    result = sync.on_delta(11, 1000, [], [])
    assert isinstance(result, Gap)
    assert "seq not increasing" in result.reason


def test_missing_seq_is_tolerated():
    sync = BybitBookSync(L2Book("bybit", "X"))
    sync.on_snapshot(1, None, [(1.0, 1.0)], [(2.0, 1.0)])
    assert sync.on_delta(2, None, [(1.5, 1.0)], []) == Applied(1)


def test_bad_snapshot_is_gap():
    sync = synced()
    result = sync.on_snapshot(30, 1100, [(1.0, -2.0)], [])
    assert isinstance(result, Gap)
    assert not sync.synced
