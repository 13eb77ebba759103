"""One mock backend: an ``http.server`` with its own handler class and behaviour.

Many of these run in one process, so nothing here is global: each
``MockServer`` builds a handler *class* of its own whose ``routes`` table and
``mock`` attribute belong to that server alone. Two servers can never answer
with each other's routes or state.

Routes
------
* any method, any path: 200 with JSON ``{"name", "port", "method", "path",
  "body_bytes"}`` and ``X-Backend: <name>``, after the configured latency; a
  configured fraction answers 500 instead.
* ``GET /health``: 200 while up, 503 while marked down (never delayed).
* ``POST /_mock/health`` with body or ``?state=`` ``up``/``down``.
* ``POST /_mock/latency?ms=MS`` or ``ms=LOW-HIGH``.
* ``POST /_mock/error-rate?p=P``.
* ``POST /_mock/crash``: answers, then closes the listener and every open
  connection, as if the process had died.
* ``GET /_mock/state``: the current behaviour as JSON.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


class BehaviourError(ValueError):
    """A behaviour setting (latency, error rate, health state) is not valid."""


def parse_latency(text: str) -> tuple[float, float]:
    """``"50"`` -> (50, 50); ``"20-80"`` -> (20, 80); milliseconds."""
    low_text, sep, high_text = str(text).strip().partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise BehaviourError(f"latency must be MS or LOW-HIGH in milliseconds, not {text!r}") from None
    if not 0 <= low <= high <= 600_000:
        raise BehaviourError(f"latency must be 0 <= LOW <= HIGH <= 600000 ms, not {text!r}")
    return low, high


def parse_error_rate(text: str | float) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise BehaviourError(f"error rate must be a fraction from 0 to 1, not {text!r}") from None
    if not 0 <= rate <= 1:
        raise BehaviourError(f"error rate must be a fraction from 0 to 1, not {text!r}")
    return rate


class Behaviour:
    """What a mock server does now; changed at runtime through the control routes."""

    def __init__(self, latency_ms: tuple[float, float], error_rate: float, rng: random.Random):
        self._lock = threading.Lock()  # guards every field below, including the rng
        self.healthy = True
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self._rng = rng

    def draw(self) -> tuple[float, bool]:
        """(seconds to wait, whether to fail) for one request."""
        with self._lock:
            low, high = self.latency_ms
            delay = self._rng.uniform(low, high) / 1000 if high else 0.0
            fail = self.error_rate > 0 and self._rng.random() < self.error_rate
            return delay, fail

    def set(self, **changes) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def snapshot(self) -> dict:
        with self._lock:
            return {"healthy": self.healthy, "latency_ms": list(self.latency_ms), "error_rate": self.error_rate}


class MockHandler(BaseHTTPRequestHandler):
    """Base for per-server handler classes; ``mock`` and ``routes`` are set per server."""

    protocol_version = "HTTP/1.1"
    mock: MockServer
    routes: dict[tuple[str, str], str]

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.mock._track(self.connection, True)

    def finish(self) -> None:
        self.mock._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def __getattr__(self, name: str):
        # http.server dispatches to do_<METHOD>; every method is served the same way.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        body_bytes = self._read_body()
        if body_bytes is None:
            return
        parts = urlsplit(self.path)
        route = self.routes.get((self.command, parts.path))
        if route is None:
            self._echo(body_bytes)
        else:
            getattr(self, route)(parse_qs(parts.query), self._body_text)

    # --- request bodies ---------------------------------------------------

    def _read_body(self) -> int | None:
        """Consume the request body; keep it if small (control routes read it). None on bad framing."""
        self._body_text = ""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            kept = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self._reply(400, {"error": "bad chunked body"}, close=True)
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline(8)
                total += len(data)
                if len(kept) < 1024:
                    kept += data[:1024]
            self._body_text = kept.decode("utf-8", "replace")
            return total
        length_text = self.headers.get("Content-Length", "0")
        if not length_text.isdigit():
            self._reply(400, {"error": "bad Content-Length"}, close=True)
            return None
        remaining = int(length_text)
        total = remaining
        first = True
        while remaining:
            data = self.rfile.read(min(remaining, 1 << 20))
            if not data:
                self.close_connection = True
                return None
            if first:
                self._body_text = data[:1024].decode("utf-8", "replace")
                first = False
            remaining -= len(data)
        return total

    # --- routes -----------------------------------------------------------

    def _echo(self, body_bytes: int) -> None:
        delay, fail = self.mock.behaviour.draw()
        if delay:
            time.sleep(delay)
        self.mock._count()
        payload = {
            "name": self.mock.name,
            "port": self.mock.port,
            "method": self.command,
            "path": self.path,
            "body_bytes": body_bytes,
        }
        if fail:
            payload["error"] = "injected failure"
            self._reply(500, payload)
        else:
            self._reply(200, payload)

    def health(self, query, body) -> None:
        if self.mock.behaviour.healthy:
            self._reply(200, {"name": self.mock.name, "status": "up"})
        else:
            self._reply(503, {"name": self.mock.name, "status": "down"})

    def set_health(self, query, body) -> None:
        state = (query.get("state", [body])[0] or "").strip().lower()
        if state not in ("up", "down"):
            self._reply(400, {"error": "send 'up' or 'down' (as the body or ?state=)"})
            return
        self.mock.behaviour.set(healthy=state == "up")
        log.info("%s marked %s", self.mock.name, state)
        self._reply(200, self.mock.state())

    def set_latency(self, query, body) -> None:
        try:
            latency = parse_latency(query.get("ms", [body])[0])
        except BehaviourError as exc:
            self._reply(400, {"error": str(exc)})
            return
        self.mock.behaviour.set(latency_ms=latency)
        self._reply(200, self.mock.state())

    def set_error_rate(self, query, body) -> None:
        try:
            rate = parse_error_rate(query.get("p", [body])[0])
        except BehaviourError as exc:
            self._reply(400, {"error": str(exc)})
            return
        self.mock.behaviour.set(error_rate=rate)
        self._reply(200, self.mock.state())

    def crash(self, query, body) -> None:
        self._reply(200, {"name": self.mock.name, "status": "crashing"}, close=True)
        threading.Thread(target=self.mock.crash, name=f"{self.mock.name} crash", daemon=True).start()

    def state(self, query, body) -> None:
        self._reply(200, self.mock.state())

    def _reply(self, status: int, payload: dict, close: bool = False) -> None:
        body = (json.dumps(payload) + "\n").encode()
        headers = [
            ("Server", self.version_string()),
            ("Date", self.date_time_string()),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Backend", self.mock.name),
        ]
        if close:
            headers.append(("Connection", "close"))
            self.close_connection = True
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        # One write for head and body: a crash never leaves a response half sent.
        self.wfile.write(head.encode("latin-1") + b"\r\n" + (b"" if self.command == "HEAD" else body))
        self.log_request(status)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s: " + format, self.mock.name, *args)


# The route table each server's handler class starts from (a copy per server).
ROUTES = {
    ("GET", "/health"): "health",
    ("HEAD", "/health"): "health",
    ("POST", "/_mock/health"): "set_health",
    ("POST", "/_mock/latency"): "set_latency",
    ("POST", "/_mock/error-rate"): "set_error_rate",
    ("POST", "/_mock/crash"): "crash",
    ("GET", "/_mock/state"): "state",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024


class MockServer:
    """A mock backend on its own listener and thread. ``start()``, then ``stop()`` or ``crash()``."""

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        error_rate: float = 0.0,
        seed: int | None = None,
    ):
        self.name = name
        self.host = host
        self.behaviour = Behaviour(latency_ms, error_rate, random.Random(seed))
        self.handler_class = type(
            f"MockHandler_{name}", (MockHandler,), {"mock": self, "routes": dict(ROUTES)}
        )
        self._lock = threading.Lock()  # guards _connections and requests
        self._lifecycle = threading.Lock()  # guards _httpd and _thread: start and stop, one at a time
        self._connections: set[socket.socket] = set()
        self.requests = 0  # non-control requests served
        self._httpd: _Server | None = _Server((host, port), self.handler_class)
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> MockServer:
        """Serve on a background thread; after ``stop()`` or a crash, listen again on the same port."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            if self._httpd is None:
                self._httpd = _Server((self.host, self.port), self.handler_class)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), name=f"mockserv {self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the listener and close open connections."""
        with self._lifecycle:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join()
                self._thread = None
            if self._httpd is not None:
                self._httpd.server_close()
                self._httpd = None
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    crash = stop  # from outside, a crash and a stop look the same: the port goes dead

    @property
    def running(self) -> bool:
        return self._thread is not None

    def state(self) -> dict:
        return {"name": self.name, "port": self.port, **self.behaviour.snapshot()}

    def _track(self, sock: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(sock)

    def _count(self) -> None:
        with self._lock:
            self.requests += 1
