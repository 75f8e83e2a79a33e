"""``mdd-ctl``: talk to a running daemon over its control socket.

::

    mdd-ctl status [--json]          uptime, feeds, providers, bus, sinks, events/s
    mdd-ctl providers [--json]       every provider: role, state, counters, last message age
    mdd-ctl failover FEED PROVIDER   make PROVIDER the active provider of FEED
    mdd-ctl reconnect PROVIDER       drop and reopen PROVIDER's connection
    mdd-ctl stop                     graceful shutdown

The socket is ``--socket PATH``, else ``[daemon] state_dir`` + ``control_socket``
of ``--config FILE``, else the defaults (``./mdd.sock``, with ``MDD_DAEMON__*``
environment overrides applied). The protocol is in :mod:`mdd.control`.

Exit codes: 0 done, 1 no daemon or the daemon refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any, Final

import orjson

from .config import load_config
from .errors import ConfigError, ControlError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

#: Seconds to wait for the daemon's reply.
DEFAULT_TIMEOUT: Final = 5.0
#: Longest reply accepted, bytes.
MAX_REPLY: Final = 16 * 1024 * 1024


class DaemonUnreachable(ControlError):
    """No daemon answers on the control socket (one clear line for the user)."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"no mdd daemon at {path}: {why}")


def _seconds(text: str) -> float:
    """argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def request(path: str | Path, payload: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Send one request and return the daemon's ``result``.

    Raises:
        DaemonUnreachable: nothing listens at ``path`` (or it timed out).
        ControlError: the daemon replied ``{"ok": false, "error": ...}``.
    """
    target = str(path)
    where = target if os.path.isabs(target) or target.startswith(".") else f"./{target}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except FileNotFoundError:
            raise DaemonUnreachable(where, "socket not found (is mdd running?)") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(where, "connection refused (stale socket?)") from None
        except PermissionError:
            raise DaemonUnreachable(where, "permission denied (run as the daemon's user)") from None
        except OSError as exc:
            raise DaemonUnreachable(where, exc.strerror or str(exc)) from None
        try:
            sock.sendall(orjson.dumps(payload) + b"\n")
            buffer = bytearray()
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnreachable(where, "the daemon closed the connection")
                buffer += chunk
                if len(buffer) > MAX_REPLY:
                    raise ControlError(f"reply from {where} is too large")
        except TimeoutError:
            raise DaemonUnreachable(where, f"no reply within {timeout:g}s") from None
        except OSError as exc:
            raise DaemonUnreachable(where, exc.strerror or str(exc)) from None
    try:
        reply = orjson.loads(bytes(buffer[: buffer.index(b"\n")]))
    except orjson.JSONDecodeError:
        raise ControlError(f"unreadable reply from {where}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"unreadable reply from {where}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")


def default_socket(config_file: str | None) -> Path:
    """The control socket path from a config file, or from the defaults.

    Raises:
        ConfigError: the config file is invalid.
    """
    config = load_config(config_file)
    return config.resolve_path(config.daemon.control_socket)


# -- formatting -------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


def _age(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}s"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [headers, *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def format_status(status: dict[str, Any]) -> str:
    """The human-readable ``mdd-ctl status`` report."""
    bus = status["bus"]
    rate = status.get("events_per_second")
    health = "healthy" if status.get("healthy") else "UNHEALTHY"
    lines = [
        f"{status['name']}: {health}, up {_duration(status['uptime'])}"
        + (", stopping" if status.get("stopping") else "")
        + (f", {rate:g} events/s" if rate is not None else "")
        + f", published {bus['published']}, backpressure {bus['backpressure']}",
    ]
    lines += [f"  ! {reason}" for reason in status.get("reasons", [])]
    feeds = status["feeds"]
    lines += ["", "FEEDS"]
    lines.append(
        table(
            ["feed", "state", "active", "symbols", "reason"],
            [
                [n, f.get("state", "-"), f["active"], ",".join(f["symbols"]), f.get("reason", "")]
                for n, f in feeds.items()
            ],
        )
    )
    rows = []
    for feed_name, feed in feeds.items():
        for name, p in feed["providers"].items():
            rows.append(
                [
                    name,
                    feed_name,
                    "active" if p["active"] else "standby",
                    p["state"],
                    _age(p["last_message_age"]),
                    p["events"],
                    p["reconnects"],
                    p["reason"],
                ]
            )
    lines += ["", "PROVIDERS"]
    lines.append(
        table(
            ["provider", "feed", "role", "state", "last msg", "events", "reconnects", "reason"],
            rows,
        )
    )
    lines += ["", "BUS AND SINKS"]
    sinks = status["sinks"]
    rows = []
    for name, lane in bus["sinks"].items():
        health_of = sinks.get(name, {})
        dropped = sum(lane["dropped"].values()) + sum(lane["evicted"].values())
        rows.append(
            [
                name,
                health_of.get("state", "-"),
                lane["policy"],
                f"{lane['queued']}/{lane['capacity']}",
                f"{lane['fill_pct']:.1f}%",
                dropped,
                health_of.get("errors", 0),
                health_of.get("last_error", ""),
            ]
        )
    lines.append(
        table(
            ["sink", "state", "policy", "queued", "fill", "dropped", "errors", "last error"], rows
        )
    )
    return "\n".join(lines)


def format_providers(view: dict[str, Any]) -> str:
    """The human-readable ``mdd-ctl providers`` report."""
    rows = []
    for feed_name, feed in view["feeds"].items():
        for name, p in feed["providers"].items():
            rows.append(
                [
                    name,
                    p["kind"],
                    feed_name,
                    p["role"],
                    p["state"],
                    "yes" if p["connected"] else "no",
                    _age(p["last_message_age"]),
                    p["messages"],
                    p["events"],
                    p["parse_errors"],
                    p["reconnects"],
                    p["reason"],
                ]
            )
    return table(
        [
            "provider",
            "kind",
            "feed",
            "role",
            "state",
            "connected",
            "last msg",
            "messages",
            "events",
            "parse errors",
            "reconnects",
            "reason",
        ],
        rows,
    )


# -- command line -----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``mdd-ctl`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mdd-ctl",
        description="Control a running mdd daemon over its Unix socket.",
        epilog="Socket: --socket, else [daemon] state_dir/control_socket of --config, "
        "else ./mdd.sock. Exit codes: 0 ok, 1 no daemon or refused, 2 usage.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", "-s", metavar="PATH", help="the daemon's control socket")
    where.add_argument(
        "--config", "-c", metavar="FILE", help="read the socket path from this config"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, help="seconds to wait for a reply"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="uptime, feeds, providers, bus, sinks, events/s")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    providers = sub.add_parser("providers", help="every provider with role and health")
    providers.add_argument("--json", action="store_true", help="print JSON")
    failover = sub.add_parser("failover", help="make PROVIDER the active provider of FEED")
    failover.add_argument("feed")
    failover.add_argument("provider")
    reconnect = sub.add_parser("reconnect", help="drop and reopen PROVIDER's connection")
    reconnect.add_argument("provider")
    sub.add_parser("stop", help="graceful shutdown")
    return parser


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"cmd": args.command}
    if args.command == "failover":
        payload.update(feed=args.feed, provider=args.provider)
    elif args.command == "reconnect":
        payload["provider"] = args.provider
    return payload


def _render(args: argparse.Namespace, result: Any) -> str:
    if getattr(args, "json", False):
        return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.command == "status":
        return format_status(result)
    if args.command == "providers":
        return format_providers(result)
    if args.command == "failover":
        return f"feed {result['feed']}: active provider {result['previous']} -> {result['active']}"
    if args.command == "reconnect":
        return f"reconnecting {result['provider']} (feeds: {', '.join(result['feeds'])})"
    return "stopping" if args.command == "stop" else str(result)


def main(
    argv: list[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Entry point of the ``mdd-ctl`` console script; returns the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    try:
        path = Path(args.socket) if args.socket else default_socket(args.config)
    except ConfigError as exc:
        print(f"mdd-ctl: invalid config: {exc}", file=err)
        return EXIT_USAGE
    try:
        result = request(path, _payload(args), args.timeout)
    except DaemonUnreachable as exc:
        print(f"mdd-ctl: {exc}", file=err)
        return EXIT_FAILURE
    except ControlError as exc:
        print(f"mdd-ctl: {args.command} failed: {exc}", file=err)
        return EXIT_FAILURE
    print(_render(args, result), file=out)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
