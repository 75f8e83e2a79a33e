"""``mdd-ctl``: talk to a running daemon over its control socket (not yet implemented)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mdd-ctl`` console script."""
    print("mdd-ctl: not yet implemented", file=sys.stderr)
    return 2
