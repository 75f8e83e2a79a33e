"""The provider seam: what every venue connection offers the supervisor.

A provider connects, subscribes, keeps the connection alive and turns frames
into events, which it hands to an :class:`Outlet` synchronously. It updates
its :class:`~mdd.health.ProviderHealth` as it goes. Failures that a reconnect
may cure are handled inside ``run`` (the shared WebSocket loop); anything that
escapes ``run`` is a crash the supervisor contains and restarts with backoff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio

    from ..config import ProviderConfig
    from ..events import Event
    from ..health import ProviderHealth


class Outlet(Protocol):
    """Where a provider sends its events: the feed gate in front of the bus."""

    def publish(self, event: Event) -> None:
        """Hand over one event; never blocks."""

    def publish_many(self, events: list[Event]) -> None:
        """Hand over events in order (one socket read's worth); never blocks."""

    @property
    def congested(self) -> bool:
        """True when a blocking sink wants the producer to wait."""

    async def wait_for_room(self) -> None:
        """Wait until blocking sinks have room (call once per frame when congested)."""


class Provider(Protocol):
    """One venue connection for a set of symbols and channels."""

    name: str
    health: ProviderHealth

    async def run(self, outlet: Outlet, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Stream events into ``outlet`` until cancelled.

        Calls ``task_status.started()`` once data flows. Returns or raises only
        when the provider cannot go on (the supervisor then restarts it).
        """


class ProviderFactory(Protocol):
    """A provider class: built from its config and the feed's symbols/channels."""

    def __call__(
        self,
        config: ProviderConfig,
        symbols: tuple[str, ...],
        channels: tuple[str, ...],
        health: ProviderHealth,
    ) -> Provider: ...
