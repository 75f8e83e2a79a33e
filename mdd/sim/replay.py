"""Replay a raw capture (:mod:`mdd.capture`) as a venue WebSocket, byte for byte.

Every client that connects (any path) receives the captured frames of one
provider, in order and unchanged, paced by their recorded receive times
divided by ``speed`` (``speed=0``: as fast as the client reads). Whatever the
client sends (subscriptions, pings) is read and ignored: the capture already
holds the venue's answers, in the order the live client saw them. After the
last frame the connection stays open and quiet, as a venue would between
trades, until the client leaves.

Point a provider's ``url`` at :attr:`ReplayServer.url` and a recorded day
drives the whole pipeline offline.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio
import trio_websocket

from ..capture import CapturedFrame, CaptureError, read_capture

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

LOGGER = logging.getLogger("mdd.sim.replay")


@attrs.define
class ReplayServer:
    """A running replay: where to connect and what it sent."""

    provider: str
    frames: Sequence[CapturedFrame]
    speed: float
    host: str = "127.0.0.1"
    port: int = 0
    sent: int = 0
    connections: int = 0

    @property
    def url(self) -> str:
        """``ws://host:port`` (any path is accepted)."""
        return f"ws://{self.host}:{self.port}"


def load_frames(paths: Sequence[str | Path], provider: str | None = None) -> list[CapturedFrame]:
    """The frames of ``provider`` (default: the first provider seen) from capture files.

    Raises:
        CaptureError: unreadable files, or no frames for the provider.
    """
    frames: list[CapturedFrame] = []
    for path in paths:
        for frame in read_capture(path):
            if provider is None:
                provider = frame.provider
            if frame.provider == provider:
                frames.append(frame)
    if not frames:
        raise CaptureError(f"no frames for provider {provider!r} in {', '.join(map(str, paths))}")
    return frames


def parse_speed(text: str) -> float:
    """``max`` -> 0 (no pacing), else a positive factor (``1``, ``10``)."""
    if text == "max":
        return 0.0
    value = float(text)
    if value <= 0:
        raise ValueError("speed must be > 0 or 'max'")
    return value


async def _drain(ws: trio_websocket.WebSocketConnection, done: trio.CancelScope) -> None:
    """Read and ignore what the client sends; its close ends the connection."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        done.cancel()


async def _play(server: ReplayServer, request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    server.connections += 1
    frames = server.frames
    speed = server.speed
    t0 = trio.current_time()
    first_ts = frames[0].ts
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, ws, nursery.cancel_scope)
        try:
            for frame in frames:
                if speed > 0:
                    await trio.sleep_until(t0 + (frame.ts - first_ts) / 1e9 / speed)
                await ws.send_message(frame.raw)
                server.sent += 1
        except trio_websocket.ConnectionClosed:
            nursery.cancel_scope.cancel()
            return
        await trio.sleep_forever()


async def serve_replay(
    paths: Sequence[str | Path],
    *,
    provider: str | None = None,
    speed: float = 1.0,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[ReplayServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the capture until cancelled; ``task_status.started(server)`` once listening.

    Raises:
        CaptureError: unreadable capture or no frames for ``provider``.
    """
    frames = load_frames(paths, provider)
    server = ReplayServer(frames[0].provider, frames, speed, host)
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(
            partial(trio_websocket.serve_websocket, partial(_play, server), host, port, None)
        )
        server.port = ws_server.port
        LOGGER.info(
            "sim.replay.listening url=%s provider=%s frames=%d speed=%s",
            server.url,
            server.provider,
            len(frames),
            speed or "max",
        )
        task_status.started(server)
