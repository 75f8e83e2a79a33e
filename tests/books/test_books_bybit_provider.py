"""Bybit provider books over a real loopback WebSocket: snapshot, deltas, gap -> resubscribe.

The venue is a small Bybit V5 ``orderbook.50`` speaker written here (the
simulator has no Bybit book yet): it keeps a true book, sends a snapshot on
every subscribe and then chained deltas (``u`` + 1, ``seq`` increasing), and
can skip one delta to open a gap.
"""

from __future__ import annotations

import random
from functools import partial

import orjson
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from mdd.books import BOOKS
from mdd.bus import Bus
from mdd.config import ProviderConfig
from mdd.events import BookEvent, Event, StatusEvent
from mdd.health import ProviderHealth
from mdd.metrics import REGISTRY
from mdd.providers.bybit import BybitProvider
from mdd.supervisor import FeedGate

SYMBOL = "BTCUSDT"
TOPIC = f"orderbook.50.{SYMBOL}"


def gaps_total(provider: str) -> float:
    return REGISTRY.get_sample_value("market_gaps_total", {"provider": provider}) or 0.0


class FakeBybit:
    """Just enough of Bybit V5 public spot for ``orderbook.50``."""

    def __init__(self) -> None:
        self.rng = random.Random(7)
        self.bids = {round(100.0 - i * 0.5, 1): 1.0 + i for i in range(30)}
        self.asks = {round(100.5 + i * 0.5, 1): 1.0 + i for i in range(30)}
        self.u = 5000
        self.seq = 90000
        self.skip = 0
        self.subscribed = False
        self.ops: list[tuple[str, list[str]]] = []
        self.snapshots = 0
        self.drop_snapshots = 0  # subscribes answered without the snapshot
        self.url = ""

    def _msg(self, kind: str, bids, asks) -> str:
        data = {
            "s": SYMBOL,
            "b": [[repr(p), repr(q)] for p, q in bids],
            "a": [[repr(p), repr(q)] for p, q in asks],
            "u": self.u,
            "seq": self.seq,
        }
        return orjson.dumps(
            {"topic": TOPIC, "ts": 1700000000000, "type": kind, "data": data, "cts": 1700000000000}
        ).decode()

    def snapshot(self) -> str:
        self.snapshots += 1
        bids = sorted(self.bids.items(), reverse=True)[:50]
        asks = sorted(self.asks.items())[:50]
        return self._msg("snapshot", bids, asks)

    def step(self) -> str | None:
        """Change the true book; the delta frame, or None when it is skipped."""
        side, book, best = (
            ("b", self.bids, max(self.bids))
            if self.rng.random() < 0.5
            else ("a", self.asks, min(self.asks))
        )
        sign = -1 if side == "b" else 1
        price = round(best + sign * 0.5 * self.rng.randint(0, 8), 1)
        size = (
            0.0
            if (self.rng.random() < 0.3 and price in book and len(book) > 5)
            else float(self.rng.randint(1, 50))
        )
        if size:
            book[price] = size
        else:
            book.pop(price, None)
        self.u += 1
        self.seq += self.rng.randint(1, 3)
        if self.skip:
            self.skip -= 1
            return None
        change = [(price, size)]
        return self._msg("delta", change if side == "b" else [], change if side == "a" else [])

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with trio.open_nursery() as nursery:

            async def stream() -> None:
                while True:
                    await trio.sleep(0.01)
                    frame = self.step()
                    if frame is not None and self.subscribed:
                        await ws.send_message(frame)

            nursery.start_soon(stream)
            try:
                while True:
                    msg = orjson.loads(await ws.get_message())
                    op = msg.get("op")
                    if op == "ping":
                        await ws.send_message(
                            orjson.dumps(
                                {"success": True, "ret_msg": "pong", "op": "ping"}
                            ).decode()
                        )
                        continue
                    self.ops.append((op, msg["args"]))
                    ack = {"success": True, "ret_msg": op, "conn_id": "c1", "op": op}
                    if "req_id" in msg:
                        ack["req_id"] = msg["req_id"]
                    await ws.send_message(orjson.dumps(ack).decode())
                    if op == "subscribe" and TOPIC in msg["args"]:
                        self.subscribed = True
                        if self.drop_snapshots:
                            self.drop_snapshots -= 1
                        else:
                            await ws.send_message(self.snapshot())
                    elif op == "unsubscribe" and TOPIC in msg["args"]:
                        self.subscribed = False
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()


async def until(predicate, step: float = 0.01) -> None:
    """Poll ``predicate`` on the trio clock (the caller caps the wait with fail_after)."""
    while not predicate():  # noqa: ASYNC110 - polling state other tasks change
        await trio.sleep(step)


def synced_matches(provider: BybitProvider, venue: FakeBybit) -> bool:
    assert provider.books is not None
    book = provider.books.book(SYMBOL)
    return book.synced and book.levels() == (venue.bids, venue.asks)


async def test_bybit_book_gap_resubscribes_and_resyncs(autojump_clock: trio.testing.MockClock):
    venue = FakeBybit()
    bus = Bus()
    inbox = bus.add_sink("collect", 100_000)
    events: list[Event] = []
    name = "bybit-books-e2e"
    config = ProviderConfig(name=name, kind="bybit", url="", book_depth=50)
    gaps_before = gaps_total(name)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, venue.handler, "127.0.0.1", 0, None)
            )
            url = f"ws://127.0.0.1:{server.port}/v5/public/spot"
            config = ProviderConfig(name=name, kind="bybit", url=url, book_depth=50)
            provider = BybitProvider(config, (SYMBOL,), ("book",), ProviderHealth(name))

            async def collect() -> None:
                while True:
                    events.extend(await inbox.receive_batch())

            nursery.start_soon(collect)
            await nursery.start(provider.run, FeedGate(bus, name, active=True))

            async def settle() -> None:
                # The venue keeps moving: poll faster than it steps until both agree.
                await until(lambda: synced_matches(provider, venue), 0.003)

            await settle()
            assert venue.snapshots == 1
            venue.skip = 1  # one delta never sent: the next u breaks the chain
            await until(lambda: gaps_total(name) >= gaps_before + 1)
            await until(lambda: venue.snapshots >= 2)
            await settle()
            await trio.sleep(0.5)  # keep streaming after the resync
            await settle()
            # The book served for /book is the provider's, and equals the venue's top levels.
            served = BOOKS.get(name, SYMBOL)
            assert served is provider.books.book(SYMBOL)
            bids, asks = served.top(20)
            assert list(bids) == sorted(venue.bids.items(), reverse=True)[:20]
            assert list(asks) == sorted(venue.asks.items())[:20]
            nursery.cancel_scope.cancel()

    assert gaps_total(name) == gaps_before + 1
    assert venue.ops == [
        ("subscribe", [TOPIC]),
        ("unsubscribe", [TOPIC]),
        ("subscribe", [TOPIC]),
    ]
    gap_status = [e for e in events if isinstance(e, StatusEvent) and e.status == "gap"]
    assert len(gap_status) == 1
    assert gap_status[0].symbol == SYMBOL
    books = [e for e in events if isinstance(e, BookEvent)]
    assert books
    assert all(b.is_snapshot and len(b.bids) <= 20 and len(b.asks) <= 20 for b in books)
    # A stopped provider's book is no longer served as live.
    assert not served.synced
    assert served.top(5) == ((), ())


async def test_bybit_lost_resync_snapshot_is_asked_for_again(
    autojump_clock: trio.testing.MockClock,
):
    venue = FakeBybit()
    bus = Bus()
    bus.add_sink("collect", 100_000)
    name = "bybit-books-lost-snapshot"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, venue.handler, "127.0.0.1", 0, None)
            )
            url = f"ws://127.0.0.1:{server.port}/v5/public/spot"
            config = ProviderConfig(name=name, kind="bybit", url=url, book_depth=50)
            provider = BybitProvider(config, (SYMBOL,), ("book",), ProviderHealth(name))
            await nursery.start(provider.run, FeedGate(bus, name, active=True))
            await until(lambda: synced_matches(provider, venue), 0.003)
            venue.drop_snapshots = 1  # the resubscribe after the gap brings no snapshot
            venue.skip = 1
            await until(lambda: venue.snapshots >= 2)  # asked again after the timeout
            await until(lambda: synced_matches(provider, venue), 0.003)
            nursery.cancel_scope.cancel()
    subscribes = [args for op, args in venue.ops if op == "subscribe"]
    assert len(subscribes) == 3  # initial, resync (snapshot lost), resync again
