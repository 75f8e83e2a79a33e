"""Parsing helpers shared by the venue modules: ``Control``, exact RFC 3339 time, numbers.

Everything here is on the hot path or next to it: no logging, no awaits, no
allocation beyond what the result needs.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

import attrs

from ..errors import ParseError

if TYPE_CHECKING:
    import logging

    from ..events import Event, Level

#: Errors a parser turns into :class:`ParseError` (missing keys, wrong shapes, bad numbers).
PARSE_FAILURES: Final = (KeyError, TypeError, ValueError, IndexError, AttributeError)

#: Malformed frames: log the first ``LOG_FIRST`` then every ``LOG_EVERY``-th.
LOG_FIRST: Final = 10
LOG_EVERY: Final = 1000

_NS_PER_S: Final = 1_000_000_000


@attrs.frozen(slots=True)
class Control:
    """A non-data venue message the connection loop acts on but never publishes.

    ``kind`` is one of ``connected``, ``authenticated``, ``subscription``,
    ``subscribed``, ``command_ack``, ``pong``, ``server_shutdown``, ``ticker``,
    ``bar``, ``daily_bar``, ``updated_bar``, ``trade_cancel``,
    ``trade_correction``, ``trading_status``, ``luld``, ``error`` and
    ``unknown`` (a message type mdd does not know: counted as a parse error).

    Attributes:
        kind: what the message is (see above).
        provider: the provider name.
        symbol: the normalized symbol when the message is about one.
        ts_exchange: venue time in ns, when the message has one.
        code: the venue's error code (None where it sends none, e.g. Bybit).
        message: the venue's text (error message, ``ret_msg``), JSON-decoded.
        request_id: the echoed request id (Binance ``id``, Bybit ``req_id``).
        op: the request the reply belongs to (Bybit ``op``).
        data: the decoded message for kinds whose details matter (subscriptions, bars).
    """

    kind: str
    provider: str
    symbol: str | None = None
    ts_exchange: int | None = None
    code: int | None = None
    message: str = ""
    request_id: Any = None
    op: str | None = None
    data: Any = None


#: What ``parse`` returns: data events (published) and controls (acted on).
Parsed = list["Event | Control"]


def levels(raw: Any) -> tuple[Level, ...]:
    """``[["px","qty"], ...]`` (strings or numbers) as a tuple of float pairs."""
    return tuple([(float(px), float(qty)) for px, qty in raw])


def int_ms_ns(value: Any, unit_ns: int = 1_000_000) -> int:
    """An integer venue time (ms by default) in ns; rejects floats and bools."""
    if type(value) is not int:
        raise TypeError(f"time must be an integer, got {value!r}")
    return value * unit_ns


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(stamp: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) as seconds since the epoch (proleptic Gregorian)."""
    if len(stamp) != 19 or stamp[4] != "-" or stamp[7] != "-" or stamp[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 timestamp: {stamp!r}")
    if stamp[13] != ":" or stamp[16] != ":":
        raise ValueError(f"not an RFC 3339 timestamp: {stamp!r}")
    y, m, d = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
    hh, mm, ss = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    if not (1 <= m <= 12 and 1 <= d <= 31 and hh < 24 and mm < 60 and ss < 61):
        raise ValueError(f"not an RFC 3339 timestamp: {stamp!r}")
    # days_from_civil (H. Hinnant): exact for every Gregorian date.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss


def rfc3339_ns(text: Any) -> int:
    """An RFC 3339 timestamp with 0-9 fractional digits, exactly, in integer ns.

    ``datetime.fromisoformat`` truncates to microseconds; venues such as Alpaca
    send nanoseconds, so the fraction is read digit for digit. Accepts ``Z`` or
    a ``+HH:MM``/``-HH:MM`` offset.

    Raises:
        ValueError: not a timestamp of that shape.
        TypeError: not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"time must be a string, got {text!r}")
    seconds = _epoch_seconds(text[:19])
    rest = text[19:]
    frac = 0
    if rest[:1] == ".":
        end = 1
        while end < len(rest) and rest[end].isdigit():
            end += 1
        digits = rest[1:end]
        if not digits or len(digits) > 9:
            raise ValueError(f"bad fraction in {text!r}")
        frac = int(digits) * 10 ** (9 - len(digits))
        rest = rest[end:]
    if rest in ("Z", "z"):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        offset = (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60) * (1 if rest[0] == "+" else -1)
    else:
        raise ValueError(f"bad zone in {text!r}")
    return (seconds - offset) * _NS_PER_S + frac


def bad_frame(raw: str | bytes, exc: BaseException) -> ParseError:
    """A :class:`ParseError` describing ``exc`` with a short excerpt of the frame."""
    excerpt = raw[:120] if isinstance(raw, str) else raw[:120].decode("utf-8", "replace")
    return ParseError(f"{type(exc).__name__}: {exc} in frame {excerpt!r}")


class SampledLog:
    """Logs the first ``first`` occurrences, then every ``every``-th (malformed frames)."""

    def __init__(
        self, logger: logging.Logger, first: int = LOG_FIRST, every: int = LOG_EVERY
    ) -> None:
        self.logger = logger
        self.first = first
        self.every = every
        self.count = 0

    def __call__(self, msg: str, *args: object) -> bool:
        """Count one occurrence; log it (warning) when sampled. True when logged."""
        self.count += 1
        if self.count <= self.first or self.count % self.every == 0:
            self.logger.warning(msg + " count=%d", *args, self.count)
            return True
        return False
