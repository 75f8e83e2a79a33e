"""Log sink: one structured line per ``sample_every`` events, for eyeballing a live feed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..events import Event

LOGGER = logging.getLogger("mdd.sinks.log")


class LogSink:
    """Logs every ``sample_every``-th event with a running count."""

    name = "log"
    batch_size = 1000
    batch_interval = 0.0

    def __init__(self, sample_every: int = 1000) -> None:
        self.sample_every = sample_every
        self.seen = 0

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, batch: Sequence[Event]) -> None:
        """Log the events whose running index is a multiple of ``sample_every``."""
        every = self.sample_every
        start = self.seen
        self.seen += len(batch)
        first = (-start) % every
        for i in range(first, len(batch), every):
            e = batch[i]
            LOGGER.info(
                "event n=%d type=%s provider=%s symbol=%s data=%r",
                start + i + 1,
                e.type,
                e.provider,
                e.symbol,
                e,
            )

    async def close(self) -> None:
        """Log the final count."""
        LOGGER.info("sink.log.closed events=%d", self.seen)
