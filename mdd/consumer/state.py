"""Per-symbol state: the latest trade and quote, and a time-based rolling trade window.

The window keeps running sums so an update costs O(1) amortized: appending a
trade adds to the sums, expiring one subtracts from them, and nothing ever
rescans the window. Time is the event's own timestamp (``ts_exchange``, else
``ts_recv``) in integer nanoseconds, so replays and tests are deterministic;
an event older than the newest one seen is placed at the newest time (the
window's clock never runs backwards).

Log returns are taken between consecutive trades *in the window*: each entry
remembers the log return from its predecessor, and the oldest entry's return
is not counted (its predecessor has left the window).
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from ..events import Event, QuoteEvent, TradeEvent

#: Nanoseconds per second.
NS: Final = 1_000_000_000


def event_time(event: Event) -> int:
    """The time an event happened: ``ts_exchange`` where the venue gives it, else ``ts_recv``."""
    return event.ts_exchange if event.ts_exchange is not None else event.ts_recv


class _Entry:
    """One trade in a window. ``lr`` is the log return from the previous entry."""

    __slots__ = ("lr", "notional", "price", "qty", "side", "ts")

    def __init__(self, ts: int, price: float, qty: float, side: int, lr: float | None) -> None:
        self.ts = ts
        self.price = price
        self.qty = qty
        self.notional = price * qty
        self.side = side  # +1 buy, -1 sell, 0 unknown
        self.lr = lr


@attrs.frozen
class WindowSums:
    """The aggregates of a window at one moment (what the features are made from)."""

    count: int
    volume: float
    notional: float
    buy_volume: float
    sell_volume: float
    lr_count: int
    lr_sum: float
    lr_sq_sum: float


class RollingWindow:
    """Trades of one symbol over the last ``seconds``, with running sums.

    The window at time ``t`` holds the trades with ``t - seconds < ts <= t``.

    Args:
        seconds: window length.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"window must be > 0 s, got {seconds}")
        self.span_ns = int(seconds * NS)
        self._entries: collections.deque[_Entry] = collections.deque()
        self.now_ns = 0
        self.volume = 0.0
        self.notional = 0.0
        self.buy_volume = 0.0
        self.sell_volume = 0.0
        self.lr_count = 0
        self.lr_sum = 0.0
        self.lr_sq_sum = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_price(self) -> float | None:
        """Price of the oldest trade in the window."""
        return self._entries[0].price if self._entries else None

    @property
    def last_price(self) -> float | None:
        """Price of the newest trade in the window."""
        return self._entries[-1].price if self._entries else None

    def add(self, ts: int, price: float, qty: float, side: str | None) -> None:
        """Add one trade at ``ts`` (ns) and expire what fell out of the window."""
        ts = max(ts, self.now_ns)
        self.advance(ts)
        lr: float | None = None
        if self._entries:
            prev = self._entries[-1].price
            if prev > 0 and price > 0:
                lr = math.log(price / prev)
                self.lr_count += 1
                self.lr_sum += lr
                self.lr_sq_sum += lr * lr
        sign = 1 if side == "buy" else -1 if side == "sell" else 0
        entry = _Entry(ts, price, qty, sign, lr)
        self._entries.append(entry)
        self.volume += qty
        self.notional += entry.notional
        if sign > 0:
            self.buy_volume += qty
        elif sign < 0:
            self.sell_volume += qty

    def advance(self, now_ns: int) -> int:
        """Move the window's clock to ``now_ns`` (never backwards); returns trades expired."""
        if now_ns > self.now_ns:
            self.now_ns = now_ns
        cutoff = self.now_ns - self.span_ns
        entries = self._entries
        expired = 0
        while entries and entries[0].ts <= cutoff:
            old = entries.popleft()
            expired += 1
            self.volume -= old.qty
            self.notional -= old.notional
            if old.side > 0:
                self.buy_volume -= old.qty
            elif old.side < 0:
                self.sell_volume -= old.qty
            if entries:
                # The new head's return was measured from ``old``: no longer in the window.
                head = entries[0]
                if head.lr is not None:
                    self.lr_count -= 1
                    self.lr_sum -= head.lr
                    self.lr_sq_sum -= head.lr * head.lr
                    head.lr = None
        if expired and not entries:
            self._reset_sums()
        return expired

    def _reset_sums(self) -> None:
        # An empty window has exactly zero sums: drop accumulated rounding error.
        self.volume = self.notional = self.buy_volume = self.sell_volume = 0.0
        self.lr_count = 0
        self.lr_sum = self.lr_sq_sum = 0.0

    def sums(self) -> WindowSums:
        """The running aggregates (O(1))."""
        return WindowSums(
            count=len(self._entries),
            volume=self.volume,
            notional=self.notional,
            buy_volume=self.buy_volume,
            sell_volume=self.sell_volume,
            lr_count=self.lr_count,
            lr_sum=self.lr_sum,
            lr_sq_sum=self.lr_sq_sum,
        )

    def recompute(self) -> WindowSums:
        """The same aggregates recomputed from scratch (O(n); for tests and audits)."""
        entries = list(self._entries)
        lrs = [
            math.log(b.price / a.price)
            for a, b in itertools.pairwise(entries)
            if a.price > 0 and b.price > 0
        ]
        return WindowSums(
            count=len(entries),
            volume=math.fsum(e.qty for e in entries),
            notional=math.fsum(e.price * e.qty for e in entries),
            buy_volume=math.fsum(e.qty for e in entries if e.side > 0),
            sell_volume=math.fsum(e.qty for e in entries if e.side < 0),
            lr_count=len(lrs),
            lr_sum=math.fsum(lrs),
            lr_sq_sum=math.fsum(x * x for x in lrs),
        )


class ShortWindow:
    """Prices of the last ``seconds`` of trades: only the oldest one is ever read."""

    def __init__(self, seconds: float) -> None:
        self.span_ns = int(seconds * NS)
        self._entries: collections.deque[tuple[int, float]] = collections.deque()
        self.now_ns = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, ts: int, price: float) -> None:
        """Add one trade price at ``ts`` (ns)."""
        ts = max(ts, self.now_ns)
        self.advance(ts)
        self._entries.append((ts, price))

    def advance(self, now_ns: int) -> None:
        """Move the clock to ``now_ns`` and expire old prices."""
        if now_ns > self.now_ns:
            self.now_ns = now_ns
        cutoff = self.now_ns - self.span_ns
        entries = self._entries
        while entries and entries[0][0] <= cutoff:
            entries.popleft()

    @property
    def first_price(self) -> float | None:
        """Price of the oldest trade in this window."""
        return self._entries[0][1] if self._entries else None


@attrs.define
class SymbolState:
    """Everything the consumer knows about one symbol."""

    symbol: str
    window: RollingWindow
    short: ShortWindow
    last_trade: TradeEvent | None = None
    last_quote: QuoteEvent | None = None
    last_event_ts: int = 0  # event time (ns) of the newest event
    last_latency_ns: int | None = None  # consumer receive time minus event time
    last_seen: float = 0.0  # trio time of the newest event (stale alerts)
    events: int = 0
    trades: int = 0
    quotes: int = 0


class LatestState:
    """The latest trade and quote per symbol, plus each symbol's windows.

    Args:
        window_seconds: length of the rolling trade window.
        short_seconds: length of the short return window.
    """

    def __init__(self, window_seconds: float = 60.0, short_seconds: float = 10.0) -> None:
        self.window_seconds = window_seconds
        self.short_seconds = short_seconds
        self.symbols: dict[str, SymbolState] = {}

    def get(self, symbol: str) -> SymbolState | None:
        """The state of ``symbol``, or None if it was never seen."""
        return self.symbols.get(symbol)

    def _state(self, symbol: str) -> SymbolState:
        st = self.symbols.get(symbol)
        if st is None:
            st = SymbolState(
                symbol=symbol,
                window=RollingWindow(self.window_seconds),
                short=ShortWindow(self.short_seconds),
            )
            self.symbols[symbol] = st
        return st

    def apply_trade(self, event: TradeEvent, recv_ns: int, now: float) -> SymbolState:
        """Record a trade: latest trade, both windows, freshness."""
        st = self._touch(event, recv_ns, now)
        ts = event_time(event)
        st.last_trade = event
        st.trades += 1
        st.window.add(ts, event.price, event.qty, event.side)
        st.short.add(ts, event.price)
        return st

    def apply_quote(self, event: QuoteEvent, recv_ns: int, now: float) -> SymbolState:
        """Record a quote: latest quote, freshness; advances the windows' clocks."""
        st = self._touch(event, recv_ns, now)
        st.last_quote = event
        st.quotes += 1
        ts = event_time(event)
        st.window.advance(ts)
        st.short.advance(ts)
        return st

    def apply_other(self, event: Event, recv_ns: int, now: float) -> SymbolState:
        """Record any other event (book, heartbeat, status) for freshness only."""
        return self._touch(event, recv_ns, now)

    def _touch(self, event: Event, recv_ns: int, now: float) -> SymbolState:
        st = self._state(event.symbol)
        ts = event_time(event)
        if ts > st.last_event_ts:
            st.last_event_ts = ts
        st.last_latency_ns = recv_ns - ts
        st.last_seen = now
        st.events += 1
        return st
