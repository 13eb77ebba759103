"""MockFleet: the mock servers of one process, by name.

The command line, the process's control listener (``mockserv.control``) and
Python callers (the traffic tool's scenarios, tests) all reach servers
through a fleet, so "start mock-2 again" means the same thing everywhere.
The fleet only names the servers and starts and stops them together; each
server keeps its own listener, handler class and behaviour, and a crashed
one is started again on its own port without touching the others::

    with MockFleet(3) as fleet:          # mock-1..3 on free ports, started
        fleet["mock-2"].crash()
        fleet["mock-2"].start()          # same port, serving again
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

from .server import MockServer, bracket


class FleetError(Exception):
    """A fleet operation failed; the message says which server and why."""


class UnknownServer(FleetError, LookupError):
    """No server of that name in this fleet."""


class MockFleet:
    """``count`` servers named ``mock-1``.. on ``host``, on consecutive ports from ``base_port``.

    ``base_port`` 0: each on a free port. ``seed``: server *i* draws from
    ``seed + i``, so a run can be repeated. Raises ``FleetError`` (nothing
    left listening) if a port cannot be had.
    """

    def __init__(
        self,
        count: int,
        host: str = "127.0.0.1",
        base_port: int = 0,
        *,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        error_rate: float = 0.0,
        seed: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        prefix: str = "mock-",
    ):
        self._servers: dict[str, MockServer] = {}
        for i in range(count):
            name = f"{prefix}{i + 1}"
            port = base_port + i if base_port else 0
            try:
                self._servers[name] = MockServer(
                    name, host, port, latency_ms=latency_ms, error_rate=error_rate,
                    seed=None if seed is None else seed + i, ssl_context=ssl_context,
                )
            except OSError as exc:
                self.stop()
                raise FleetError(f"cannot listen on {bracket(host)}:{port}: {exc.strerror or exc}") from exc

    def __getitem__(self, name: str) -> MockServer:
        try:
            return self._servers[name]
        except KeyError:
            raise UnknownServer(f"no server named {name!r} (there are {', '.join(self._servers)})") from None

    def __iter__(self) -> Iterator[MockServer]:
        return iter(list(self._servers.values()))

    def __len__(self) -> int:
        return len(self._servers)

    @property
    def addresses(self) -> list[str]:
        """What ``--backends`` takes for every server, in order (``host:port``, or ``https://`` with TLS)."""
        return [server.backend for server in self]

    def start(self) -> MockFleet:
        """Start every server that is not running."""
        for server in self:
            server.start()
        return self

    def restart(self, name: str) -> dict:
        """Start a stopped or crashed server again on its port; its state. ``FleetError`` if the port is taken."""
        server = self[name]
        try:
            server.start()
        except OSError as exc:
            raise FleetError(f"{name}: cannot listen on {server.address} again: {exc.strerror or exc}") from exc
        return server.state()

    def crash(self, name: str) -> dict:
        """Close a server's listener and every connection it has open; its state."""
        server = self[name]
        server.crash()
        return server.state()

    def stop(self) -> None:
        for server in self:
            server.stop()

    def states(self) -> list[dict]:
        return [server.state() for server in self]

    def __enter__(self) -> MockFleet:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
