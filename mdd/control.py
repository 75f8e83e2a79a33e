"""The control socket behind ``mdd-ctl``: line-delimited JSON over a Unix socket.

Protocol (one request per line, one reply per line, any number per connection)::

    -> {"cmd": "status"}
    <- {"ok": true, "result": {...}}
    -> {"cmd": "failover", "feed": "spot", "provider": "bybit"}
    <- {"ok": false, "error": "unknown feed 'spot'; feeds: crypto"}

Commands (:data:`COMMANDS`): ``ping``, ``status``, ``providers``, ``bus-stats``,
``failover`` (``feed``, ``provider``), ``reconnect`` (``provider``), ``stop``.
A malformed line, an unknown command or a bad argument gets an error reply and
the connection stays open; a line longer than :data:`MAX_LINE` bytes gets an
error reply and the connection is closed. Nothing a client sends can stop the
daemon except ``stop``.

The socket is created with mode 0600 (only the daemon's user can connect). On
start, a socket file left by a crashed daemon (nothing accepts on it) is
replaced; one that answers means another daemon owns it, and this one refuses
to start (:class:`~mdd.errors.ControlError`). The file is removed on shutdown.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from .errors import ControlError, MddError
from .services import providers_view, status_view

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .daemon import Daemon
    from .services import RateMeter

LOGGER = logging.getLogger("mdd.control")

#: Longest request line accepted, bytes.
MAX_LINE: Final = 64 * 1024
#: Seconds a connection may sit idle before the daemon closes it.
IDLE_TIMEOUT: Final = 60.0
#: Longest ``sun_path`` Linux accepts (bytes, without the trailing NUL).
MAX_SOCKET_PATH: Final = 107
#: Seconds to wait when probing whether an existing socket is live.
PROBE_TIMEOUT: Final = 1.0


class RequestError(Exception):
    """A request the daemon refuses; its message is the reply's ``error``."""


class ControlContext:
    """What a command handler can reach: the daemon and the event-rate meter."""

    def __init__(self, daemon: Daemon, meter: RateMeter | None) -> None:
        self.daemon = daemon
        self.meter = meter


def _arg(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise RequestError(f"missing or invalid argument: {name} (a non-empty string)")
    return value


async def cmd_ping(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """Liveness: ``{"pong": true}``."""
    return {"pong": True, "name": ctx.daemon.config.daemon.name}


async def cmd_status(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """The full status view (uptime, feeds, providers, bus, sinks, events/s, health)."""
    return status_view(ctx.daemon, ctx.meter)


async def cmd_providers(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """Every provider of every feed, with role and health."""
    return providers_view(ctx.daemon)


async def cmd_bus_stats(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """The bus lane statistics (as ``GET /bus-stats``)."""
    return ctx.daemon.bus.stats().as_dict()


async def cmd_failover(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """Make ``provider`` the active provider of ``feed``.

    Uses the feed supervisor's ``force(provider)`` when it has one (the
    failover supervisor: starts the provider if needed and holds the choice),
    else :meth:`FeedSupervisor.activate`.
    """
    feed, provider = _arg(request, "feed"), _arg(request, "provider")
    feeds = ctx.daemon.feeds
    supervisor = feeds.get(feed)
    if supervisor is None:
        raise RequestError(f"unknown feed {feed!r}; feeds: {', '.join(feeds) or 'none'}")
    if provider not in supervisor.runners:
        raise RequestError(
            f"provider {provider!r} is not in feed {feed!r}; "
            f"its providers: {', '.join(supervisor.runners)}"
        )
    previous = supervisor.active
    force = getattr(supervisor, "force", None)
    try:
        if callable(force):
            outcome = force(provider, reason="forced by mdd-ctl")
            if inspect.isawaitable(outcome):
                await outcome
        else:
            supervisor.activate(provider, "forced by mdd-ctl")
    except MddError as exc:  # e.g. FailoverError: this feed cannot switch
        raise RequestError(str(exc)) from None
    LOGGER.info("control.failover feed=%s from=%s to=%s", feed, previous, provider)
    return {"feed": feed, "previous": previous, "active": supervisor.active}


async def cmd_reconnect(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """Drop and reopen ``provider``'s connection in every feed it serves (no backoff)."""
    provider = _arg(request, "provider")
    done, idle = [], []
    for name, supervisor in ctx.daemon.feeds.items():
        runner = supervisor.runners.get(provider)
        if runner is None:
            continue
        if runner.health.running:
            runner.reconnect()
            done.append(name)
        else:
            idle.append(name)
    if not done:
        if idle:
            raise RequestError(
                f"provider {provider!r} is not running (an idle backup in {', '.join(idle)}); "
                "use failover to start it"
            )
        known = sorted({p for s in ctx.daemon.feeds.values() for p in s.runners})
        raise RequestError(f"unknown provider {provider!r}; providers: {', '.join(known)}")
    LOGGER.info("control.reconnect provider=%s feeds=%s", provider, done)
    return {"provider": provider, "feeds": done}


async def cmd_stop(ctx: ControlContext, request: dict[str, Any]) -> Any:
    """Begin a graceful shutdown (the reply is sent before the socket closes)."""
    ctx.daemon.request_stop("mdd-ctl stop")
    return {"stopping": True}


#: Command name -> handler ``async (ctx, request) -> result``. Extend by adding entries.
COMMANDS: dict[str, Callable[[ControlContext, dict[str, Any]], Any]] = {
    "ping": cmd_ping,
    "status": cmd_status,
    "providers": cmd_providers,
    "bus-stats": cmd_bus_stats,
    "failover": cmd_failover,
    "reconnect": cmd_reconnect,
    "stop": cmd_stop,
}


async def handle_line(ctx: ControlContext, line: bytes) -> dict[str, Any]:
    """One request line -> one reply object. Never raises for a bad request."""
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return {"ok": False, "error": f"malformed request: not JSON ({exc})"}
    if not isinstance(request, dict):
        return {
            "ok": False,
            "error": 'malformed request: expected an object like {"cmd": "status"}',
        }
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        return {"ok": False, "error": 'malformed request: missing "cmd"'}
    handler = COMMANDS.get(cmd)
    if handler is None:
        return {
            "ok": False,
            "error": f"unknown command {cmd[:40]!r}; commands: {', '.join(COMMANDS)}",
        }
    try:
        return {"ok": True, "result": await handler(ctx, request)}
    except RequestError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        LOGGER.exception("control.command_failed cmd=%s", cmd)
        return {"ok": False, "error": f"internal error in {cmd}: {type(exc).__name__}"}


async def _reply(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    await stream.send_all(orjson.dumps(reply) + b"\n")


async def serve_connection(ctx: ControlContext, stream: trio.SocketStream) -> None:
    """Serve one client until it closes, idles out or sends an oversize line.

    Error handling:
        Client errors (disconnects, garbage) end this connection only; they are
        logged, never raised into the daemon.
    """
    buffer = bytearray()
    try:
        async with stream:
            while True:
                newline = buffer.find(b"\n")
                if newline > MAX_LINE or (newline < 0 and len(buffer) > MAX_LINE):
                    await _reply(
                        stream, {"ok": False, "error": f"request line over {MAX_LINE} bytes"}
                    )
                    return
                if newline < 0:
                    with trio.move_on_after(IDLE_TIMEOUT) as idle:
                        data = await stream.receive_some(65536)
                    if idle.cancelled_caught or not data:
                        return
                    buffer += data
                    continue
                line = bytes(buffer[:newline]).strip()
                del buffer[: newline + 1]
                if line:
                    await _reply(stream, await handle_line(ctx, line))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        LOGGER.debug("control.client_gone")
    except Exception:
        LOGGER.exception("control.connection_failed")


def _probe(path: Path) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise ControlError(
                f"cannot tell whether control socket {path} is in use: {exc.strerror}"
            ) from None
        return True


def bind_control_socket(path: Path) -> socket.socket:
    """Create the listening socket at ``path`` with mode 0600.

    Replaces a stale socket file; binds to a temporary name, sets the mode and
    renames into place, so the socket is never reachable with wider permissions.

    Raises:
        ControlError: another daemon answers on ``path``; ``path`` is not a
            socket; the path is too long; or binding fails.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if len(os.fsencode(tmp)) > MAX_SOCKET_PATH:
        raise ControlError(
            f"control socket path too long for a Unix socket ({len(os.fsencode(path))} bytes): "
            f"{path}; set [daemon] control_socket to a shorter path"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ControlError(f"cannot use control socket {path}: {exc.strerror}") from None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise ControlError(
                f"{path} exists and is not a socket; remove it or set [daemon] control_socket"
            )
        if _probe(path):
            raise ControlError(
                f"another mdd is already running: control socket {path} is live "
                "(stop it with `mdd-ctl stop`, or give this one another [daemon] control_socket)"
            )
        LOGGER.warning("control.stale_socket path=%s action=replaced", path)
        path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmp.unlink(missing_ok=True)
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        sock.listen(16)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise ControlError(f"cannot bind control socket {path}: {exc.strerror}") from None
    return sock


def socket_path(daemon: Daemon) -> Path:
    """Where the daemon's control socket lives (``[daemon] control_socket``)."""
    config = daemon.config
    return config.resolve_path(config.daemon.control_socket)


async def serve_control(
    daemon: Daemon,
    *,
    meter: RateMeter | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket until cancelled (a daemon service).

    ``task_status.started`` gets the socket path once it accepts connections.

    Resource handling:
        The socket file is removed when the service ends, unless another
        process has replaced it meanwhile.

    Raises:
        ControlError: the socket cannot be created (see :func:`bind_control_socket`).
    """
    path = socket_path(daemon)
    sock = bind_control_socket(path)
    inode = os.stat(path).st_ino
    ctx = ControlContext(daemon, meter)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(ctx, stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            LOGGER.info("control.serving path=%s", path)
            task_status.started(path)
    finally:
        sock.close()
        try:
            if os.stat(path).st_ino == inode:
                path.unlink()
                LOGGER.info("control.removed path=%s", path)
        except OSError:
            pass
