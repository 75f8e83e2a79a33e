"""DepthSnapshotFetcher over real loopback HTTP against the simulator's REST depth endpoint."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from mdd.books import BookKeeper, BookRegistry, DepthSnapshotFetcher, NeedSnapshot, depth_weight
from mdd.events import BookEvent, Event, StatusEvent
from mdd.sim.rest import DepthRest, serve_depth_rest


class Venue:
    """A depth source whose book the test sets; counts what it served."""

    def __init__(self) -> None:
        self.last = 100
        self.bids = [["10.00000000", "1.00000000"], ["9.50000000", "2.00000000"]]
        self.asks = [["10.50000000", "3.00000000"]]
        self.served: list[int] = []
        self.limits: list[int] = []

    def __call__(self, symbol: str, limit: int):
        if symbol != "BTCUSDT":
            return None
        self.served.append(self.last)
        self.limits.append(limit)
        return self.last, self.bids, self.asks


async def until(predicate, step: float = 0.01) -> None:
    while not predicate():  # noqa: ASYNC110 - polling state other tasks change
        await trio.sleep(step)


def delta(first, last, bids=(), asks=()):
    return BookEvent("bnc", "BTCUSDT", 1, 1, tuple(bids), tuple(asks), False, first, last)


async def run_case(body, venue: Venue | None = None) -> tuple[list[Event], DepthRest]:
    venue = venue or Venue()
    published: list[Event] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            rest = await nursery.start(serve_depth_rest, venue)
            keeper = BookKeeper("bnc", "binance", depth=5, registry=BookRegistry())
            fetcher = DepthSnapshotFetcher(keeper, rest.url, limit=1000)
            await nursery.start(partial(fetcher.run, published.append))
            await body(keeper, fetcher, rest, venue, published)
            nursery.cancel_scope.cancel()
    return published, rest


async def test_snapshot_fetched_and_buffer_replayed(autojump_clock: trio.testing.MockClock):
    async def body(keeper, fetcher, rest, venue, published):
        out: list[Event] = []
        assert isinstance(keeper.feed(delta(99, 101, [(9.0, 4.0)]), 0.0, out), NeedSnapshot)
        fetcher.request("BTCUSDT")
        await until(lambda: keeper.book("BTCUSDT").synced)
        assert venue.limits == [1000]
        book = keeper.book("BTCUSDT")
        assert book.levels() == ({10.0: 1.0, 9.5: 2.0, 9.0: 4.0}, {10.5: 3.0})
        assert book.update_id == 101
        (event,) = [e for e in published if isinstance(e, BookEvent)]
        assert event.is_snapshot
        assert event.bids == ((10.0, 1.0), (9.5, 2.0), (9.0, 4.0))
        assert fetcher.fetched == 1

    await run_case(body)


async def test_http_errors_are_retried_with_backoff(autojump_clock: trio.testing.MockClock):
    async def body(keeper, fetcher, rest, venue, published):
        rest.fail_next = 2
        keeper.feed(delta(100, 100), 0.0, [])
        start = trio.current_time()
        fetcher.request("BTCUSDT")
        await until(lambda: keeper.book("BTCUSDT").synced)
        assert fetcher.failures == 2
        assert rest.requests == 3
        assert trio.current_time() - start >= 0.5 + 1.0  # backoff 0.5 s, then 1 s

    await run_case(body)


async def test_unknown_symbol_keeps_retrying(autojump_clock: trio.testing.MockClock):
    async def body(keeper, fetcher, rest, venue, published):
        fetcher.request("NOPEUSDT")
        await until(lambda: fetcher.failures >= 3)
        assert fetcher.fetched == 0
        assert not keeper.book("NOPEUSDT").synced

    await run_case(body)


async def test_too_old_snapshot_is_refetched(autojump_clock: trio.testing.MockClock):
    venue = Venue()
    venue.last = 90  # older than the first buffered U

    async def body(keeper, fetcher, rest, venue, published):
        keeper.feed(delta(95, 97, [(9.0, 1.0)]), 0.0, [])
        fetcher.request("BTCUSDT")
        await until(lambda: len(venue.served) >= 2)
        assert not keeper.book("BTCUSDT").synced
        venue.last = 96  # the venue catches up
        await until(lambda: keeper.book("BTCUSDT").synced)
        assert venue.served[-1] == 96
        assert keeper.book("BTCUSDT").update_id == 97

    await run_case(body, venue)


async def test_gap_resyncs_from_fresh_snapshot(autojump_clock: trio.testing.MockClock):
    async def body(keeper, fetcher, rest, venue, published):
        keeper.feed(delta(100, 100), 0.0, [])
        fetcher.request("BTCUSDT")
        await until(lambda: keeper.book("BTCUSDT").synced)
        out: list[Event] = []
        keeper.feed(delta(101, 101, [(9.5, 0.0)]), 1.0, out)
        result = keeper.feed(delta(105, 106, [(9.9, 1.0)]), 1.0, out)  # 102..104 lost
        assert [e.status for e in out if isinstance(e, StatusEvent)] == ["gap"]
        assert not keeper.book("BTCUSDT").synced
        venue.last = 105
        venue.bids = [["9.80000000", "7.00000000"]]
        fetcher.request("BTCUSDT")
        await until(lambda: keeper.book("BTCUSDT").synced)
        assert type(result).__name__ == "Gap"
        # the snapshot at 105, then the buffered 105..106 event re-applied on top
        assert keeper.book("BTCUSDT").levels()[0] == {9.8: 7.0, 9.9: 1.0}
        assert keeper.book("BTCUSDT").update_id == 106

    await run_case(body)


def test_depth_weights():
    assert [depth_weight(n) for n in (1, 100, 101, 500, 1000, 5000, 9999)] == [
        5,
        5,
        25,
        25,
        50,
        250,
        250,
    ]


async def test_unreachable_or_invalid_rest_url_is_retried_not_raised(
    autojump_clock: trio.testing.MockClock,
):
    keeper = BookKeeper("bnc-bad", "binance", registry=BookRegistry())
    for url in ("http://127.0.0.1:1", "::not a url::"):
        fetcher = DepthSnapshotFetcher(keeper, url)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(fetcher.run, [].append))
                fetcher.request("BTCUSDT")
                await until(lambda f=fetcher: f.failures >= 2)
                nursery.cancel_scope.cancel()
        assert fetcher.fetched == 0
        assert not keeper.book("BTCUSDT").synced


async def test_snapshot_errors_never_show_credentials_of_the_rest_url(
    autojump_clock: trio.testing.MockClock, caplog
):
    keeper = BookKeeper("bnc-cred", "binance", registry=BookRegistry())
    fetcher = DepthSnapshotFetcher(keeper, "http://user:RESTSECRET9@127.0.0.1:1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(fetcher.run, [].append))
            fetcher.request("BTCUSDT")
            await until(lambda: fetcher.failures >= 1)
            nursery.cancel_scope.cancel()
    assert "book.snapshot_failed" in caplog.text
    assert "RESTSECRET9" not in caplog.text
    assert "127.0.0.1:1/api/v3/depth" in caplog.text
