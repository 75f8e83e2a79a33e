"""Property: any stream of deltas leaves the book equal to a dict-of-levels model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mdd.books import L2Book

# Few distinct prices so inserts, updates and deletes of the same level mix.
prices = st.integers(min_value=1, max_value=60).map(lambda t: t / 4)
sizes = st.one_of(st.just(0.0), st.integers(min_value=1, max_value=1000).map(lambda s: s / 8))
levels = st.lists(st.tuples(prices, sizes), max_size=8)
deltas = st.lists(st.tuples(levels, levels), max_size=60)


def apply_model(model: dict[float, float], changes: list[tuple[float, float]]) -> None:
    for price, size in changes:
        if size == 0:
            model.pop(price, None)
        else:
            model[price] = size


@settings(max_examples=100, deadline=None)
@given(snapshot=st.tuples(levels, levels), stream=deltas, n=st.integers(0, 70))
def test_random_deltas_match_reference_model(snapshot, stream, n):
    book = L2Book("p", "S")
    bid_model: dict[float, float] = {}
    ask_model: dict[float, float] = {}
    book.apply_snapshot(snapshot[0], snapshot[1])
    apply_model(bid_model, snapshot[0])
    apply_model(ask_model, snapshot[1])
    for bids, asks in stream:
        book.apply_delta(bids, asks)
        apply_model(bid_model, bids)
        apply_model(ask_model, asks)

    assert book.levels() == (bid_model, ask_model)
    top_bids, top_asks = book.top(n)
    assert list(top_bids) == sorted(bid_model.items(), reverse=True)[:n]
    assert list(top_asks) == sorted(ask_model.items())[:n]
    assert book.depth() == (len(bid_model), len(ask_model))
    assert book.best_bid() == (max(bid_model.items()) if bid_model else None)
    assert book.best_ask() == (min(ask_model.items()) if ask_model else None)
