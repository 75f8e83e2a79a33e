"""Raw capture: every WebSocket frame a provider receives, to gzip JSONL, rotated by size.

A capture is the venue's own bytes with their receive time, so a real day's
traffic can later drive the whole pipeline offline, byte for byte, through
the replay simulator (:mod:`mdd.sim.replay`, ``mdd replay --serve``).

One line per frame::

    {"ts": 1732412345123456789, "provider": "binance",
     "conn": "wss://.../stream?streams=btcusdt@trade", "raw": "{...frame text...}"}

Binary frames carry ``"b64"`` (base64) instead of ``"raw"``. Files are
``<prefix>-<UTC time>-<n>.jsonl.gz`` in the capture directory; a new file
starts when the current one holds ``max_bytes`` of uncompressed lines.

The hot path pays one tuple append per frame: :meth:`CaptureWriter.tap` is the
provider loop's ``frame_tap`` hook (:class:`mdd.providers._ws.WsProvider`),
and a writer task encodes and compresses the buffered frames every
``flush_interval`` seconds (gzip level 1, inline: no thread handoff on two
cores). ``mdd record --config FILE`` runs the daemon with capture on.
"""

from __future__ import annotations

import base64
import gzip
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from .errors import MddError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

    from .daemon import Daemon

LOGGER = logging.getLogger("mdd.capture")

DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
FLUSH_INTERVAL: Final = 0.5
#: Frames buffered before the tap asks the writer to flush early.
FLUSH_FRAMES: Final = 20_000


class CaptureError(MddError):
    """A capture file could not be read or written."""


@attrs.frozen(slots=True)
class CapturedFrame:
    """One raw frame as received: when, from which provider and connection, the bytes."""

    ts: int
    provider: str
    conn: str
    raw: str | bytes


class CaptureWriter:
    """Buffers frames from the tap and writes them to rotating gzip JSONL files.

    Args:
        directory: where capture files go (created).
        prefix: file name prefix.
        max_bytes: uncompressed bytes per file before rotating.
        flush_interval: seconds between writes.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        prefix: str = "capture",
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.files: list[Path] = []
        self.frames = 0
        self._buf: list[tuple[str, str, int, str | bytes]] = []
        self._fh: gzip.GzipFile | None = None
        self._size = 0
        self._wake = trio.Event()

    def tap(self, provider: str, conn: str, ts: int, raw: str | bytes) -> None:
        """The provider loop's ``frame_tap``: one append, never blocks."""
        buf = self._buf
        buf.append((provider, conn, ts, raw))
        if len(buf) >= FLUSH_FRAMES:
            self._wake.set()

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.directory / f"{self.prefix}-{stamp}-{len(self.files) + 1}.jsonl.gz"
        self._fh = gzip.open(path, "ab", compresslevel=1)
        self._size = 0
        self.files.append(path)
        LOGGER.info("capture.file path=%s", path)

    def flush(self) -> int:
        """Encode and write what the tap buffered; returns the frame count written."""
        buf, self._buf = self._buf, []
        if not buf:
            return 0
        if self._fh is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open_next()
        dumps = orjson.dumps
        lines = []
        for provider, conn, ts, raw in buf:
            if isinstance(raw, str):
                rec: dict[str, Any] = {"ts": ts, "provider": provider, "conn": conn, "raw": raw}
            else:
                rec = {
                    "ts": ts,
                    "provider": provider,
                    "conn": conn,
                    "b64": base64.b64encode(raw).decode(),
                }
            lines.append(dumps(rec))
        data = b"\n".join(lines) + b"\n"
        try:
            assert self._fh is not None
            self._fh.write(data)
            self._size += len(data)
            if self._size >= self.max_bytes:
                self._open_next()
        except OSError as exc:
            raise CaptureError(f"capture write failed in {self.directory}: {exc}") from exc
        self.frames += len(buf)
        return len(buf)

    def close(self) -> None:
        """Write what is left and close the current file."""
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every ``flush_interval`` (or sooner when the buffer is large) until cancelled."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                self.flush()
        finally:
            self.close()
            LOGGER.info("capture.closed frames=%d files=%d", self.frames, len(self.files))


def read_capture(path: str | Path) -> Iterator[CapturedFrame]:
    """The frames of one capture file (gzip or plain JSONL), in order.

    Raises:
        CaptureError: unreadable file or a malformed line (named by number).
    """
    p = Path(path)
    opener: Any = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                    raw: str | bytes = rec["raw"] if "raw" in rec else base64.b64decode(rec["b64"])
                    yield CapturedFrame(int(rec["ts"]), rec["provider"], rec["conn"], raw)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise CaptureError(f"{p}:{n}: not a capture line ({exc})") from None
    except (OSError, EOFError) as exc:
        raise CaptureError(f"cannot read capture {p}: {exc}") from exc


def install_capture(daemon: Daemon, writer: CaptureWriter) -> None:
    """Add raw capture to a daemon: every WebSocket provider's frames go to ``writer``.

    The tap is installed now, before the daemon runs, because a provider
    session reads the hook when it opens (services start after producers);
    frames buffer until the writer service starts. The hook is process-wide
    (one daemon per process) and removed when the service ends.
    """
    from .providers._ws import WsProvider

    previous = WsProvider.frame_tap
    WsProvider.frame_tap = writer.tap

    async def capture_service(
        daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await writer.run(task_status=task_status)
        finally:
            WsProvider.frame_tap = previous

    daemon.services.insert(0, capture_service)


def add_parser(sub: Any) -> None:
    """Register ``mdd record``."""
    p = sub.add_parser(
        "record",
        help="run the daemon and capture every raw WebSocket frame to gzip JSONL",
        description="Run the daemon from a config file with raw capture on: every frame "
        "each provider receives, with its receive time, to rotating gzip JSONL files. "
        "Replay them offline with `mdd replay --serve FILE`.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE")
    p.add_argument("--out", default="capture", help="capture directory (default ./capture)")
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="rotate after this many bytes"
    )
    p.set_defaults(func=_cmd_record)


def _cmd_record(args: argparse.Namespace) -> int:
    from .cli import DAEMON_HOOKS, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
    from .config import load_config
    from .daemon import Daemon
    from .errors import ConfigError
    from .logs import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"mdd: invalid config: {exc}")
        return EXIT_USAGE
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    daemon = Daemon(cfg)
    for hook in DAEMON_HOOKS:
        hook(daemon)
    writer = CaptureWriter(args.out, max_bytes=args.max_bytes)
    install_capture(daemon, writer)
    try:
        trio.run(daemon.run)
    except KeyboardInterrupt:
        return EXIT_FAILURE
    print(f"mdd record: {writer.frames} frames in {', '.join(map(str, writer.files)) or '-'}")
    return EXIT_OK
