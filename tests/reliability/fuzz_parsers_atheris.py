"""Coverage-guided fuzzing of the venue parsers with atheris (optional).

atheris is not a dependency of mdd; install it into the venv to use this::

    .venv/bin/pip install atheris
    .venv/bin/python tests/reliability/fuzz_parsers_atheris.py binance -runs=100000

The first argument is the venue (``binance``, ``bybit``, ``alpaca``); the rest
go to libFuzzer. The corpus starts from the real-shape frames of
tests/data/<venue> (and /work/shared/fixtures when present), written to a
temporary directory. ``parse`` may return events and controls or raise
``ParseError``; any other exception is a finding (libFuzzer stops and saves
the input). ``test_fuzz_parsers.py`` runs this briefly when atheris imports.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris
import attrs  # noqa: F401 - dependencies imported first: only mdd is instrumented
import orjson
import trio  # noqa: F401
import trio_websocket  # noqa: F401

with atheris.instrument_imports():
    from mdd.errors import ParseError
    from mdd.providers import alpaca, binance, bybit

HERE = Path(__file__).resolve().parent
TS = 1_700_000_000_000_000_000


def seeds(venue: str) -> list[bytes]:
    frames: list[bytes] = []
    fixture = HERE.parents[2] / "shared" / "fixtures" / f"{venue}.jsonl"
    if fixture.exists():
        frames += [ln for ln in fixture.read_bytes().splitlines() if ln.strip()]
    for line in (HERE.parent / "data" / venue / "frames.jsonl").read_bytes().splitlines():
        if line.strip():
            row = orjson.loads(line)
            frames.append(row["raw"].encode() if isinstance(row, dict) and "raw" in row else line)
    return frames


def main() -> None:
    venue = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "binance"
    parse = {"binance": binance.parse, "bybit": bybit.parse, "alpaca": alpaca.parse}[venue]

    def one_input(data: bytes) -> None:
        try:
            parse(data, TS)
        except ParseError:
            pass
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        try:
            parse(text, TS)
        except ParseError:
            pass

    corpus = Path(tempfile.mkdtemp(prefix=f"mdd-fuzz-{venue}-"))
    for i, frame in enumerate(seeds(venue)):
        (corpus / f"seed{i}").write_bytes(frame)
    args = [sys.argv[0], *[a for a in sys.argv[1:] if a.startswith("-")], str(corpus)]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
