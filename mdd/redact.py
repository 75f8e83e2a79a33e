"""Credentials out of URLs before a URL reaches a log line, an event, HTTP output or an error.

A URL may carry a user and password (``ws://user:PASSWORD@host/...``,
``nats://u:PASSWORD@host``). The real URL is what the program connects to; what
it shows anywhere else goes through one of these:

- :func:`redact_url`: one URL, or a comma-separated list (NATS seed servers),
  with the userinfo replaced by ``***`` (``nats://***@host:4222``).
- :func:`redact_text`: any text (an exception message, a ``repr`` of a config
  value) with the userinfo of every URL in it replaced.
"""

from __future__ import annotations

import re
from typing import Final

#: Replacement text for a secret.
REDACTED: Final = "***"

#: ``scheme://userinfo@`` anywhere in a text; the userinfo runs up to the last
#: ``@`` before the path (a password may contain a raw ``@``).
URL_USERINFO: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def redact_text(text: str) -> str:
    """``text`` with the user and password of every ``scheme://user:pass@`` in it replaced."""
    if "@" not in text:
        return text
    return URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) without user and password, for display."""
    if "@" not in url:
        return url
    if "," in url:
        return ",".join(redact_url(u.strip()) for u in url.split(",") if u.strip())
    if "://" not in url:
        # "user:pass@host" (a client adds the scheme itself)
        return f"{REDACTED}@{url.rpartition('@')[2]}"
    return redact_text(url)
