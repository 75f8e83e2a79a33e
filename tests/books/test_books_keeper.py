"""BookKeeper: book events out (throttled top-N), quotes, gaps, the /book registry."""

from __future__ import annotations

import pytest
import trio

from mdd.books import (
    Applied,
    BookKeeper,
    BookRegistry,
    Gap,
    NeedSnapshot,
    book_view,
    flush_forever,
)
from mdd.events import BookEvent, Event, QuoteEvent, StatusEvent
from mdd.metrics import REGISTRY


def gaps_total(provider: str) -> float:
    return REGISTRY.get_sample_value("market_gaps_total", {"provider": provider}) or 0.0


def delta(provider, symbol, first, last, bids=(), asks=(), seq=None, ts=1):
    return BookEvent(provider, symbol, ts, ts, tuple(bids), tuple(asks), False, first, last, seq)


def snapshot(provider, symbol, last, bids, asks, seq=None, ts=1):
    return BookEvent(provider, symbol, None, ts, tuple(bids), tuple(asks), True, None, last, seq)


def of(kind, events: list[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_binance_flow_publishes_top_n_snapshots_and_quotes():
    keeper = BookKeeper(
        "kb1", "binance", depth=2, max_rate=10, quotes=True, registry=BookRegistry()
    )
    out: list[Event] = []
    assert isinstance(
        keeper.feed(delta("kb1", "BTCUSDT", 5, 6, [(99.0, 1.0)]), 0.0, out), NeedSnapshot
    )
    assert out == []  # nothing published before the book is synced
    rest = snapshot("kb1", "BTCUSDT", 5, [(100.0, 1.0), (98.0, 1.0), (97.0, 1.0)], [(101.0, 2.0)])
    assert keeper.feed(rest, 0.0, out) == Applied(5, snapshot=True)
    quotes, books = of(QuoteEvent, out), of(BookEvent, out)
    assert [(q.bid_px, q.bid_qty, q.ask_px, q.ask_qty) for q in quotes] == [
        (100.0, 1.0, 101.0, 2.0)
    ]
    assert len(books) == 1
    book = books[0]
    assert book.is_snapshot
    assert book.bids == ((100.0, 1.0), (99.0, 1.0))  # top 2 only, buffered delta applied
    assert book.asks == ((101.0, 2.0),)
    assert book.last_update_id == 6
    assert keeper.book("BTCUSDT").synced


def test_book_events_are_rate_limited_and_flushed():
    keeper = BookKeeper("kb2", "binance", depth=5, max_rate=10, registry=BookRegistry())
    out: list[Event] = []
    keeper.feed(delta("kb2", "X", 1, 1), 0.0, out)
    keeper.feed(snapshot("kb2", "X", 1, [(1.0, 1.0)], [(2.0, 1.0)]), 0.0, out)
    assert len(of(BookEvent, out)) == 1
    out.clear()
    for i, t in enumerate((0.01, 0.02, 0.05)):
        keeper.feed(delta("kb2", "X", 2 + i, 2 + i, [(1.0, 2.0 + i)]), t, out)
    assert out == []  # inside the 100 ms interval: held back
    assert keeper.next_flush() == pytest.approx(0.1)
    keeper.flush(0.09, out)
    assert out == []
    keeper.flush(0.1, out)
    (book,) = of(BookEvent, out)
    assert book.bids == ((1.0, 4.0),)  # the latest state, once
    assert keeper.next_flush() is None
    out.clear()
    keeper.feed(delta("kb2", "X", 5, 5, [(1.0, 9.0)]), 0.25, out)  # interval passed: immediate
    assert len(of(BookEvent, out)) == 1
    assert keeper.statistics().published == 3


def test_unchanged_delta_publishes_nothing():
    keeper = BookKeeper("kb3", "bybit", quotes=True, registry=BookRegistry())
    out: list[Event] = []
    keeper.feed(snapshot("kb3", "X", 1, [(1.0, 1.0)], [(2.0, 1.0)], seq=1), 0.0, out)
    out.clear()
    assert keeper.feed(delta("kb3", "X", 2, 2, [(1.0, 1.0)], seq=2), 5.0, out) == Applied(0)
    assert out == []


def test_quote_only_when_top_changes():
    keeper = BookKeeper("kb4", "bybit", max_rate=0, quotes=True, registry=BookRegistry())
    out: list[Event] = []
    keeper.feed(snapshot("kb4", "X", 1, [(1.0, 1.0), (0.5, 1.0)], [(2.0, 1.0)], seq=1), 0.0, out)
    keeper.feed(delta("kb4", "X", 2, 2, [(0.5, 3.0)], seq=2), 0.0, out)  # below the top
    keeper.feed(delta("kb4", "X", 3, 3, [(1.0, 0.0)], seq=3), 0.0, out)  # top bid removed
    quotes = of(QuoteEvent, out)
    assert [(q.bid_px, q.bid_qty) for q in quotes] == [(1.0, 1.0), (0.5, 3.0)]
    assert len(of(BookEvent, out)) == 3  # max_rate=0: no throttling


def test_gap_counts_metric_and_publishes_status():
    keeper = BookKeeper("kb5", "bybit", registry=BookRegistry())
    out: list[Event] = []
    before = gaps_total("kb5")
    keeper.feed(snapshot("kb5", "ETHUSDT", 10, [(1.0, 1.0)], [(2.0, 1.0)], seq=1), 0.0, out)
    out.clear()
    result = keeper.feed(delta("kb5", "ETHUSDT", 12, 12, seq=2, ts=77), 1.0, out)
    assert isinstance(result, Gap)
    assert gaps_total("kb5") == before + 1
    (status,) = out
    assert isinstance(status, StatusEvent)
    assert (status.provider, status.symbol, status.status) == ("kb5", "ETHUSDT", "gap")
    assert "u=12" in status.detail
    assert status.ts_recv == 77
    assert keeper.statistics().gaps == 1
    assert not keeper.book("ETHUSDT").synced


def test_crossed_book_after_delta_is_a_gap():
    keeper = BookKeeper("kb6", "binance", registry=BookRegistry())
    out: list[Event] = []
    keeper.feed(delta("kb6", "X", 1, 1), 0.0, out)
    keeper.feed(snapshot("kb6", "X", 1, [(1.0, 1.0)], [(2.0, 1.0)]), 0.0, out)
    out.clear()
    before = gaps_total("kb6")
    result = keeper.feed(delta("kb6", "X", 2, 2, [(2.5, 1.0)]), 1.0, out)
    assert isinstance(result, Gap)
    assert "crossed" in result.reason
    assert gaps_total("kb6") == before + 1
    assert [e.status for e in of(StatusEvent, out)] == ["gap"]
    assert of(BookEvent, out) == []
    assert not keeper.book("X").synced


def test_reset_and_registry_view():
    registry = BookRegistry()
    keeper = BookKeeper("kb7", "bybit", registry=registry)
    out: list[Event] = []
    keeper.feed(snapshot("kb7", "SOLUSDT", 3, [(10.0, 1.0)], [(11.0, 2.0)], seq=1), 0.0, out)
    (book,) = registry.for_symbol("SOLUSDT")
    assert registry.get("kb7", "SOLUSDT") is book
    view = book_view(book, 5)
    assert view == {
        "provider": "kb7",
        "symbol": "SOLUSDT",
        "synced": True,
        "update_id": 3,
        "ts_exchange": None,
        "bids": [[10.0, 1.0]],
        "asks": [[11.0, 2.0]],
    }
    keeper.reset()
    assert not book.synced
    assert book.top(5) == ((), ())
    registry.unregister(book)
    assert registry.for_symbol("SOLUSDT") == []


def test_unknown_venue_rejected():
    with pytest.raises(ValueError, match="unknown book venue"):
        BookKeeper("x", "kraken")  # type: ignore[arg-type]


async def test_flush_forever_publishes_held_back_snapshot(autojump_clock):
    keeper = BookKeeper("kb8", "bybit", max_rate=4, registry=BookRegistry())
    published: list[Event] = []
    out: list[Event] = []
    keeper.feed(
        snapshot("kb8", "X", 1, [(1.0, 1.0)], [(2.0, 1.0)], seq=1), trio.current_time(), out
    )
    keeper.feed(delta("kb8", "X", 2, 2, [(1.0, 5.0)], seq=2), trio.current_time(), out)
    assert len(of(BookEvent, out)) == 1  # second one held back for 250 ms
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush_forever, keeper, published.append)
        await trio.sleep(0.2)
        assert published == []
        await trio.sleep(0.1)
        (book,) = published
        assert book.bids == ((1.0, 5.0),)
        nursery.cancel_scope.cancel()
