"""Sinks: where events go after the bus, and the factory that builds them from config.

Adding a sink is one module with a class following :class:`Sink` plus one
entry in :data:`SINK_FACTORIES` (and its ``[sinks.<name>]`` table in
:mod:`mdd.config`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import SinkHealth as SinkHealth
from .base import run_sink as run_sink
from .jsonl import JsonlSink as JsonlSink
from .log import LogSink as LogSink

if TYPE_CHECKING:
    from collections.abc import Callable

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


#: ``[sinks.<name>]`` -> factory(config, section) building the sink.
SINK_FACTORIES: dict[str, Callable[[Config, Any], Sink]] = {
    "jsonl": _jsonl,
    "log": _log,
}


def build_sinks(config: Config) -> list[tuple[Sink, Any]]:
    """Every enabled sink with its config section, in a stable order."""
    out: list[tuple[Sink, Any]] = []
    for name, section in config.sinks.enabled().items():
        factory = SINK_FACTORIES.get(name)
        if factory is not None:
            out.append((factory(config, section), section))
    return out
