"""The simulated market: per-symbol random walk, true book, trades and bars.

One :class:`Market` per served venue. It advances in *steps*: each step moves
one symbol's mid price, prints ``trades_per_frame`` trades against the best
levels, reshapes the book and records everything a venue needs to render its
messages (book changes with update ids, the top-50 view after the step, the
view deltas, a closed minute bar). Steps go into a bounded ring that every
connection reads with its own cursor, so all connections see the same market
and the same depth chain. With ``rate > 0`` a ticker task makes the steps;
with ``rate == 0`` connections make them on demand (as fast as they read).

Time is trio time mapped onto the epoch at construction, so timestamps and
schedules follow ``MockClock`` in tests.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random
import time
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .book import Level, Side, SimBook, diff_levels

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._options import SimOptions

LOGGER = logging.getLogger("mdd.sim.market")

#: Shortest ticker sleep; faster rates make several steps per tick (bursts).
MIN_TICK: Final = 0.01
#: Levels kept in each step's view of the book (Bybit orderbook.50 and Binance depth20 need it).
VIEW_DEPTH: Final = 50
#: View depth for venues that need no more (Binance depth20, Alpaca quotes and resets).
SHORT_VIEW_DEPTH: Final = 20
#: The book keeps between these many levels a side.
MIN_LEVELS: Final = 80
MAX_LEVELS: Final = 120
#: Quote currencies that make an unknown crypto symbol acceptable (Binance/Bybit style).
QUOTE_CURRENCIES: Final = ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "USD")
#: Plausible start prices by base asset; others get a stable pseudo-random price.
START_PRICES: Final = {
    "BTC": 90_000.0,
    "ETH": 3_000.0,
    "SOL": 150.0,
    "BNB": 600.0,
    "XRP": 0.6,
    "DOGE": 0.15,
    "AVAX": 35.0,
    "LTC": 80.0,
    "AAPL": 190.0,
    "SPY": 560.0,
    "FAKEPACA": 134.0,
}
SIDES: Final[tuple[Side, Side]] = ("bid", "ask")
SPREADS: Final = (1, 1, 1, 2, 3)
POW10: Final[list[int]] = [10**i for i in range(20)]
NS: Final = 1_000_000_000
MINUTE_NS: Final = 60 * NS


@attrs.frozen
class SymbolSpec:
    """How a symbol is quoted: tick and size decimals, stock or crypto."""

    symbol: str
    base: str
    price_decimals: int
    qty_decimals: int
    stock: bool
    start_price: float


def _stable_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


def spec_for(symbol: str) -> SymbolSpec:
    """Quote conventions for a venue symbol (``BTCUSDT``, ``BTC/USD`` or ``AAPL``)."""
    if "/" in symbol:
        base, stock = symbol.split("/", 1)[0], False
    else:
        quote = next((q for q in QUOTE_CURRENCIES if symbol.endswith(q) and symbol != q), None)
        base, stock = (symbol[: -len(quote)], False) if quote else (symbol, True)
    price = START_PRICES.get(base) or 10.0 + 490.0 * _stable_fraction(base)
    price_decimals = 2 if price >= 1 else 5
    return SymbolSpec(symbol, base, price_decimals, 0 if stock else 8, stock, price)


@attrs.frozen
class SimTrade:
    """One generated trade; ``taker_buy`` is the aggressor side."""

    trade_id: int
    price: int
    qty: int
    taker_buy: bool
    ts_ns: int


@attrs.frozen
class SimBar:
    """A closed minute bar (prices in ticks, volume in size units)."""

    start_ns: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    count: int
    notional: int  # sum of price*qty, for the VWAP


@attrs.frozen
class Step:
    """Everything that happened to one symbol in one market step."""

    index: int
    symbol: str
    spec: SymbolSpec
    ts_ns: int
    seq: int
    trades: tuple[SimTrade, ...]
    first_update_id: int
    last_update_id: int
    bid_changes: tuple[Level, ...]
    ask_changes: tuple[Level, ...]
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    top_changed: bool
    u1: int
    delta_bids: tuple[Level, ...]
    delta_asks: tuple[Level, ...]
    u50: int
    u_full: int
    stats: tuple[int, int, int, int, int]  # last price, high, low (ticks), volume (units), notional
    bar: SimBar | None


class SimClock:
    """Trio time mapped onto epoch nanoseconds (follows MockClock in tests)."""

    def __init__(self) -> None:
        self._t0 = trio.current_time()
        self._epoch0 = time.time_ns()

    def now_ns(self) -> int:
        """Epoch nanoseconds of the current trio time."""
        return self._epoch0 + int((trio.current_time() - self._t0) * NS)


@attrs.define
class _Bar:
    minute: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    count: int = 0
    notional: int = 0


class SymbolState:
    """Mid price, true book, ids and the open bar of one symbol."""

    def __init__(self, spec: SymbolSpec, rng: random.Random, clock: SimClock, seq: int = 0) -> None:
        self.spec = spec
        self.rng = rng
        #: Compute top-50 view deltas (Bybit orderbook.50 needs them; they cost).
        self.track_deltas = True
        #: Levels a side kept in each step's view (50 for Bybit, 20 is enough elsewhere).
        self.view_depth = VIEW_DEPTH
        scale = 10**spec.price_decimals
        self.mid = max(2, round(spec.start_price * scale))
        self._level_sizes = [self._units(10 ** rng.uniform(1.5, 5.3)) for _ in range(1024)]
        self._trade_sizes = [self._units(10 ** rng.uniform(0.7, 4.3)) for _ in range(1024)]
        self.gap = max(1, round(self.mid * 1e-6))
        self.sigma = max(1.0, self.mid * 2e-6)
        self.book = SimBook(last_update_id=rng.randint(10**8, 10**10))
        self.next_trade_id = rng.randint(10**6, 10**9)
        self.u1 = rng.randint(10**5, 10**6)
        self.u50 = rng.randint(10**6, 10**7)
        self.u_full = rng.randint(10**6, 10**7)
        self.stats = (self.mid, self.mid, self.mid, 0, 0)
        self.first_price = self.mid
        bid = self.mid - 1
        for i in range(100):
            self.book.stage("bid", bid - i * self.gap, self.level_size())
            self.book.stage("ask", bid + 1 + i * self.gap, self.level_size())
        self.book.commit()
        self.view_bids = tuple(self.book.top("bid", VIEW_DEPTH))
        self.view_asks = tuple(self.book.top("ask", VIEW_DEPTH))
        self.top = (self.book.best("bid"), self.book.best("ask"))
        now = clock.now_ns()
        self.bar = _Bar(now // MINUTE_NS, self.mid, self.mid, self.mid, self.mid)
        self.latest = Step(
            index=-1,
            symbol=spec.symbol,
            spec=spec,
            ts_ns=now,
            seq=seq,
            trades=(),
            first_update_id=self.book.last_update_id,
            last_update_id=self.book.last_update_id,
            bid_changes=(),
            ask_changes=(),
            bids=self.view_bids,
            asks=self.view_asks,
            top_changed=False,
            u1=self.u1,
            delta_bids=(),
            delta_asks=(),
            u50=self.u50,
            u_full=self.u_full,
            stats=(self.mid, self.mid, self.mid, 0, 0),
            bar=None,
        )

    def _units(self, notional: float) -> int:
        raw = notional / self.spec.start_price
        if self.spec.stock:
            return max(1, round(raw))
        # Round to 5 significant-ish decimals so sizes look like the venue's.
        return max(1000, int(round(raw * 10**self.spec.qty_decimals, -3)))

    def level_size(self) -> int:
        """A plausible resting size (drawn from a pre-made log-uniform table)."""
        return self._level_sizes[self.rng.getrandbits(10)]

    def trade_size(self) -> int:
        """A plausible trade size (drawn from a pre-made log-uniform table)."""
        return self._trade_sizes[self.rng.getrandbits(10)]

    def step(self, index: int, seq: int, now: int, n_trades: int) -> Step:
        """Advance this symbol by one step and describe it."""
        rng, book = self.rng, self.book
        move = round(rng.gauss(0.0, self.sigma))
        trades: list[SimTrade] = []
        for _ in range(n_trades):
            taker_buy = rng.random() < (0.5 + (0.2 if move > 0 else -0.2 if move < 0 else 0.0))
            side: Side = "ask" if taker_buy else "bid"
            best = book.best(side)
            if best is None:
                continue
            price, size = best
            qty = min(self.trade_size(), size)
            book.stage(side, price, size - qty)
            trades.append(SimTrade(self.next_trade_id, price, qty, taker_buy, now))
            self.next_trade_id += 1
        self.mid = max(4 * self.gap + 2, self.mid + move)
        spread = SPREADS[int(rng.random() * len(SPREADS))]
        bid_top = self.mid - (spread + 1) // 2
        ask_top = bid_top + spread
        # Uncross: remove levels through the new touch, then fill up to it.
        while (bb := book.best("bid")) is not None and bb[0] >= ask_top:
            book.stage("bid", bb[0], 0)
        while (ba := book.best("ask")) is not None and ba[0] <= bid_top:
            book.stage("ask", ba[0], 0)
        best_bid = book.best("bid")
        price = bid_top
        for _ in range(20):
            if best_bid is not None and price <= best_bid[0]:
                break
            book.stage("bid", price, self.level_size())
            price -= 1 + int(rng.random() * 2 * self.gap)
        best_ask = book.best("ask")
        price = ask_top
        for _ in range(20):
            if best_ask is not None and price >= best_ask[0]:
                break
            book.stage("ask", price, self.level_size())
            price += 1 + int(rng.random() * 2 * self.gap)
        # Churn: resize or cancel a few resting levels near the top.
        for _ in range(1 + int(rng.random() * 3)):
            churn_side = SIDES[rng.random() < 0.5]
            n = min(20, book.depth(churn_side))
            if n < 2:
                continue
            lvl_price = book.price_at(churn_side, int(rng.random() * (n - 1)) + 1)
            size = 0 if rng.random() < 0.2 else self.level_size()
            book.stage(churn_side, lvl_price, size)
        for sd in SIDES:
            sign = -1 if sd == "bid" else 1
            while book.depth(sd) < MIN_LEVELS:
                worst = book.worst(sd)
                base = worst if worst is not None else self.mid
                deeper = base + sign * (1 + int(rng.random() * 2 * self.gap))
                book.stage(sd, deeper, self.level_size())
            while book.depth(sd) > MAX_LEVELS:
                worst = book.worst(sd)
                assert worst is not None
                book.stage(sd, worst, 0)
        first, last, bid_changes, ask_changes = book.commit()
        bids = tuple(book.top("bid", self.view_depth))
        asks = tuple(book.top("ask", self.view_depth))
        if self.track_deltas:
            delta_bids = tuple(diff_levels(self.view_bids, bids))
            delta_asks = tuple(diff_levels(self.view_asks, asks))
        else:
            delta_bids = delta_asks = ()
        if delta_bids or delta_asks or not self.track_deltas:
            self.u50 += 1
        self.u_full += 1
        self.view_bids, self.view_asks = bids, asks
        top = (book.best("bid"), book.best("ask"))
        top_changed = top != self.top
        if top_changed:
            self.u1 += 1
            self.top = top
        step = Step(
            index=index,
            symbol=self.spec.symbol,
            spec=self.spec,
            ts_ns=now,
            seq=seq,
            trades=tuple(trades),
            first_update_id=first,
            last_update_id=last,
            bid_changes=tuple(bid_changes),
            ask_changes=tuple(ask_changes),
            bids=bids,
            asks=asks,
            top_changed=top_changed,
            u1=self.u1,
            delta_bids=delta_bids,
            delta_asks=delta_asks,
            u50=self.u50,
            u_full=self.u_full,
            stats=self._stats(trades),
            bar=self._bar(now, trades),
        )
        self.latest = step
        return step

    def _stats(self, trades: list[SimTrade]) -> tuple[int, int, int, int, int]:
        """Running session statistics (the sim's stand-in for 24 h tickers)."""
        last, high, low, volume, notional = self.stats
        for t in trades:
            last = t.price
            high = max(high, t.price)
            low = min(low, t.price)
            volume += t.qty
            notional += t.price * t.qty
        self.stats = (last, high, low, volume, notional)
        return self.stats

    def _bar(self, now: int, trades: list[SimTrade]) -> SimBar | None:
        minute = now // MINUTE_NS
        closed: SimBar | None = None
        bar = self.bar
        if minute != bar.minute:
            closed = SimBar(
                bar.minute * MINUTE_NS,
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                bar.count,
                bar.notional,
            )
            self.bar = bar = _Bar(minute, bar.close, bar.close, bar.close, bar.close)
        if trades:
            for t in trades:
                bar.high = max(bar.high, t.price)
                bar.low = min(bar.low, t.price)
                bar.close = t.price
                bar.volume += t.qty
                bar.count += 1
                bar.notional += t.price * t.qty
        elif bar.count == 0:
            # No trades yet this minute: the bar follows the mid (crypto rule, v=0).
            bar.high = max(bar.high, self.mid)
            bar.low = min(bar.low, self.mid)
            bar.close = self.mid
        return closed


class Market:
    """All symbols of one simulated venue plus the ring of recent steps."""

    def __init__(self, options: SimOptions, *, track_deltas: bool = True) -> None:
        self.options = options
        self.track_deltas = track_deltas
        self.rng = random.Random(options.seed)
        self.clock = SimClock()
        self.symbols: dict[str, SymbolState] = {}
        self.steps: collections.deque[Step] = collections.deque(maxlen=max(1, options.backlog))
        self.base = 0  # index of steps[0]
        self.seq = self.rng.randint(10**9, 10**10)
        self._listeners: dict[Callable[[], None], Callable[[], Iterable[str]]] = {}
        for symbol in options.symbols:
            self.ensure(symbol)

    @property
    def head(self) -> int:
        """Index the next step will get."""
        return self.base + len(self.steps)

    def ensure(self, symbol: str) -> SymbolState:
        """The state of a symbol, created on first use."""
        state = self.symbols.get(symbol)
        if state is None:
            state = SymbolState(spec_for(symbol), self.rng, self.clock, self.seq)
            state.track_deltas = self.track_deltas
            state.view_depth = VIEW_DEPTH if self.track_deltas else SHORT_VIEW_DEPTH
            self.symbols[symbol] = state
        return state

    def latest(self, symbol: str) -> Step:
        """The newest step of a symbol (a synthetic one before its first step)."""
        return self.ensure(symbol).latest

    def get(self, index: int) -> Step | None:
        """Step ``index`` if it is still in the ring."""
        pos = index - self.base
        if 0 <= pos < len(self.steps):
            return self.steps[pos]
        return None

    def add_listener(
        self, wake: Callable[[], None], interest: Callable[[], Iterable[str]] = tuple
    ) -> None:
        """Call ``wake`` after every new batch of steps.

        ``interest`` returns the symbols that listener reads: the ticker only
        moves symbols somebody reads, the others rest (their books stay valid).
        """
        self._listeners[wake] = interest

    def remove_listener(self, wake: Callable[[], None]) -> None:
        """Stop calling ``wake``."""
        self._listeners.pop(wake, None)

    def wanted(self) -> set[str]:
        """Symbols some listener reads now."""
        out: set[str] = set()
        for interest in self._listeners.values():
            out.update(interest())
        return out

    def advance(self, symbols: Iterable[str] | None = None) -> None:
        """Make one step for each symbol (default: every known symbol)."""
        now = self.clock.now_ns()
        names = list(self.symbols) if symbols is None else list(symbols)
        for name in names:
            if len(self.steps) == self.steps.maxlen:
                self.base += 1
            self.seq += 1
            step = self.ensure(name).step(self.head, self.seq, now, self.options.trades_per_frame)
            self.steps.append(step)
        for wake in list(self._listeners):
            wake()

    async def run(self) -> None:
        """Make steps at ``options.rate`` per symbol per second, forever.

        With rate 0 it only sleeps: connections then advance the market
        themselves, as fast as their clients read.
        """
        if self.options.rate <= 0:
            await trio.sleep_forever()
        interval = max(1.0 / self.options.rate, MIN_TICK)
        per_tick = self.options.rate * interval
        owed = 0.0
        deadline = trio.current_time()
        while True:
            deadline += interval
            now = trio.current_time()
            if deadline < now - 1.0:
                deadline = now  # fell far behind: don't burst a whole backlog
            await trio.sleep_until(deadline)
            owed += per_tick
            n = int(owed + 1e-9)
            owed -= n
            wanted = self.wanted() if self._listeners else None
            if wanted:  # symbols nobody reads rest
                names = [name for name in self.symbols if name in wanted]
                for _ in range(n):
                    self.advance(names)


def fmt_fixed(value: int, decimals: int, width: int) -> str:
    """Integer ``value`` scaled by ``10**-decimals`` with exactly ``width`` decimals."""
    text = str(value) if decimals == 0 else _scaled(value, decimals)
    whole, _, frac = text.partition(".")
    if width == 0:
        return whole
    return f"{whole}.{(frac + '0' * width)[:width]}"


def _scaled(value: int, decimals: int) -> str:
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


def fmt_min(value: int, decimals: int) -> str:
    """Integer ``value`` scaled by ``10**-decimals``, trailing zeros dropped (Bybit style)."""
    if decimals == 0:
        return str(value)
    return _scaled(value, decimals).rstrip("0").rstrip(".")


def to_number(value: int, decimals: int) -> int | float:
    """JSON number for a scaled integer: an int when whole (``41853``), else a float."""
    whole, frac = divmod(value, POW10[decimals])
    if frac == 0:
        return whole
    return value / POW10[decimals]


def rfc3339(ts_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as Alpaca sends (``...T03:37:41.123456789Z``)."""
    secs, ns = divmod(ts_ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"


def rfc3339_seconds(ts_ns: int) -> str:
    """RFC 3339 UTC without fraction (bar start times)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ns // NS))
