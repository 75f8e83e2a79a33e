"""Rule-based long/short signals with a per-symbol cooldown.

A symbol signals **long** when all three hold::

    return_10s >= return_threshold
    volume_60s >= min_volume
    spread_bps <= max_spread_bps      (a quote is required)

and **short** when ``return_10s <= -return_threshold`` with the same volume and
spread conditions. After a signal the symbol is silent for ``cooldown``
seconds of event time (either side), so a trend produces one signal, not one
per trade. Each signal carries the feature values that triggered it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from .state import NS

if TYPE_CHECKING:
    from .config import SignalsConfig
    from .features import Features

Side = Literal["long", "short"]


@attrs.frozen
class Signal:
    """One long or short signal, with the features and thresholds behind it."""

    symbol: str
    side: Side
    ts: int
    features: dict[str, float | None]
    thresholds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, as published on ``senpai.signals.{symbol}``."""
        return {
            "symbol": self.symbol,
            "side": self.side,
            "ts": self.ts,
            "features": dict(self.features),
            "thresholds": dict(self.thresholds),
        }


class SignalEngine:
    """Evaluates the rules on each feature update and enforces the cooldown.

    Args:
        config: thresholds and cooldown.
    """

    def __init__(self, config: SignalsConfig) -> None:
        self.config = config
        self._cooldown_ns = int(config.cooldown * NS)
        self._last: dict[str, int] = {}
        self.suppressed = 0  # conditions held but the symbol was cooling down

    def evaluate(self, features: Features) -> Signal | None:
        """The signal these features trigger, or None."""
        cfg = self.config
        if not cfg.enabled:
            return None
        ret = features.return_10s
        spread = features.spread_bps
        if ret is None or spread is None:
            return None
        if features.volume_60s < cfg.min_volume or spread > cfg.max_spread_bps:
            return None
        side: Side
        if ret >= cfg.return_threshold:
            side = "long"
        elif ret <= -cfg.return_threshold:
            side = "short"
        else:
            return None
        last = self._last.get(features.symbol)
        if last is not None and features.ts - last < self._cooldown_ns:
            self.suppressed += 1
            return None
        self._last[features.symbol] = features.ts
        return Signal(
            symbol=features.symbol,
            side=side,
            ts=features.ts,
            features={
                "return_10s": ret,
                "volume_60s": features.volume_60s,
                "spread_bps": spread,
                "last_price": features.last_price,
                "mid": features.mid,
            },
            thresholds={
                "return_threshold": cfg.return_threshold,
                "min_volume": cfg.min_volume,
                "max_spread_bps": cfg.max_spread_bps,
            },
        )
