"""Venue providers and their registry.

Adding a provider is one module with a class following
:class:`~mdd.providers.base.Provider` plus one line in :data:`PROVIDERS`
(and its config keys in :data:`mdd.config.PROVIDER_KINDS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .alpaca import AlpacaProvider as AlpacaProvider
from .base import Outlet as Outlet
from .binance import BinanceProvider as BinanceProvider
from .bybit import BybitProvider as BybitProvider
from .sim import SimProvider as SimProvider

if TYPE_CHECKING:
    from ..config import ProviderConfig
    from ..health import ProviderHealth
    from .base import Provider as Provider
    from .base import ProviderFactory as ProviderFactory

#: Provider kind -> class. One line per venue.
PROVIDERS: dict[str, ProviderFactory] = {
    "sim": SimProvider,
    "binance": BinanceProvider,
    "bybit": BybitProvider,
    "alpaca": AlpacaProvider,
}


def create_provider(
    config: ProviderConfig,
    symbols: tuple[str, ...],
    channels: tuple[str, ...],
    health: ProviderHealth,
) -> Provider:
    """Build the provider of ``config.kind`` for one feed."""
    try:
        factory = PROVIDERS[config.kind]
    except KeyError:
        raise KeyError(f"provider kind {config.kind!r} is not implemented") from None
    return factory(config, symbols, channels, health)
