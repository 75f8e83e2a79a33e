"""L2Book: sorted levels, snapshot and delta, top-N, consistency checks."""

from __future__ import annotations

import math

import pytest

from mdd.books import CrossedBookError, L2Book, NegativeSizeError


def make_book() -> L2Book:
    book = L2Book("binance", "BTCUSDT")
    book.apply_snapshot(
        [(100.0, 1.0), (99.5, 2.0), (99.0, 3.0)],
        [(101.0, 1.5), (102.0, 2.5), (101.5, 0.5)],
        update_id=7,
    )
    return book


def test_snapshot_sorts_both_sides_best_first():
    book = make_book()
    bids, asks = book.top(10)
    assert bids == ((100.0, 1.0), (99.5, 2.0), (99.0, 3.0))
    assert asks == ((101.0, 1.5), (101.5, 0.5), (102.0, 2.5))
    assert book.best_bid() == (100.0, 1.0)
    assert book.best_ask() == (101.0, 1.5)
    assert book.update_id == 7
    assert book.depth() == (3, 3)


def test_top_n_truncates_and_zero_is_empty():
    book = make_book()
    assert book.top(2) == (((100.0, 1.0), (99.5, 2.0)), ((101.0, 1.5), (101.5, 0.5)))
    assert book.top(0) == ((), ())


def test_snapshot_replaces_everything_and_skips_zero_sizes():
    book = make_book()
    book.apply_snapshot([(50.0, 1.0), (49.0, 0.0)], [(51.0, 2.0)], update_id=9)
    assert book.top(5) == (((50.0, 1.0),), ((51.0, 2.0),))
    assert book.update_id == 9


def test_delta_inserts_updates_and_removes():
    book = make_book()
    changed = book.apply_delta(
        [(100.5, 4.0), (99.5, 0.0), (99.0, 3.5)],  # insert new best, delete, update
        [(101.0, 0.0), (103.0, 1.0)],
    )
    assert changed == 5
    bids, asks = book.top(10)
    assert bids == ((100.5, 4.0), (100.0, 1.0), (99.0, 3.5))
    assert asks == ((101.5, 0.5), (102.0, 2.5), (103.0, 1.0))
    assert book.best_bid() == (100.5, 4.0)
    assert book.best_ask() == (101.5, 0.5)


def test_deleting_unknown_level_and_same_size_are_no_changes():
    book = make_book()
    assert book.apply_delta([(42.0, 0.0), (100.0, 1.0)], [(500.0, 0.0)]) == 0
    assert book.depth() == (3, 3)


def test_empty_sides_have_no_best():
    book = L2Book("bybit", "ETHUSDT")
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert book.top(3) == ((), ())
    assert book.problem() is None
    book.apply_delta([(10.0, 1.0)], [])
    assert book.best_bid() == (10.0, 1.0)
    assert book.best_ask() is None
    assert book.problem() is None


def test_crossed_and_locked_book_is_reported():
    book = make_book()
    book.check()  # consistent
    book.apply_delta([(101.0, 1.0)], [])  # bid at the best ask: locked
    error = book.problem()
    assert isinstance(error, CrossedBookError)
    assert error.bid == 101.0
    assert error.ask == 101.0
    with pytest.raises(CrossedBookError, match="crossed book"):
        book.check()


@pytest.mark.parametrize("size", [-1.0, math.nan])
def test_negative_or_nan_size_in_delta_raises(size):
    book = make_book()
    with pytest.raises(NegativeSizeError, match="invalid size"):
        book.apply_delta([(98.0, size)], [])
    assert 98.0 not in book.levels()[0]


def test_negative_size_in_snapshot_raises_and_clears():
    book = make_book()
    with pytest.raises(NegativeSizeError):
        book.apply_snapshot([(1.0, 1.0)], [(2.0, -3.0)], update_id=11)
    assert book.depth() == (0, 0)
    assert book.update_id is None
    assert not book.synced


def test_clear_forgets_levels_and_sequence():
    book = make_book()
    book.synced = True
    book.clear()
    assert book.top(5) == ((), ())
    assert book.update_id is None
    assert not book.synced
