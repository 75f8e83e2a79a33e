"""``mdd-consumer`` entry point (not yet implemented)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mdd-consumer`` console script."""
    print("mdd-consumer: not yet implemented", file=sys.stderr)
    return 2
