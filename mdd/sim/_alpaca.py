"""Alpaca market data v2 (stocks) and v1beta3 (crypto) streams, as the simulator speaks them.

Endpoints: ``/v2/iex``, ``/v2/sip``, ``/v2/delayed_sip``, ``/v2/test`` (stocks)
and ``/v1beta3/crypto/us`` (crypto). Flow: ``[{"T":"success","msg":"connected"}]``
on connect; ``{"action":"auth","key":..,"secret":..}`` (or the
``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` upgrade headers) within
``auth_timeout`` -> ``authenticated``; subscribe/unsubscribe add to or remove
from the current set and the ``subscription`` ack lists the whole set (a stock
``trades`` subscription adds ``corrections`` and ``cancelErrors``). Errors
as documented: 400 invalid syntax (bad JSON, action or symbol), 401 not
authenticated, 402 auth failed (then close), 403 already authenticated, 404
auth timeout (then close), 405 symbol limit exceeded (IEX: 30 trade+quote
symbols; also the ``reject_subscribe`` fault), 406 connection limit exceeded
(a second authenticated connection on one endpoint, a slot still held by a
dead session under ``session_linger``, or the ``refuse_connections`` fault;
then close). Data frames are arrays mixing
``t``/``q``/``b`` (and crypto ``o``) points; prices and sizes are JSON numbers
and timestamps RFC 3339 with nanoseconds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from ._market import NS, rfc3339, rfc3339_seconds, to_number
from ._server import Session, dumps

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trio_websocket import WebSocketConnection

    from ._market import Step
    from ._server import SimServer

STOCK_PATHS: Final = ("/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test")
CRYPTO_PATHS: Final = ("/v1beta3/crypto/us",)
STOCK_CHANNELS: Final = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
)
CRYPTO_CHANNELS: Final = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
STOCK_RE: Final = re.compile(r"^(\*|[A-Z][A-Z0-9.]{0,9})$")
CRYPTO_RE: Final = re.compile(r"^(\*|[A-Z0-9]{2,10}/[A-Z]{2,5})$")
#: IEX (free plan) limit of trade+quote symbols.
IEX_SYMBOL_LIMIT: Final = 30
#: Offset making crypto trade ids exceed 2**53 as the venue's do.
CRYPTO_ID_BASE: Final = 3_000_000_000_000_000_000
MESSAGES: Final = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
}


class AlpacaSession(Session):
    """One Alpaca market-data connection."""

    venue = "alpaca"

    def __init__(
        self,
        server: SimServer,
        ws: WebSocketConnection,
        request_path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(server, ws, request_path, headers)
        self.crypto = self.path in CRYPTO_PATHS
        self.channels = CRYPTO_CHANNELS if self.crypto else STOCK_CHANNELS
        self.subs: dict[str, list[str]] = {c: [] for c in self.channels}
        self.authenticated = False

    # -- helpers -------------------------------------------------------------------

    async def _error(self, code: int) -> None:
        await self.send_control(dumps([{"T": "error", "code": code, "msg": MESSAGES[code]}]))

    def _wants(self, channel: str, symbol: str) -> bool:
        subs = self.subs.get(channel) or ()
        return symbol in subs or "*" in subs

    def _refresh_symbols(self) -> None:
        wanted: set[str] = set()
        wild = False
        for symbols in self.subs.values():
            for s in symbols:
                if s == "*":
                    wild = True
                else:
                    wanted.add(s)
        if wild:
            wanted.update(n for n in self.market.symbols if ("/" in n) == self.crypto)
        self.symbols = wanted

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Greet, take header credentials, and start the auth timer."""
        await self.send_control(dumps([{"T": "success", "msg": "connected"}]))
        key = self.headers.get("apca-api-key-id")
        secret = self.headers.get("apca-api-secret-key")
        if key is not None or secret is not None:
            await self._auth(key, secret)
        nursery.start_soon(self._auth_timer)

    async def run(self) -> None:
        """Serve; an authenticated session may keep its slot a while (``session_linger``)."""
        try:
            await super().run()
        finally:
            linger = self.faults.session_linger
            if self.authenticated and linger > 0:
                self.server.linger_until[self.path] = trio.current_time() + linger

    async def _auth_timer(self) -> None:
        await trio.sleep(self.server.options.auth_timeout)
        if not self.authenticated and self._nursery is not None:
            await self._error(404)
            self.close(1008, "auth timeout")

    async def _auth(self, key: Any, secret: Any) -> None:
        options = self.server.options
        if self.authenticated:
            await self._error(403)
            return
        if key != options.alpaca_key or secret != options.alpaca_secret:
            await self._error(402)
            self.close(1008, "auth failed")
            return
        others = [
            s
            for s in self.server.sessions_on(self.path)
            if s is not self and isinstance(s, AlpacaSession) and s.authenticated
        ]
        lingering = trio.current_time() < self.server.linger_until.get(self.path, float("-inf"))
        if others or lingering or self.server.is_refusing():
            await self._error(406)
            self.close(1008, "connection limit exceeded")
            return
        self.authenticated = True
        await self.send_control(dumps([{"T": "success", "msg": "authenticated"}]))

    # -- client frames -------------------------------------------------------------

    async def on_text(self, message: str | bytes) -> None:
        """Handle auth, subscribe and unsubscribe."""
        try:
            req = orjson.loads(message)
        except orjson.JSONDecodeError:
            await self._error(400)
            return
        if not isinstance(req, dict) or not isinstance(req.get("action"), str):
            await self._error(400)
            return
        action = req["action"]
        if action == "auth":
            await self._auth(req.get("key"), req.get("secret"))
            return
        if not self.authenticated:
            await self._error(401)
            return
        if action not in ("subscribe", "unsubscribe"):
            await self._error(400)
            return
        pattern = CRYPTO_RE if self.crypto else STOCK_RE
        change: dict[str, list[str]] = {}
        for channel in self.channels:
            symbols = req.get(channel)
            if symbols is None:
                continue
            if not isinstance(symbols, list) or not all(
                isinstance(s, str) and pattern.match(s) for s in symbols
            ):
                await self._error(400)
                return
            change[channel] = symbols
        if action == "unsubscribe":
            for channel, symbols in change.items():
                self.subs[channel] = [s for s in self.subs[channel] if s not in symbols]
            self._refresh_symbols()
            await self.send_control(self._ack())
            return
        merged = {c: list(self.subs[c]) for c in self.channels}
        for channel, symbols in change.items():
            merged[channel].extend(s for s in symbols if s not in merged[channel])
        counted = {s for c in ("trades", "quotes") for s in merged.get(c, []) if s != "*"}
        if self.faults.reject_subscribe or (
            self.path == "/v2/iex" and len(counted) > IEX_SYMBOL_LIMIT
        ):
            await self._error(405)
            return
        delay = self.faults.subscribe_delay

        async def _apply() -> None:
            new_books = [
                s
                for s in change.get("orderbooks", [])
                if s != "*" and s not in self.subs.get("orderbooks", [])
            ]
            self.subs = merged
            for channel, symbols in change.items():
                for s in symbols:
                    if s != "*":
                        self.market.ensure(s)
                    self.server.subscriptions.append(f"{channel}:{s}")
            self._refresh_symbols()
            await self.send_control(self._ack())
            for symbol in new_books:
                await self._send_book_reset(symbol)

        if delay > 0:
            self.later(delay, _apply)
        else:
            await _apply()

    def _ack(self) -> str:
        ack: dict[str, Any] = {"T": "subscription"}
        for channel in self.channels:
            ack[channel] = list(self.subs[channel])
        if not self.crypto:
            ack["corrections"] = list(self.subs["trades"])
            ack["cancelErrors"] = list(self.subs["trades"])
        return dumps([ack])

    # -- market data -----------------------------------------------------------------

    async def _send_book_reset(self, symbol: str) -> None:
        step = self.last.get(symbol) or self.market.latest(symbol)
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        point = {
            "T": "o",
            "S": symbol,
            "t": rfc3339(step.ts_ns),
            "b": [{"p": to_number(p, dec_p), "s": to_number(q, dec_q)} for p, q in step.bids],
            "a": [{"p": to_number(p, dec_p), "s": to_number(q, dec_q)} for p, q in step.asks],
            "r": True,
        }
        await self.send_data(dumps([point]), "book")

    async def on_step(self, step: Step) -> None:
        """Send one array with every subscribed point of this step."""
        symbol = step.symbol
        dec_p, dec_q = step.spec.price_decimals, step.spec.qty_decimals
        points: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        trades: list[tuple[str, str]] = []
        if step.trades and self._wants("trades", symbol):
            for t in step.trades:
                ts = rfc3339(t.ts_ns)
                if self.crypto:
                    tid = CRYPTO_ID_BASE + t.trade_id
                    points.append(
                        {
                            "T": "t",
                            "S": symbol,
                            "p": to_number(t.price, dec_p),
                            "s": to_number(t.qty, dec_q),
                            "t": ts,
                            "i": tid,
                            "tks": "B" if t.taker_buy else "S",
                        }
                    )
                else:
                    tid = t.trade_id
                    conditions = ["@", "I"] if t.qty < 100 else ["@"]
                    points.append(
                        {
                            "T": "t",
                            "S": symbol,
                            "i": tid,
                            "x": "V",
                            "p": to_number(t.price, dec_p),
                            "s": t.qty,
                            "c": conditions,
                            "z": "C",
                            "t": ts,
                        }
                    )
                trades.append((symbol, str(tid)))
            counts["trade"] = len(step.trades)
        if step.top_changed and step.bids and step.asks and self._wants("quotes", symbol):
            (bp, bq), (ap, aq) = step.bids[0], step.asks[0]
            ts = rfc3339(step.ts_ns + 137)
            if self.crypto:
                quote: dict[str, Any] = {
                    "T": "q",
                    "S": symbol,
                    "bp": to_number(bp, dec_p),
                    "bs": to_number(bq, dec_q),
                    "ap": to_number(ap, dec_p),
                    "as": to_number(aq, dec_q),
                    "t": ts,
                }
            else:
                quote = {
                    "T": "q",
                    "S": symbol,
                    "bx": "V",
                    "bp": to_number(bp, dec_p),
                    "bs": max(1, bq // 100),  # round lots
                    "ax": "V",
                    "ap": to_number(ap, dec_p),
                    "as": max(1, aq // 100),
                    "c": ["R"],
                    "z": "C",
                    "t": ts,
                }
            points.append(quote)
            counts["quote"] = 1
        bar = step.bar
        if bar is not None and self._wants("bars", symbol):
            vwap = bar.notional / bar.volume / 10**dec_p if bar.volume else 0
            points.append(
                {
                    "T": "b",
                    "S": symbol,
                    "o": to_number(bar.open, dec_p),
                    "h": to_number(bar.high, dec_p),
                    "l": to_number(bar.low, dec_p),
                    "c": to_number(bar.close, dec_p),
                    "v": to_number(bar.volume, dec_q),
                    "t": rfc3339_seconds(bar.start_ns),
                    "n": bar.count,
                    "vw": round(vwap, 6),
                }
            )
            counts["bar"] = 1
        if self.crypto and self._wants("orderbooks", symbol):
            if step.bid_changes or step.ask_changes:
                points.append(
                    {
                        "T": "o",
                        "S": symbol,
                        "t": rfc3339(step.ts_ns + NS // 1000),
                        "b": [
                            {"p": to_number(p, dec_p), "s": to_number(q, dec_q)}
                            for p, q in step.bid_changes
                        ],
                        "a": [
                            {"p": to_number(p, dec_p), "s": to_number(q, dec_q)}
                            for p, q in step.ask_changes
                        ],
                    }
                )
                counts["book"] = 1
        if points:
            await self.send_data(dumps(points), counts, trades)

    def unknown_frame(self) -> str:
        """A well-formed array with a point type Alpaca never sends."""
        return dumps([{"T": "zz", "S": "SIM", "t": rfc3339(self.market.clock.now_ns())}])


def route(server: SimServer, path: str) -> type[Session] | int:
    """Session class for a request path, or the HTTP status to reject it with."""
    if path.partition("?")[0] in STOCK_PATHS + CRYPTO_PATHS:
        return AlpacaSession
    return 404


def url_for(host: str, port: int) -> str:
    """The stock (IEX) URL an Alpaca provider config points at."""
    return f"ws://{host}:{port}/v2/iex"
