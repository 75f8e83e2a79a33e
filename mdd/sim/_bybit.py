"""Bybit V5 public spot WebSocket, as the simulator speaks it.

Endpoint ``/v5/public/spot``. Client ops: ``subscribe`` / ``unsubscribe``
(``args`` at most 10, ``req_id`` echoed only when sent) and ``ping`` (spot pong
``{"success":true,"ret_msg":"pong","conn_id":..,"op":"ping"}``). Topics:
``publicTrade.SYM`` (``data[]`` ascending, spot fields ``i`` numeric string,
``BT``, ``seq``, ``RPI``; no ``L``), ``orderbook.1.SYM`` (snapshot only, resent
unchanged with the same ``u`` every ``book_resend`` seconds) and
``orderbook.50.SYM`` (snapshot on subscribe, then deltas with consecutive ``u``
and increasing ``seq``, ``cts``) and ``orderbook.200/1000.SYM`` (the whole
book, snapshot then every step's changes) and ``tickers.SYM`` (snapshot per
step: last price and session high/low/volume/turnover, no bid/ask). Control
frames are Go-escaped like the venue's (``>`` as ``\\u003e``). A subscribe
with any bad topic fails as a whole.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from ._market import QUOTE_CURRENCIES, fmt_min
from ._server import Session, dumps

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trio_websocket import WebSocketConnection

    from ._market import Step
    from ._server import SimServer

PATH: Final = "/v5/public/spot"
#: Most args one subscribe request may carry on spot.
MAX_ARGS: Final = 10
#: Order book depths the simulator serves. The sim's book never holds more
#: than 120 levels a side, so 200 and 1000 are the whole book.
DEPTHS: Final = (1, 50, 200, 1000)
#: Offset making generated trade ids look like spot's 19-digit numeric strings.
TRADE_ID_BASE: Final = 2_290_000_000_000_000_000


def go_escape(text: str) -> str:
    """Escape ``<``, ``>`` and ``&`` as Go's encoding/json does (``\\u003e``)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class BybitSession(Session):
    """One Bybit public spot connection."""

    venue = "bybit"

    def __init__(
        self,
        server: SimServer,
        ws: WebSocketConnection,
        request_path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(server, ws, request_path, headers)
        self.conn_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.topics: dict[str, tuple[str, str]] = {}  # topic -> (kind, SYMBOL)
        self.by_symbol: dict[str, dict[str, str]] = {}  # SYMBOL -> {kind: topic}
        self.last_ping = trio.current_time()
        self._level1: dict[str, tuple[float, dict[str, Any]]] = {}  # topic -> (sent at, frame)
        self._full_from: dict[str, int] = {}  # whole-book topic -> first step index to send

    # -- timers --------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the idle cut and the orderbook.1 resender."""
        nursery.start_soon(self._idle_watch)
        nursery.start_soon(self._resender)

    async def _idle_watch(self) -> None:
        while True:
            limit = self.faults.idle_timeout
            if limit is None:
                await trio.sleep(1.0)
                continue
            deadline = self.last_ping + limit
            if trio.current_time() >= deadline:
                self.close(1000, "idle: no ping")
                return
            await trio.sleep_until(min(deadline, trio.current_time() + 1.0))

    async def _resender(self) -> None:
        period = self.server.options.book_resend
        while True:
            await trio.sleep(period / 4)
            now = trio.current_time()
            for topic, (sent_at, frame) in list(self._level1.items()):
                if now - sent_at >= period and topic in self.topics:
                    frame = {**frame, "ts": self.market.clock.now_ns() // 1_000_000}
                    self._level1[topic] = (now, frame)
                    await self.send_data(dumps(frame), "quote")

    # -- client frames -------------------------------------------------------------

    def _reply(self, success: bool, ret_msg: str, op: str, req: dict[str, Any]) -> str:
        out: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id}
        if "req_id" in req:
            out["req_id"] = req["req_id"]
        out["op"] = op
        return go_escape(dumps(out))

    async def on_text(self, message: str | bytes) -> None:
        """Answer ping, subscribe and unsubscribe."""
        try:
            req = orjson.loads(message)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict):
            await self.send_control(self._reply(False, "error:request not json", "", {}))
            return
        op = req.get("op")
        if op == "ping":
            self.last_ping = trio.current_time()
            if not self.faults.ignore_pings:
                await self.send_control(self._reply(True, "pong", "ping", req))
        elif op == "subscribe":
            await self._subscribe(req)
        elif op == "unsubscribe":
            args = req.get("args")
            if not isinstance(args, list):
                await self.send_control(self._reply(False, "error:args invalid", op, req))
                return
            for topic in args:
                self._remove(topic)
            await self.send_control(self._reply(True, "", op, req))
        else:
            msg = f"error:handler not found, op:{op}"
            await self.send_control(self._reply(False, msg, str(op or ""), req))

    def _check(self, topic: Any) -> str | None:
        """Failure text for a topic, None when it is acceptable."""
        if not isinstance(topic, str):
            return "error:args invalid"
        parts = topic.split(".")
        if parts[0] in ("publicTrade", "tickers") and len(parts) == 2:
            symbol = parts[1]
        elif parts[0] == "orderbook" and len(parts) == 3 and parts[1] in {str(d) for d in DEPTHS}:
            symbol = parts[2]
        else:
            return f"error:handler not found,topic:{topic}"
        if symbol not in self.market.symbols and not any(
            symbol.endswith(q) and len(symbol) > len(q) for q in QUOTE_CURRENCIES
        ):
            return f"Invalid symbol :[{topic}]"
        if topic in self.topics:
            return f"error:already subscribed,topic:{topic}"
        return None

    async def _subscribe(self, req: dict[str, Any]) -> None:
        args = req.get("args")
        if not isinstance(args, list) or not args:
            await self.send_control(self._reply(False, "error:args invalid", "subscribe", req))
            return
        if len(args) > MAX_ARGS:
            await self.send_control(self._reply(False, "args size >10", "subscribe", req))
            return
        problems = [p for p in (self._check(t) for t in args) if p]
        if self.faults.reject_subscribe and not problems:
            problems = [f"Invalid symbol :[{args[0]}]"]
        if problems:
            await self.send_control(self._reply(False, problems[0], "subscribe", req))
            return
        ack = self._reply(True, "subscribe", "subscribe", req)
        delay = self.faults.subscribe_delay
        if delay <= 0:
            await self.send_control(ack)
        for topic in args:
            await self._add(topic)
        if delay > 0:
            # As on the venue, the first snapshot may arrive before the ack.
            self.later(delay, partial_send(self, ack))

    async def _add(self, topic: str) -> None:
        parts = topic.split(".")
        symbol = parts[-1]
        kind = (
            "trade"
            if parts[0] == "publicTrade"
            else "ticker"
            if parts[0] == "tickers"
            else f"book{parts[1]}"
        )
        self.market.ensure(symbol)
        self.topics[topic] = (kind, symbol)
        self.by_symbol.setdefault(symbol, {})[kind] = topic
        self.symbols.add(symbol)
        self.server.subscriptions.append(topic)
        step = self.last.get(symbol) or self.market.latest(symbol)
        if kind == "book1":
            await self._send_level1(topic, step)
        elif kind == "book50":
            await self._send_book(topic, step, snapshot=True)
        elif kind in ("book200", "book1000"):
            await self._send_full_snapshot(topic, symbol)

    def _remove(self, topic: Any) -> None:
        entry = self.topics.pop(topic, None) if isinstance(topic, str) else None
        if entry is None:
            return
        kind, symbol = entry
        kinds = self.by_symbol[symbol]
        kinds.pop(kind, None)
        self._level1.pop(topic, None)
        self._full_from.pop(topic, None)
        if not kinds:
            del self.by_symbol[symbol]
            self.symbols.discard(symbol)

    # -- market data -----------------------------------------------------------------

    async def _send_level1(self, topic: str, step: Step) -> None:
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        cts = step.ts_ns // 1_000_000
        frame = {
            "topic": topic,
            "ts": cts + 1,
            "type": "snapshot",
            "data": {
                "s": step.symbol,
                "b": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in step.bids[:1]],
                "a": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in step.asks[:1]],
                "u": step.u1,
                "seq": step.seq,
            },
            "cts": cts,
        }
        self._level1[topic] = (trio.current_time(), frame)
        await self.send_data(dumps(frame), "quote")

    async def _send_book(self, topic: str, step: Step, *, snapshot: bool) -> None:
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        bids = step.bids if snapshot else step.delta_bids
        asks = step.asks if snapshot else step.delta_asks
        cts = step.ts_ns // 1_000_000
        frame = {
            "topic": topic,
            "ts": cts + 1,
            "type": "snapshot" if snapshot else "delta",
            "data": {
                "s": step.symbol,
                "b": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in bids],
                "a": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in asks],
                "u": step.u50,
                "seq": step.seq,
            },
            "cts": cts,
        }
        if snapshot:
            await self.send_data(dumps(frame), "book")
        else:
            await self.send_book_update(topic, dumps(frame))  # faults: skip/duplicate/reorder

    async def _send_full_snapshot(self, topic: str, symbol: str) -> None:
        """Whole-book snapshot from the live book; deltas continue from the next step."""
        state = self.market.ensure(symbol)
        dec_p, dec_q = state.spec.price_decimals, state.spec.qty_decimals
        latest = state.latest
        self._full_from[topic] = self.market.head
        cts = latest.ts_ns // 1_000_000
        frame = {
            "topic": topic,
            "ts": cts + 1,
            "type": "snapshot",
            "data": {
                "s": symbol,
                "b": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in state.book.levels("bid")],
                "a": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in state.book.levels("ask")],
                "u": state.u_full,
                "seq": latest.seq,
            },
            "cts": cts,
        }
        await self.send_data(dumps(frame), "book")

    async def _send_full_delta(self, topic: str, step: Step) -> None:
        if step.index < self._full_from.get(topic, 0):
            return  # already in the snapshot this topic started from
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        cts = step.ts_ns // 1_000_000
        frame = {
            "topic": topic,
            "ts": cts + 1,
            "type": "delta",
            "data": {
                "s": step.symbol,
                "b": [
                    [fmt_min(p, dec_p), fmt_min(q, dec_q)]
                    for p, q in sorted(step.bid_changes, reverse=True)
                ],
                "a": [[fmt_min(p, dec_p), fmt_min(q, dec_q)] for p, q in sorted(step.ask_changes)],
                "u": step.u_full,
                "seq": step.seq,
            },
            "cts": cts,
        }
        await self.send_book_update(topic, dumps(frame))  # faults: skip/duplicate/reorder

    async def on_step(self, step: Step) -> None:
        """Send this step on the subscribed topics of its symbol."""
        kinds = self.by_symbol.get(step.symbol)
        if not kinds:
            return
        topic = kinds.get("trade")
        if topic is not None and step.trades:
            dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
            ids = [str(TRADE_ID_BASE + t.trade_id) for t in step.trades]
            data = [
                {
                    "i": tid,
                    "T": t.ts_ns // 1_000_000,
                    "p": fmt_min(t.price, dec_p),
                    "v": fmt_min(t.qty, dec_q),
                    "S": "Buy" if t.taker_buy else "Sell",
                    "seq": step.seq,
                    "s": step.symbol,
                    "BT": False,
                    "RPI": False,
                }
                for tid, t in zip(ids, step.trades, strict=True)
            ]
            frame = {
                "topic": topic,
                "ts": step.ts_ns // 1_000_000 + 1,
                "type": "snapshot",
                "data": data,
            }
            await self.send_data(
                dumps(frame), {"trade": len(data)}, [(step.symbol, i) for i in ids]
            )
        topic = kinds.get("book1")
        if topic is not None and step.top_changed:
            await self._send_level1(topic, step)
        topic = kinds.get("book50")
        if topic is not None and (step.delta_bids or step.delta_asks):
            await self._send_book(topic, step, snapshot=False)
        for kind in ("book200", "book1000"):
            topic = kinds.get(kind)
            if topic is not None:
                await self._send_full_delta(topic, step)
        topic = kinds.get("ticker")
        if topic is not None:
            await self._send_ticker(topic, step)

    async def _send_ticker(self, topic: str, step: Step) -> None:
        """Spot tickers snapshot: last price and session stats, no bid/ask (as on spot)."""
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        last, high, low, volume, notional = step.stats
        prev = self.market.symbols[step.symbol].first_price
        pct = (last - prev) / prev if prev else 0.0
        data = {
            "symbol": step.symbol,
            "lastPrice": fmt_min(last, dec_p),
            "highPrice24h": fmt_min(high, dec_p),
            "lowPrice24h": fmt_min(low, dec_p),
            "prevPrice24h": fmt_min(prev, dec_p),
            "volume24h": fmt_min(volume, dec_q),
            "turnover24h": fmt_min(notional // 10**dec_p, dec_q),
            "price24hPcnt": f"{pct:.4f}",
            "usdIndexPrice": fmt_min(last, dec_p),
        }
        frame = {
            "topic": topic,
            "ts": step.ts_ns // 1_000_000 + 1,
            "type": "snapshot",
            "cs": step.seq,
            "data": data,
        }
        await self.send_data(dumps(frame), "ticker")

    def unknown_frame(self) -> str:
        """A well-formed frame on a topic spot never sends."""
        ts = self.market.clock.now_ns() // 1_000_000
        return dumps({"topic": "simMystery.BTCUSDT", "ts": ts, "type": "snapshot", "data": {}})


def partial_send(session: Session, frame: str) -> Any:
    """A deferred action sending a control frame."""

    async def _send() -> None:
        await session.send_control(frame)

    return _send


def route(server: SimServer, path: str) -> type[Session] | int:
    """Session class for a request path, or the HTTP status to reject it with."""
    if path.partition("?")[0] == PATH:
        return BybitSession
    return 404


def url_for(host: str, port: int) -> str:
    """The URL a Bybit provider config points at."""
    return f"ws://{host}:{port}{PATH}"
