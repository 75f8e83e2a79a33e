"""``mdd.sim``: a loopback exchange simulator speaking each venue's wire protocol.

Binance spot streams, Bybit V5 public spot and Alpaca market data v2 over real
WebSockets (trio-websocket) on 127.0.0.1, with generated market data and live
fault injection. Providers are tested against it; ``mdd demo`` and ``mdd sim``
run it for people::

    server = await nursery.start(partial(serve_sim, "binance", SimOptions(rate=50)))
    server.url                      # "ws://127.0.0.1:PORT"
    server.options.faults.drop_after = 5
    server.go_silent(10.0)
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from . import _alpaca, _binance, _bybit
from ._binance import depth_snapshot as binance_depth_snapshot
from ._options import Faults as Faults
from ._options import SimOptions as SimOptions
from ._server import Router
from ._server import SimServer as SimServer
from ._server import serve as _serve

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: Venue name -> (router, URL builder).
_VENUES: dict[str, tuple[Router, Callable[[str, int], str]]] = {
    "binance": (_binance.route, _binance.url_for),
    "bybit": (_bybit.route, _bybit.url_for),
    "alpaca": (_alpaca.route, _alpaca.url_for),
}
#: Venues the simulator speaks.
VENUES: Final = ("binance", "bybit", "alpaca")


def _venue(name: str) -> tuple[Router, Callable[[str, int], str]]:
    try:
        return _VENUES[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}; choose from {', '.join(VENUES)}") from None


async def serve_sim(
    venue: str,
    options: SimOptions | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[SimServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve one simulated venue until cancelled.

    Args:
        venue: ``binance``, ``bybit`` or ``alpaca``.
        options: What to serve; ``options.faults`` stays live.
        host: Interface to bind (loopback by default).
        port: TCP port, 0 for a free one.
        task_status: Receives the :class:`SimServer` once it accepts connections.

    Raises:
        ValueError: Unknown venue, or ``options.replay`` set (recorded captures
            are served by :func:`mdd.sim.replay.serve_replay` instead).
    """
    router, url_for = _venue(venue)
    if options is not None and options.replay is not None:
        raise ValueError("SimOptions.replay: use mdd.sim.replay.serve_replay for captures")
    await _serve(
        venue,
        router,
        url_for,
        options or SimOptions(),
        host,
        port,
        task_status,
    )


async def serve_sims(
    venues: Sequence[str],
    options: SimOptions | None = None,
    *,
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    task_status: trio.TaskStatus[dict[str, SimServer]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve several venues at once; ``task_status`` receives ``{venue: SimServer}``.

    Each venue gets its own market (and its own copy of ``options`` unless
    given the same object; faults are then shared). ``ports`` pairs with
    ``venues`` (default: free ports).
    """
    ports = list(ports) if ports is not None else [0] * len(venues)
    if len(ports) != len(venues):
        raise ValueError("ports must pair with venues")
    for v in venues:
        _venue(v)
    servers: dict[str, SimServer] = {}
    async with trio.open_nursery() as nursery:
        for v, p in zip(venues, ports, strict=True):
            servers[v] = await nursery.start(
                partial(serve_sim, v, options or SimOptions(), host=host, port=p)
            )
        task_status.started(servers)
        await trio.sleep_forever()
    raise AssertionError("unreachable")


__all__ = [
    "VENUES",
    "Faults",
    "SimOptions",
    "SimServer",
    "binance_depth_snapshot",
    "serve_sim",
    "serve_sims",
]
