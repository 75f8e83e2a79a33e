"""A :class:`~mdd.providers._ws.Transport` on picows (Cython WebSocket client) under trio-asyncio.

Why: trio-websocket (pure-Python wsproto) reads ~45k frames/s per connection
on these machines; picows parses frames in C and, run on the trio-asyncio
loop, hands them to trio far faster (DESIGN.md, "The hot path"). Select it per
provider with ``transport = "picows"``.

How it fits trio:

* picows runs on an asyncio loop. If the caller already runs inside a
  trio-asyncio loop (``trio_asyncio.current_loop``), the connection uses it;
  otherwise the connection opens its own loop in a task owned by the
  session's nursery, for exactly the connection's lifetime (structured
  concurrency: cancelling the session closes the socket and the loop).
* picows calls :meth:`_Listener.on_ws_frame` on the asyncio side, once per
  frame, with ``last_in_buffer`` set on the last frame of one socket read.
  Frames are appended to a deque and the trio reader is woken once per read
  (not per frame), so a burst of frames costs one wake-up. ``get_messages``
  (what the provider loop uses) returns everything queued, up to
  :data:`BATCH_FRAMES`, with one checkpoint; ``get_message`` returns queued
  frames one at a time without a checkpoint (at most :data:`YIELD_EVERY` in a
  row, so other tasks still run). When more than
  :data:`HIGH_WATER` frames wait, socket reading pauses (TCP backpressure)
  until the reader has drained below :data:`LOW_WATER`.
* Keepalive: picows answers server pings itself (``enable_auto_pong``);
  client-side pings (Bybit's JSON ping) stay with the provider loop.
* Close: a server CLOSE frame is answered and the socket disconnected;
  :meth:`_PicowsConnection.aclose` sends CLOSE and waits (bounded) for the
  disconnect, then the task owning the loop ends.

Text frames are delivered as ``str`` and binary as ``bytes``, exactly as the
trio-websocket transport does. Fragmented messages are reassembled.
"""

from __future__ import annotations

import collections
import logging
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import picows
import trio
import trio_asyncio

from ._ws import CLOSE_TIMEOUT, CONNECT_TIMEOUT, MAX_MESSAGE_SIZE, ConnectFailed, ConnectionLost

LOGGER = logging.getLogger("mdd.providers.picows")

#: Frames queued before socket reads pause, and the level at which they resume.
HIGH_WATER: Final = 65536
LOW_WATER: Final = 16384
#: Queued frames ``get_message`` may return in a row without a checkpoint.
YIELD_EVERY: Final = 256
#: Most frames one ``get_messages`` call returns (it checkpoints once per call).
BATCH_FRAMES: Final = 256

_TEXT: Final = picows.WSMsgType.TEXT
_BINARY: Final = picows.WSMsgType.BINARY
_CONT: Final = picows.WSMsgType.CONTINUATION
_CLOSE: Final = picows.WSMsgType.CLOSE


class _PicowsConnection:
    """One picows WebSocket as a :class:`~mdd.providers._ws.Connection`."""

    def __init__(self, close_timeout: float) -> None:
        self.queue: collections.deque[str | bytes] = collections.deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.transport: Any = None
        self.closed_reason: str | None = None
        self.connect_error: ConnectFailed | None = None
        self.disconnected = trio.Event()
        self.paused = False
        self.close_timeout = close_timeout
        self._partial: list[bytes] = []
        self._partial_text = False
        self._unyielded = 0

    # -- asyncio side (picows callbacks; plain state and sync trio calls only) --

    def on_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind is _TEXT and frame.fin:
            self.queue.append(frame.get_payload_as_utf8_text())
        elif kind is _BINARY and frame.fin:
            self.queue.append(frame.get_payload_as_bytes())
        elif kind is _TEXT or kind is _BINARY:
            self._partial = [frame.get_payload_as_bytes()]
            self._partial_text = kind is _TEXT
        elif kind is _CONT:
            self._partial.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self._partial)
                self._partial = []
                self.queue.append(data.decode() if self._partial_text else data)
        elif kind is _CLOSE:
            code = frame.get_close_code()
            text = frame.get_close_message() or b""
            self.closed_reason = (
                f"connection closed: code={int(code)} {text.decode(errors='replace')}"
            )
            transport.send_close(code)
            transport.disconnect()
        if frame.last_in_buffer:
            self.lot.unpark_all()
            if len(self.queue) > HIGH_WATER and not self.paused:
                self.paused = True
                transport.underlying_transport.pause_reading()

    def on_disconnected(self) -> None:
        if self.closed_reason is None:
            self.closed_reason = "connection closed: socket disconnected"
        self.disconnected.set()
        self.lot.unpark_all()

    # -- trio side --------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        queue = self.queue
        if not queue:
            while not queue:
                if self.disconnected.is_set():
                    raise ConnectionLost(self.closed_reason or "connection closed")
                await self.lot.park()
            self._unyielded = 0
        else:
            # Queued frames return without a checkpoint (the fast path), but
            # never more than YIELD_EVERY in a row: other tasks must run.
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()
        if self.paused and len(queue) < LOW_WATER:
            self._resume()
        return queue.popleft()

    async def get_messages(self) -> list[str | bytes]:
        queue = self.queue
        if queue:
            await trio.lowlevel.checkpoint()  # before taking: a cancel loses nothing
        while not queue:
            if self.disconnected.is_set():
                raise ConnectionLost(self.closed_reason or "connection closed")
            await self.lot.park()
        self._unyielded = 0
        if len(queue) <= BATCH_FRAMES:
            frames = list(queue)
            queue.clear()
        else:
            popleft = queue.popleft
            frames = [popleft() for _ in range(BATCH_FRAMES)]
        if self.paused and len(queue) < LOW_WATER:
            self._resume()
        return frames

    def _resume(self) -> None:
        self.paused = False
        if not self.disconnected.is_set():
            self.transport.underlying_transport.resume_reading()

    async def send_message(self, message: str | bytes) -> None:
        if self.disconnected.is_set() or self.transport is None:
            raise ConnectionLost(self.closed_reason or "connection closed")
        if isinstance(message, str):
            self.transport.send(_TEXT, message.encode())
        else:
            self.transport.send(_BINARY, message)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.disconnected.is_set():
            transport.send_close(picows.WSCloseCode.OK)
            with trio.move_on_after(self.close_timeout, shield=True):
                await self.disconnected.wait()
            transport.disconnect(graceful=False)
        self.disconnected.set()
        self.lot.unpark_all()


class _Listener(picows.WSListener):
    """Forwards picows callbacks to the connection (kept tiny: it runs per frame)."""

    def __init__(self, conn: _PicowsConnection) -> None:
        super().__init__()
        self.conn = conn
        self._append = conn.queue.append
        self._on_frame = conn.on_frame

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        # Fast path inline: a whole text frame that is not the last of its read.
        if frame.msg_type is _TEXT and frame.fin and not frame.last_in_buffer:
            self._append(frame.get_payload_as_utf8_text())
        else:
            self._on_frame(transport, frame)

    def on_ws_disconnected(self, transport: Any) -> None:
        self.conn.on_disconnected()


@attrs.define
class PicowsTransport:
    """:class:`~mdd.providers._ws.Transport` on picows, run on a trio-asyncio loop."""

    connect_timeout: float = CONNECT_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    max_message_size: int = MAX_MESSAGE_SIZE

    async def connect(self, nursery: trio.Nursery, url: str) -> _PicowsConnection:
        """Open ``url``; the task owning the asyncio side runs in ``nursery``.

        Raises:
            ConnectFailed: bad URL, refused, timed out or handshake rejected.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConnectFailed(f"not a ws:// or wss:// URL: {url!r}")
        conn = _PicowsConnection(self.close_timeout)
        await nursery.start(self._own, url, conn, name=f"mdd.providers._picows {parts.hostname}")
        if conn.connect_error is not None:
            # Raised here, not from inside the loop's nursery (no exception group).
            raise conn.connect_error
        return conn

    async def _own(
        self, url: str, conn: _PicowsConnection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Keeps the connection (and, if needed, its asyncio loop) alive until it ends."""
        if trio_asyncio.current_loop.get() is not None:
            await self._serve(url, conn, task_status)
            return
        async with trio_asyncio.open_loop():
            await self._serve(url, conn, task_status)

    async def _serve(self, url: str, conn: _PicowsConnection, task_status: Any) -> None:
        ssl_context = ssl.create_default_context() if url.startswith("wss:") else None
        try:
            transport = await self._open(url, conn, ssl_context)
        except ConnectFailed as exc:
            conn.connect_error = exc
            task_status.started()
            return
        conn.transport = transport
        task_status.started()
        try:
            await conn.disconnected.wait()
        finally:
            transport.disconnect(graceful=False)

    async def _open(
        self, url: str, conn: _PicowsConnection, ssl_context: ssl.SSLContext | None
    ) -> Any:
        try:
            with trio.fail_after(self.connect_timeout):
                transport, _ = await trio_asyncio.aio_as_trio(picows.ws_connect)(
                    lambda: _Listener(conn),
                    url,
                    ssl_context=ssl_context,
                    websocket_handshake_timeout=self.connect_timeout,
                    enable_auto_pong=True,
                    max_frame_size=self.max_message_size,
                    logger_name="mdd",
                )
        except trio.TooSlowError:
            raise ConnectFailed(f"connect timed out after {self.connect_timeout:g}s") from None
        except picows.WSError as exc:
            raise ConnectFailed(f"handshake rejected: {exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"connect failed: {type(exc).__name__}: {exc}") from None
        return transport
