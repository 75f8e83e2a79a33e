"""systemd notification (``Type=notify``): READY, WATCHDOG, STOPPING and STATUS.

Implemented with the standard library over ``$NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace), as sd_notify(3) describes:

- ``READY=1`` once every service is up (the daemon's ``ready`` event);
- ``WATCHDOG=1`` every ``WatchdogSec / 2`` (from ``$WATCHDOG_USEC``, honouring
  ``$WATCHDOG_PID``) but only while the daemon is healthy: the bus is moving
  (events, or the daemon's own heartbeats when the venues are idle) and no
  blocking sink has held the producers back for too long. A stuck event loop,
  heartbeat monitor or bus therefore stops the pings and systemd restarts mdd;
- ``STOPPING=1`` when a graceful shutdown begins;
- ``STATUS=`` a one-line summary, refreshed with every ping (or every
  :data:`STATUS_EVERY` seconds without a watchdog).

Without ``$NOTIFY_SOCKET`` (not under systemd) the service does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Final

import trio

from .services import status_line

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .daemon import Daemon
    from .services import RateMeter

LOGGER = logging.getLogger("mdd.sdnotify")

#: Seconds between STATUS= updates when there is no watchdog.
STATUS_EVERY: Final = 5.0
#: Bus silence (in heartbeat periods) after which the daemon is not watchdog-healthy.
STALL_HEARTBEATS: Final = 3


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """The datagram address from ``$NOTIFY_SOCKET`` (``@`` -> abstract namespace)."""
    raw = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    LOGGER.warning("sdnotify.unsupported_socket address=%r", raw)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when not asked for."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not raw:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        LOGGER.warning("sdnotify.bad_watchdog_usec value=%r", raw)
        return None
    return usec / 2 / 1e6 if usec > 0 else None


class Notifier:
    """Sends notification datagrams; never raises (a lost notification is logged)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sent = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._warned = False

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram. Returns False if it could not."""
        message = "\n".join(f.replace("\n", " ") if f.startswith("STATUS=") else f for f in fields)
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                LOGGER.warning("sdnotify.send_failed error=%r", exc.strerror or str(exc))
                self._warned = True
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


class WatchdogCheck:
    """Decides whether the daemon deserves a ``WATCHDOG=1`` ping.

    Healthy while the bus's ``published`` counter moved within ``stall_after``
    seconds (the daemon's heartbeats keep it moving when the venues are idle)
    and no blocking sink has kept the bus congested for that long.
    """

    def __init__(self, stall_after: float, now: float, published: int) -> None:
        self.stall_after = stall_after
        self._published = published
        self._moved_at = now
        self._congested_since: float | None = None

    def check(self, now: float, published: int, congested: bool) -> tuple[bool, str]:
        """(healthy, reason) at trio time ``now``."""
        if published != self._published:
            self._published = published
            self._moved_at = now
        if congested:
            if self._congested_since is None:
                self._congested_since = now
        else:
            self._congested_since = None
        still = now - self._moved_at
        if still >= self.stall_after:
            return False, f"bus has not moved for {still:.1f}s"
        if self._congested_since is not None and now - self._congested_since >= self.stall_after:
            return False, f"bus congested for {now - self._congested_since:.1f}s"
        return True, "bus moving"


async def run_sdnotify(
    daemon: Daemon,
    *,
    meter: RateMeter | None = None,
    env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Notify systemd of readiness, liveness and shutdown (a daemon service)."""
    address = notify_address(env)
    if address is None:
        task_status.started()
        return
    notifier = Notifier(address)
    interval = watchdog_interval(env) if daemon.config.daemon.watchdog else None
    stopping_sent = False

    def on_stopping() -> None:
        nonlocal stopping_sent
        stopping_sent = True
        notifier.send("STOPPING=1", "STATUS=stopping")

    daemon.on_stopping.append(on_stopping)
    try:
        task_status.started()
        await daemon.ready.wait()
        notifier.send("READY=1", f"STATUS={status_line(daemon, meter)}", f"MAINPID={os.getpid()}")
        LOGGER.info("sdnotify.ready watchdog_interval=%s", interval)
        bus = daemon.bus
        stall_after = STALL_HEARTBEATS * daemon.config.bus.heartbeat_after
        if interval is not None:
            stall_after = max(stall_after, 2 * interval)
        watch = WatchdogCheck(stall_after, trio.current_time(), bus.published)
        was_healthy = True
        while True:
            await trio.sleep(interval or STATUS_EVERY)
            if stopping_sent:
                continue
            healthy, reason = watch.check(trio.current_time(), bus.published, bus.congested)
            if healthy != was_healthy:
                log = LOGGER.info if healthy else LOGGER.error
                log("sdnotify.watchdog healthy=%s reason=%r", healthy, reason)
                was_healthy = healthy
            fields = [f"STATUS={status_line(daemon, meter)}"]
            if interval is not None and healthy:
                fields.insert(0, "WATCHDOG=1")
            notifier.send(*fields)
    finally:
        if on_stopping in daemon.on_stopping:
            daemon.on_stopping.remove(on_stopping)
        notifier.close()
