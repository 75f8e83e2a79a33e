"""The simulator's true order book, one per symbol.

Prices are integer ticks and sizes integer size units (the symbol's
:class:`~mdd.sim._market.SymbolSpec` says how many decimals each has), so the
book is exact and cheap. Every level change takes one update id; a batch of
changes applied together is one venue event with first id ``U`` and last id
``u``, so consecutive batches chain as ``U == previous u + 1`` (Binance's
depth rule). A REST depth endpoint can serve :meth:`SimBook.snapshot`, whose
``last_update_id`` lines up with the streamed ``U``/``u``.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: A level as (price in ticks, size in units); size 0 in a change deletes.
Level = tuple[int, int]
Side = Literal["bid", "ask"]


class SimBook:
    """Sorted price levels of both sides plus the venue's update id."""

    def __init__(self, last_update_id: int = 0) -> None:
        self._bid_px: list[int] = []  # ascending; best bid is the last
        self._ask_px: list[int] = []  # ascending; best ask is the first
        self._bid_qty: dict[int, int] = {}
        self._ask_qty: dict[int, int] = {}
        self.last_update_id = last_update_id
        self._pending_bids: dict[int, int] = {}
        self._pending_asks: dict[int, int] = {}

    def _set(self, px: list[int], qty: dict[int, int], price: int, size: int) -> None:
        if size <= 0:
            if qty.pop(price, None) is not None:
                del px[bisect.bisect_left(px, price)]
        else:
            if price not in qty:
                bisect.insort(px, price)
            qty[price] = size

    def stage(self, side: Side, price: int, size: int) -> None:
        """Change one level now (size 0 deletes) and remember it for :meth:`commit`."""
        if side == "bid":
            self._set(self._bid_px, self._bid_qty, price, size)
            self._pending_bids[price] = max(size, 0)
        else:
            self._set(self._ask_px, self._ask_qty, price, size)
            self._pending_asks[price] = max(size, 0)

    def commit(self) -> tuple[int, int, list[Level], list[Level]]:
        """Close the staged changes into one event: ``(U, u, bid_changes, ask_changes)``.

        Every changed level takes one update id (the last size of a level
        changed twice wins). An empty event still takes one id, so ``U <= u``.
        """
        bids = list(self._pending_bids.items())
        asks = list(self._pending_asks.items())
        self._pending_bids.clear()
        self._pending_asks.clear()
        first = self.last_update_id + 1
        self.last_update_id += max(len(bids) + len(asks), 1)
        return first, self.last_update_id, bids, asks

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> tuple[int, int]:
        """Apply changes (size 0 deletes) as one event; returns its ``(U, u)``."""
        for price, size in bids:
            self.stage("bid", price, size)
        for price, size in asks:
            self.stage("ask", price, size)
        first, last, _, _ = self.commit()
        return first, last

    def top(self, side: Side, n: int) -> list[Level]:
        """The best ``n`` levels of a side, best first."""
        if side == "bid":
            prices = self._bid_px[: -n - 1 : -1] if n else []
            return [(p, self._bid_qty[p]) for p in prices]
        return [(p, self._ask_qty[p]) for p in self._ask_px[:n]]

    def best(self, side: Side) -> Level | None:
        """The best level of a side, or None when the side is empty."""
        if side == "bid":
            return (self._bid_px[-1], self._bid_qty[self._bid_px[-1]]) if self._bid_px else None
        return (self._ask_px[0], self._ask_qty[self._ask_px[0]]) if self._ask_px else None

    def price_at(self, side: Side, rank: int) -> int:
        """Price of the level ``rank`` places from the best (0 = best)."""
        return self._bid_px[-1 - rank] if side == "bid" else self._ask_px[rank]

    def size(self, side: Side, price: int) -> int:
        """Size at a price (0 when there is no level)."""
        return (self._bid_qty if side == "bid" else self._ask_qty).get(price, 0)

    def depth(self, side: Side) -> int:
        """Number of levels on a side."""
        return len(self._bid_px if side == "bid" else self._ask_px)

    def worst(self, side: Side) -> int | None:
        """Price of the deepest level of a side."""
        px = self._bid_px if side == "bid" else self._ask_px
        if not px:
            return None
        return px[0] if side == "bid" else px[-1]

    def levels(self, side: Side) -> list[Level]:
        """Every level of a side, best first."""
        return self.top(side, self.depth(side))

    def snapshot(self, limit: int) -> tuple[int, list[Level], list[Level]]:
        """``(last_update_id, bids, asks)`` with at most ``limit`` levels a side."""
        return self.last_update_id, self.top("bid", limit), self.top("ask", limit)


def diff_levels(old: Sequence[Level], new: Sequence[Level]) -> list[Level]:
    """Changes turning view ``old`` into ``new`` (size 0 for removed levels)."""
    before = dict(old)
    after = dict(new)
    out = [(p, q) for p, q in new if before.get(p) != q]
    out.extend((p, 0) for p, _ in old if p not in after)
    return out
