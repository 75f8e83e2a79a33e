"""mdd's error hierarchy: one base class, specific subclasses, messages built in ``__init__``."""

from __future__ import annotations


class MddError(Exception):
    """Base class of every error mdd raises on purpose."""


class ConfigError(MddError):
    """Invalid configuration: names the file, the key, the bad value and what is allowed."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}")


class EventDecodeError(MddError):
    """A serialized event could not be turned back into an event."""


class ParseError(MddError):
    """A venue frame could not be parsed (malformed JSON, missing fields, bad numbers)."""


class ProviderError(MddError):
    """A provider failed in a way a reconnect may cure (network, venue error)."""


class SubscribeError(ProviderError):
    """The venue rejected a subscription; the message is the venue's own text."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        self.venue_message = message
        super().__init__(f"{provider}: subscription rejected: {message}")


class AuthError(ProviderError):
    """The venue refused our credentials (never includes the credentials)."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: authentication failed: {message}")


class SinkError(MddError):
    """A sink could not write; the sink runner retries and counts."""


class ControlError(MddError):
    """The control socket could not be served or reached."""
