"""``mdd replay``: stored events back into NATS or a fresh SQLite; raw captures as a venue.

Two uses:

* ``mdd replay EVENTS.jsonl --speed N|max --nats URL`` (or ``--sqlite PATH``)
  reads normalized events (the JSONL sink's files, one event per line) and
  publishes them through the same sinks the daemon uses, paced by their
  ``ts_recv`` divided by the speed -- for backtesting the consumer. With
  ``--jetstream`` every trade keeps its ``Nats-Msg-Id``, so a replay into a
  stream that already holds it is de-duplicated.
* ``mdd replay --serve CAPTURE.jsonl.gz --speed N|max`` serves a raw capture
  (:mod:`mdd.capture`) as a venue WebSocket on loopback
  (:mod:`mdd.sim.replay`); point a provider's ``url`` at it.
"""

from __future__ import annotations

import gzip
import logging
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from .errors import MddError
from .events import loads

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

    from .events import Event
    from .sinks.base import Sink

LOGGER = logging.getLogger("mdd.replay")

BATCH: Final = 500


class ReplayError(MddError):
    """The events file could not be read."""


def read_events(path: str | Path) -> Iterator[Event]:
    """Events from a JSONL file (``.gz`` too), in file order.

    Raises:
        ReplayError: unreadable file or a line that is not an event (named by number).
    """
    p = Path(path)
    opener: Any = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield loads(line)
                    except Exception as exc:
                        raise ReplayError(f"{p}:{n}: not an event ({exc})") from None
    except OSError as exc:
        raise ReplayError(f"cannot read {p}: {exc}") from exc


async def replay_events(
    paths: list[str | Path], sink: Sink, *, speed: float = 0.0, batch: int = BATCH
) -> int:
    """Write the events of ``paths`` to ``sink`` in batches; returns how many.

    With ``speed > 0`` each event is released at its ``ts_recv`` offset divided by
    ``speed`` (a batch never waits past its first event's due time).
    """
    await sink.open()
    n = 0
    t0 = trio.current_time()
    first: int | None = None
    pending: list[Event] = []
    try:
        for path in paths:
            for event in read_events(path):
                if first is None:
                    first = event.ts_recv
                if speed > 0:
                    due = t0 + (event.ts_recv - first) / 1e9 / speed
                    if pending and due > trio.current_time():
                        await sink.write(pending)
                        n += len(pending)
                        pending = []
                    await trio.sleep_until(due)
                pending.append(event)
                if len(pending) >= batch:
                    await sink.write(pending)
                    n += len(pending)
                    pending = []
        if pending:
            await sink.write(pending)
            n += len(pending)
    finally:
        with trio.CancelScope(shield=True):
            await sink.close()
    return n


async def _replay_to_nats(paths: list[str | Path], url: str, jetstream: bool, speed: float) -> int:
    import trio_asyncio

    from .sinks.nats import NatsSink

    async with trio_asyncio.open_loop():
        return await replay_events(paths, NatsSink(url, jetstream=jetstream), speed=speed)


async def _serve(args: argparse.Namespace, speed: float) -> None:
    from .sim.replay import serve_replay

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_replay, args.files, provider=args.provider, speed=speed, port=args.port)
        )
        print(
            f"mdd replay: serving {len(server.frames)} {server.provider} frames at {server.url}"
            f" (speed {args.speed}); Ctrl-C to stop",
            flush=True,
        )


def add_parser(sub: Any) -> None:
    """Register ``mdd replay``."""
    p = sub.add_parser(
        "replay",
        help="publish stored events to NATS or SQLite, or serve a raw capture as a venue",
        description="Replay normalized events (JSONL) into NATS or a fresh SQLite, or serve a "
        "raw capture (mdd record) as a venue WebSocket with --serve.",
    )
    p.add_argument("files", nargs="+", help="events JSONL (or capture files with --serve)")
    p.add_argument("--speed", default="max", help="1, 10, ... or max (default max)")
    p.add_argument("--nats", metavar="URL", help="publish to this NATS server")
    p.add_argument("--jetstream", action="store_true", help="publish to JetStream (dedup ids)")
    p.add_argument("--sqlite", metavar="PATH", help="write into this SQLite file")
    p.add_argument("--serve", action="store_true", help="serve raw capture files as a venue")
    p.add_argument("--provider", default=None, help="with --serve: whose frames (default first)")
    p.add_argument("--port", type=int, default=0, help="with --serve: port (default free)")
    p.set_defaults(func=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from .sim.replay import parse_speed

    try:
        speed = parse_speed(args.speed)
    except ValueError as exc:
        print(f"mdd replay: bad --speed: {exc}", file=sys.stderr)
        return 2
    try:
        if args.serve:
            try:
                trio.run(_serve, args, speed)
            except KeyboardInterrupt:
                pass
            return 0
        if bool(args.nats) == bool(args.sqlite):
            print("mdd replay: give exactly one of --nats URL or --sqlite PATH", file=sys.stderr)
            return 2
        if args.nats:
            n = trio.run(_replay_to_nats, args.files, args.nats, args.jetstream, speed)
            print(f"mdd replay: {n} events published to {args.nats}")
        else:
            from .sinks.sqlite import SqliteSink

            n = trio.run(partial(replay_events, args.files, SqliteSink(args.sqlite), speed=speed))
            print(f"mdd replay: {n} events written to {args.sqlite}")
    except MddError as exc:
        print(f"mdd replay: {exc}", file=sys.stderr)
        return 1
    return 0
