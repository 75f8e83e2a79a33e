"""NATS sink: events out as ``{subject_prefix}.{type}.{symbol}``, nats-py under trio-asyncio.

asyncio is fenced off here. :meth:`NatsSink.run` opens the one
``trio_asyncio.open_loop()`` of the process and drives the sink with
:func:`~mdd.sinks.base.run_sink` inside it, so ``open``/``write``/``close``
can call into nats-py. Core NATS: the batch is framed as one block of ``PUB``
commands on the trio side and put in the client's write buffer in one piece,
with no bridge crossing (nats-py's ``publish`` costs several µs per message in
Python, most of it waking its flusher once per message); only the periodic
confirming flush crosses. JetStream: each batch crosses the bridge once, and an
asyncio coroutine publishes it and awaits every ack. Per-message crossings top
out near 8k msg/s; one crossing per batch is ~70x faster (see the README figures).
Server refusals (not connection trouble) raise :class:`NatsPublishError` to the
runner, which logs each attempt and backs off.

Subjects and ids:
    ``md.events.trade.BTCUSDT``, ``md.events.heartbeat.__system__``; the
    payload is :func:`mdd.events.dumps`. A symbol's ``.``, ``*``, ``>`` and
    whitespace become ``_`` in the subject (``BRK.B`` -> ``md.events.trade.BRK_B``,
    one token, so ``md.events.trade.*`` matches it); the payload keeps the symbol.
    With JetStream each message carries ``Nats-Msg-Id``:
    ``provider:symbol:trade_id`` for trades (so a replayed trade, or the same
    trade from a second daemon, is stored once within the stream's
    ``duplicate_window``), ``type:provider:symbol:ts_recv`` for other events
    (``last_update_id`` instead of ``ts_recv`` for books that have one).

Error handling:
    NATS being down never stops the daemon. ``open`` waits (nats-py retries
    the connection forever) and ``write`` keeps retrying the current batch
    until the server takes it; meanwhile the sink's bus lane is the bounded
    buffer and sheds by the drop policy, which counts what it drops. One
    warning per outage, one line when it ends; the sink's health shows
    ``failing`` during the outage. JetStream requested but not enabled on the
    server is a :class:`JetStreamUnavailable` error naming the fix
    (``nats-server -js``), retried by the runner. Cleanup is shielded so a
    cancelled shutdown still closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import nats.js.errors
import orjson
import trio
import trio_asyncio
from nats.aio.client import Client as NatsClient

from ..errors import SinkError
from ..events import dumps, dumps_lines
from ..metrics import NATS_CONNECTED, NATS_OUTAGES, NATS_PUBLISHED
from ..redact import redact_url as redact
from .base import SinkHealth, run_sink

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..bus import SinkInbox
    from ..events import Event

LOGGER = logging.getLogger("mdd.sinks.nats")

#: Seconds between checks while waiting for the connection to come back.
RECONNECT_POLL: Final = 0.05
#: Seconds nats-py waits between connection attempts to the same server.
RECONNECT_WAIT: Final = 0.5
#: Core NATS: seconds between confirming flushes (PING/PONG round trips).
FLUSH_INTERVAL: Final = 0.1
#: Seconds to wait for a flush (core) or for a batch's acks (JetStream).
ACK_TIMEOUT: Final = 5.0
#: Seconds one JetStream API request (stream info, stream create) may take before
#: it is asked again: during a stream leader election the API does not answer,
#: and a short wait with quick retries resumes sooner than one long wait.
STREAM_API_TIMEOUT: Final = 2.0
#: Seconds allowed for closing the connection on shutdown.
CLOSE_TIMEOUT: Final = 2.0

#: Errors from a publish attempt that mean "not now" (connection trouble): the sink
#: waits for the connection and retries the batch itself, warning once per outage.
#: Any other nats error (the server rejected the batch) goes to the runner as a
#: :class:`NatsPublishError`, logged and retried with backoff on every attempt.
_TRANSIENT: Final = (
    nats.errors.TimeoutError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.TooManyStalledMsgsError,
    TimeoutError,
    OSError,
)

#: JetStream error code of a clustered stream still storing the same Nats-Msg-Id
#: (active-active: both daemons publish each trade at nearly the same moment).
DUPLICATE_IN_PROCESS: Final = 10158
#: Seconds to let a batch's other acks arrive after an error ack, and between
#: tries of messages refused with that code (within the batch's ack deadline).
IN_PROCESS_PAUSE: Final = 0.02

#: Characters that cannot appear inside one subject token: replaced by "_".
_SUBJECT_UNSAFE: Final = str.maketrans(dict.fromkeys(". *>\t\r\n", "_"))

Message = tuple[str, bytes, dict[str, str] | None]

_TYPE_SYMBOL: Final = operator.attrgetter("type", "symbol")


class _Sizes(dict[int, bytes]):
    """``n`` -> ``b"<n>\\r\\n"`` (payload sizes repeat: formatting each was ~0.25 µs)."""

    def __missing__(self, n: int) -> bytes:
        text = b"%d\r\n" % n
        if len(self) < 65536:  # sizes are bounded by the max payload; so is this
            self[n] = text
        return text


_SIZES: Final = _Sizes()


class _PubHeads(dict[tuple[str, str], bytes]):
    """``(type, symbol)`` -> ``b"PUB <subject> "``, built on first use."""

    def __init__(self, subject: Callable[[str, str], str]) -> None:
        super().__init__()
        self._subject = subject

    def __missing__(self, key: tuple[str, str]) -> bytes:
        head = self[key] = b"PUB " + self._subject(*key).encode() + b" "
        return head


class NatsLoopMissing(SinkError):
    """The sink was driven without its trio-asyncio loop (bare ``run_sink``)."""

    def __init__(self) -> None:
        super().__init__(
            "the NATS sink must be run with NatsSink.run (mdd.sinks.sink_runner), "
            "which opens its trio-asyncio loop; bare run_sink cannot call nats-py"
        )


class NatsPublishError(SinkError):
    """The server refused a batch (not a connection problem); the runner retries it."""

    def __init__(self, url: str, exc: BaseException) -> None:
        super().__init__(f"NATS at {url} refused the batch: {type(exc).__name__}: {exc}")


class JetStreamUnavailable(SinkError):
    """JetStream was requested but the server does not offer it."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"JetStream is not available on {url} ({detail}): start the server with "
            "JetStream enabled (`nats-server -js`, or `jetstream {}` in its config), "
            "or set [sinks.nats] jetstream = false"
        )


class JetStreamTimeout(SinkError):
    """The JetStream API did not answer in time: a leader election, or an overloaded server."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(
            f"the JetStream API on {url} did not answer within {seconds:g}s "
            "(a stream leader election, or an overloaded server); retrying"
        )


def server_list(url: str) -> list[str]:
    """The servers of ``url``: one URL or a comma-separated list (a cluster's seed servers)."""
    return [u.strip() for u in url.split(",") if u.strip()]


#: The nats-py client internals :meth:`NatsSink._publish_core` relies on
#: (checked per client; nats-py is pinned in requirements.lock).
_RAW_ATTRS: Final = ("_pending", "_pending_data_size", "_max_pending_size", "_flush_queue")


def _raw_capable(nc: Any) -> bool:
    return nc is not None and all(hasattr(nc, name) for name in _RAW_ATTRS)


def msg_id(event: Event) -> str:
    """The stable ``Nats-Msg-Id`` of an event (JetStream de-duplication key)."""
    if event.type == "trade":
        return f"{event.provider}:{event.symbol}:{event.trade_id}"  # type: ignore[union-attr]
    if event.type == "book" and event.last_update_id is not None:  # type: ignore[union-attr]
        return f"book:{event.provider}:{event.symbol}:{event.last_update_id}"  # type: ignore[union-attr]
    return f"{event.type}:{event.provider}:{event.symbol}:{event.ts_recv}"


class _AckInbox:
    """JetStream acks on one reply subscription of ours (asyncio side only).

    Each message goes out with reply subject ``<inbox>.<n>``; the ack's
    subscription callback resolves that message's future: True for a
    duplicate, False for a store, or the server's error (``APIError``
    subclass, ``NoStreamResponseError`` when no stream listens). Callbacks only
    touch futures and dicts, never a trio object.
    """

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = ""
        self.futures: dict[str, asyncio.Future[bool]] = {}
        self._seq = 0

    async def start(self) -> None:
        """Subscribe to the reply inbox (nats-py re-subscribes after reconnects)."""
        self.prefix = self.nc.new_inbox()
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_ack)

    async def publish(self, subject: str, payload: bytes, headers: Any) -> asyncio.Future[bool]:
        """Send one message; the returned future resolves with its ack."""
        self._seq += 1
        reply = f"{self.prefix}.{self._seq}"
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.futures[reply] = future
        await self.nc.publish(subject, payload, reply=reply, headers=headers)
        return future

    def forget(self, futures: set[asyncio.Future[bool]]) -> None:
        """Give up on unanswered futures (a late ack is then ignored)."""
        if not futures:
            return
        for reply, future in list(self.futures.items()):
            if future in futures:
                del self.futures[reply]
                future.cancel()

    async def _on_ack(self, msg: Any) -> None:
        future = self.futures.pop(msg.subject, None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = orjson.loads(msg.data)
            error = resp.get("error")
            if error:
                nats.js.errors.APIError.from_error(error)  # raises the matching subclass
            future.set_result(bool(resp.get("duplicate", False)))
        except nats.js.errors.APIError as exc:
            future.set_exception(exc)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            future.set_exception(nats.errors.Error(f"unreadable JetStream ack: {exc!r}"))


class NatsSink:
    """Publishes every event to NATS (optionally JetStream), one bridge crossing per batch.

    Run it with :meth:`run` (not bare :func:`run_sink`): that opens the
    trio-asyncio loop the sink needs for its whole life.

    Args:
        url: server URL (credentials in it are never logged).
        subject_prefix: subjects are ``{subject_prefix}.{type}.{symbol}``.
        jetstream: publish to JetStream with ``Nats-Msg-Id`` and await acks.
        stream: JetStream stream name, created over ``{subject_prefix}.>`` if missing.
        duplicate_window: the stream's de-duplication window, seconds.
        replicas: the stream's replica count when the sink creates it (3 on a
            3-node cluster: the stream survives the loss of one server).
        batch_size: most events per bridge crossing.
        batch_interval: seconds to keep collecting a short batch.
        ack_timeout: seconds for a batch's flush or acks before it is retried.
    """

    name = "nats"

    def __init__(
        self,
        url: str,
        *,
        subject_prefix: str = "md.events",
        jetstream: bool = False,
        stream: str = "MD_EVENTS",
        duplicate_window: float = 120.0,
        replicas: int = 1,
        batch_size: int = 500,
        batch_interval: float = 0.0,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.url = url
        self.safe_url = redact(url)
        self.subject_prefix = subject_prefix.rstrip(".")
        self.jetstream = jetstream
        self.stream = stream
        self.duplicate_window = duplicate_window
        self.replicas = replicas
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.ack_timeout = ack_timeout
        #: Core NATS: hand whole PUB blocks to nats-py's buffer (see _publish_core);
        #: False, or a nats-py without those internals, publishes message by message.
        self.raw_publish = True
        self.health = SinkHealth(self.name)
        self.nc: Any = None
        self._stream_ready = False
        self._subjects: dict[tuple[str, str], str] = {}
        self._pub_heads = _PubHeads(self.subject_for)
        self._down_since: float | None = None
        self._last_error = ""
        self._closing = False
        self._acks: _AckInbox | None = None
        self.published = 0
        self._last_flush = float("-inf")
        self.duplicates = 0
        self.outages = 0

    # -- running -------------------------------------------------------------

    async def run(
        self,
        inbox: SinkInbox,
        health: SinkHealth | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the trio-asyncio loop and drive this sink from ``inbox`` inside it.

        Same contract as :func:`~mdd.sinks.base.run_sink` (the daemon starts it
        with ``nursery.start``); returns when the lane is drained and closed.
        """
        if health is not None:
            self.health = health
        async with trio_asyncio.open_loop():
            await run_sink(self, inbox, self.health, task_status=task_status)

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Connect (waiting as long as it takes) and, with JetStream, ensure the stream.

        Raises:
            NatsLoopMissing: called outside :meth:`run` (no trio-asyncio loop).
            JetStreamUnavailable: JetStream requested, the server has none.
        """
        if trio_asyncio.current_loop.get() is None:
            raise NatsLoopMissing()
        if self.nc is None or self.nc.is_closed:
            self.nc = NatsClient()
            self._stream_ready = False  # JetStream context and ack inbox belong to a client
            await self._connect()
        if self.jetstream and not self._stream_ready:
            await self._ensure_stream()
        self._up()

    async def _connect(self) -> None:
        nc = self.nc

        # nats-py callbacks run on the asyncio side: plain state only, never a trio await.
        async def on_error(exc: Exception) -> None:
            self._last_error = f"{type(exc).__name__}: {exc}"
            if not nc.is_connected and not self._closing:
                self._down(self._last_error)

        async def on_disconnected() -> None:
            if not self._closing:
                self._down(self._last_error or "disconnected")

        # Returns once connected: nats-py retries forever (max_reconnect_attempts=-1).
        await trio_asyncio.aio_as_trio(nc.connect)(**self._options(on_error, on_disconnected))
        LOGGER.info("sink.nats.connected url=%s jetstream=%s", self.safe_url, self.jetstream)

    def _options(self, on_error: Any, on_disconnected: Any) -> dict[str, Any]:
        return {
            "servers": server_list(self.url),
            "name": "mdd",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # never give up; the lane is the buffer
            "reconnect_time_wait": RECONNECT_WAIT,
            "connect_timeout": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
        }

    async def _ensure_stream(self) -> None:
        try:
            created = await trio_asyncio.aio_as_trio(self._aio_ensure_stream)()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise JetStreamUnavailable(self.safe_url, type(exc).__name__) from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise JetStreamTimeout(self.safe_url, self._api_timeout()) from exc
        self._stream_ready = True
        LOGGER.info(
            "sink.nats.stream stream=%s subjects=%s.> created=%s duplicate_window=%.0fs "
            "replicas=%d",
            self.stream,
            self.subject_prefix,
            created,
            self.duplicate_window,
            self.replicas,
        )

    def _api_timeout(self) -> float:
        return min(self.ack_timeout, STREAM_API_TIMEOUT)

    async def _aio_ensure_stream(self) -> bool:
        """asyncio side: the stream exists afterwards; True if it was created."""
        js = self.nc.jetstream(timeout=self._api_timeout())
        if self._acks is None or self._acks.nc is not self.nc:
            self._acks = _AckInbox(self.nc)
            await self._acks.start()
        try:
            await js.stream_info(self.stream)
            return False
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.subject_prefix}.>"],
                duplicate_window=self.duplicate_window,
                num_replicas=self.replicas,
            )
            return True

    async def close(self) -> None:
        """Flush and close the connection (shielded, bounded by :data:`CLOSE_TIMEOUT`)."""
        nc, self.nc = self.nc, None
        self._closing = True
        NATS_CONNECTED.set(0)
        if nc is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT) as scope:
            try:
                await trio_asyncio.aio_as_trio(nc.close)()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                LOGGER.warning("sink.nats.close_failed url=%s error=%r", self.safe_url, str(exc))
        if scope.cancelled_caught:
            LOGGER.warning("sink.nats.close_timeout url=%s", self.safe_url)
        LOGGER.info(
            "sink.nats.closed url=%s published=%d outages=%d",
            self.safe_url,
            self.published,
            self.outages,
        )

    # -- writing -------------------------------------------------------------

    def encode(self, batch: Sequence[Event]) -> list[Message]:
        """Subjects, payloads and (with JetStream) headers for one batch."""
        subjects = self._subjects
        js = self.jetstream
        out: list[Message] = []
        for e in batch:
            key = (e.type, e.symbol)
            subject = subjects.get(key)
            if subject is None:
                subject = subjects[key] = self.subject(e)
            out.append((subject, dumps(e), {"Nats-Msg-Id": msg_id(e)} if js else None))
        return out

    def subject(self, event: Event) -> str:
        """``{prefix}.{type}.{symbol}`` with the symbol made one safe subject token."""
        return self.subject_for(event.type, event.symbol)

    def subject_for(self, kind: str, symbol: str) -> str:
        """The subject of events of type ``kind`` for ``symbol``."""
        token = symbol.translate(_SUBJECT_UNSAFE) or "_"
        return f"{self.subject_prefix}.{kind}.{token}"

    def pub_block(self, batch: Sequence[Event]) -> bytes:
        """The batch as one block of core-NATS ``PUB <subject> <size>`` commands.

        Payloads come from one encoder call for the whole batch (JSON lines,
        split on the newline: JSON text never contains a raw one), and the
        block is assembled by ``map``/``zip``/``join`` in C, not a Python loop.

        Raises:
            nats.errors.MaxPayloadError: an event is larger than the server allows.
        """
        payloads = dumps_lines(batch).split(b"\n")
        heads = map(self._pub_heads.__getitem__, map(_TYPE_SYMBOL, batch))
        sizes = map(_SIZES.__getitem__, map(len, payloads))
        block = b"".join(
            itertools.chain.from_iterable(zip(heads, sizes, payloads, itertools.repeat(b"\r\n")))
        )
        limit = self._max_payload()
        if limit and len(block) > limit and max(map(len, payloads)) > limit:
            raise nats.errors.MaxPayloadError
        return block

    def _max_payload(self) -> int:
        nc = self.nc
        return int(getattr(nc, "max_payload", 0) or 0) if nc is not None else 0

    async def write(self, batch: Sequence[Event]) -> None:
        """Publish the batch; while NATS is away, wait and retry it (never drop it)."""
        msgs: Any
        if self.jetstream:
            msgs = self.encode(batch)
            publish = trio_asyncio.aio_as_trio(self._aio_publish_js)
        elif self.raw_publish and _raw_capable(self.nc):
            msgs = self.pub_block(batch)
            publish = self._publish_core
        else:
            msgs = self.encode(batch)
            publish = trio_asyncio.aio_as_trio(self._aio_publish_each)
        while True:
            nc = self.nc
            if nc is None or nc.is_closed:
                await self.open()
                continue
            if not nc.is_connected:
                self._down(self._last_error or "disconnected")
                await trio.sleep(RECONNECT_POLL)
                continue
            if self.jetstream and not self._stream_ready:
                try:
                    await self._ensure_stream()
                except JetStreamTimeout as exc:
                    self._down(str(exc))  # an outage, as a dropped connection is
                    await trio.sleep(RECONNECT_POLL)
                    continue
            try:
                await publish(msgs)
            except nats.js.errors.NoStreamResponseError:
                self._stream_ready = False
                self._down(f"no stream {self.stream} answers on {self.subject_prefix}.>")
                await trio.sleep(RECONNECT_POLL)
                continue
            except _TRANSIENT as exc:
                self._down(f"{type(exc).__name__}: {exc}")
                await trio.sleep(RECONNECT_POLL)
                continue
            except nats.errors.Error as exc:
                raise NatsPublishError(self.safe_url, exc) from exc
            break
        self._up()
        self.published += len(batch)
        NATS_PUBLISHED.inc(len(batch))

    async def _aio_publish_each(self, msgs: list[Message]) -> None:
        """asyncio side, the public API: ``publish`` per message (a nats-py without the
        internals :meth:`_publish_core` uses, or ``raw_publish=False``)."""
        nc = self.nc
        for subject, payload, _headers in msgs:
            await nc.publish(subject, payload)
        now = asyncio.get_running_loop().time()  # trio-asyncio: the trio clock
        if now - self._last_flush >= FLUSH_INTERVAL:
            self._last_flush = now
            await nc.flush(timeout=self.ack_timeout)

    async def _publish_core(self, block: bytes) -> None:
        """Hand a batch's PUB block to nats-py; confirm with a flush at most every FLUSH_INTERVAL.

        The block joins nats-py's pending-write buffer, exactly where its own
        ``publish`` puts each message (so reconnect buffering and ordering stay
        nats-py's), and its flusher task is woken to write it to the socket.
        Both are plain calls on the asyncio loop's objects from this (the same)
        thread, so a batch costs no bridge crossing at all: at 10k events/s,
        with batches of ~10 events, crossings took a third of the CPU. Only
        a full write buffer (the server is slow) and the periodic flush (a
        PING/PONG round trip that confirms the server has the data) cross into
        asyncio and wait; ``close`` flushes what is pending.
        """
        nc = self.nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        limit = nc._max_pending_size
        if limit > 0 and nc._pending_data_size + len(block) > limit:
            await trio_asyncio.aio_as_trio(nc._flush_pending)(force_flush=True)
        nc._pending.append(block)
        nc._pending_data_size += len(block)
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            loop = trio_asyncio.current_loop.get()
            queue.put_nowait(loop.create_future())  # wakes nats-py's flusher task
        now = trio.current_time()
        if now - self._last_flush >= FLUSH_INTERVAL:
            self._last_flush = now
            try:
                await trio_asyncio.aio_as_trio(nc.flush)(timeout=self.ack_timeout)
            except _TRANSIENT as exc:
                # The block is already in nats-py's buffer (written again after a
                # reconnect): do not send the batch twice, just report the trouble.
                self._down(f"{type(exc).__name__}: {exc}")

    async def _aio_publish_js(self, msgs: list[Message]) -> None:
        """asyncio side: publish a batch to JetStream, all in flight at once, await every ack.

        Acks come back on the sink's own reply inbox (:class:`_AckInbox`): one
        future per message and no task, ~2-3x the acked rate of gathering
        ``js.publish`` calls under trio-asyncio (measured), and unlike nats-py
        2.16's ``publish_async`` an error ack fails its message's future.

        Messages refused with :data:`DUPLICATE_IN_PROCESS` (a clustered stream
        still storing the same Nats-Msg-Id from another daemon) are asked again
        every :data:`IN_PROCESS_PAUSE` seconds within the batch's ack deadline:
        the answer is then a duplicate ack (the other copy was stored) or a
        store (it was not).
        """
        inbox = self._acks
        assert inbox is not None
        duplicates = 0
        failures: list[BaseException] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        while True:
            futures = [await inbox.publish(s, p, h) for s, p, h in msgs]
            left = max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(futures, timeout=max(left, IN_PROCESS_PAUSE))
            inbox.forget(pending)
            failures = []
            again: list[Message] = []
            for msg, future in zip(msgs, futures, strict=True):
                if future not in done:
                    continue
                exc = future.exception()
                if exc is None:
                    duplicates += future.result()
                    continue
                if getattr(exc, "err_code", None) == DUPLICATE_IN_PROCESS:
                    again.append(msg)
                failures.append(exc)
            if pending:
                failures.append(
                    TimeoutError(
                        f"{len(pending)} of {len(futures)} JetStream acks missing "
                        f"after {self.ack_timeout}s"
                    )
                )
            if not again or len(again) < len(failures) or loop.time() >= deadline:
                break
            msgs = again
            await asyncio.sleep(IN_PROCESS_PAUSE)
        self.duplicates += duplicates
        if failures:
            # A refusal wins over connection trouble: it will not cure itself.
            refused = [
                f
                for f in failures
                if isinstance(f, nats.js.errors.APIError)
                and not isinstance(f, nats.js.errors.ServiceUnavailableError)
            ]
            raise (refused or failures)[0]

    # -- outage bookkeeping ----------------------------------------------------

    def _down(self, reason: str) -> None:
        if self._down_since is not None:
            return
        self._down_since = trio.current_time()
        self.outages += 1
        NATS_OUTAGES.inc()
        NATS_CONNECTED.set(0)
        self.health.state = "failing"
        self.health.last_error = f"nats unavailable: {reason}"
        LOGGER.warning(
            "sink.nats.unavailable url=%s error=%r action=retrying "
            "(events wait in the bus lane, which sheds by policy)",
            self.safe_url,
            reason,
        )

    def _up(self) -> None:
        NATS_CONNECTED.set(1)
        self._last_error = ""
        if self._down_since is None:
            return
        LOGGER.warning(
            "sink.nats.recovered url=%s outage=%.1fs",
            self.safe_url,
            trio.current_time() - self._down_since,
        )
        self._down_since = None
        self.health.state = "ok"
