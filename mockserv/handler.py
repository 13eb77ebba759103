"""The request handler every mock server subclasses: its routes, its replies, TLS and WebSocket.

Each ``MockServer`` builds a handler *class* of its own from ``MockHandler``,
with its own ``mock`` (the server) and ``routes`` (a copy of ``ROUTES``), so
two servers in one process never answer with each other's routes or state.

Routes
------
* any method, any path: 200 with JSON ``{"name", "port", "method", "path",
  "body_bytes"}`` and ``X-Backend: <name>``, after the configured latency; a
  configured fraction answers 500 instead.
* ``GET /health``: 200 while up, 503 while marked down (never delayed).
* ``GET /ws``: a WebSocket echo (``mockserv.websocket``); ``?close_after=N``
  makes the server close after N messages.
* ``POST /_mock/health`` with body or ``?state=`` ``up``/``down``.
* ``POST /_mock/latency?ms=MS`` or ``ms=LOW-HIGH``.
* ``POST /_mock/error-rate?p=P``.
* ``POST /_mock/crash``: closes the listener and every other open connection
  (WebSockets included), as if the process had died, then answers on its own
  connection and closes that too: nothing is served once the answer is out.

A request counts as served (``requests`` in ``/_mock/state``) as its answer
is written, and only if it could be: one cut off by a crash while it waited
out its latency was never answered, and is not counted.
* ``GET /_mock/state``: the current behaviour as JSON.

With TLS, the handshake runs here, on the connection's own thread, never on
the thread that accepts connections: a client that connects and says nothing
delays no one else, and gives up after ``tls_handshake_timeout_s``.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from simplelb.specs import digits

from .behaviour import BehaviourError
from .websocket import EchoSession, HandshakeRefused, accept_key

if TYPE_CHECKING:
    from .server import MockServer

log = logging.getLogger(__name__)

# The route table each server's handler class starts from (a copy per server).
ROUTES = {
    ("GET", "/health"): "health",
    ("HEAD", "/health"): "health",
    ("GET", "/ws"): "websocket",
    ("POST", "/_mock/health"): "set_health",
    ("POST", "/_mock/latency"): "set_latency",
    ("POST", "/_mock/error-rate"): "set_error_rate",
    ("POST", "/_mock/crash"): "crash",
    ("GET", "/_mock/state"): "state",
}


class MockHandler(BaseHTTPRequestHandler):
    """Base for per-server handler classes; ``mock`` and ``routes`` are set per server."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # replies are one write each; do not hold them back
    tls_handshake_timeout_s = 10.0
    mock: MockServer
    routes: dict[tuple[str, str], str]

    def setup(self) -> None:
        context = self.mock.ssl_context
        self._tls_failed = False
        if context is not None:
            # Wrapped without the handshake so the socket can be tracked (and shut by a crash) first.
            self.request = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
        super().setup()
        self.mock._track(self.connection, True)
        if context is not None:
            self.connection.settimeout(self.tls_handshake_timeout_s)
            try:
                self.connection.do_handshake()
            except OSError as exc:  # ssl.SSLError included: plain HTTP, garbage, a client refusing our CA
                log.debug("%s: TLS handshake with %s failed: %s", self.mock.name, self.client_address, exc)
                self._tls_failed = True
            self.connection.settimeout(None)

    def handle(self) -> None:
        if not self._tls_failed:
            super().handle()

    def finish(self) -> None:
        self.mock._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass
        if self.mock.ssl_context is not None:
            # socketserver closes the socket it accepted, which the TLS wrapper has taken over.
            self.connection.close()

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
            return self._read_chunked()
        length_text = self.headers.get("Content-Length", "0")
        if not digits(length_text):
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

    def _read_chunked(self) -> int | None:
        total = 0
        kept = bytearray()
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";")[0].strip()
            # Hex digits only (int() also takes "-5" and "0x5"), and at most 16 of them.
            if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                self._reply(400, {"error": "bad chunked body"}, close=True)
                return None
            size = int(size_text, 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            while size:  # in pieces: a chunk may claim more than there is memory for
                data = self.rfile.read(min(size, 65536))
                if not data:
                    self._reply(400, {"error": "chunked body cut short"}, close=True)
                    return None
                size -= len(data)
                total += len(data)
                if len(kept) < 1024:
                    kept += data[:1024]
            self.rfile.readline(8)
        self._body_text = kept.decode("utf-8", "replace")
        return total

    # --- routes -----------------------------------------------------------

    def _echo(self, body_bytes: int) -> None:
        delay, fail = self.mock.behaviour.draw()
        if delay:
            time.sleep(delay)
        payload = {
            "name": self.mock.name,
            "port": self.mock.port,
            "method": self.command,
            "path": self.path,
            "body_bytes": body_bytes,
        }
        if fail:
            payload["error"] = "injected failure"
        with self.mock._serving():
            self._reply(500 if fail else 200, payload)

    def health(self, query, body) -> None:
        if self.mock.behaviour.healthy:
            self._reply(200, {"name": self.mock.name, "status": "up"})
        else:
            self._reply(503, {"name": self.mock.name, "status": "down"})

    def set_health(self, query, body) -> None:
        self._control(self.mock.set_health, query.get("state", [body])[0])

    def set_latency(self, query, body) -> None:
        self._control(self.mock.set_latency, query.get("ms", [body])[0])

    def set_error_rate(self, query, body) -> None:
        self._control(self.mock.set_error_rate, query.get("p", [body])[0])

    def _control(self, change, text: str) -> None:
        try:
            self._reply(200, change(text))
        except BehaviourError as exc:
            self._reply(400, {"error": str(exc)})

    def crash(self, query, body) -> None:
        # Down first, then the answer: a request sent once it is read must find the port dead.
        self.mock.crash(spare=self.connection)
        self._reply(200, {"name": self.mock.name, "status": "crashing"}, close=True)

    def state(self, query, body) -> None:
        self._reply(200, self.mock.state())

    def websocket(self, query, body) -> None:
        close_after = query.get("close_after", [None])[0]
        try:
            accept = accept_key(self.command, self.request_version, self.headers)
            if close_after is not None and not (digits(close_after) and int(close_after) > 0):
                raise HandshakeRefused(400, f"close_after must be a whole number above 0, not {close_after!r}")
        except HandshakeRefused as exc:
            self._reply(exc.status, {"error": str(exc)}, headers=exc.headers)
            return
        with self.mock._serving():
            self._write_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                   ("Sec-WebSocket-Accept", accept), ("X-Backend", self.mock.name)])
        self.log_request(101)
        self.close_connection = True  # whatever happens, no HTTP follows on this connection
        session = EchoSession(self.connection, lambda: self.rfile.read1(64 * 1024),
                              int(close_after) if close_after else None)
        with self.mock._websocket_open():
            ended = session.run()
        log.debug("%s: WebSocket from %s %s after %d messages", self.mock.name, self.client_address, ended,
                  session.messages)

    # --- replies ----------------------------------------------------------

    def _reply(self, status: int, payload: dict, close: bool = False, headers: list | None = None) -> None:
        body = (json.dumps(payload) + "\n").encode()
        fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                  ("X-Backend", self.mock.name), *(headers or [])]
        if close:
            fields.append(("Connection", "close"))
            self.close_connection = True
        self._write_head(status, fields, b"" if self.command == "HEAD" else body)
        self.log_request(status)

    def _write_head(self, status: int, fields: list[tuple[str, str]], body: bytes = b"") -> None:
        fields = [("Server", self.version_string()), ("Date", self.date_time_string()), *fields]
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
        # One write for head and body: a crash never leaves a response half sent.
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s: " + format, self.mock.name, *args)
