"""Alpaca market data (stocks v2, crypto v1beta3): a pure ``parse()`` and the provider.

Wire rules (PROTOCOLS.md, docs.alpaca.markets streaming pages):

* Every frame is a JSON array; data arrays may mix types (``t`` trade, ``q``
  quote, ``o`` crypto orderbook, ``b``/``d``/``u`` bars, ``x`` cancel,
  ``c`` correction, ``s`` status, ``l`` LULD) and are not time-sorted.
* Handshake: ``[{"T":"success","msg":"connected"}]`` -> we send auth ->
  ``authenticated`` -> we subscribe -> ``[{"T":"subscription",..}]``.
* Errors ``[{"T":"error","code":N,"msg":..}]``: 401/402/404 are credential
  problems, 406 the connection limit (a dead session blocks reconnects for
  ~90 s): both get a slow retry, never a tight loop.
* Prices and sizes are JSON numbers; ids integers that may exceed 2^53 (orjson
  keeps them exact); ``t`` is RFC 3339 with 0-9 fractional digits, read
  exactly to ns. Stock trades carry no aggressor side; crypto ``tks`` does.

Without ``key``/``secret`` (``ALPACA_KEY``/``ALPACA_SECRET``), or with
``dry_run`` (``ALPACA_DRY_RUN=true``), the provider does not connect at all: it
emits a heartbeat per symbol every few seconds, as the seed system did.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson
import trio

from ..config import normalize_symbol
from ..errors import AuthError, ProviderError, SubscribeError
from ..events import (
    BookEvent,
    HeartbeatEvent,
    QuoteEvent,
    Side,
    StatusEvent,
    TradeEvent,
    now_ns,
)
from ._parse import PARSE_FAILURES, Control, bad_frame, rfc3339_ns
from ._ws import Plan, WsProvider

if TYPE_CHECKING:
    from ..events import Event, Level
    from ._parse import Parsed
    from ._ws import Session
    from .base import Outlet

LOGGER = logging.getLogger("mdd.providers.alpaca")

#: Least delay before retrying after an auth failure or the 406 connection limit.
AUTH_RETRY: Final = 60.0
#: Silence (no message at all) after which the connection is reopened, seconds.
STALE_AFTER: Final = 600.0
#: Dry-run heartbeat period, seconds.
DRY_RUN_INTERVAL: Final = 5.0
#: Error codes that mean "your credentials": never retried quickly.
AUTH_CODES: Final = frozenset({401, 402, 404})
CONNECTION_LIMIT: Final = 406
#: Codes that reject the subscription (bad symbol/syntax, limits, plan).
SUBSCRIBE_CODES: Final = frozenset({400, 405, 409, 410})
#: Quote currencies used to split ``BTCUSD`` into Alpaca's ``BTC/USD``.
CRYPTO_QUOTES: Final = ("USDT", "USDC", "USD", "BTC")
_INF: Final = math.inf
_TAKER: Final[dict[str, Side]] = {"B": "buy", "S": "sell"}
_CONTROL_KINDS: Final = {
    "b": "bar",
    "d": "daily_bar",
    "u": "updated_bar",
    "x": "trade_cancel",
    "c": "trade_correction",
    "s": "trading_status",
    "l": "luld",
}


class ConnectionLimitError(ProviderError):
    """Alpaca answered 406: another connection with these credentials is open."""


def _sym(item: dict[str, Any]) -> str:
    symbol = item["S"]
    if type(symbol) is not str or not symbol:
        raise TypeError(f"bad symbol {symbol!r}")
    return _normalized(symbol)


@functools.lru_cache(maxsize=4096)
def _normalized(symbol: str) -> str:
    # ``BTC/USD`` -> ``BTCUSD``, ``BRK.B`` -> ``BRKB``: events carry the bare symbol.
    return normalize_symbol(symbol)


def _book_levels(raw: Any) -> tuple[Level, ...]:
    return tuple([(float(level["p"]), float(level["s"])) for level in raw])


def _item(item: Any, ts_recv: int, provider: str) -> Event | Control:
    match item:
        case {"T": "t"}:
            price = float(item["p"])
            qty = float(item["s"])
            if not (0.0 < price < _INF and 0.0 <= qty < _INF):
                raise ValueError(f"bad price/size {item['p']!r}/{item['s']!r}")
            raw_id = item["i"]
            if type(raw_id) is not int and type(raw_id) is not str:
                raise TypeError(f"bad trade id {raw_id!r}")
            exchange = item.get("x")
            # Stock ids are unique per exchange, not per symbol: qualify them with
            # the exchange code (cancels/corrections also name a trade by i + x),
            # so (provider, symbol, trade_id) dedup never drops a real trade.
            trade_id = str(raw_id) if exchange is None else f"{exchange}:{raw_id}"
            taker = item.get("tks")
            return TradeEvent(
                provider,
                _sym(item),
                rfc3339_ns(item["t"]),
                ts_recv,
                price,
                qty,
                None if taker is None else _TAKER[taker],
                trade_id,
            )
        case {"T": "q"}:
            bid_px, bid_qty = float(item["bp"]), float(item["bs"])
            ask_px, ask_qty = float(item["ap"]), float(item["as"])
            if not (0.0 <= bid_px < _INF and 0.0 <= ask_px < _INF):
                raise ValueError("bad quote prices")
            if not (0.0 <= bid_qty < _INF and 0.0 <= ask_qty < _INF):
                raise ValueError("bad quote sizes")
            return QuoteEvent(
                provider,
                _sym(item),
                rfc3339_ns(item["t"]),
                ts_recv,
                bid_px,
                bid_qty,
                ask_px,
                ask_qty,
            )
        case {"T": "o"}:
            return BookEvent(
                provider,
                _sym(item),
                rfc3339_ns(item["t"]),
                ts_recv,
                _book_levels(item["b"]),
                _book_levels(item["a"]),
                item.get("r") is True,
            )
        case {"T": "b" | "d" | "u" | "x" | "c" | "s" | "l" as kind}:
            return Control(
                _CONTROL_KINDS[kind],
                provider,
                symbol=_sym(item),
                ts_exchange=rfc3339_ns(item["t"]),
                data=item,
            )
        case {"T": "success", "msg": "connected" | "authenticated" as what}:
            return Control(what, provider)
        case {"T": "subscription"}:
            return Control(
                "subscription", provider, data={k: v for k, v in item.items() if k != "T"}
            )
        case {"T": "error", "code": code, "msg": text}:
            return Control(
                "error", provider, code=code if type(code) is int else None, message=str(text)
            )
        case {"T": kind}:
            return Control("unknown", provider, message=f"message type {kind!r}")
        case _:
            raise TypeError(f"expected an object with T, got {item!r:.80}")


def parse(raw: str | bytes, ts_recv: int, provider: str = "alpaca") -> Parsed:
    """Turn one Alpaca frame (a JSON array) into events and controls. Pure, no I/O.

    Symbols lose their separator (``BTC/USD`` -> ``BTCUSD``). Stock trades have
    ``side`` None and ``trade_id`` ``"<exchange>:<id>"`` (ids are unique per
    exchange only); crypto trades keep the bare id, and ``tks`` gives the side. Bars, cancels,
    corrections, statuses and LULDs are :class:`Control` (with the decoded
    item in ``data``): the event model has no slot for them.

    Raises:
        ParseError: not JSON, not an array, or an item with missing/bad fields
            (the whole frame is rejected).
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_frame(raw, exc) from None
    if type(msg) is not list:
        raise bad_frame(raw, TypeError(f"expected a JSON array, got {type(msg).__name__}"))
    try:
        return [_item(item, ts_recv, provider) for item in msg]
    except PARSE_FAILURES as exc:
        raise bad_frame(raw, exc) from None


def is_crypto_url(url: str) -> bool:
    """Crypto endpoints live under ``/v1beta*/crypto/``; stocks under ``/v2/``."""
    return "/crypto/" in urlsplit(url).path + "/"


def venue_symbol(symbol: str, crypto: bool) -> str:
    """``BTCUSD`` -> ``BTC/USD`` on crypto endpoints (stocks unchanged)."""
    if not crypto or "/" in symbol:
        return symbol
    for quote in CRYPTO_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    return symbol


class AlpacaProvider(WsProvider):
    """Alpaca stocks or crypto (decided from the URL path), or dry-run heartbeats.

    Extra keyword arguments: ``auth_retry`` (least seconds between attempts
    after 401/402/404/406, default 60) and ``dry_run_interval``.
    """

    kind = "alpaca"
    max_send_rate = 10.0
    #: Stocks are silent outside market hours and the server sends no JSON
    #: heartbeat; a reconnect also risks 406 for ~90 s. Only a long silence
    #: counts as a dead connection (data staleness is the supervisor's call).
    default_stale_after = STALE_AFTER

    def __init__(
        self,
        *args: Any,
        auth_retry: float = AUTH_RETRY,
        dry_run_interval: float = DRY_RUN_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.auth_retry = auth_retry
        self.dry_run_interval = dry_run_interval
        self.crypto = is_crypto_url(self.config.url)
        self.dry_run = self.config.dry_run or not (self.config.key and self.config.secret)

    def plans(self) -> list[Plan]:
        """One connection for every symbol."""
        symbols = tuple(normalize_symbol(s) for s in self.symbols)
        return [Plan(self.config.url, symbols, tuple(self._subscription()))]

    def _subscription(self) -> dict[str, list[str]]:
        venue = [venue_symbol(s, self.crypto) for s in self.symbols]
        request: dict[str, list[str]] = {}
        if "trade" in self.channels:
            request["trades"] = venue
        if "quote" in self.channels:
            request["quotes"] = venue
        if "book" in self.channels and self.crypto:
            request["orderbooks"] = venue
        return request

    def parse_frame(self, raw: str | bytes, ts_recv: int, session: Session) -> Parsed:
        """The module's :func:`parse`."""
        return parse(raw, ts_recv, self.name)

    async def on_control(self, session: Session, ctl: Control) -> None:
        """Drive connected -> auth -> subscribe -> subscription; map errors."""
        match ctl.kind:
            case "connected":
                await session.send(
                    {"action": "auth", "key": self.config.key, "secret": self.config.secret}
                )
            case "authenticated":
                LOGGER.info("alpaca.authenticated provider=%s", self.name)
                await session.send({"action": "subscribe", **self._subscription()})
            case "subscription":
                self.mark_subscribed(session)
            case "error" if ctl.code in AUTH_CODES:
                LOGGER.error(
                    "alpaca.auth_failed provider=%s code=%s msg=%r retry_after=%.0f",
                    self.name,
                    ctl.code,
                    ctl.message,
                    self.auth_retry,
                )
                raise AuthError(self.name, f"{ctl.code} {ctl.message}")
            case "error" if ctl.code == CONNECTION_LIMIT:
                LOGGER.error(
                    "alpaca.connection_limit provider=%s msg=%r retry_after=%.0f",
                    self.name,
                    ctl.message,
                    self.auth_retry,
                )
                raise ConnectionLimitError(f"{self.name}: {ctl.code} {ctl.message}")
            case "error" if ctl.code in SUBSCRIBE_CODES:
                LOGGER.error(
                    "alpaca.subscribe_failed provider=%s code=%s msg=%r",
                    self.name,
                    ctl.code,
                    ctl.message,
                )
                raise SubscribeError(self.name, f"{ctl.code} {ctl.message}")
            case "error":
                self.venue_error(session.plan, ctl)
            case _:
                pass

    def retry_floor(self, error: ProviderError | None) -> float:
        """Credentials and the connection limit are retried slowly."""
        if isinstance(error, AuthError | ConnectionLimitError):
            return self.auth_retry
        return 0.0

    async def run(
        self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Stream from Alpaca, or in dry-run mode emit heartbeats only."""
        if not self.dry_run:
            await super().run(outlet, task_status=task_status)
            return
        reason = "dry_run=true" if self.config.dry_run else "no ALPACA_KEY/ALPACA_SECRET"
        health = self.health
        health.connected = False
        health.subscribed = False
        health.dry_run = True
        health.last_error = f"dry_run: {reason}; heartbeats only, no connection"
        LOGGER.warning("alpaca.dry_run provider=%s reason=%r", self.name, reason)
        symbols = [normalize_symbol(s) for s in self.symbols]
        ts = now_ns()
        for symbol in symbols:
            outlet.publish(StatusEvent(self.name, symbol, None, ts, "up", health.last_error))
        started = False
        while True:
            ts = now_ns()
            for symbol in symbols:
                outlet.publish(HeartbeatEvent(self.name, symbol, None, ts, 0.0))
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.dry_run_interval)
