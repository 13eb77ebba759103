"""Shared fixtures: real servers on port 0, and backends that misbehave on purpose.

Everything a fixture starts, it stops. Waits are for a condition with a
deadline (``wait_for``), never a sleep that hopes to be long enough.
"""

from __future__ import annotations

import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mockserv import MockServer
from simplelb import Config, LoadBalancer
from simplelb.body import BodyError, iter_body
from simplelb.etcd import EtcdClient
from simplelb.http1 import parse_request_head, request_framing
from simplelb.sockio import SocketReader

from .etcd_support import running_etcd

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def state(lb, backend: int | str) -> str:
    """A backend's state as ``/status`` shows it (by position in the configuration, or by name)."""
    backends = lb.control.status()["backends"]
    entry = backends[backend] if isinstance(backend, int) else next(b for b in backends if b["name"] == backend)
    return entry["state"]


def dripped_until_closed(port: int, first: bytes, piece: bytes, give_up_s: float = 3.0) -> float:
    """Send ``first``, then ``piece`` every 0.2 s, until the server closes the connection (each read
    it makes is quick: only a deadline on the whole request ends it); the seconds that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(first)
        while time.monotonic() - started < give_up_s:
            try:
                sock.sendall(piece)
            except OSError:
                break
            time.sleep(0.2)
        sock.settimeout(give_up_s)
        try:
            assert sock.recv(100) == b"", "an answer, where the connection should have been closed"
        except ConnectionResetError:
            pass
        return time.monotonic() - started


def free_port() -> int:
    """A port nothing listens on (bound and released), for 'connection refused' cases."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- mock servers and balancers ---------------------------------------------


@pytest.fixture
def mock_servers():
    started: list[MockServer] = []

    def make(count: int = 1, **kwargs) -> list[MockServer]:
        servers = [MockServer(f"mock-{len(started) + i + 1}", **kwargs).start() for i in range(count)]
        started.extend(servers)
        return servers

    yield make
    for server in started:
        server.stop()


# Tests that are not about health checks keep probes out of the way.
QUIET_HEALTH = {"health_interval_s": 60.0}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@pytest.fixture
def balancer():
    started: list[LoadBalancer] = []

    def make(backends, **kwargs) -> LoadBalancer:
        if not isinstance(backends, str):
            backends = ",".join(b if isinstance(b, str) else b.address for b in backends)
        options = {**QUIET_HEALTH, "port": 0, **kwargs}
        lb = LoadBalancer(Config.of(backends=backends, **options)).start()
        started.append(lb)
        return lb

    yield make
    for lb in started:
        lb.stop(grace_s=1)


# --- scripted backends --------------------------------------------------------


@dataclass
class Received:
    """One request as a scripted backend saw it."""

    raw_head: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ScriptedBackend:
    """A raw TCP backend whose behaviour is a function ``script(conn, backend)``.

    ``received`` holds every request read with ``read_request``;
    ``connections`` counts the connections that carried one. Health probes
    (``GET /health``) are answered 200 and recorded in neither.
    """

    script: Callable
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    accepted: int = 0  # every connection, probes and empty ones included
    events: dict[str, threading.Event] = field(default_factory=dict)

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ScriptedBackend:
        backend = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                backend.accepted += 1
                self.request.settimeout(10)
                conn = ScriptedConnection(self.request, SocketReader(self.request), backend)
                try:
                    backend.script(conn)
                except (OSError, EOFError, BodyError):
                    pass  # the client went away or cut its body short: what some tests do on purpose

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False
            request_queue_size = 128  # the default 5 drops SYNs in a burst: a 1 s retransmit, not a test failure

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class ScriptedConnection:
    sock: socket.socket
    reader: SocketReader
    backend: ScriptedBackend
    requests: int = 0

    def read_request(self) -> Received | None:
        raw = self.reader.read_head(1 << 20)
        if raw is None:
            return None
        head = parse_request_head(raw)
        body = b"".join(bytes(piece) for piece in iter_body(self.reader, request_framing(head)))
        if head.target == "/health":
            self.respond(200, b"ok", [("Connection", "close")])
            self.sock.close()
            return None
        received = Received(raw, head.method, head.target, head.headers, body)
        self.backend.received.append(received)
        self.requests += 1
        if self.requests == 1:
            self.backend.connections += 1
        return received

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def respond(self, status: int = 200, body: bytes = b"ok", headers: list[tuple[str, str]] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} X"]
        lines += [f"{k}: {v}" for k, v in (headers if headers is not None else [])]
        if headers is None or not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


@pytest.fixture
def scripted():
    started: list[ScriptedBackend] = []

    def make(script: Callable) -> ScriptedBackend:
        backend = ScriptedBackend(script).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        for event in backend.events.values():
            event.set()  # release scripts that wait on the test
        backend.stop()


def read_then_reset(conn: ScriptedConnection) -> None:
    """Read one request, then reset the connection (RST, no response): a backend that died on it."""
    conn.read_request()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.sock.close()


def serve_forever_ok(conn: ScriptedConnection) -> None:
    """Answer every request on the connection with 200 'ok'."""
    while conn.read_request() is not None:
        conn.respond()


def holding(release: threading.Event, path: str | None = None, most_s: float = 10) -> Callable:
    """A script answering 200 'ok', but requests (for ``path``, or all) only once ``release`` is set (or ``most_s`` passed)."""
    def script(conn: ScriptedConnection) -> None:
        while (request := conn.read_request()) is not None:
            if path is None or request.target == path:
                release.wait(most_s)
            conn.respond()
    return script


# --- raw client -----------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the body ended where its framing said

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


class RawClient:
    """A client that sends exact bytes and parses exactly what comes back."""

    def __init__(self, port: int, timeout_s: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.reader = SocketReader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, method: str = "GET") -> RawResponse:
        from simplelb.http1 import parse_response_head, response_framing

        raw = self.reader.read_head(1 << 20)
        assert raw is not None, "connection closed before a response"
        head = parse_response_head(raw)
        if head.status < 200:
            return RawResponse(head.status, head.reason, head.headers, b"", True)
        body = bytearray()
        complete = True
        try:
            for data in iter_body(self.reader, response_framing(method, head)):
                body += data
        except BodyError:
            complete = False
        return RawResponse(head.status, head.reason, head.headers, bytes(body), complete)

    def request(self, data: bytes, method: str = "GET") -> RawResponse:
        self.send(data)
        return self.read_response(method)

    def is_closed(self, timeout_s: float = 5.0) -> bool:
        """True if the peer closes the connection within ``timeout_s``."""
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        if not readable:
            return False
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client():
    clients: list[RawClient] = []

    def make(port: int, timeout_s: float = 10.0) -> RawClient:
        client = RawClient(port, timeout_s)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# --- subprocesses ------------------------------------------------------------------


class Process:
    """A command of ours run as a subprocess, with its stderr collected on a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr_lines), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout_lines), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_output(self, needle: str, timeout_s: float = 10.0) -> str:
        def found() -> bool:
            return any(needle in line for line in self.stderr_lines + self.stdout_lines) or self.proc.poll() is not None

        wait_for(found, timeout_s, f"{needle!r} in output")
        for line in self.stderr_lines + self.stdout_lines:
            if needle in line:
                return line
        raise AssertionError(f"process exited ({self.proc.returncode}) without printing {needle!r}:\n{self.stderr}")

    def wait(self, timeout_s: float = 15.0) -> int:
        code = self.proc.wait(timeout_s)
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def process():
    started: list[Process] = []

    def make(*args: str, env: dict[str, str] | None = None) -> Process:
        proc = Process(*args, env=env)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()


def run_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


# --- a balancer run as a user runs it ---------------------------------------------------


def start_lb_process(process, *args: str, admin: bool = False, timeout_s: float = 20.0) -> tuple[Process, str, str | None]:
    """``python -m simplelb --port 0 ARGS``; returns the process, its URL and its admin URL (with ``admin``)."""
    import re

    proc = process("-m", "simplelb", "--port", "0", *args)
    line = proc.wait_for_output("listening on", timeout_s)
    match = re.search(r"listening on (https?://[^,\s]+),", line)
    assert match, f"no listening line:\n{proc.stderr}"
    admin_url = None
    if admin or "--admin" in args:
        admin_line = proc.wait_for_output("admin on", timeout_s)
        admin_url = re.search(r"admin on (http://\S+)", admin_line).group(1)
    return proc, match.group(1), admin_url


JSON = {"Content-Type": "application/json"}


class NoWorkers:
    """A fleet's supervisor without workers, for a ``FleetControl`` in the test: what it sends reaches nobody."""

    def live_workers(self):
        return []

    def all_workers(self):
        return []


# --- steady traffic ----------------------------------------------------------------------


class SteadyTraffic:
    """Clients sending GETs at about ``rate`` per second in total until ``stop()``; records every outcome.

    Each client thread keeps a ``requests.Session`` (keep-alive), as a real
    client would. ``outcomes`` counts statuses (or exception names) and
    ``backends`` counts ``X-Backend`` values. Bounded: it stops by itself
    after ``max_s`` seconds.
    """

    def __init__(self, url: str, rate: float = 300.0, clients: int = 6, max_s: float = 60.0, path: str = "/"):
        from collections import Counter

        self.url = url + path
        self.interval_s = clients / rate
        self.outcomes: Counter = Counter()
        self.backends: Counter = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()  # guards the counters
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> SteadyTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def _client(self) -> None:
        import requests

        with requests.Session() as session:
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    response = session.get(self.url, timeout=10)
                    outcome, backend = response.status_code, response.headers.get("X-Backend")
                    if response.status_code != 200:
                        detail = f"{response.status_code} {response.text.strip()[:200]}"
                    else:
                        detail = None
                except requests.RequestException as exc:
                    outcome, backend, detail = type(exc).__name__, None, str(exc)[:200]
                with self._lock:
                    self.outcomes[outcome] += 1
                    if backend:
                        self.backends[backend] += 1
                    if detail:
                        self.errors.append(detail)
                next_at += self.interval_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def snapshot(self):
        from collections import Counter

        with self._lock:
            return Counter(self.outcomes), Counter(self.backends)

    def stop(self) -> SteadyTraffic:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return self


# --- a real etcd (skipped, saying what to install, without the binary) ---------------------


@pytest.fixture(scope="module")
def etcd():
    """One etcd per test module; tests keep apart with their own key prefix (``etcd.prefix()``)."""
    with running_etcd() as server:
        yield server


@pytest.fixture
def client(etcd):
    etcd_client = EtcdClient(etcd.endpoint)
    yield etcd_client
    etcd_client.close()
