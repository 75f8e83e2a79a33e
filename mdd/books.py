"""L2 order books: the book itself, the venues' sync procedures, and book events out.

Three layers, each usable alone:

- :class:`L2Book` holds one (provider, symbol) book as sorted price levels.
  Both sides keep their best level at the *end* of a sorted key list (bids by
  price, asks by negated price), so the churn near the top of the book inserts
  and deletes at the cheap end of the list.
- :class:`BinanceBookSync` and :class:`BybitBookSync` are sans-IO state
  machines for the venues' documented snapshot + diff procedures. They apply
  what they may, and return a :data:`SyncResult` saying what the provider must
  do (fetch a REST snapshot, resubscribe) — they never do I/O themselves.
- :class:`BookKeeper` (one per provider) runs a sync machine per symbol, turns
  applied changes into rate-limited top-N ``BookEvent`` snapshots (plus a
  ``QuoteEvent`` when the book is the quote source), and turns gaps into
  ``market_gaps_total`` and a ``StatusEvent(status="gap")``.

:data:`BOOKS` is the process-wide registry the HTTP ``/book`` route reads.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import attrs
import orjson
import trio

from .errors import MddError
from .events import BookEvent, Event, Level, QuoteEvent, StatusEvent, now_ns
from .metrics import GAPS
from .redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

LOGGER = logging.getLogger("mdd.books")

#: Buffered depth updates kept per symbol while a REST snapshot is in flight.
#: At Binance's 100 ms cadence 10,000 events is ~17 minutes; older ones are
#: dropped (the snapshot then has to be newer than the oldest kept).
MAX_BUFFERED: Final = 10_000

#: Levels per side in published book snapshots unless configured otherwise.
DEFAULT_DEPTH: Final = 20

#: Book snapshots published per second per symbol unless configured otherwise.
DEFAULT_MAX_RATE: Final = 10.0

Venue = Literal["binance", "bybit"]


# ---------------------------------------------------------------------------
# Errors


class BookError(MddError):
    """The book is inconsistent; the only cure is a resync from a fresh snapshot."""


class CrossedBookError(BookError):
    """The best bid is at or above the best ask."""

    def __init__(self, symbol: str, bid: float, ask: float) -> None:
        self.symbol = symbol
        self.bid = bid
        self.ask = ask
        super().__init__(f"{symbol}: crossed book: best bid {bid!r} >= best ask {ask!r}")


class NegativeSizeError(BookError):
    """A level arrived with a negative (or NaN) size."""

    def __init__(self, symbol: str, side: str, price: float, size: float) -> None:
        self.symbol = symbol
        self.side = side
        self.price = price
        self.size = size
        super().__init__(f"{symbol}: {side} level {price!r} has invalid size {size!r}")


# ---------------------------------------------------------------------------
# The book


class _Side:
    """One side: a sorted list of keys (best last) and a price -> size dict.

    ``sign`` is +1 for bids (key = price) and -1 for asks (key = -price), so
    the best level is always ``keys[-1]``.
    """

    __slots__ = ("keys", "name", "sign", "sizes")

    def __init__(self, name: str, sign: float) -> None:
        self.name = name
        self.sign = sign
        self.keys: list[float] = []
        self.sizes: dict[float, float] = {}

    def clear(self) -> None:
        self.keys.clear()
        self.sizes.clear()

    def load(self, symbol: str, levels: Iterable[Level]) -> None:
        sizes: dict[float, float] = {}
        for price, size in levels:
            if not size >= 0:
                raise NegativeSizeError(symbol, self.name, price, size)
            if size:
                sizes[price] = size
            else:
                sizes.pop(price, None)
        self.sizes = sizes
        sign = self.sign
        self.keys = sorted(sign * p for p in sizes)

    def update(self, symbol: str, levels: Iterable[Level]) -> int:
        """Apply changes (size 0 deletes); returns how many levels really changed."""
        sizes = self.sizes
        keys = self.keys
        sign = self.sign
        changed = 0
        for price, size in levels:
            old = sizes.get(price)
            if size == 0:
                if old is not None:
                    del sizes[price]
                    del keys[bisect.bisect_left(keys, sign * price)]
                    changed += 1
            elif size > 0:
                if old is None:
                    bisect.insort(keys, sign * price)
                elif old == size:
                    continue
                sizes[price] = size
                changed += 1
            else:
                raise NegativeSizeError(symbol, self.name, price, size)
        return changed

    def top(self, n: int) -> tuple[Level, ...]:
        if n <= 0:
            return ()
        sign = self.sign
        sizes = self.sizes
        out = []
        for key in reversed(self.keys[-n:]):
            price = sign * key
            out.append((price, sizes[price]))
        return tuple(out)

    def best(self) -> Level | None:
        if not self.keys:
            return None
        price = self.sign * self.keys[-1]
        return price, self.sizes[price]


class L2Book:
    """One (provider, symbol) L2 book: sorted price levels of both sides.

    Not thread-safe; owned by the provider task that feeds it. ``update_id``
    is the venue sequence of the last applied message (None before the
    first snapshot) and ``synced`` whether the book is currently trustworthy
    (the sync machines set both).
    """

    __slots__ = ("_asks", "_bids", "provider", "symbol", "synced", "ts_exchange", "update_id")

    def __init__(self, provider: str, symbol: str) -> None:
        self.provider = provider
        self.symbol = symbol
        self._bids = _Side("bid", 1.0)
        self._asks = _Side("ask", -1.0)
        self.update_id: int | None = None
        self.synced = False
        self.ts_exchange: int | None = None

    def clear(self) -> None:
        """Forget every level and the sequence; the book is unsynced."""
        self._bids.clear()
        self._asks.clear()
        self.update_id = None
        self.synced = False

    def apply_snapshot(
        self, bids: Iterable[Level], asks: Iterable[Level], update_id: int | None = None
    ) -> None:
        """Replace the whole book (levels of size 0 are skipped).

        Raises:
            NegativeSizeError: a level has a negative size (the book is then cleared).
        """
        try:
            self._bids.load(self.symbol, bids)
            self._asks.load(self.symbol, asks)
        except NegativeSizeError:
            self.clear()
            raise
        self.update_id = update_id

    def apply_delta(self, bids: Iterable[Level], asks: Iterable[Level]) -> int:
        """Apply changed levels: size 0 deletes (deleting an unknown level is fine).

        Returns:
            How many levels actually changed (re-setting a level to its size
            is no change).

        Raises:
            NegativeSizeError: a level has a negative size; levels before it
                were applied, so the book must be resynced.
        """
        return self._bids.update(self.symbol, bids) + self._asks.update(self.symbol, asks)

    def top(self, n: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """``(bids, asks)``: the best ``n`` levels of each side, best first."""
        return self._bids.top(n), self._asks.top(n)

    def best_bid(self) -> Level | None:
        """The best bid ``(price, size)``, or None when there are no bids."""
        return self._bids.best()

    def best_ask(self) -> Level | None:
        """The best ask ``(price, size)``, or None when there are no asks."""
        return self._asks.best()

    def levels(self) -> tuple[dict[float, float], dict[float, float]]:
        """Copies of ``(bids, asks)`` as price -> size dicts (tests, debugging)."""
        return dict(self._bids.sizes), dict(self._asks.sizes)

    def depth(self) -> tuple[int, int]:
        """Number of ``(bid, ask)`` levels."""
        return len(self._bids.keys), len(self._asks.keys)

    def problem(self) -> BookError | None:
        """The consistency error of the book, or None when it is consistent.

        Negative sizes can never be stored (:meth:`apply_delta` refuses
        them), so the check left is a crossed (or locked) book.
        """
        bid = self._bids.best()
        ask = self._asks.best()
        if bid is not None and ask is not None and bid[0] >= ask[0]:
            return CrossedBookError(self.symbol, bid[0], ask[0])
        return None

    def check(self) -> None:
        """Raise the book's consistency error, if any.

        Raises:
            CrossedBookError: best bid >= best ask.
        """
        error = self.problem()
        if error is not None:
            raise error


# ---------------------------------------------------------------------------
# Sync results (what the provider must do)


@attrs.frozen(slots=True)
class Applied:
    """The message was applied; ``changed`` levels changed (all of a snapshot's)."""

    changed: int
    snapshot: bool = False


@attrs.frozen(slots=True)
class Ignored:
    """The message was stale, a duplicate, or arrived before any snapshot."""

    reason: str


@attrs.frozen(slots=True)
class Buffered:
    """Binance: held until the REST snapshot arrives (one is already requested)."""


@attrs.frozen(slots=True)
class NeedSnapshot:
    """Binance: fetch a REST depth snapshot now (first sync, or the last was too old)."""

    reason: str


@attrs.frozen(slots=True)
class Gap:
    """The sequence broke: the book is cleared and must be resynced.

    Binance: fetch a new REST snapshot (the WebSocket stays). Bybit:
    resubscribe the topic to get a new snapshot.
    """

    reason: str


SyncResult = Applied | Ignored | Buffered | NeedSnapshot | Gap

_BUFFERED: Final = Buffered()


class BinanceBookSync:
    """Binance's local-book procedure for ``<symbol>@depth`` (sans-IO).

    1. Depth updates before a snapshot are buffered; the first one returns
       :class:`NeedSnapshot` (later ones :class:`Buffered`).
    2. :meth:`on_snapshot` takes ``GET /api/v3/depth``'s ``lastUpdateId``: if it
       is older than the first buffered ``U`` it returns :class:`NeedSnapshot`
       again (refetch); otherwise it loads the book and replays the buffer,
       dropping events with ``u <= lastUpdateId``.
    3. From then on each event is applied when ``U <= local+1 <= u`` (normally
       ``U == local+1``), ignored when ``u <= local`` (stale or duplicate), and
       ``U > local+1`` is a :class:`Gap`: the book is cleared, the event
       starts a new buffer, and a fresh snapshot is needed.
    """

    def __init__(self, book: L2Book, *, max_buffered: int = MAX_BUFFERED) -> None:
        self.book = book
        self.max_buffered = max_buffered
        self._buffer: deque[tuple[int, int, Sequence[Level], Sequence[Level]]] = deque()
        self._requested = False
        self.gaps = 0

    @property
    def synced(self) -> bool:
        """True while the book follows the stream."""
        return self.book.synced

    @property
    def wants_snapshot(self) -> bool:
        """True from a :class:`NeedSnapshot`/:class:`Gap` until a usable snapshot."""
        return self._requested

    @property
    def first_buffered(self) -> int | None:
        """``U`` of the oldest buffered event (None when the buffer is empty)."""
        return self._buffer[0][0] if self._buffer else None

    def reset(self) -> None:
        """Forget everything (new connection): the next update asks for a snapshot."""
        self.book.clear()
        self._buffer.clear()
        self._requested = False

    def invalidate(self, reason: str) -> Gap:
        """Declare the book broken (e.g. crossed): clear it and ask for a snapshot."""
        self.book.clear()
        self._buffer.clear()
        self._requested = True
        self.gaps += 1
        return Gap(reason)

    def on_update(
        self, first: int, last: int, bids: Sequence[Level], asks: Sequence[Level]
    ) -> SyncResult:
        """One ``depthUpdate`` (``U`` = ``first``, ``u`` = ``last``)."""
        book = self.book
        if not book.synced:
            buffer = self._buffer
            if len(buffer) >= self.max_buffered:
                buffer.popleft()
            buffer.append((first, last, bids, asks))
            if not self._requested:
                self._requested = True
                return NeedSnapshot("initial sync")
            return _BUFFERED
        return self._apply(first, last, bids, asks)

    def _apply(
        self, first: int, last: int, bids: Sequence[Level], asks: Sequence[Level]
    ) -> SyncResult:
        local = self.book.update_id
        assert local is not None  # synced books always have one
        if last <= local:
            return Ignored(f"stale: u={last} <= local={local}")
        if first > local + 1:
            reason = f"gap: U={first} > local+1={local + 1}"
            self.invalidate(reason)
            self._buffer.append((first, last, bids, asks))
            return Gap(reason)
        try:
            changed = self.book.apply_delta(bids, asks)
        except BookError as exc:
            return self.invalidate(str(exc))
        self.book.update_id = last
        return Applied(changed)

    def on_snapshot(
        self, last_update_id: int, bids: Sequence[Level], asks: Sequence[Level]
    ) -> SyncResult:
        """The REST snapshot arrived: load it and replay the buffered updates."""
        book = self.book
        if book.synced:
            # Not asked for: keep the live book unless the snapshot is newer.
            local = book.update_id
            if local is not None and last_update_id <= local:
                return Ignored(f"snapshot not newer: lastUpdateId={last_update_id} <= {local}")
        first = self.first_buffered
        if first is not None and last_update_id < first:
            self._requested = True
            return NeedSnapshot(f"snapshot too old: lastUpdateId={last_update_id} < U={first}")
        try:
            book.apply_snapshot(bids, asks, last_update_id)
        except BookError as exc:
            return self.invalidate(str(exc))
        book.synced = True
        self._requested = False
        changed = sum(book.depth())
        buffer = self._buffer
        while buffer:
            result = self._apply(*buffer.popleft())
            if isinstance(result, Gap):
                # _apply re-buffered the breaking event; keep what followed it too.
                return result
            if isinstance(result, Applied):
                changed += result.changed
        return Applied(changed, snapshot=True)


class BybitBookSync:
    """Bybit V5 ``orderbook.N.<symbol>`` procedure (sans-IO).

    A snapshot always resets the book (also mid-stream). A delta must carry
    ``u == local+1``; ``u == 1`` means the venue restarted and the message is
    loaded as a snapshot; ``u <= local`` is a duplicate or stale and ignored;
    anything else — or a ``seq`` that does not increase — is a :class:`Gap`:
    the book is cleared and deltas are ignored until a new snapshot, which
    the provider gets by resubscribing the topic.
    """

    def __init__(self, book: L2Book) -> None:
        self.book = book
        self.seq: int | None = None
        self.gaps = 0

    @property
    def synced(self) -> bool:
        """True while the book follows the stream."""
        return self.book.synced

    def reset(self) -> None:
        """Forget everything (new connection or resubscribe): wait for a snapshot."""
        self.book.clear()
        self.seq = None

    def invalidate(self, reason: str) -> Gap:
        """Declare the book broken: clear it and wait for a new snapshot."""
        self.reset()
        self.gaps += 1
        return Gap(reason)

    def on_snapshot(
        self, update_id: int, seq: int | None, bids: Sequence[Level], asks: Sequence[Level]
    ) -> SyncResult:
        """A ``type: snapshot`` message: reset the book to it."""
        try:
            self.book.apply_snapshot(bids, asks, update_id)
        except BookError as exc:
            return self.invalidate(str(exc))
        self.book.synced = True
        self.seq = seq
        return Applied(sum(self.book.depth()), snapshot=True)

    def on_delta(
        self, update_id: int, seq: int | None, bids: Sequence[Level], asks: Sequence[Level]
    ) -> SyncResult:
        """A ``type: delta`` message."""
        book = self.book
        if update_id == 1:
            return self.on_snapshot(update_id, seq, bids, asks)
        if not book.synced:
            return Ignored("no snapshot yet")
        local = book.update_id
        assert local is not None
        if update_id <= local:
            return Ignored(f"stale: u={update_id} <= local={local}")
        if update_id != local + 1:
            return self.invalidate(f"gap: u={update_id} != local+1={local + 1}")
        last_seq = self.seq
        if seq is not None and last_seq is not None and seq <= last_seq:
            return self.invalidate(f"seq not increasing: seq={seq} <= {last_seq}")
        try:
            changed = book.apply_delta(bids, asks)
        except BookError as exc:
            return self.invalidate(str(exc))
        book.update_id = update_id
        self.seq = seq
        return Applied(changed)


# ---------------------------------------------------------------------------
# Book events out


@attrs.define
class _Symbol:
    book: L2Book
    sync: BinanceBookSync | BybitBookSync
    last_emit: float = -math.inf
    dirty: bool = False
    quote: tuple[Level, Level] | None = None
    ts_exchange: int | None = None
    ts_recv: int = 0


@attrs.frozen
class BookKeeperStats:
    """Counters of one :class:`BookKeeper`."""

    symbols: int
    synced: int
    applied: int
    ignored: int
    gaps: int
    published: int


class BookKeeper:
    """Per-provider book state: sync per symbol, throttled top-N events, gaps.

    Feed it the provider's parsed ``BookEvent`` messages (deltas and
    snapshots, with the venue sequence in ``first_update_id`` /
    ``last_update_id`` / ``cross_seq``; a Binance REST snapshot is a
    ``BookEvent(is_snapshot=True, last_update_id=lastUpdateId)``) with
    :meth:`feed`; it appends what to publish to ``out`` and returns the
    :data:`SyncResult` for the provider to act on. Synchronous and cheap: the
    provider loop calls it inline.

    Book events: after a change, a full top-``depth`` snapshot, at most
    ``max_rate`` per second per symbol (``now`` is the caller's trio clock);
    changes inside the interval mark the symbol dirty and :meth:`flush`
    publishes it once the interval has passed (:func:`flush_forever` calls
    it). With ``quotes=True`` each change of the best bid/ask also gives a
    ``QuoteEvent`` (not throttled).

    Gaps increment ``market_gaps_total{provider}`` and publish a
    ``StatusEvent(status="gap")``.
    """

    def __init__(
        self,
        provider: str,
        venue: Venue,
        *,
        depth: int = DEFAULT_DEPTH,
        max_rate: float = DEFAULT_MAX_RATE,
        quotes: bool = False,
        registry: BookRegistry | None = None,
    ) -> None:
        if venue not in ("binance", "bybit"):
            raise ValueError(f"unknown book venue {venue!r}")
        self.provider = provider
        self.venue: Venue = venue
        self.depth = depth
        self.interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self.quotes = quotes
        self.registry = BOOKS if registry is None else registry
        self._symbols: dict[str, _Symbol] = {}
        self._gaps = GAPS.labels(provider)
        self.applied = 0
        self.ignored = 0
        self.gaps = 0
        self.published = 0

    def _state(self, symbol: str) -> _Symbol:
        state = self._symbols.get(symbol)
        if state is None:
            book = L2Book(self.provider, symbol)
            sync: BinanceBookSync | BybitBookSync = (
                BinanceBookSync(book) if self.venue == "binance" else BybitBookSync(book)
            )
            state = self._symbols[symbol] = _Symbol(book, sync)
            self.registry.register(book)
        return state

    def book(self, symbol: str) -> L2Book:
        """The book of ``symbol`` (created empty and unsynced on first use)."""
        return self._state(symbol).book

    def symbols(self) -> list[str]:
        """Symbols seen so far."""
        return list(self._symbols)

    def reset(self, symbol: str | None = None) -> None:
        """Forget one symbol's book, or every book (a new connection)."""
        for name, state in self._symbols.items():
            if symbol is None or name == symbol:
                state.sync.reset()
                state.dirty = False
                state.quote = None

    def feed(self, event: BookEvent, now: float, out: list[Event]) -> SyncResult:
        """Sync one venue book message; append book/quote/status events to ``out``.

        Args:
            event: a parsed delta or snapshot of this provider.
            now: the trio clock (``trio.current_time()``), for rate limiting.
            out: list the events to publish are appended to.

        Returns:
            What the provider must do next (see :data:`SyncResult`).
        """
        state = self._state(event.symbol)
        sync = state.sync
        if isinstance(sync, BinanceBookSync):
            if event.is_snapshot:
                result = sync.on_snapshot(event.last_update_id or 0, event.bids, event.asks)
            else:
                last = event.last_update_id or 0
                first = event.first_update_id
                result = sync.on_update(
                    last if first is None else first, last, event.bids, event.asks
                )
        elif event.is_snapshot:
            result = sync.on_snapshot(
                event.last_update_id or 0, event.cross_seq, event.bids, event.asks
            )
        else:
            result = sync.on_delta(
                event.last_update_id or 0, event.cross_seq, event.bids, event.asks
            )

        if isinstance(result, Applied):
            book = state.book
            error = book.problem()
            if error is not None:
                result = sync.invalidate(str(error))
            else:
                self.applied += 1
                if event.ts_exchange is not None:
                    state.ts_exchange = book.ts_exchange = event.ts_exchange
                state.ts_recv = event.ts_recv
                if result.changed or result.snapshot:
                    self._changed(state, now, out)
                return result
        if isinstance(result, Gap):
            self._gap(state, event.ts_recv, result.reason, out)
        elif isinstance(result, Ignored):
            self.ignored += 1
        return result

    def _gap(self, state: _Symbol, ts_recv: int, reason: str, out: list[Event]) -> None:
        self.gaps += 1
        self._gaps.inc()
        state.dirty = False
        state.quote = None
        LOGGER.warning(
            "book.gap provider=%s symbol=%s reason=%s", self.provider, state.book.symbol, reason
        )
        out.append(
            StatusEvent(self.provider, state.book.symbol, None, ts_recv or now_ns(), "gap", reason)
        )

    def _changed(self, state: _Symbol, now: float, out: list[Event]) -> None:
        book = state.book
        if self.quotes:
            bid = book.best_bid()
            ask = book.best_ask()
            if bid is not None and ask is not None:
                quote = (bid, ask)
                if quote != state.quote:
                    state.quote = quote
                    out.append(
                        QuoteEvent(
                            self.provider,
                            book.symbol,
                            state.ts_exchange,
                            state.ts_recv,
                            bid[0],
                            bid[1],
                            ask[0],
                            ask[1],
                        )
                    )
        if now - state.last_emit >= self.interval:
            self._emit(state, now, out)
        else:
            state.dirty = True

    def _emit(self, state: _Symbol, now: float, out: list[Event]) -> None:
        book = state.book
        bids, asks = book.top(self.depth)
        sync = state.sync
        out.append(
            BookEvent(
                self.provider,
                book.symbol,
                state.ts_exchange,
                state.ts_recv,
                bids,
                asks,
                True,
                last_update_id=book.update_id,
                cross_seq=sync.seq if isinstance(sync, BybitBookSync) else None,
            )
        )
        state.last_emit = now
        state.dirty = False
        self.published += 1

    def flush(self, now: float, out: list[Event]) -> None:
        """Publish the throttled snapshots whose interval has passed."""
        interval = self.interval
        for state in self._symbols.values():
            if state.dirty and state.book.synced and now - state.last_emit >= interval:
                self._emit(state, now, out)

    def next_flush(self) -> float | None:
        """Trio time when :meth:`flush` has something to publish (None: nothing pending)."""
        due = [s.last_emit + self.interval for s in self._symbols.values() if s.dirty]
        return min(due) if due else None

    def statistics(self) -> BookKeeperStats:
        """Counters for status views."""
        return BookKeeperStats(
            symbols=len(self._symbols),
            synced=sum(1 for s in self._symbols.values() if s.book.synced),
            applied=self.applied,
            ignored=self.ignored,
            gaps=self.gaps,
            published=self.published,
        )


async def flush_forever(keeper: BookKeeper, publish: Callable[[Event], None]) -> NoReturn:
    """Publish throttled book snapshots when their interval passes (run in the provider's nursery).

    Wakes every ``keeper.interval`` (at least 10 ms) and publishes whatever
    :meth:`BookKeeper.flush` has, so the last change of a burst is never held
    back longer than one interval.
    """
    period = max(keeper.interval, 0.01)
    out: list[Event] = []
    while True:
        await trio.sleep(period)
        keeper.flush(trio.current_time(), out)
        for event in out:
            publish(event)
        out.clear()


def feed_books(
    keeper: BookKeeper, items: list[Any], now: float
) -> tuple[list[Any], list[tuple[str, SyncResult]]]:
    """Pass a parsed frame's ``BookEvent`` items through ``keeper``.

    Other items (trades, quotes, controls) keep their place; each venue book
    message is replaced by what the keeper publishes (throttled top-N
    snapshots, quotes, gap statuses). Frames without book messages are
    returned as they are (no copy).

    Returns:
        ``(items, actions)``: the items to publish and, per symbol, the
        :class:`NeedSnapshot` / :class:`Gap` results the provider must act on.
    """
    for item in items:
        if type(item) is BookEvent:
            break
    else:
        return items, []
    out: list[Any] = []
    actions: list[tuple[str, SyncResult]] = []
    for item in items:
        if type(item) is BookEvent:
            result = keeper.feed(item, now, out)
            if type(result) is NeedSnapshot or type(result) is Gap:
                actions.append((item.symbol, result))
        else:
            out.append(item)
    return out, actions


class SnapshotError(MddError):
    """A REST depth snapshot could not be fetched or read (the fetcher retries).

    ``retry_after`` is the venue's ``Retry-After`` (seconds) when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


#: Binance request weight of ``/api/v3/depth`` by ``limit`` (upper bound, weight).
DEPTH_WEIGHTS: Final = ((100, 5), (500, 25), (1000, 50), (5000, 250))
#: Binance's REST request-weight budget per minute (per IP).
WEIGHT_PER_MINUTE: Final = 6000


def depth_weight(limit: int) -> int:
    """Request weight Binance charges for ``/api/v3/depth?limit=``."""
    for upper, weight in DEPTH_WEIGHTS:
        if limit <= upper:
            return weight
    return DEPTH_WEIGHTS[-1][1]


class DepthSnapshotFetcher:
    """Fetches Binance REST depth snapshots for the symbols a :class:`BookKeeper` needs.

    The provider calls :meth:`request` (synchronous, from its parse path) on
    :class:`NeedSnapshot` / :class:`Gap`; :meth:`run` (a task in the
    provider's nursery) fetches ``GET {rest_url}/api/v3/depth?symbol=S&limit=N``
    with one ``httpx.AsyncClient``, feeds the snapshot to the keeper and
    publishes what it produces. The WebSocket is never touched: a resync is
    only a new snapshot.

    Error handling: HTTP errors, bad JSON and timeouts raise nothing out of
    :meth:`run`; the symbol is retried with capped exponential backoff. HTTP
    429/418 honour ``Retry-After``. Request weight is budgeted (token bucket of
    :data:`WEIGHT_PER_MINUTE`) so a resync storm cannot get the IP banned.

    Args:
        keeper: the provider's keeper (venue ``binance``).
        rest_url: base URL, e.g. ``https://api.binance.com``.
        limit: levels requested (Binance allows up to 5000).
        timeout: per-request timeout, seconds.
        too_old_delay: wait before refetching a snapshot older than the buffered stream.
    """

    def __init__(
        self,
        keeper: BookKeeper,
        rest_url: str,
        *,
        limit: int = 5000,
        timeout: float = 10.0,
        too_old_delay: float = 0.25,
        max_backoff: float = 30.0,
    ) -> None:
        self.keeper = keeper
        self.rest_url = rest_url.rstrip("/")
        self.limit = limit
        self.timeout = timeout
        self.too_old_delay = too_old_delay
        self.max_backoff = max_backoff
        self._pending: dict[str, None] = {}
        self._wake = trio.Event()
        self._weight = float(WEIGHT_PER_MINUTE)
        self._weight_at = 0.0
        self.fetched = 0
        self.failures = 0

    def request(self, symbol: str) -> None:
        """Ask for a snapshot of ``symbol`` (deduplicated; never blocks)."""
        self._pending[symbol] = None
        self._wake.set()

    @property
    def pending(self) -> list[str]:
        """Symbols waiting for a snapshot."""
        return list(self._pending)

    async def _budget(self, weight: int) -> None:
        rate = WEIGHT_PER_MINUTE / 60.0
        now = trio.current_time()
        self._weight = min(WEIGHT_PER_MINUTE, self._weight + (now - self._weight_at) * rate)
        self._weight_at = now
        if self._weight < weight:
            await trio.sleep((weight - self._weight) / rate)
            self._weight = float(weight)
            self._weight_at = trio.current_time()
        self._weight -= weight

    async def fetch(self, client: Any, symbol: str) -> BookEvent:
        """One snapshot of ``symbol`` as a ``BookEvent(is_snapshot=True)``.

        Raises:
            SnapshotError: transport error, non-200 status, or a malformed body.
        """
        import httpx

        await self._budget(depth_weight(self.limit))
        url = f"{self.rest_url}/api/v3/depth"
        shown = redact_url(url)  # errors are logged: no credentials in them
        try:
            response = await client.get(
                url, params={"symbol": symbol, "limit": str(self.limit)}, timeout=self.timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise SnapshotError(f"{symbol}: GET {shown} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            retry = response.headers.get("retry-after")
            raise SnapshotError(
                f"{symbol}: GET {shown} answered HTTP {response.status_code}: "
                f"{response.text[:200]}",
                retry_after=float(retry) if retry and retry.isdigit() else None,
            )
        try:
            body = orjson.loads(response.content)
            bids = tuple([(float(p), float(q)) for p, q in body["bids"]])
            asks = tuple([(float(p), float(q)) for p, q in body["asks"]])
            last = body["lastUpdateId"]
            if type(last) is not int:
                raise TypeError(f"lastUpdateId {last!r}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{symbol}: malformed depth snapshot: {exc}") from None
        return BookEvent(self.keeper.provider, symbol, None, now_ns(), bids, asks, True, None, last)

    async def run(
        self,
        publish: Callable[[Event], None],
        *,
        client: Any = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Fetch requested snapshots forever, publishing the keeper's output."""
        import httpx

        own = client is None
        http = httpx.AsyncClient() if own else client
        backoff = 0.0
        try:
            task_status.started()
            while True:
                if not self._pending:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                symbol = next(iter(self._pending))
                del self._pending[symbol]
                try:
                    event = await self.fetch(http, symbol)
                except SnapshotError as exc:
                    self.failures += 1
                    backoff = min(self.max_backoff, max(0.5, backoff * 2))
                    delay = exc.retry_after or backoff
                    LOGGER.warning("book.snapshot_failed error=%s retry_in=%.2f", exc, delay)
                    self._pending[symbol] = None
                    await trio.sleep(delay)
                    continue
                backoff = 0.0
                self.fetched += 1
                out: list[Event] = []
                result = self.keeper.feed(event, trio.current_time(), out)
                for item in out:
                    publish(item)
                if type(result) is NeedSnapshot:
                    LOGGER.info("book.snapshot_refetch symbol=%s reason=%s", symbol, result.reason)
                    await trio.sleep(self.too_old_delay)
                    self.request(symbol)
                elif type(result) is Gap:
                    self.request(symbol)
                elif type(result) is Applied:
                    LOGGER.info(
                        "book.synced provider=%s symbol=%s update_id=%s",
                        self.keeper.provider,
                        symbol,
                        event.last_update_id,
                    )
        finally:
            if own:
                with trio.CancelScope(shield=True):
                    await http.aclose()


# ---------------------------------------------------------------------------
# Registry for /book


class BookRegistry:
    """Every live book in the process by (provider, symbol), for ``GET /book``.

    A keeper registers its books when it creates them; a newer book for the
    same key (a restarted provider) replaces the old one.
    """

    def __init__(self) -> None:
        self._books: dict[tuple[str, str], L2Book] = {}

    def register(self, book: L2Book) -> None:
        """Add or replace the book of ``(book.provider, book.symbol)``."""
        self._books[(book.provider, book.symbol)] = book

    def unregister(self, book: L2Book) -> None:
        """Remove ``book`` if it is still the registered one."""
        key = (book.provider, book.symbol)
        if self._books.get(key) is book:
            del self._books[key]

    def get(self, provider: str, symbol: str) -> L2Book | None:
        """The book of one provider and symbol."""
        return self._books.get((provider, symbol))

    def for_symbol(self, symbol: str) -> list[L2Book]:
        """Every provider's book of ``symbol``, synced ones first."""
        books = [b for (_, s), b in self._books.items() if s == symbol]
        books.sort(key=lambda b: not b.synced)
        return books

    def __iter__(self) -> Iterator[L2Book]:
        return iter(list(self._books.values()))

    def clear(self) -> None:
        """Forget every book (tests)."""
        self._books.clear()


#: The process-wide registry :class:`BookKeeper` registers into by default.
BOOKS: Final = BookRegistry()


def book_view(book: L2Book, depth: int) -> dict[str, object]:
    """A JSON-ready view of the top ``depth`` levels of ``book`` (``GET /book``)."""
    bids, asks = book.top(depth)
    return {
        "provider": book.provider,
        "symbol": book.symbol,
        "synced": book.synced,
        "update_id": book.update_id,
        "ts_exchange": book.ts_exchange,
        "bids": [list(level) for level in bids],
        "asks": [list(level) for level in asks],
    }


# ---------------------------------------------------------------------------
# Micro-benchmark


def bench_book(n: int = 200_000, *, levels_per_event: int = 10, seed: int = 1) -> float:
    """Book deltas (level changes) applied per second through :class:`BinanceBookSync`.

    Builds a 1,000-level-a-side book, then applies ``n`` level changes in
    depth updates of ``levels_per_event`` levels with correct ``U``/``u``
    chaining: mostly size changes near the top, some inserts and deletes.
    Input is generated before the clock starts; the figure covers the sync
    check and the sorted-level updates (what the provider loop pays).
    """
    import random

    rng = random.Random(seed)
    mid = 50_000.0
    tick = 0.01
    bids0 = [(round(mid - tick * (i + 1), 2), 1.0 + i % 7) for i in range(1000)]
    asks0 = [(round(mid + tick * (i + 1), 2), 1.0 + i % 5) for i in range(1000)]
    events: list[tuple[int, int, list[Level], list[Level]]] = []
    uid = 1000
    made = 0
    while made < n:
        bids: list[Level] = []
        asks: list[Level] = []
        for _ in range(levels_per_event):
            off = int(rng.expovariate(0.05)) + 1
            size = 0.0 if rng.random() < 0.2 else round(rng.uniform(0.1, 5.0), 3)
            if rng.random() < 0.5:
                bids.append((round(mid - tick * off, 2), size))
            else:
                asks.append((round(mid + tick * off, 2), size))
        events.append((uid + 1, uid + levels_per_event, bids, asks))
        uid += levels_per_event
        made += levels_per_event
    sync = BinanceBookSync(L2Book("bench", "BENCH"))
    sync.on_update(*events[0])
    sync.on_snapshot(1001, bids0, asks0)
    assert sync.synced
    on_update = sync.on_update
    start = time.perf_counter()
    for event in events[1:]:
        on_update(*event)
    elapsed = time.perf_counter() - start
    return (made - levels_per_event) / elapsed if elapsed > 0 else math.inf
