"""Helpers for the operations tests: a real in-process daemon with its services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from mdd.config import Config, load_config
from mdd.daemon import Daemon
from mdd.services import Operations, install

#: Seconds any one daemon may take to start or stop in these tests.
LIMIT = 10.0


def ops_document(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A daemon config: one sim feed with a backup, JSONL sink, HTTP on a free port."""
    doc: dict[str, Any] = {
        "daemon": {"name": "opsd", "state_dir": str(tmp_path), "shutdown_grace": 2.0},
        "http": {"port": 0},
        "bus": {"heartbeat_after": 1.0},
        "providers": {
            "sim": {"rate": 100.0, "seed": 1},
            "sim2": {"kind": "sim", "rate": 100.0, "seed": 2},
        },
        "feeds": [
            {"name": "crypto", "symbols": ["BTCUSDT", "ETHUSDT"], "providers": ["sim", "sim2"]}
        ],
        "sinks": {"jsonl": {"path": "events.jsonl"}},
    }
    doc.update(sections)
    return doc


def ops_config(tmp_path: Path, **sections: Any) -> Config:
    """:func:`ops_document` validated (environment ignored)."""
    return load_config(None, base=ops_document(tmp_path, **sections), env={})


async def start_daemon(daemon: Daemon) -> None:
    """Run ``daemon`` until it is ready, then stop it (raises what start-up raised)."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(LIMIT):
            await nursery.start(daemon.run)
        daemon.request_stop("test finished")


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Daemon, Operations]]:
    """Run a daemon with the operations services; stop it gracefully on exit."""
    daemon = Daemon(config, install_signal_handlers=False)
    ops = install(daemon)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(LIMIT):
            await nursery.start(daemon.run)
        try:
            yield daemon, ops
        finally:
            daemon.request_stop("test finished")
            nursery.cancel_scope.deadline = trio.current_time() + LIMIT


async def wait_for(predicate: Any, limit: float = 5.0) -> None:
    """Poll ``predicate()`` every 10 ms until true (fails after ``limit`` seconds)."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling daemon state from outside
            await trio.sleep(0.01)


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]
