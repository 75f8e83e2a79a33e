"""cryptofeed's Binance TRADES throughput against mdd's loopback load generator.

The bar mdd is held to is cryptofeed ingesting Binance trades with no storage
at all. This measures that bar on the machine at hand, fed exactly as
``mdd bench`` is fed, so the two figures compare like for like:

    make bench-cryptofeed            # or, by hand:
    python3 -m venv .venv-cryptofeed && .venv-cryptofeed/bin/pip install cryptofeed==2.4.1
    .venv-cryptofeed/bin/python bench/cryptofeed_compare.py [--no-uvloop] [--warmup 2] [--duration 10]

Starts ``python -m mdd.bench_blaster --venue binance --symbols BTCUSDT,ETHUSDT``
with mdd's own venv (``--mdd-python``, default ``.venv/bin/python``), points
cryptofeed's Binance feed at it and counts trades delivered to a counting-only
async callback (no backends). Not part of the package, not run by the tests.

Workarounds (all in this script, nothing in mdd or in cryptofeed's files):
  * symbol info: Symbols pre-populated from a fake exchangeInfo via
    Binance._parse_symbol_data (no REST call at start).
  * WSAsyncConn refuses non-wss:// addresses: the endpoint is given as
    wss://127.0.0.1:<port> and cryptofeed.connection.connect (websockets'
    connect) is wrapped to rewrite wss:// -> ws:// (plain TCP on loopback).
  * the blaster sends raw `trade` events ("e":"trade", id in "t"); cryptofeed's
    Binance TRADES channel is `aggTrade` ("e":"aggTrade", id in "a") and logs a
    warning for any other "e". A subclass uses the `trade` stream name and
    dispatches "trade" to a copy of Binance._trade that reads "t". Same work
    otherwise (yapic json.loads(parse_float=Decimal), Decimal(p), Decimal(q),
    symbol normalisation, Trade object construction).
"""
import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from decimal import Decimal

import cryptofeed  # noqa
import cryptofeed.connection as cf_conn
from cryptofeed import FeedHandler
from cryptofeed.connection import WebsocketEndpoint
from cryptofeed.defines import BINANCE, BUY, SELL, TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols
from cryptofeed.types import Trade
from yapic import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--no-uvloop", action="store_true")
ap.add_argument("--warmup", type=float, default=2.0)
ap.add_argument("--duration", type=float, default=10.0)
ap.add_argument("--mdd-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
args = ap.parse_args()

# --- load generator -------------------------------------------------------
blaster = subprocess.Popen(
    [args.mdd_python, "-m", "mdd.bench_blaster", "--venue", "binance",
     "--symbols", "BTCUSDT,ETHUSDT"],
    cwd=ROOT, stdout=subprocess.PIPE)
line = blaster.stdout.readline().decode().strip()
assert line.startswith("port="), line
PORT = int(line.split("=", 1)[1])

# --- no REST at start: pre-populate the symbol cache ----------------------
fake_info = {"symbols": [
    {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "status": "TRADING",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]},
    {"symbol": "ETHUSDT", "baseAsset": "ETH", "quoteAsset": "USDT", "status": "TRADING",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]},
]}
Symbols.set(BINANCE, *Binance._parse_symbol_data(fake_info))

# --- ws:// on loopback (WSAsyncConn insists on wss://) --------------------
_ws_connect = cf_conn.connect


def _connect(uri, **kw):
    return _ws_connect(uri.replace("wss://", "ws://", 1), **kw)


cf_conn.connect = _connect


class BlasterBinance(Binance):
    websocket_endpoints = [WebsocketEndpoint(f"wss://127.0.0.1:{PORT}")]
    websocket_channels = {**Binance.websocket_channels, TRADES: "trade"}

    async def _trade(self, msg, timestamp):  # Binance._trade, id from "t" (raw trade) not "a"
        t = Trade(self.id,
                  self.exchange_symbol_to_std_symbol(msg['s']),
                  SELL if msg['m'] else BUY,
                  Decimal(msg['q']),
                  Decimal(msg['p']),
                  self.timestamp_normalize(msg['T']),
                  id=str(msg['t']),
                  raw=msg)
        await self.callback(TRADES, t, timestamp)

    async def message_handler(self, msg, conn, timestamp):  # Binance.message_handler, public path
        msg = json.loads(msg, parse_float=Decimal)
        pair, _ = msg['stream'].split('@', 1)
        msg = msg['data']
        pair = pair.upper()
        if 'e' in msg:
            if msg['e'] == 'depthUpdate':
                await self._book(msg, pair, timestamp)
            elif msg['e'] in ('aggTrade', 'trade'):
                await self._trade(msg, timestamp)
            else:
                raise ValueError(f"unexpected {msg!r}")
        else:
            raise ValueError(f"unexpected {msg!r}")


count = 0
first = None


async def on_trade(t, receipt_timestamp):
    global count, first
    count += 1
    if first is None:
        first = t


async def measure(fh):
    while count == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(args.warmup)
    c0, t0, cpu0 = count, time.perf_counter(), time.process_time()
    await asyncio.sleep(args.duration)
    c1, t1, cpu1 = count, time.perf_counter(), time.process_time()
    return c1 - c0, t1 - t0, cpu1 - cpu0


def main():
    cfg = {"uvloop": not args.no_uvloop,
           "log": {"filename": os.path.join(ROOT, ".venv-cryptofeed", "feedhandler.log"),
                   "level": "WARNING"}}
    fh = FeedHandler(config=cfg)
    fh.add_feed(BlasterBinance(symbols=["BTC-USDT", "ETH-USDT"], channels=[TRADES],
                               callbacks={TRADES: on_trade}, config=cfg))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fh.run(start_loop=False, install_signal_handlers=False)
    n, secs, cpu = loop.run_until_complete(measure(fh))
    fh.stop(loop=loop)
    loop.run_until_complete(asyncio.sleep(0.1))
    blaster.terminate()
    blaster.wait(5)
    import websockets
    print(f"cryptofeed {__import__('importlib.metadata').metadata.version('cryptofeed')} "
          f"websockets {websockets.__version__} python {sys.version.split()[0]} "
          f"loop {type(loop).__module__}.{type(loop).__name__}")
    print(f"first trade: {first!r} type={type(first).__name__} price={first.price!r} "
          f"amount={first.amount!r} id={first.id} side={first.side}")
    print(f"RESULT trades={n} secs={secs:.2f} trades_per_s={n / secs:,.0f} "
          f"cpu_s={cpu:.2f} cpu_per_wall={cpu / secs:.2f} "
          f"maxrss_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    os._exit(0)


if __name__ == "__main__":
    main()
