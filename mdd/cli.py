"""The ``mdd`` command line.

``mdd --config FILE`` runs the daemon; subcommands do the rest. Exit codes:
0 clean stop, 1 runtime failure, 2 usage or configuration error.

Subcommands register themselves through :data:`COMMANDS`: a module with
``add_parser(subparsers)`` that sets ``func`` (returning an exit code) on its
parser. Adding one is one module plus one line here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Final

import trio

from . import __version__
from .config import PROVIDER_KINDS, Config, load_config, read_document
from .errors import ConfigError
from .logs import setup_logging

LOGGER = logging.getLogger("mdd.cli")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
#: Ctrl-C on a foreground command (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED: Final = 130

#: Modules adding subcommands (each has ``add_parser(subparsers)``).
COMMANDS: list[str] = [
    "mdd.sim.cli",  # mdd sim
    "mdd.demo",  # mdd demo
    "mdd.bench",  # mdd bench
    "mdd.capture",  # mdd record
    "mdd.replay",  # mdd replay
    "mdd.chaos",  # mdd chaos (make soak)
]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="override [daemon] log_level",
    )
    p.add_argument(
        "--log-format", choices=["text", "json"], default=None, help="override [daemon] log_format"
    )
    p.add_argument("--state-dir", default=None, help="override [daemon] state_dir")
    p.add_argument("--http-port", type=int, default=None, help="override [http] port")
    p.add_argument("--no-http", action="store_true", help="do not serve HTTP")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.log_level:
        out["daemon.log_level"] = args.log_level
    if args.log_format:
        out["daemon.log_format"] = args.log_format
    if args.state_dir:
        out["daemon.state_dir"] = args.state_dir
    if args.http_port is not None:
        out["http.port"] = args.http_port
    if args.no_http:
        out["http.enabled"] = False
    return out


def build_parser() -> argparse.ArgumentParser:
    """The full ``mdd`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mdd",
        description="mdd: real-time market-data daemon (venue WebSockets -> SQLite, JSONL, "
        "Prometheus, NATS).",
        epilog="Run `mdd --config FILE` for the daemon, or `mdd COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"mdd {__version__}")
    parser.add_argument("--config", "-c", metavar="FILE", help="run the daemon with this TOML file")
    _add_run_options(parser)
    parser.set_defaults(func=_cmd_daemon)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="ad-hoc run without a config file",
        description="Run providers for some symbols with default sinks "
        "(SQLite, JSONL, metrics; NATS when NATS_URL or NATS_ENABLED is set).",
    )
    run.add_argument(
        "--provider",
        required=True,
        help=f"provider(s), comma separated, or 'all' ({', '.join(PROVIDER_KINDS)})",
    )
    run.add_argument(
        "--symbols", required=True, help="comma-separated symbols, e.g. BTCUSDT,ETHUSDT"
    )
    run.add_argument(
        "--channels", default="trade,quote", help="trade,quote,book (default trade,quote)"
    )
    run.add_argument("--url", default=None, help="provider endpoint (e.g. the simulator's)")
    run.add_argument(
        "--rest-url",
        default=None,
        help="Binance REST base for order-book snapshots (with --url at a simulator: "
        "the 'rest' URL mdd sim prints; default the venue's)",
    )
    run.add_argument("--config", "-c", metavar="FILE", help="optional base config")
    _add_run_options(run)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check)

    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"mdd: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sinks = ", ".join(cfg.sinks.enabled()) or "none"
    print(
        f"{args.file}: OK ({len(cfg.feeds)} feeds, providers: {', '.join(cfg.providers) or 'none'},"
        f" sinks: {sinks})"
    )
    return EXIT_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    if not args.config:
        build_parser().print_help(sys.stderr)
        print("\nmdd: error: give --config FILE, or a command", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"mdd: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(cfg)


def adhoc_document(
    providers: list[str],
    symbols: list[str],
    channels: list[str],
    url: str | None,
    rest_url: str | None = None,
) -> dict[str, Any]:
    """The config document ``mdd run`` builds: one feed per provider, default sinks."""
    endpoints: dict[str, str] = {}
    if url:
        endpoints["url"] = url
    if rest_url:
        endpoints["rest_url"] = rest_url
    doc: dict[str, Any] = {
        "providers": {p: dict(endpoints) for p in providers},
        "feeds": [
            {"name": p, "symbols": symbols, "providers": [p], "channels": channels}
            for p in providers
        ],
        "sinks": {"sqlite": {}, "jsonl": {}, "log": {}},
    }
    return doc


def run_config(args: argparse.Namespace) -> Config:
    """The configuration ``mdd run`` runs: one feed per provider, plus ``--config`` if given.

    Raises:
        ConfigError: bad arguments or a bad base config file.
    """
    names = [p.strip() for p in args.provider.split(",") if p.strip()]
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    file_doc = read_document(args.config) if args.config else {}
    configured = file_doc.get("providers", {})
    if names == ["all"]:
        # Every provider the config file defines, else every venue mdd knows.
        names = list(configured) or [k for k in PROVIDER_KINDS if k != "sim"]
    base = adhoc_document(names, symbols, channels, args.url, args.rest_url)
    if args.config:
        providers = dict(configured)
        for name in names:
            if name not in providers or args.url or args.rest_url:
                providers[name] = {**providers.get(name, {}), **base["providers"][name]}
        base = {
            **file_doc,
            "providers": providers,
            "feeds": base["feeds"],
            "sinks": file_doc.get("sinks", base["sinks"]),
        }
    return load_config(None, base=base, overrides=_overrides(args))


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = run_config(args)
    except ConfigError as exc:
        print(f"mdd: invalid arguments: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(cfg)


def run_daemon(cfg: Config) -> int:
    """Run the daemon in-process until it stops; returns the exit code."""
    from .daemon import Daemon

    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    daemon = Daemon(cfg)
    for hook in DAEMON_HOOKS:
        hook(daemon)
    try:
        trio.run(daemon.run)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        refused = _startup_refusals(exc)
        if refused:
            # A service refused to start (live control socket, HTTP port in use):
            # one clear line each, no traceback.
            for error in refused:
                LOGGER.error("daemon.refused error=%r", str(error))
                print(f"mdd: {error}", file=sys.stderr)
            return EXIT_FAILURE
        LOGGER.exception("daemon.failed")
        return EXIT_FAILURE
    return EXIT_OK


def _startup_refusals(exc: BaseException) -> list[BaseException]:
    """The errors inside ``exc`` when every one is an :class:`MddError` or an
    ``OSError`` (a port in use, a missing file), else [] (a bug: keep the trace)."""
    from .errors import MddError

    if isinstance(exc, BaseExceptionGroup):
        leaves = [leaf for sub in exc.exceptions for leaf in _startup_refusals(sub)]
        return leaves if len(leaves) == _count_leaves(exc) else []
    return [exc] if isinstance(exc, (MddError, OSError)) else []


def _count_leaves(exc: BaseException) -> int:
    if isinstance(exc, BaseExceptionGroup):
        return sum(_count_leaves(sub) for sub in exc.exceptions)
    return 1


#: Callables that add services to a new daemon before it runs (HTTP, control socket, ...).
DAEMON_HOOKS: list[Any] = []


def _install_operations(daemon: Any) -> None:
    """HTTP API, control socket, sd_notify (see :mod:`mdd.services`)."""
    from .services import install

    install(daemon)


DAEMON_HOOKS.append(_install_operations)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mdd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        # Ctrl-C on a foreground command (replay, bench, sim): stop quietly.
        print("mdd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        refused = _startup_refusals(exc)
        if not refused:
            raise
        # An expected failure (bad capture file, port in use, another mdd
        # running): one line each, no traceback.
        for error in refused:
            print(f"mdd: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
