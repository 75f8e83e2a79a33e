"""The operations services a daemon runs, and the status views they share.

:func:`install` is the :data:`mdd.cli.DAEMON_HOOKS` entry that adds, in order,
the event-rate meter, the HTTP API (:mod:`mdd.http`), the control socket
(:mod:`mdd.control`) and systemd notification (:mod:`mdd.sdnotify`) to a new
daemon's ``services``. The three front ends read the same views from here:

- :func:`health_verdict`: whether the daemon is serving, with the reasons when not
  (``/health``, ``mdd-ctl status``, the sd_notify ``STATUS=`` line);
- :func:`status_view`: :meth:`Daemon.status` plus the event rate and the verdict;
- :func:`providers_view`: every provider of every feed with its role;
- :func:`redact`: removes configured secrets and URL credentials from any of them.
"""

from __future__ import annotations

import collections
import functools
import logging
from typing import TYPE_CHECKING, Any, Final

import trio

from .redact import REDACTED, redact_text

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from .config import Config
    from .daemon import Daemon

LOGGER = logging.getLogger("mdd.services")

#: Seconds between event-rate samples, and how many samples the rate spans.
RATE_SAMPLE_EVERY: Final = 1.0
RATE_WINDOW_SAMPLES: Final = 10


def serving(provider: dict[str, Any], stale_after: float) -> bool:
    """Whether one provider's health snapshot (``ProviderHealth.as_dict``) serves its feed.

    ``up`` does; so does ``degraded`` while data still flows (churn or parse
    errors); ``degraded`` while warming up (not subscribed, no data yet) does not.
    """
    if provider["state"] == "up":
        return True
    age = provider.get("last_message_age")
    return bool(
        provider["state"] == "degraded"
        and provider.get("connected")
        and provider.get("subscribed")
        and provider.get("messages")
        and age is not None
        and age < stale_after
    )


class RateMeter:
    """Events per second through the bus, over a sliding window of samples.

    One sample per :data:`RATE_SAMPLE_EVERY` seconds (taken by :meth:`run`) of
    the bus's ``published`` counter; the rate is the slope across the window.
    Cheap to read from any request handler.
    """

    def __init__(self, window: int = RATE_WINDOW_SAMPLES) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=window + 1)

    def sample(self, now: float, published: int) -> None:
        """Record the bus counter at trio time ``now``."""
        self._samples.append((now, published))

    def rate(self) -> float:
        """Events per second across the window (0.0 before two samples)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return 0.0 if t1 <= t0 else (n1 - n0) / (t1 - t0)

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sample ``daemon.bus.published`` forever (a daemon service)."""
        bus = daemon.bus
        self.sample(trio.current_time(), bus.published)
        task_status.started()
        while True:
            await trio.sleep(RATE_SAMPLE_EVERY)
            self.sample(trio.current_time(), bus.published)


def secrets_of(config: Config) -> list[str]:
    """Every configured secret value (provider keys and secrets), longest first."""
    found = {
        value
        for provider in config.providers.values()
        for value in (provider.key, provider.secret)
        if value
    }
    return sorted(found, key=len, reverse=True)


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-ready value with secrets and URL credentials replaced.

    Args:
        value: dicts, lists and scalars as produced by the status views.
        secrets: literal strings to replace wherever they occur.
    """
    secrets = list(secrets)

    def scrub(obj: Any) -> Any:
        if isinstance(obj, str):
            for secret in secrets:
                if secret in obj:
                    obj = obj.replace(secret, REDACTED)
            return redact_text(obj)
        if isinstance(obj, dict):
            return {k: scrub(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [scrub(v) for v in obj]
        return obj

    return scrub(value)


def health_verdict(daemon: Daemon, status: dict[str, Any] | None = None) -> tuple[bool, list[str]]:
    """(healthy, reasons): unhealthy while starting or stopping, when some feed
    has no serving provider (:func:`serving`), or when a sink is failing.

    Args:
        daemon: the daemon.
        status: ``daemon.status()`` if already taken (saves a second snapshot).
    """
    status = daemon.status() if status is None else status
    stale = daemon.config.failover.stale_after
    reasons: list[str] = []
    if daemon.stopping:
        reasons.append("daemon is stopping")
    elif not daemon.ready.is_set():
        reasons.append("daemon is starting")
    for feed_name, feed in status["feeds"].items():
        providers = feed["providers"]
        if not any(serving(p, stale) for p in providers.values()):
            detail = "; ".join(f"{n}: {p['state']} ({p['reason']})" for n, p in providers.items())
            reasons.append(f"feed {feed_name}: no healthy provider [{detail}]")
    for sink_name, sink in status["sinks"].items():
        if sink["state"] == "failing":
            reasons.append(f"sink {sink_name}: failing ({sink['last_error']})")
    return not reasons, reasons


def status_view(daemon: Daemon, meter: RateMeter | None = None) -> dict[str, Any]:
    """The daemon's status with the event rate and the health verdict, redacted."""
    status = daemon.status()
    healthy, reasons = health_verdict(daemon, status)
    for name, supervisor in daemon.feeds.items():
        # The supervisor's own view: feed state, primary, failover hold and last switch.
        status["feeds"][name] = {**status["feeds"].get(name, {}), **supervisor.as_dict()}
    status["events_per_second"] = round(meter.rate(), 1) if meter is not None else None
    status["healthy"] = healthy
    status["reasons"] = reasons
    return dict(redact(status, secrets_of(daemon.config)))


def providers_view(daemon: Daemon) -> dict[str, Any]:
    """Every provider of every feed: kind, role (active/standby), state, counters, age."""
    stale = daemon.config.failover.stale_after
    feeds: dict[str, Any] = {}
    for name, sup in daemon.feeds.items():
        providers: dict[str, Any] = {}
        for position, runner in enumerate(sup.runners.values()):
            health = runner.health.as_dict(stale)
            providers[runner.name] = {
                "kind": runner.config.kind,
                "role": "active" if runner.name == sup.active else "standby",
                "priority": position,
                **health,
            }
        state, reason = sup.state()
        feeds[name] = {
            "state": state,
            "reason": reason,
            "active": sup.active,
            "primary": sup.feed.providers[0],
            "symbols": list(sup.feed.symbols),
            "providers": providers,
        }
    return dict(redact({"feeds": feeds}, secrets_of(daemon.config)))


def status_line(daemon: Daemon, meter: RateMeter | None = None) -> str:
    """A one-line summary for sd_notify ``STATUS=`` and logs."""
    status = daemon.status()
    healthy, reasons = health_verdict(daemon, status)
    stale = daemon.config.failover.stale_after
    feeds = status["feeds"]
    up = sum(
        1 for feed in feeds.values() if any(serving(p, stale) for p in feed["providers"].values())
    )
    rate = f"{meter.rate():.0f} ev/s, " if meter is not None else ""
    bus = status["bus"]
    line = f"feeds {up}/{len(feeds)} up, {rate}bus {bus['backpressure']}"
    if not healthy:
        line += f"; {reasons[0]}"
    return str(redact(line, secrets_of(daemon.config)))[:200]


class Operations:
    """The operations services of one daemon and what they report once up.

    Attributes:
        meter: the event-rate meter the front ends share.
        http_address: ``http://host:port`` once the HTTP API serves (None if off).
        control_path: the control socket path once it accepts connections.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.meter = RateMeter()
        self.http_address: str | None = None
        self.control_path: Path | None = None

    async def run_http(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """:func:`mdd.http.serve_http`, recording the bound address."""
        from .http import serve_http

        async with trio.open_nursery() as nursery:
            self.http_address = await nursery.start(
                functools.partial(serve_http, daemon, meter=self.meter)
            )
            task_status.started()

    async def run_control(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """:func:`mdd.control.serve_control`, recording the socket path."""
        from .control import serve_control

        async with trio.open_nursery() as nursery:
            self.control_path = await nursery.start(
                functools.partial(serve_control, daemon, meter=self.meter)
            )
            task_status.started()

    async def run_sdnotify(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """:func:`mdd.sdnotify.run_sdnotify` with the shared meter."""
        from .sdnotify import run_sdnotify

        await run_sdnotify(daemon, meter=self.meter, task_status=task_status)


def install(daemon: Daemon) -> Operations:
    """Add the operations services to ``daemon`` (a :data:`mdd.cli.DAEMON_HOOKS` entry).

    Order: rate meter, HTTP API (when ``[http] enabled``), control socket,
    sd_notify (which sends ``READY=1`` only after every service is up).
    """
    ops = Operations(daemon)
    daemon.services.append(ops.meter.run)
    if daemon.config.http.enabled:
        daemon.services.append(ops.run_http)
    daemon.services.append(ops.run_control)
    daemon.services.append(ops.run_sdnotify)
    return ops
