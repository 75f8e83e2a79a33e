"""Operational alerts: stale feed, latency above threshold, spread blow-out.

Alerts are edge-triggered per symbol and kind: an alert fires when its
condition starts to hold and re-arms once the condition clears, so a symbol
that stays stale for an hour raises one ``stale`` alert, not thousands.

* ``stale``: no trade, quote or book event for ``stale_after`` seconds of
  consumer (trio) time; checked periodically by :meth:`AlertEngine.check_stale`.
* ``latency``: the last event's ``latency_ms`` is above ``latency_ms``.
* ``spread``: ``spread_bps`` is above ``spread_bps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .config import AlertsConfig
    from .features import Features
    from .state import SymbolState

AlertKind = Literal["stale", "latency", "spread"]
ALERT_KINDS: Final = ("stale", "latency", "spread")


@attrs.frozen
class Alert:
    """One alert: what, for which symbol, the observed value and the threshold."""

    kind: AlertKind
    symbol: str
    value: float
    threshold: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, as published on ``senpai.alerts.{kind}``."""
        return {
            "kind": self.kind,
            "symbol": self.symbol,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


class AlertEngine:
    """Edge-triggered alert state per (symbol, kind).

    Args:
        config: the thresholds.
    """

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.active: set[tuple[str, AlertKind]] = set()

    def _edge(self, symbol: str, kind: AlertKind, on: bool) -> bool:
        key = (symbol, kind)
        if on:
            if key in self.active:
                return False
            self.active.add(key)
            return True
        self.active.discard(key)
        return False

    def on_features(self, features: Features) -> list[Alert]:
        """Alerts raised by a feature update (latency, spread); also clears ``stale``."""
        cfg = self.config
        out: list[Alert] = []
        sym = features.symbol
        self.active.discard((sym, "stale"))
        lat = features.latency_ms
        if self._edge(sym, "latency", lat is not None and lat > cfg.latency_ms):
            assert lat is not None
            out.append(
                Alert(
                    "latency",
                    sym,
                    lat,
                    cfg.latency_ms,
                    f"{sym}: latency {lat:.1f} ms above {cfg.latency_ms:g} ms",
                )
            )
        spread = features.spread_bps
        if self._edge(sym, "spread", spread is not None and spread > cfg.spread_bps):
            assert spread is not None
            out.append(
                Alert(
                    "spread",
                    sym,
                    spread,
                    cfg.spread_bps,
                    f"{sym}: spread {spread:.2f} bps above {cfg.spread_bps:g} bps",
                )
            )
        return out

    def check_stale(self, states: Iterable[SymbolState], now: float) -> list[Alert]:
        """``stale`` alerts for symbols silent for ``stale_after`` seconds at trio time ``now``."""
        limit = self.config.stale_after
        out: list[Alert] = []
        for st in states:
            silent = now - st.last_seen
            if self._edge(st.symbol, "stale", silent >= limit):
                out.append(
                    Alert(
                        "stale",
                        st.symbol,
                        silent,
                        limit,
                        f"{st.symbol}: no events for {silent:.1f} s (limit {limit:g} s)",
                    )
                )
        return out

    def is_stale(self, symbol: str) -> bool:
        """True while a ``stale`` alert is active for ``symbol``."""
        return (symbol, "stale") in self.active
