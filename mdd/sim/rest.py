"""The simulator's Binance REST endpoint: ``GET /api/v3/depth`` from the true book.

A deliberately tiny HTTP/1.1 server (h11 over a trio TCP listener, one request
per connection) so a provider can run Binance's local-book procedure against
the simulator: the snapshot's ``lastUpdateId`` lines up with the ``U``/``u``
of the streamed ``depthUpdate`` events because both come from the same
:class:`~mdd.sim.book.SimBook`.

Served::

    GET /api/v3/depth?symbol=BTCUSDT&limit=5000
    -> {"lastUpdateId": N, "bids": [["px","qty"], ...], "asks": [...]}

Errors are Binance-shaped (``{"code": -1121, "msg": "Invalid symbol."}``,
HTTP 400). :attr:`DepthRest.fail_next` makes the next requests answer 503
(fault injection for the provider's retry path).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn

import h11
import orjson
import trio

if TYPE_CHECKING:
    from ._market import Market

#: ``(lastUpdateId, bids, asks)``, levels as Binance wire strings ``[["px", "qty"], ...]``.
Depth = tuple[int, list[list[str]], list[list[str]]]
#: ``(symbol, limit) -> Depth``, or None for an unknown symbol.
DepthSource = Callable[[str, int], Depth | None]


LOGGER = logging.getLogger("mdd.sim.rest")

#: Binance's default and largest ``limit`` for ``/api/v3/depth``.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 5000
#: Decimals Binance prints for prices and quantities.
WIRE_DECIMALS: Final = 8
#: Largest request head accepted, bytes.
MAX_REQUEST: Final = 16 * 1024
#: Seconds a client gets to send its request.
REQUEST_TIMEOUT: Final = 5.0


class DepthRest:
    """The running endpoint: its URL, counters and a failure switch.

    Attributes:
        url: Base URL for a provider's ``rest_url`` (``http://127.0.0.1:PORT``).
        requests: Depth requests answered (errors included).
        fail_next: Answer this many next requests with HTTP 503.
    """

    def __init__(self, source: DepthSource) -> None:
        self.source = source
        self.url = ""
        self.requests = 0
        self.fail_next = 0

    def depth(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """``(status, body)`` of one ``/api/v3/depth`` request."""
        symbols = query.get("symbol", [])
        if len(symbols) != 1 or not symbols[0]:
            return 400, {
                "code": -1102,
                "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            }
        symbol = symbols[0].upper()
        try:
            limit = int(query.get("limit", [str(DEFAULT_LIMIT)])[0])
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}
        found = self.source(symbol, max(1, min(limit, MAX_LIMIT)))
        if found is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        last, bids, asks = found
        return 200, {"lastUpdateId": last, "bids": bids, "asks": asks}

    def respond(self, method: str, target: str) -> tuple[int, Any]:
        """Route one request."""
        path, _, raw_query = target.partition("?")
        if path != "/api/v3/depth":
            return 404, {"code": -1, "msg": f"no such endpoint {path}"}
        if method not in ("GET", "HEAD"):
            return 405, {"code": -1, "msg": "method not allowed"}
        self.requests += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"code": -1001, "msg": "Internal error; unable to process your request."}
        return self.depth(urllib.parse.parse_qs(raw_query))

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: read one request, answer, close."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                request: h11.Request | None = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(4096)
                        conn.receive_data(bytes(data))
                        if not data:
                            break
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                if request is None:
                    return
                status, body = self.respond(request.method.decode(), request.target.decode())
                payload = orjson.dumps(body)
                headers = [
                    (b"content-type", b"application/json;charset=UTF-8"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ]
                out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                if request.method != b"HEAD":
                    out += conn.send(h11.Data(data=payload)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def market_depth(
    market: Market,
) -> DepthSource:
    """A depth source reading the simulated market's true books (Binance wire decimals)."""
    from ._market import fmt_fixed

    def source(symbol: str, limit: int) -> Depth | None:
        state = market.symbols.get(symbol)
        if state is None:
            return None
        last, bids, asks = state.book.snapshot(limit)
        dp, dq = state.spec.price_decimals, state.spec.qty_decimals
        return (
            last,
            [[fmt_fixed(p, dp, WIRE_DECIMALS), fmt_fixed(q, dq, WIRE_DECIMALS)] for p, q in bids],
            [[fmt_fixed(p, dp, WIRE_DECIMALS), fmt_fixed(q, dq, WIRE_DECIMALS)] for p, q in asks],
        )

    return source


async def serve_depth_rest(
    source: DepthSource,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[DepthRest] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``/api/v3/depth`` from ``source`` (e.g. :func:`market_depth`) until cancelled.

    ``task_status`` receives the :class:`DepthRest` (with its ``url``) once the
    port is bound.
    """
    rest = DepthRest(source)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    rest.url = f"http://{host}:{bound_port}"
    LOGGER.info("sim.rest_listening url=%s", rest.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, rest.handle, listeners))
        task_status.started(rest)
        await trio.sleep_forever()
    raise AssertionError("unreachable")
