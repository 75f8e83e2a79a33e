"""The ``sim`` provider: synthetic trades and quotes generated in-process.

No network at all: it lets the whole pipeline (bus, sinks, supervision) run
before, or without, any venue. Prices follow a random walk on a 0.01 tick;
``rate`` is events per second per symbol, ``seed`` makes the stream repeatable.
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ..config import normalize_symbol
from ..errors import ProviderError
from ..events import QuoteEvent, TradeEvent, now_ns

if TYPE_CHECKING:
    from ..config import ProviderConfig
    from ..health import ProviderHealth
    from .base import Outlet

#: Price tick of the generated walk, and the start price per symbol.
TICK: Final = 0.01
START_PRICE: Final = 100.0
#: Ticks per generated batch: events are produced in small bursts, not one per sleep.
BATCHES_PER_SECOND: Final = 20


@attrs.define
class SimFaults:
    """Live fault switches of the sim providers of one name, for failover tests.

    Attributes:
        silent: Stay connected and subscribed but generate nothing (a stale feed).
        crash: Raise :class:`SimCrash` at once, and on every restart while set.
    """

    silent: bool = False
    crash: bool = False


class SimCrash(ProviderError):
    """The injected crash of a sim provider (``SimFaults.crash``)."""


#: Provider name -> its fault switches, read live by every run of that name.
FAULTS: dict[str, SimFaults] = {}


def sim_faults(name: str) -> SimFaults:
    """The fault switches of the sim provider called ``name`` (created on first use)."""
    return FAULTS.setdefault(name, SimFaults())


def reset_sim_faults() -> None:
    """Clear every fault switch (tests call this in teardown)."""
    FAULTS.clear()


class SimProvider:
    """Synthetic market data for any symbols, at ``rate`` events/s per symbol."""

    kind = "sim"

    def __init__(
        self,
        config: ProviderConfig,
        symbols: tuple[str, ...],
        channels: tuple[str, ...],
        health: ProviderHealth,
    ) -> None:
        self.name = config.name
        self.config = config
        self.symbols = symbols
        self.channels = channels
        self.health = health
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._px = {s: START_PRICE * (1 + i) for i, s in enumerate(symbols)}
        self._event_symbol = {s: normalize_symbol(s) for s in symbols}

    def _tick(self, symbol: str) -> list[TradeEvent | QuoteEvent]:
        rng = self._rng
        px = max(TICK, round(self._px[symbol] + rng.choice((-1, 0, 1)) * TICK, 2))
        self._px[symbol] = px
        ts = now_ns()
        out: list[TradeEvent | QuoteEvent] = []
        if "trade" in self.channels:
            out.append(
                TradeEvent(
                    provider=self.name,
                    symbol=self._event_symbol[symbol],
                    ts_exchange=ts,
                    ts_recv=ts,
                    price=px,
                    qty=round(rng.uniform(0.001, 2.0), 3),
                    side=rng.choice(("buy", "sell")),
                    trade_id=str(next(self._ids)),
                )
            )
        if "quote" in self.channels:
            out.append(
                QuoteEvent(
                    provider=self.name,
                    symbol=self._event_symbol[symbol],
                    ts_exchange=ts,
                    ts_recv=ts,
                    bid_px=round(px - TICK, 2),
                    bid_qty=round(rng.uniform(0.1, 5.0), 3),
                    ask_px=round(px + TICK, 2),
                    ask_qty=round(rng.uniform(0.1, 5.0), 3),
                )
            )
        return out

    async def run(
        self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Generate events until cancelled (or :class:`SimCrash` while ``crash`` is set)."""
        if (fault := FAULTS.get(self.name)) is not None and fault.crash:
            raise SimCrash(f"{self.name}: injected crash")
        self.health.connected = True
        self.health.subscribed = True
        interval = 1.0 / BATCHES_PER_SECOND
        per_batch = self.config.rate / BATCHES_PER_SECOND
        owed = 0.0
        started = False
        try:
            while True:
                if (fault := FAULTS.get(self.name)) is not None and (fault.silent or fault.crash):
                    if fault.crash:
                        raise SimCrash(f"{self.name}: injected crash")
                    owed = 0.0
                    await trio.sleep(interval)
                    continue
                owed += per_batch
                while owed >= 1.0:
                    owed -= 1.0
                    for symbol in self.symbols:
                        events = self._tick(symbol)
                        self.health.mark_data(len(events))
                        for event in events:
                            outlet.publish(event)
                if not started and self.health.last_data is not None:
                    started = True
                    task_status.started()
                if outlet.congested:
                    await outlet.wait_for_room()
                await trio.sleep(interval)
        finally:
            self.health.connected = False
            self.health.subscribed = False
