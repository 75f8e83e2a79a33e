"""Options and live fault switches of the exchange simulator."""

from __future__ import annotations

import attrs


@attrs.define
class Faults:
    """Fault injection, applied per connection and read live.

    Tests flip these fields while the server runs; every connection looks at
    them on each message, so a change takes effect at once.

    Attributes:
        drop_after: Close each connection after this many data frames.
        silent: Stop sending data frames (control replies still flow).
        ignore_pings: Bybit: don't answer ``{"op":"ping"}``. Binance: stop
            sending server pings.
        garbage_every: Replace every Nth data frame with garbage, rotating
            through non-JSON text, truncated JSON, valid JSON of an unknown
            type, and binary junk.
        reject_subscribe: Answer subscribe with the venue's failure ack/error.
        subscribe_delay: Delay the subscribe ack by this many seconds (Bybit
            data may start before the ack, as on the venue).
        refuse_connections: Reject the WebSocket upgrade with HTTP 503; Alpaca
            instead sends error 406 (connection limit exceeded) and closes.
        idle_timeout: Bybit: cut a client that sent no ping for this long (the
            venue uses 600 s; None disables the cut).
        book_skip: Book updates (Binance ``depthUpdate``, Bybit ``orderbook``
            delta) to drop instead of sending, counted down per update: the
            client sees a sequence gap.
        book_duplicate: Book updates to send twice, counted down.
        book_reorder: Book updates to hold back and send after the next one
            of the same stream, counted down.
        session_linger: Alpaca: after an authenticated connection ends, its
            slot stays taken this many seconds, so a reconnect gets 406 (the
            venue was seen to take ~90 s to notice a dead session).
    """

    drop_after: int | None = None
    silent: bool = False
    ignore_pings: bool = False
    garbage_every: int | None = None
    reject_subscribe: bool = False
    subscribe_delay: float = 0.0
    refuse_connections: bool = False
    idle_timeout: float | None = None
    book_skip: int = 0
    book_duplicate: int = 0
    book_reorder: int = 0
    session_linger: float = 0.0


@attrs.define
class SimOptions:
    """What a simulated venue serves.

    Attributes:
        symbols: Venue symbols the venue lists (Binance/Bybit also accept other
            symbols with a known quote currency; Alpaca accepts any valid symbol).
        rate: Market steps per second per symbol; each step yields at most one
            data frame per subscribed stream (Binance sends one frame per trade).
            0 means as fast as the client reads.
        seed: Seed of the random generator (None: random).
        trades_per_frame: Trades per market step (Bybit publicTrade and Alpaca
            arrays carry them in one frame).
        faults: Live fault switches.
        alpaca_key: Key the Alpaca sim accepts.
        alpaca_secret: Secret the Alpaca sim accepts.
        max_lifetime: Binance: cut each connection after this many seconds
            (venue: 24 h), with a ``serverShutdown`` event ``shutdown_notice``
            seconds before.
        replay: Reserved: recorded captures are served by
            :func:`mdd.sim.replay.serve_replay`; ``serve_sim`` refuses it.
        ping_interval: Binance: seconds between server pings (venue: 20 s).
        pong_timeout: Binance: disconnect when a ping is not answered within
            this many seconds (venue: 60 s).
        shutdown_notice: Binance: seconds between ``serverShutdown`` and the cut.
        max_incoming_per_second: Binance: close a connection that sends more
            text messages than this within one second (venue: 5; None disables).
        auth_timeout: Alpaca: seconds a client has to authenticate (venue: 10).
        book_resend: Bybit: seconds after which an unchanged ``orderbook.1``
            snapshot is sent again (venue: 3).
        backlog: Market steps kept for connections that fall behind; one
            further behind skips ahead (a gap, as after a venue's slow-client drop).
    """

    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    rate: float = 10.0
    seed: int | None = None
    trades_per_frame: int = 1
    faults: Faults = attrs.Factory(Faults)
    alpaca_key: str = attrs.field(default="key", repr=False)
    alpaca_secret: str = attrs.field(default="secret", repr=False)
    max_lifetime: float | None = None
    replay: str | None = None
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    shutdown_notice: float = 1.0
    max_incoming_per_second: int | None = 5
    auth_timeout: float = 10.0
    book_resend: float = 3.0
    backlog: int = 8192
