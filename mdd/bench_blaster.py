"""The load generator of ``mdd bench``: a loopback WebSocket server that blasts trades.

It runs in its own process (``python -m mdd.bench_blaster``) so the measured
process spends its core on the pipeline only. It speaks just enough of
RFC 6455 to be a correct server for one purpose: answer the opening
handshake, then write pre-encoded, unmasked text frames straight onto the TCP
stream, in chunks of many frames per ``send_all``. That is far faster than any
WebSocket library's per-message send, so the client side is what the bench
measures. Frames are real venue wire format (Binance combined-stream trades,
one per frame, or Bybit ``publicTrade`` with N trades per frame) with unique,
increasing trade ids, so SQLite's idempotent insert really inserts.

Client frames are read and discarded; a close frame (or EOF) ends the
connection. With ``--rate`` the server paces itself (events per second,
checked every millisecond), else it writes as fast as TCP drains.

The first line on stdout is ``port=<n>``; the process exits after SIGTERM or
once ``--connections`` clients have come and gone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import time
from typing import Final

import trio

#: RFC 6455 handshake GUID.
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Frames per ``send_all`` at max rate.
CHUNK_FRAMES: Final = 256
_PRICES: Final = tuple(f"{50000 + (i * 37) % 997 / 100:.2f}".encode() for i in range(64))


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (server to client) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class TradeFrames:
    """Encodes trade frames of one venue with increasing trade ids.

    Args:
        venue: ``binance`` (one trade per frame) or ``bybit`` (``per_frame`` trades).
        symbols: venue symbols, rotated frame by frame.
        per_frame: trades per frame (Bybit only; Binance is always 1).
    """

    def __init__(self, venue: str, symbols: list[str], per_frame: int = 1) -> None:
        if venue not in ("binance", "bybit"):
            raise ValueError(f"bench venue must be binance or bybit, got {venue!r}")
        if venue == "binance" and per_frame != 1:
            raise ValueError("Binance sends one trade per frame (--events-per-frame 1)")
        self.venue = venue
        self.symbols = [s.upper() for s in symbols]
        self.per_frame = per_frame
        self.next_id = 1
        self._i = 0

    def frame(self, ms: int | None = None) -> bytes:
        """The next frame's payload (not yet WebSocket-framed); ``ms``: its venue time."""
        symbol = self.symbols[self._i % len(self.symbols)]
        self._i += 1
        if ms is None:
            ms = time.time_ns() // 1_000_000
        if self.venue == "binance":
            tid = self.next_id
            self.next_id += 1
            return b'{"stream":"%s@trade","data":{"e":"trade","E":%d,"s":"%s","t":%d,' % (
                symbol.lower().encode(),
                ms,
                symbol.encode(),
                tid,
            ) + b'"p":"%s","q":"0.00100000","T":%d,"m":%s,"M":true}}' % (
                _PRICES[tid & 63],
                ms,
                b"true" if tid & 1 else b"false",
            )
        trades = []
        for _ in range(self.per_frame):
            tid = self.next_id
            self.next_id += 1
            trades.append(
                b'{"T":%d,"s":"%s","S":"%s","v":"0.001","p":"%s","L":"PlusTick",'
                b'"i":"t-%d","BT":false}'
                % (ms, symbol.encode(), b"Sell" if tid & 1 else b"Buy", _PRICES[tid & 63], tid)
            )
        return b'{"topic":"publicTrade.%s","type":"snapshot","ts":%d,"data":[%s]}' % (
            symbol.encode(),
            ms,
            b",".join(trades),
        )

    def chunk(self, frames: int) -> bytes:
        """``frames`` WebSocket frames, concatenated."""
        ms = time.time_ns() // 1_000_000
        return b"".join(ws_frame(self.frame(ms)) for _ in range(frames))


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


async def handshake(stream: trio.SocketStream) -> bool:
    """Read the HTTP upgrade request and answer 101; False if the client went away."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return False
        buf += data
        if len(buf) > 65536:
            return False
    key = b""
    for line in buf.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if not key:
        return False
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )
    return True


async def _drain_client(stream: trio.SocketStream, done: trio.CancelScope) -> None:
    """Discard client frames; a close frame or EOF ends the connection."""
    while True:
        data = await stream.receive_some(65536)
        if not data or (data[0] & 0x0F) == 0x8:
            done.cancel()
            return


async def blast(
    stream: trio.SocketStream,
    frames: TradeFrames,
    *,
    events: int | None = None,
    rate: float = 0.0,
) -> None:
    """Send trade frames on ``stream`` until ``events`` are sent or the client leaves."""
    per = frames.per_frame
    total_frames = None if events is None else -(-events // per)
    sent = 0
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_client, stream, scope)
            start = trio.current_time()
            while total_frames is None or sent < total_frames:
                if rate > 0:
                    due = int((trio.current_time() - start) * rate / per) + 1
                    n = min(due - sent, 4096)
                    if n <= 0:
                        await trio.sleep(0.001)
                        continue
                else:
                    n = CHUNK_FRAMES
                if total_frames is not None:
                    n = min(n, total_frames - sent)
                await stream.send_all(frames.chunk(n))
                sent += n
            await trio.sleep_forever()  # keep the connection open until the client leaves


async def serve(
    venue: str,
    symbols: list[str],
    *,
    per_frame: int = 1,
    events: int | None = None,
    rate: float = 0.0,
    connections: int = 0,
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on 127.0.0.1; ``task_status.started(port)``. Stops after ``connections`` (0: never)."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    served = 0
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        async with listeners[0]:
            while connections == 0 or served < connections:
                stream = await listeners[0].accept()
                served += 1
                nursery.start_soon(_connection, stream, venue, symbols, per_frame, events, rate)


async def _connection(
    stream: trio.SocketStream,
    venue: str,
    symbols: list[str],
    per_frame: int,
    events: int | None,
    rate: float,
) -> None:
    async with stream:
        try:
            if await handshake(stream):
                await blast(
                    stream, TradeFrames(venue, symbols, per_frame), events=events, rate=rate
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _main(args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(
                args.venue,
                args.symbols.split(","),
                per_frame=args.events_per_frame,
                events=args.events,
                rate=args.rate,
                connections=args.connections,
                task_status=task_status,
            )
        )
        print(f"port={port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m mdd.bench_blaster``: serve until killed (or ``--connections`` are done)."""
    p = argparse.ArgumentParser(prog="mdd.bench_blaster")
    p.add_argument("--venue", default="binance")
    p.add_argument("--symbols", default="BTCUSDT")
    p.add_argument("--events-per-frame", type=int, default=1)
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--connections", type=int, default=0)
    args = p.parse_args(argv)
    try:
        trio.run(_main, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
