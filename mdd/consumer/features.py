"""The feature engine: 11 features per symbol from its latest quote, trade and windows.

Every feature is O(1) to compute from :class:`~mdd.consumer.state.SymbolState`
(the windows keep running sums). A feature with no data yet is None (JSON
``null``): no quote means no mid/spread, no trades in the window means no vwap.

=====================  ============================================================
feature                formula
=====================  ============================================================
mid                    (bid + ask) / 2 of the last quote
spread                 ask - bid
spread_bps             spread / mid * 10 000
last_price             price of the last trade
vwap_60s               sum(price * qty) / sum(qty) over the window
return_10s             last_price / first price of the short window - 1
return_60s             last_price / first price of the window - 1
volatility_60s         population std of log returns between consecutive trades
                       in the window: sqrt(sum(r^2)/n - (sum(r)/n)^2)
volume_60s             sum(qty) over the window
trade_imbalance_60s    (buy volume - sell volume) / volume over the window
latency_ms             (consumer receive time - event time) / 1e6 of the last event
=====================  ============================================================

The names keep the seed system's ``_10s`` / ``_60s`` suffixes whatever the
configured window lengths are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    from .state import SymbolState

#: Feature names in output order.
FEATURE_NAMES: Final = (
    "mid",
    "spread",
    "spread_bps",
    "last_price",
    "vwap_60s",
    "return_10s",
    "return_60s",
    "volatility_60s",
    "volume_60s",
    "trade_imbalance_60s",
    "latency_ms",
)


@attrs.frozen(slots=True)
class Features:
    """One symbol's features at one moment (``ts`` = event time, ns)."""

    symbol: str
    ts: int
    mid: float | None
    spread: float | None
    spread_bps: float | None
    last_price: float | None
    vwap_60s: float | None
    return_10s: float | None
    return_60s: float | None
    volatility_60s: float | None
    volume_60s: float
    trade_imbalance_60s: float | None
    latency_ms: float | None
    trades_60s: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, as published and served."""
        return {
            "symbol": self.symbol,
            "ts": self.ts,
            "mid": self.mid,
            "spread": self.spread,
            "spread_bps": self.spread_bps,
            "last_price": self.last_price,
            "vwap_60s": self.vwap_60s,
            "return_10s": self.return_10s,
            "return_60s": self.return_60s,
            "volatility_60s": self.volatility_60s,
            "volume_60s": self.volume_60s,
            "trade_imbalance_60s": self.trade_imbalance_60s,
            "latency_ms": self.latency_ms,
            "trades_60s": self.trades_60s,
        }


def _ret(last: float | None, first: float | None) -> float | None:
    if last is None or first is None or first <= 0:
        return None
    return last / first - 1.0


def compute_features(st: SymbolState) -> Features:
    """The 11 features of one symbol from its current state."""
    mid = spread = spread_bps = None
    quote = st.last_quote
    if quote is not None and quote.bid_px > 0 and quote.ask_px > 0:
        mid = (quote.bid_px + quote.ask_px) / 2.0
        spread = quote.ask_px - quote.bid_px
        spread_bps = spread / mid * 10_000.0
    w = st.window
    last_price = st.last_trade.price if st.last_trade is not None else None
    volume = w.volume if len(w) else 0.0
    vwap = w.notional / w.volume if len(w) and w.volume > 0 else None
    imbalance = (w.buy_volume - w.sell_volume) / w.volume if len(w) and w.volume > 0 else None
    vol: float | None = None
    if w.lr_count > 0:
        mean = w.lr_sum / w.lr_count
        var = w.lr_sq_sum / w.lr_count - mean * mean
        vol = math.sqrt(var) if var > 0 else 0.0
    window_last = w.last_price
    latency = st.last_latency_ns / 1e6 if st.last_latency_ns is not None else None
    return Features(
        symbol=st.symbol,
        ts=st.last_event_ts,
        mid=mid,
        spread=spread,
        spread_bps=spread_bps,
        last_price=last_price,
        vwap_60s=vwap,
        return_10s=_ret(window_last, st.short.first_price),
        return_60s=_ret(window_last, w.first_price),
        volatility_60s=vol,
        volume_60s=volume,
        trade_imbalance_60s=imbalance,
        latency_ms=latency,
        trades_60s=len(w),
    )
