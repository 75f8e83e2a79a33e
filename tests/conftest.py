"""Shared fixtures: a real nats-server, temp state dirs, and config helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mdd.natsserver import NatsServer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def nats_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole session (loopback, free port)."""
    server = NatsServer(jetstream=True, workdir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server per test, for tests that kill or restart it."""
    server = NatsServer(jetstream=True, workdir=tmp_path / "nats")
    server.start()
    yield server
    server.close()
