"""Shared fixtures: a real nats-server, temp state dirs, and config helpers."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
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
def taken_port() -> Iterator[int]:
    """A loopback TCP port something already listens on (for "port in use" paths)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """Put the root logger back after a test that runs a CLI (the CLI configures it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server per test, for tests that kill or restart it."""
    server = NatsServer(jetstream=True, workdir=tmp_path / "nats")
    server.start()
    yield server
    server.close()


class FaultVFS(apsw.VFS):
    """The default SQLite VFS with switches, for storage-fault tests.

    ``full``: every write fails as SQLITE_FULL (disk full). ``main_full``: only
    writes to the main database file fail so (a WAL checkpoint writes there;
    commits write only the WAL). ``readonly``: the main database opens
    read-only and writes fail as on a file system remounted read-only (EROFS).
    No mount or permission trick is needed (tests run as root).
    """

    def __init__(self, name: str) -> None:
        self.vfs_name = name
        self.full = False
        self.main_full = False
        self.readonly = False
        super().__init__(name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        if self.readonly and flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            flags[0] = (
                flags[0] & ~(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
            ) | apsw.SQLITE_OPEN_READONLY
        return _FaultFile(self, name, flags)


class _FaultFile(apsw.VFSFile):
    def __init__(self, vfs: FaultVFS, name: Any, flags: list[int]) -> None:
        self.vfs = vfs
        self.main = bool(flags[0] & apsw.SQLITE_OPEN_MAIN_DB)
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.vfs.full or (self.main and self.vfs.main_full):
            raise apsw.FullError("injected: no space left on device")
        if self.vfs.readonly:
            raise apsw.ReadOnlyError("injected: read-only file system")
        super().xWrite(data, offset)


@pytest.fixture
def fault_vfs() -> Iterator[FaultVFS]:
    """A registered :class:`FaultVFS`; open SQLite through ``vfs=fault_vfs.vfs_name``."""
    vfs = FaultVFS("mdd-test-fault")
    yield vfs
    vfs.unregister()
