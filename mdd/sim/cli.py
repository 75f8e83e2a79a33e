"""``mdd sim``: run the exchange simulator from the command line until Ctrl-C.

Serves one venue, or all three on consecutive ports, on loopback by default,
prints the URLs to put in a provider config, and applies the fault flags.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from ..errors import MddError
from ..logs import setup_logging
from . import VENUES, Faults, SimOptions, serve_sims

if TYPE_CHECKING:
    from ._server import SimServer

LOGGER = logging.getLogger("mdd.sim.cli")

#: Default first port (venues after the first take the next ports).
DEFAULT_PORT: Final = 9100


def _port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (the OS would wrap a larger one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0..65535, got {value}")
    return value


def _rate(text: str) -> float:
    """argparse type: steps per second, 0 (as fast as possible) or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: max), got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Add the ``sim`` subcommand to ``mdd``'s parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="run the exchange simulator (Binance, Bybit, Alpaca wire protocols on loopback)",
        description="Serve simulated venues over real WebSockets until Ctrl-C. "
        "With --venue all, the venues take ports P, P+1, P+2 (binance, bybit, alpaca).",
    )
    p.add_argument("--venue", choices=[*VENUES, "all"], default="all")
    p.add_argument("--host", default="127.0.0.1", help="interface (default loopback)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help="first port (0: free ports)")
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated symbols")
    p.add_argument("--rate", type=_rate, default=10.0, help="steps/s per symbol (0: max)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--trades-per-frame", type=int, default=1)
    p.add_argument("--max-lifetime", type=float, default=None, help="binance: cut after S s")
    p.add_argument("--ping-interval", type=float, default=20.0, help="binance server pings")
    p.add_argument("--alpaca-key", default="key", help="key the alpaca sim accepts")
    p.add_argument("--alpaca-secret", default="secret", help="secret the alpaca sim accepts")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    r = p.add_argument_group("replay (instead of generated data)")
    r.add_argument(
        "--replay",
        nargs="+",
        metavar="FILE",
        default=None,
        help="serve raw capture files (mdd record) byte for byte",
    )
    r.add_argument("--speed", default="1", help="replay pace: 1 (as captured), 10, or max")
    r.add_argument(
        "--replay-provider",
        default=None,
        metavar="NAME",
        help="whose frames to serve (default: the first provider in the file)",
    )
    f = p.add_argument_group("faults")
    f.add_argument("--drop-after", type=int, default=None, metavar="N")
    f.add_argument("--garbage-every", type=int, default=None, metavar="N")
    f.add_argument("--silent-after", type=float, default=None, metavar="S")
    f.add_argument("--silent-for", type=float, default=None, metavar="S", help="default: forever")
    f.add_argument("--ignore-pings", action="store_true")
    f.add_argument("--reject-subscribe", action="store_true")
    f.add_argument("--subscribe-delay", type=float, default=0.0, metavar="S")
    f.add_argument("--refuse-connections", action="store_true")
    f.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="bybit")
    f.add_argument("--book-skip", type=int, default=0, metavar="N", help="drop N book updates")
    f.add_argument("--book-duplicate", type=int, default=0, metavar="N")
    f.add_argument("--book-reorder", type=int, default=0, metavar="N")
    f.add_argument("--session-linger", type=float, default=0.0, metavar="S", help="alpaca")
    p.set_defaults(func=_cmd_sim)


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """The :class:`SimOptions` the flags describe."""
    faults = Faults(
        drop_after=args.drop_after,
        garbage_every=args.garbage_every,
        ignore_pings=args.ignore_pings,
        reject_subscribe=args.reject_subscribe,
        subscribe_delay=args.subscribe_delay,
        refuse_connections=args.refuse_connections,
        idle_timeout=args.idle_timeout,
        book_skip=args.book_skip,
        book_duplicate=args.book_duplicate,
        book_reorder=args.book_reorder,
        session_linger=args.session_linger,
    )
    return SimOptions(
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        rate=args.rate,
        seed=args.seed,
        trades_per_frame=args.trades_per_frame,
        faults=faults,
        alpaca_key=args.alpaca_key,
        alpaca_secret=args.alpaca_secret,
        max_lifetime=args.max_lifetime,
        ping_interval=args.ping_interval,
    )


def describe(server: SimServer) -> str:
    """One line telling a person what to connect to."""
    if server.venue == "binance":
        hint = "(append /stream?streams=btcusdt@trade or /ws)"
        if server.rest_url:
            hint += f" rest {server.rest_url}"
    elif server.venue == "alpaca":
        base = server.url.rsplit("/v2/", 1)[0]
        hint = f"(crypto: {base}/v1beta3/crypto/us; key/secret as configured)"
    else:
        hint = ""
    return f"{server.venue:8} {server.url} {hint}".rstrip()


async def replay(args: argparse.Namespace, speed: float) -> None:
    """Serve a raw capture (``--replay``) until SIGINT/SIGTERM."""
    from .replay import serve_replay

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve_replay,
                    args.replay,
                    provider=args.replay_provider,
                    speed=speed,
                    host=args.host,
                    port=args.port,
                )
            )
            print(
                f"replay   {server.url} ({len(server.frames)} {server.provider} frames,"
                f" speed {args.speed})",
                flush=True,
            )
            async for signum in signals:
                LOGGER.info("sim.stopping signal=%s", signum)
                nursery.cancel_scope.cancel("signal")
                break


async def run(args: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM."""
    venues = list(VENUES) if args.venue == "all" else [args.venue]
    ports = [0 if args.port == 0 else args.port + i for i in range(len(venues))]
    options = options_from_args(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            servers: dict[str, SimServer] = await nursery.start(
                partial(serve_sims, venues, options, host=args.host, ports=ports)
            )
            for server in servers.values():
                print(describe(server), flush=True)
            if args.silent_after is not None:
                nursery.start_soon(_silence, list(servers.values()), args)
            async for signum in signals:
                LOGGER.info("sim.stopping signal=%s", signum)
                nursery.cancel_scope.cancel("signal")
                break


async def _silence(servers: list[SimServer], args: argparse.Namespace) -> None:
    await trio.sleep(args.silent_after)
    for server in servers:
        if args.silent_for is None:
            server.options.faults.silent = True
        else:
            server.go_silent(args.silent_for)


def _cmd_sim(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "text")
    try:
        if args.replay:
            from .replay import parse_speed

            try:
                speed = parse_speed(args.speed)
            except ValueError as exc:
                print(f"mdd sim: --speed: {exc}", file=sys.stderr)
                return 2
            trio.run(replay, args, speed)
        else:
            trio.run(run, args)
    except MddError as exc:
        print(f"mdd sim: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mdd sim: {exc}", file=sys.stderr)
        return 1
    return 0
