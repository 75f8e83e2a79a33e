"""Reliability: bad input at every door other than the venues' (see test_fuzz_parsers).

* Control socket: hundreds of random request lines (junk bytes, JSON of every
  shape, real commands with arguments of every type) against one running
  daemon: each gets a JSON reply with ``ok`` and a string ``error``, and the
  daemon keeps answering ``ping``.
* HTTP: every route with random query strings (junk, repeats, huge values,
  unicode, bad percent-escapes): a JSON error, never a 500, never a hang-up.
* Config files: mutated copies of deploy/node1.toml (hypothesis): a
  :class:`~mdd.errors.ConfigError` naming the file, or a valid config;
  never another exception.

The fuzzers are seeded (repeatable) and sized to stay within a few seconds.
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from ops_helpers import ops_config, running

from mdd.config import load_config
from mdd.errors import ConfigError
from mdd.http import ROUTES

NODE1 = Path(__file__).resolve().parents[2] / "deploy" / "node1.toml"
COMMANDS = ["ping", "status", "providers", "bus-stats", "failover", "reconnect", "nope", ""]
ODD_VALUES: list[Any] = [
    None, True, 0, -1, 2**64, 1.5, float("inf"), "", "x" * 5000, "crypto", "sim", "sim2",
    "../../etc/passwd", "\u0000", "\ud7ff\u00e9\U0001f600", [], {}, [1, "a"], {"a": {"b": []}},
]  # fmt: skip


def random_line(rng: random.Random) -> bytes:
    """One request line of a random shape (no newline inside)."""
    return _random_line(rng).replace(b"\n", b" ")


def _random_line(rng: random.Random) -> bytes:
    shape = rng.randrange(6)
    if shape == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"")
    if shape == 1:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(80))).encode()
    if shape == 2:
        value = rng.choice(ODD_VALUES)
        return (
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
            if value != float("inf")
            else b"1e999"
        )
    request: dict[str, Any] = {"cmd": rng.choice([*COMMANDS, *ODD_VALUES[:8]])}
    for name in rng.sample(["feed", "provider", "extra", "cmd2"], rng.randrange(4)):
        request[name] = rng.choice(ODD_VALUES)
    text = json.dumps(request)
    if shape == 5:
        text = text[: rng.randrange(len(text))]  # truncated
    return text.replace("\n", " ").encode("utf-8", "surrogatepass")


async def exchange(stream: trio.SocketStream, line: bytes, buffer: bytearray) -> dict[str, Any]:
    await stream.send_all(line + b"\n")
    with trio.fail_after(10):
        while b"\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"daemon hung up after {line[:80]!r}"
            buffer += chunk
    end = buffer.index(b"\n")
    reply = orjson.loads(bytes(buffer[:end]))
    del buffer[: end + 1]
    assert isinstance(reply, dict)
    return reply


async def test_control_socket_fuzz(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    config = ops_config(tmp_path, http={"enabled": False})
    async with running(config) as (daemon, ops):
        assert ops.control_path is not None
        stream = await trio.open_unix_socket(str(ops.control_path))
        buffer = bytearray()
        async with stream:
            for i in range(400):
                line = random_line(rng)
                if not line.strip():
                    continue
                reply = await exchange(stream, line, buffer)
                assert isinstance(reply.get("ok"), bool), (line[:80], reply)
                if not reply["ok"]:
                    assert isinstance(reply["error"], str), reply
                    assert reply["error"], reply
                if i % 50 == 0:
                    pong = await exchange(stream, b'{"cmd":"ping"}', buffer)
                    assert pong["ok"] is True, (line[:80], reply, pong)
            assert (await exchange(stream, b'{"cmd":"ping"}', buffer))["ok"] is True
        assert not daemon.stopping


def random_query(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(5)):
        key = rng.choice(["symbol", "provider", "depth", "x", "", "symbol[]", "%zz", "%C3%A4"])
        shape = rng.randrange(5)
        if shape == 0:
            value = quote("".join(rng.choice(string.printable) for _ in range(rng.randrange(40))))
        elif shape == 1:
            value = "A" * rng.choice([1, 100, 5000])
        elif shape == 2:
            value = rng.choice(["%", "%G1", "%00", "%ff%fe", "+", "BTC%2FUSD", "-1", "1e9"])
        elif shape == 3:
            value = quote("\U0001f600\u00e9\u200b")
        else:
            value = rng.choice(["BTCUSDT", "ETHUSDT", "btcusdt", "sim", ""])
        parts.append(f"{key}={value}" if rng.random() < 0.9 else key)
    return "&".join(parts)


async def test_http_query_string_fuzz(tmp_path: Path) -> None:
    rng = random.Random(1124)
    config = ops_config(tmp_path, sinks={"jsonl": {"path": "e.jsonl"}, "sqlite": {}})
    paths = [*ROUTES, "/nope", "/health/", "//health", "/%2e%2e/etc"]
    statuses: dict[int, int] = {}
    async with (
        running(config) as (_daemon, ops),
        httpx.AsyncClient(base_url=ops.http_address or "", timeout=10) as client,
    ):
        for _ in range(300):
            path = rng.choice(paths)
            url = httpx.URL(f"{ops.http_address}{path}", query=random_query(rng).encode())
            response = await client.get(url)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500 or response.status_code == 503, (url, response.text)
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body, dict), body
        assert (await client.get("/health")).status_code in (200, 503)
    assert 400 in statuses or 404 in statuses


# -- config files ----------------------------------------------------------------

TOML_VALUES = st.sampled_from(
    ['""', "-1", "0", "1e400", "nan", "inf", "true", "[]", "{}", '"x"', "[1, 'a']",
     '"127.0.0.1:99999"', "99999999999999999999", '"\\u0000"', "'''multi\nline'''"]
)  # fmt: skip


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    lines = NODE1.read_text().splitlines()
    how = draw(st.sampled_from(["value", "drop", "dup", "truncate", "splice"]))
    assignments = [i for i, ln in enumerate(lines) if "=" in ln and not ln.lstrip().startswith("#")]
    if how == "value" and assignments:
        i = draw(st.sampled_from(assignments))
        key = lines[i].split("=", 1)[0]
        lines[i] = f"{key}= {draw(TOML_VALUES)}"
    elif how == "drop" and lines:
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif how == "dup" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    text = "\n".join(lines) + "\n"
    if how == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=10)) + text[at:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(text=mutated_config())
def test_config_file_fuzz(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "node.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
        assert message
        assert "Traceback" not in message
        assert str(path) in message or "node.toml" in message, message
