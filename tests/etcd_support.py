"""A real etcd for tests: started on free loopback ports in a temporary directory, stopped after.

Test modules use it through conftest's ``etcd`` fixture (one server per
module) and ``client`` (an ``EtcdClient`` on it), or ``running_etcd()`` for
a server of their own.

Tests that share one server keep apart by using their own key prefix
(``server.prefix()``). Without an ``etcd`` binary the tests are skipped
with a reason that says what to install. ``kill()`` and ``restart()`` (same
ports, same data) let a test take etcd away and bring it back; ``freeze()``
and ``thaw()`` keep it there but answering nothing (its sockets still accept).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ETCD = os.environ.get("ETCD_BINARY") or shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    """One etcd member on loopback; ``endpoint`` is its client URL."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._log = open(self.data_dir.with_suffix(".log"), "ab")  # closed in kill()
        self._proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd did not start on {self.endpoint}; see {self.data_dir.with_suffix('.log')}")
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(self.endpoint + "/health", timeout=1).json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL etcd (its data stays, for ``restart()``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def freeze(self) -> None:
        """SIGSTOP etcd: connections are still accepted and requests still sent, but none is answered."""
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT etcd after ``freeze()``; harmless if it was not frozen or has gone."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def unread_requests(self) -> int:
        """Bytes waiting, unread, in etcd's end of its client connections (Linux): while it is frozen,
        a request sent to it shows here."""
        waiting = 0
        with open("/proc/net/tcp") as table:
            for row in list(table)[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == self.client_port and fields[3] == "01":  # ESTABLISHED
                    waiting += int(fields[4].split(":")[1], 16)  # rx_queue
        return waiting

    def restart(self) -> EtcdServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        # Its data is a temporary directory thrown away next: a graceful stop (3.5 s) buys nothing.
        self.kill()

    def url(self, prefix: str) -> str:
        """The ``etcd://`` URL of a prefix on this server, as ``--register`` and ``--discovery`` take it."""
        return f"etcd://127.0.0.1:{self.client_port}/{prefix}"

    @staticmethod
    def prefix() -> str:
        """A key prefix no other test uses."""
        return f"test-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdServer]:
    """A started etcd, stopped and deleted afterwards; skips the test if etcd is not installed."""
    if not (os.path.isfile(ETCD) and os.access(ETCD, os.X_OK)):
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server; or set ETCD_BINARY)")
    with tempfile.TemporaryDirectory(prefix="etcd-test-") as tmp:
        for attempt in range(3):  # a free port can be taken between choosing it and etcd binding it
            server = EtcdServer(Path(tmp) / f"data-{attempt}")
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()
