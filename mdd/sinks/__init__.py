"""Sinks: where events go after the bus, and the factory that builds them from config.

Adding a sink is one module with a class following :class:`Sink` plus one
entry in :data:`SINK_FACTORIES` (and its ``[sinks.<name>]`` table in
:mod:`mdd.config`).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, cast

from .base import SinkHealth as SinkHealth
from .base import run_sink as run_sink
from .jsonl import JsonlSink as JsonlSink
from .log import LogSink as LogSink

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..config import Config
    from .base import Sink as Sink


def _jsonl(config: Config, section: Any) -> Sink:
    return JsonlSink(
        config.resolve_path(section.path),
        max_bytes=section.max_bytes,
        backups=section.backups,
        batch_size=section.batch_size,
    )


def _log(config: Config, section: Any) -> Sink:
    return LogSink(section.sample_every)


def _sqlite(config: Config, section: Any) -> Sink:
    from .sqlite import SqliteSink

    return SqliteSink(
        config.resolve_path(section.path),
        batch_size=section.batch_size,
        batch_interval=section.batch_interval,
        retain_days=section.retain_days,
        book_levels=section.book_levels,
        book_interval=section.book_interval,
    )


def _metrics(config: Config, section: Any) -> Sink:
    from .metrics import MetricsSink

    return MetricsSink()


def _nats(config: Config, section: Any) -> Sink:
    # Imported only when configured: importing trio_asyncio changes asyncio process-wide.
    from .nats import NatsSink

    return NatsSink(
        section.url,
        subject_prefix=section.subject_prefix,
        jetstream=section.jetstream,
        stream=section.stream,
        duplicate_window=section.duplicate_window,
        replicas=section.replicas,
        batch_size=section.batch_size,
        ack_timeout=section.ack_timeout,
    )


#: ``[sinks.<name>]`` -> factory(config, section) building the sink.
SINK_FACTORIES: dict[str, Callable[[Config, Any], Sink]] = {
    "jsonl": _jsonl,
    "log": _log,
    "sqlite": _sqlite,
    "metrics": _metrics,
    "nats": _nats,
}


def sink_runner(sink: Sink) -> Callable[..., Awaitable[None]]:
    """How to run ``sink``: its own ``run(inbox, health, *, task_status)`` if it has
    one (the NATS sink opens its trio-asyncio loop there), else :func:`run_sink`.

    Start it with ``await nursery.start(sink_runner(sink), inbox, health)``.
    """
    run = getattr(sink, "run", None)
    if run is not None:
        return cast("Callable[..., Awaitable[None]]", run)
    return partial(run_sink, sink)


def build_sinks(config: Config) -> list[tuple[Sink, Any]]:
    """Every enabled sink with its config section, in a stable order."""
    out: list[tuple[Sink, Any]] = []
    for name, section in config.sinks.enabled().items():
        factory = SINK_FACTORIES.get(name)
        if factory is not None:
            out.append((factory(config, section), section))
    return out
