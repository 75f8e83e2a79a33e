"""Helpers for the scale-out tests: a JetStream client, stream readers, daemon configs.

Everything is real: a :class:`~mdd.natsserver.NatsCluster` of three
nats-server processes on loopback, the Binance simulator on a loopback
WebSocket, and mdd daemons (in process, or as ``python -m mdd`` subprocesses
when a test kills one with SIGKILL). Waits poll the real clock under a cap.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import trio
import trio_asyncio
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from trio_asyncio import aio_as_trio

#: The stream every scale-out test writes (one per test: the prefix differs).
STREAM_PREFIX = "SCALE"


async def poll(pred: Callable[[], bool], within: float, what: str) -> None:
    """Wait (real clock) until ``pred()`` holds; fail naming ``what`` after ``within`` s."""
    with trio.move_on_after(within):
        while not pred():  # noqa: ASYNC110 -- state another task or process updates
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@asynccontextmanager
async def js_client(url: str) -> AsyncIterator[Any]:
    """A nats-py client (own trio-asyncio loop) connected to a comma-separated server list."""
    async with trio_asyncio.open_loop():
        nc = NatsClient()
        await aio_as_trio(nc.connect)(
            servers=[u for u in url.split(",") if u],
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
        )
        try:
            yield nc
        finally:
            with trio.CancelScope(shield=True):
                await aio_as_trio(nc.close)()


async def wait_jetstream_cluster(nc: Any, within: float = 30.0) -> None:
    """Wait until the cluster can place an R3 stream (its meta group has a leader and peers)."""
    js = nc.jetstream(timeout=2.0)
    with trio.move_on_after(within):
        while True:
            try:
                await aio_as_trio(js.add_stream)(
                    name="PROBE_R3", subjects=["probe.r3"], num_replicas=3
                )
                await aio_as_trio(js.delete_stream)("PROBE_R3")
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await trio.sleep(0.2)
    raise AssertionError(f"JetStream cluster not ready for an R3 stream within {within}s")


async def create_stream(
    nc: Any, stream: str, prefix: str, *, replicas: int = 3, duplicate_window: float = 120.0
) -> None:
    """Create the stream as the sink would, and wait until its replicas have a leader.

    Provisioning the stream before the daemons start is what the README
    recommends: a publish racing the election of a brand-new R3 stream's
    leader waits for its ack timeout (5 s) before the sink retries it.
    """
    js = nc.jetstream(timeout=2.0)
    await aio_as_trio(js.add_stream)(
        name=stream,
        subjects=[f"{prefix}.>"],
        num_replicas=replicas,
        duplicate_window=duplicate_window,
    )
    with trio.fail_after(20):
        while not (await stream_info(nc, stream)).cluster.leader:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def stream_info(nc: Any, stream: str) -> Any:
    """``StreamInfo`` of ``stream`` (retried through a leader election)."""
    js = nc.jetstream(timeout=2.0)
    for _ in range(50):
        try:
            return await aio_as_trio(js.stream_info)(stream)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, TimeoutError):
            await trio.sleep(0.2)
    raise AssertionError(f"stream {stream} does not answer")


async def stream_count(nc: Any, stream: str) -> int:
    """Messages in the stream now."""
    return int((await stream_info(nc, stream)).state.messages)


async def stream_events(nc: Any, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), decoded, in order.

    Reads with an ephemeral pull consumer from the first message and stops at
    the message that has nothing pending behind it.
    """
    for _ in range(30):
        try:
            return await _read_stream(nc, stream, subject)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, TimeoutError):
            await trio.sleep(0.3)  # a leader election or a reconnect: read again
    raise AssertionError(f"stream {stream} could not be read")


async def _read_stream(nc: Any, stream: str, subject: str) -> list[dict[str, Any]]:
    js = nc.jetstream(timeout=2.0)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0, ack_policy=AckPolicy.NONE
    )
    sub = await aio_as_trio(js.pull_subscribe)(subject, stream=stream, config=config)
    out: list[dict[str, Any]] = []
    try:
        info = await aio_as_trio(sub.consumer_info)()
        pending = int(info.num_pending)
        while pending > 0:
            msgs = await aio_as_trio(sub.fetch)(batch=min(pending, 1000), timeout=3.0)
            for msg in msgs:
                out.append(orjson.loads(msg.data))
                pending = int(msg.metadata.num_pending)
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(sub.unsubscribe)()
    return out


async def stream_trades(nc: Any, stream: str, prefix: str) -> list[tuple[str, str]]:
    """``(symbol, trade_id)`` of every trade stored in the stream, in stream order."""
    events = await stream_events(nc, stream, f"{prefix}.trade.>")
    return [(e["symbol"], e["trade_id"]) for e in events]


def daemon_doc(
    state_dir: Path,
    *,
    sim_url: str,
    nats_url: str,
    prefix: str,
    stream: str,
    symbols: list[str],
    shard: str | None = None,
    provider: str = "binance",
    name: str = "mdd",
    replicas: int = 3,
) -> dict[str, Any]:
    """A daemon configuration (the TOML document as a dict): one Binance feed, NATS only."""
    feed: dict[str, Any] = {
        "name": "spot",
        "symbols": symbols,
        "providers": [provider],
        "channels": ["trade"],
    }
    if shard is not None:
        feed["shard"] = shard
    return {
        "daemon": {"name": name, "state_dir": str(state_dir), "shutdown_grace": 5},
        "http": {"enabled": False},
        "providers": {provider: {"kind": "binance", "url": sim_url}},
        "feeds": [feed],
        "sinks": {
            "nats": {
                "url": nats_url,
                "subject_prefix": prefix,
                "jetstream": True,
                "stream": stream,
                "replicas": replicas,
                "duplicate_window": 120,
            },
            "metrics": {"enabled": False},
        },
    }


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for :func:`daemon_doc` documents (tables, arrays of tables, scalars)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return orjson.dumps(v).decode()
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines: list[str] = []

    def table(path: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        lines.append(f"[{path}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{path}.{k}", v)

    for key, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {value(v)}" for k, v in item.items())
        else:
            table(key, body)
    return "\n".join(lines) + "\n"


def daemon_argv(config_path: Path) -> list[str]:
    """Command line of a daemon subprocess."""
    return [sys.executable, "-m", "mdd", "--config", str(config_path), "--no-http"]
