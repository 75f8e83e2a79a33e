"""Reliability: bad input into every venue parser (hypothesis).

Seeds are real-shape frames: the captured fixtures in /work/shared/fixtures
(skipped when absent) and the frames in tests/data. Each example mutates one
(a value replaced by any JSON value, a key dropped or added, the text cut,
bytes spliced in) or is arbitrary JSON; ``parse`` must return events and
controls or raise :class:`~mdd.errors.ParseError`, never anything else.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdd.errors import ParseError
from mdd.events import Event
from mdd.providers import alpaca, binance, bybit
from mdd.providers._parse import Control

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
DATA = Path(__file__).resolve().parents[1] / "data"
VENUES = ("binance", "bybit", "alpaca")
TS = 1_700_000_000_000_000_000


@functools.cache
def seeds(venue: str) -> list[str]:
    """Real-shape frames of one venue (fixtures if present, tests/data always)."""
    frames: list[str] = []
    fixture = FIXTURES / f"{venue}.jsonl"
    if fixture.exists():
        frames += [line for line in fixture.read_text().splitlines() if line.strip()]
    for line in (DATA / venue / "frames.jsonl").read_text().splitlines():
        if line.strip():
            row = orjson.loads(line)
            frames.append(row["raw"] if isinstance(row, dict) and "raw" in row else line)
    return frames


def parsers(venue: str) -> list[Callable[[str | bytes], Any]]:
    if venue == "binance":
        return [
            lambda raw: binance.parse(raw, TS),
            lambda raw: binance.parse(raw, TS, stream="btcusdt@depth5"),
            lambda raw: binance.parse(raw, TS, time_unit_ns=1000),
        ]
    if venue == "bybit":
        return [lambda raw: bybit.parse(raw, TS), lambda raw: bybit.parse(raw, TS, quote_depth=50)]
    return [lambda raw: alpaca.parse(raw, TS)]


def check(venue: str, raw: str | bytes) -> None:
    """No exception but ParseError escapes; what comes back is events and controls."""
    for parse in parsers(venue):
        try:
            out = parse(raw)
        except ParseError:
            continue
        assert isinstance(out, list)
        for item in out:
            assert isinstance(item, Event | Control), item
            if isinstance(item, Event):
                assert item.ts_recv == TS


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "-1", "1e400", "NaN", "abc", "Buy", "trade", "BTCUSDT"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        del obj[path[0]]
        return obj
    if not path:
        return obj
    _delete(obj[path[0]], path[1:])
    return obj


@st.composite
def mutated(draw: st.DrawFn, venue: str) -> str | bytes:
    """One real-shape frame, mutated once."""
    raw = draw(st.sampled_from(seeds(venue)))
    how = draw(st.sampled_from(["replace", "delete", "add", "truncate", "splice", "bytes"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.text(max_size=8)) + raw[at:]
    if how == "bytes":
        data = bytearray(raw.encode())
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if data:
            data[at] = draw(st.integers(0, 255))
        return bytes(data)
    try:
        msg = json.loads(raw)
    except ValueError:  # a seed that is garbage on purpose
        return raw[::-1]
    path = draw(st.sampled_from(_paths(msg)))
    if how == "replace":
        msg = _set(msg, path, draw(json_values))
    elif how == "delete" and path:
        msg = _delete(msg, path)
    else:
        target: Any = msg
        for key in path:
            target = target[key]
        if isinstance(target, dict):
            target[draw(st.text(max_size=4))] = draw(json_values)
        elif isinstance(target, list):
            target.append(draw(json_values))
    return json.dumps(msg)  # stdlib: big integers and odd floats go out as written


FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.mark.parametrize("venue", VENUES)
def test_seed_frames_parse(venue: str) -> None:
    frames = seeds(venue)
    assert len(frames) >= 5
    for raw in frames:
        check(venue, raw)


@pytest.mark.parametrize("venue", VENUES)
def test_mutated_real_frames_never_escape_parse(venue: str) -> None:
    @FUZZ
    @given(raw=mutated(venue))
    def run(raw: str | bytes) -> None:
        check(venue, raw)

    run()


@pytest.mark.parametrize("venue", VENUES)
def test_arbitrary_json_and_bytes_never_escape_parse(venue: str) -> None:
    @FUZZ
    @given(raw=json_values.map(json.dumps) | st.binary(max_size=64) | st.text(max_size=64))
    def run(raw: str | bytes) -> None:
        check(venue, raw)

    run()


# Found by the mutation fuzzer: binance.parse did not check the symbol's type in
# depthUpdate frames (null or a number gave a BookEvent whose symbol was not a string).
@pytest.mark.parametrize(
    "frame",
    [
        {"e": "depthUpdate", "E": 1, "s": None, "U": 1, "u": 2, "b": [], "a": []},
        {"e": "depthUpdate", "E": 1, "s": 7, "U": 1, "u": 2, "b": [], "a": []},
    ],
    ids=["depth-null", "depth-int"],
)
def test_non_string_symbol_is_refused(frame: dict[str, Any]) -> None:
    try:
        out = binance.parse(orjson.dumps(frame), TS)
    except ParseError:
        return
    assert all(isinstance(e.symbol, str) for e in out if isinstance(e, Event)), out


def test_numbers_at_the_edges() -> None:
    """Prices and sizes that are not finite positive numbers are refused, not stored."""
    base = orjson.loads(seeds("binance")[0])
    for bad in ("NaN", "inf", "-1", "", "1e400", None, [], {}):
        msg = dict(base)
        data = msg.get("data", msg)
        data["p"] = bad
        try:
            out = binance.parse(orjson.dumps(msg), TS)
        except ParseError:
            continue
        for event in out:
            price = getattr(event, "price", None)
            if price is not None:
                assert math.isfinite(price), (bad, event)


@pytest.mark.slow
@pytest.mark.parametrize("venue", VENUES)
def test_atheris_short_run(venue: str) -> None:
    """Coverage-guided fuzzing (libFuzzer via atheris), when atheris is installed."""
    pytest.importorskip("atheris")
    script = Path(__file__).with_name("fuzz_parsers_atheris.py")
    result = subprocess.run(
        [sys.executable, str(script), venue, "-runs=20000", "-seed=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 20000 runs" in result.stderr
