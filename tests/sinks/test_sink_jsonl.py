"""JSONL sink: lines, and a clean start after a crash left a partial last line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from mdd.events import TradeEvent, dumps, loads
from mdd.sinks.jsonl import JsonlSink

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_700_000_000_000_000_000


def trade(i: int) -> TradeEvent:
    return TradeEvent("binance", "BTCUSDT", T0 + i, T0 + i, 1.0 + i, 0.5, "buy", str(i))


async def test_lines_are_the_events_json(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "e.jsonl")
    await sink.open()
    await sink.write([trade(1), trade(2)])
    await sink.close()
    lines = (tmp_path / "e.jsonl").read_bytes().splitlines()
    assert [loads(line) for line in lines] == [trade(1), trade(2)]
    assert lines[0] == dumps(trade(1))


async def test_a_torn_last_line_is_cut_before_appending(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "e.jsonl"
    whole = dumps(trade(1)) + b"\n"
    path.write_bytes(whole + dumps(trade(2))[:40])  # killed mid-write
    sink = JsonlSink(path)
    await sink.open()
    await sink.write([trade(3)])
    await sink.close()
    assert [orjson.loads(line)["trade_id"] for line in path.read_bytes().splitlines()] == [
        "1",
        "3",
    ]
    assert "sink.jsonl.torn_tail_cut" in caplog.text


async def test_a_file_that_is_one_partial_line_becomes_empty(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"type":"trade","provider":"bin' * 5000)  # longer than one read-back chunk
    sink = JsonlSink(path)
    await sink.open()
    await sink.write([trade(7)])
    await sink.close()
    assert path.read_bytes() == dumps(trade(7)) + b"\n"


async def test_a_clean_file_is_left_alone(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(dumps(trade(1)) + b"\n")
    sink = JsonlSink(path)
    await sink.open()
    await sink.close()
    assert path.read_bytes() == dumps(trade(1)) + b"\n"
    assert "torn_tail" not in caplog.text
