"""The sink seam and the runner that drives every sink from its bus lane.

A sink is anything with ``open``, ``write(batch)`` and ``close``. The runner
owns the loop: it reads batches from the sink's :class:`~mdd.bus.SinkInbox`,
hands each to ``write``, and on an error logs loudly, counts, backs off and
retries the same batch (sinks make writes idempotent where they can), so one
failing sink never touches the others and nothing it accepted is silently lost.
When the bus closes, the runner drains the lane, then ``close()`` flushes.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from ..metrics import SINK_BATCH_SECONDS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ..bus import SinkInbox
    from ..events import Event

LOGGER = logging.getLogger("mdd.sinks")

#: Retry backoff for a failing sink, seconds: first delay and cap.
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0


@runtime_checkable
class Sink(Protocol):
    """What the daemon needs of a sink.

    Attributes:
        name: the sink's name on the bus (``sqlite``, ``jsonl``, ...).
        batch_size: most events handed to one ``write`` call.
        batch_interval: seconds to keep collecting a short batch (0: write
            whatever is queued at once). Bounds the data in flight at low rates.
    """

    name: str
    batch_size: int
    batch_interval: float

    async def open(self) -> None:
        """Acquire resources (files, connections). Called once before any write."""

    async def write(self, batch: Sequence[Event]) -> None:
        """Store or forward one batch. Raising makes the runner retry the batch."""

    async def close(self) -> None:
        """Flush and release everything. Called once, after the last write."""


class SinkHealth:
    """What the runner knows of one sink, for /health and mdd-ctl."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "starting"  # starting | ok | failing | closed
        self.errors = 0
        self.batches = 0
        self.events = 0
        self.last_error = ""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready snapshot."""
        return {
            "state": self.state,
            "errors": self.errors,
            "batches": self.batches,
            "events": self.events,
            "last_error": self.last_error,
        }


async def run_sink(
    sink: Sink,
    inbox: SinkInbox,
    health: SinkHealth | None = None,
    *,
    max_attempts: int = 0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Drive ``sink`` from ``inbox`` until the bus closes and the lane is drained.

    Args:
        sink: the sink to drive.
        inbox: its lane on the bus.
        health: updated as the sink works and fails.
        max_attempts: give a batch up (counted as lost) after this many failed
            writes; 0 retries forever (the default: nothing accepted is dropped
            while the sink can still recover).

    Error handling:
        ``open`` and ``write`` errors are logged, counted in ``health`` and
        retried with capped, jittered backoff. Cancellation ends the runner;
        the sink is closed under a shield so files and connections are released.
    """
    health = health or SinkHealth(sink.name)
    # Started before open: a sink that cannot open yet (NATS down, disk
    # read-only) must not hold up the daemon; its lane queues and sheds meanwhile.
    task_status.started()
    try:
        await _retry(sink, health, "open", sink.open)
        health.state = "ok"
        while True:
            try:
                batch = await inbox.receive_batch(sink.batch_size, sink.batch_interval)
            except trio.EndOfChannel:
                break
            if not await _write(sink, batch, health, max_attempts):
                inbox.note_lost(len(batch))
    finally:
        with trio.CancelScope(shield=True):
            try:
                await sink.close()
            except Exception:
                LOGGER.exception("sink.close_failed sink=%s", sink.name)
            health.state = "closed"
            LOGGER.info("sink.closed sink=%s events=%d", sink.name, health.events)


async def _write(sink: Sink, batch: list[Event], health: SinkHealth, max_attempts: int) -> bool:
    delay = RETRY_INITIAL
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            await sink.write(batch)
        except Exception as exc:
            health.errors += 1
            health.state = "failing"
            health.last_error = f"{type(exc).__name__}: {exc}"
            LOGGER.error(
                "sink.write_failed sink=%s attempt=%d events=%d error=%r",
                sink.name,
                attempt,
                len(batch),
                health.last_error,
            )
            if max_attempts and attempt >= max_attempts:
                LOGGER.error("sink.batch_lost sink=%s events=%d", sink.name, len(batch))
                return False
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RETRY_MAX)
            continue
        if health.state == "failing":
            LOGGER.warning("sink.recovered sink=%s after_errors=%d", sink.name, health.errors)
        SINK_BATCH_SECONDS.labels(sink.name).observe(time.perf_counter() - started)
        health.state = "ok"
        health.batches += 1
        health.events += len(batch)
        return True


async def _retry(
    sink: Sink, health: SinkHealth, what: str, call: Callable[[], Awaitable[None]]
) -> None:
    delay = RETRY_INITIAL
    while True:
        try:
            await call()
            return
        except Exception as exc:
            health.errors += 1
            health.state = "failing"
            health.last_error = f"{type(exc).__name__}: {exc}"
            LOGGER.error("sink.%s_failed sink=%s error=%r", what, sink.name, health.last_error)
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RETRY_MAX)
