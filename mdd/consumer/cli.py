"""The ``mdd-consumer`` command line.

::

    mdd-consumer --config deploy/senpai.toml     run the consumer
    mdd-consumer check-config deploy/senpai.toml validate: exit 0 valid, 2 invalid
    mdd-consumer --help

Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Final

import trio

from .. import __version__
from ..errors import ConfigError
from ..logs import setup_logging
from ..redact import redact_url
from .config import ConsumerConfig, load_consumer_config

LOGGER = logging.getLogger("mdd.consumer.cli")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``mdd-consumer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mdd-consumer",
        description="mdd-consumer: the SenpAI market-data consumer. Subscribes to md.events.> "
        "on NATS, keeps per-symbol state, computes 11 features and long/short signals, and "
        "publishes them on senpai.features/signals/alerts.",
        epilog="Run `mdd-consumer --config FILE`, or `mdd-consumer check-config FILE`.",
    )
    parser.add_argument("--version", action="version", version=f"mdd-consumer {__version__}")
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML config (deploy/senpai.toml)")
    parser.add_argument("--nats-url", default=None, help="override [nats] url (and NATS_URL)")
    parser.add_argument("--http-port", type=int, default=None, help="override [http] port")
    parser.add_argument("--no-http", action="store_true", help="do not serve HTTP")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="override [consumer] log_level",
    )
    parser.set_defaults(func=_cmd_run)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a config file: exit 0 if valid, 2 if not")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_cmd_check)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.nats_url:
        out["nats.url"] = args.nats_url
    if args.http_port is not None:
        out["http.port"] = args.http_port
    if args.no_http:
        out["http.enabled"] = False
    if args.log_level:
        out["consumer.log_level"] = args.log_level
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_consumer_config(args.file)
    except ConfigError as exc:
        print(f"mdd-consumer: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.file}: valid (nats {redact_url(config.nats.url)} subject {config.nats.subject} "
        f"queue group {config.nats.queue_group or '-'}; http "
        f"{config.http.host}:{config.http.port})"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_consumer_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"mdd-consumer: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.consumer.log_level, config.consumer.log_format)
    return run_consumer(config)


def run_consumer(config: ConsumerConfig) -> int:
    """Run the consumer until SIGTERM/SIGINT; returns the exit code."""
    # imported here: check-config and --help stay free of asyncio machinery
    from .service import ConsumerService

    service = ConsumerService(config, install_signal_handlers=True)
    LOGGER.info(
        "consumer.starting name=%s nats=%s subject=%s",
        config.consumer.name,
        redact_url(config.nats.url),
        config.nats.subject,
    )
    try:
        trio.run(service.run)
    except KeyboardInterrupt:
        return EXIT_OK
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except BaseExceptionGroup as group:
        forced, rest = group.split(SystemExit)
        if forced is not None and rest is None:
            return EXIT_FAILURE  # second signal: forced exit
        LOGGER.error("consumer.failed error=%s", "; ".join(_leaves(group)))
        return EXIT_FAILURE
    except Exception as exc:  # the tree failed: report and exit 1
        LOGGER.error("consumer.failed error=%r", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[str]:
    out: list[str] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mdd-consumer`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
