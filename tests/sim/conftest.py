"""Helpers for the simulator tests: WebSocket clients that never leak sockets.

trio-websocket 0.12's client does not close its TCP socket when the server
closes the connection or rejects the upgrade (a ResourceWarning at the next
gc, an error under our warning filters, possibly blamed on another test).
``ws_connect`` therefore opens the TCP stream itself and closes it; the bare
wsproto ``RawClient`` shows pings (trio-websocket answers them silently) and
rejections.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import wsproto
import wsproto.events as we
from trio_websocket import WebSocketConnection, wrap_client_stream


class RawClient:
    """A minimal WebSocket client that shows every event and answers nothing."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    async def handshake(
        self, target: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> we.Event:
        """Send the upgrade; returns AcceptConnection or RejectConnection."""
        request = we.Request(
            host=f"127.0.0.1:{self.port}", target=target, extra_headers=headers or []
        )
        await self.stream.send_all(self.ws.send(request))
        return await self.next_event()

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(we.TextMessage(data=text)))

    async def next_event(self) -> we.Event:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed TCP")
            self.ws.receive_data(data)

    async def next_text(self) -> str:
        """The next whole text message (wsproto hands out fragments), skipping pings."""
        parts: list[str] = []
        while True:
            event = await self.next_event()
            if isinstance(event, we.TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts)
            if isinstance(event, we.CloseConnection):
                raise EOFError(f"closed {event.code} {event.reason}")


RawConnect = Callable[..., Awaitable[tuple[RawClient, we.Event]]]


@pytest.fixture
async def raw_connect() -> AsyncIterator[RawConnect]:
    """``await raw_connect(port, target)`` -> (client, handshake event); closed at teardown."""
    streams: list[trio.SocketStream] = []

    async def connect(
        port: int,
        target: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        rcvbuf: int | None = None,
    ) -> tuple[RawClient, we.Event]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        streams.append(stream)
        if rcvbuf is not None:  # a small window makes a slow reader cheap to simulate
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client = RawClient(stream, port)
        return client, await client.handshake(target, headers)

    yield connect
    for stream in streams:
        await stream.aclose()


@asynccontextmanager
async def ws_connect(port: int, resource: str) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client connection whose TCP stream we own and close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", resource, message_queue_size=256
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


@pytest.fixture
def ws_client() -> Callable[[int, str], AbstractAsyncContextManager[WebSocketConnection]]:
    """``async with ws_client(port, resource) as ws``: see :func:`ws_connect`."""
    return ws_connect
