"""One mock backend: a listener, its thread, its open connections and its behaviour.

Many of these run in one process, so nothing here is global: each
``MockServer`` builds a handler class of its own (see ``mockserv.handler``)
whose ``routes`` table and ``mock`` attribute belong to that server alone.

A server can be stopped (or crashed: from outside the two look the same, the
port goes dead and every open connection is cut, WebSockets included) and
started again on the same port, as often as wanted. ``MockFleet`` owns a
process's servers; this class knows nothing of the others.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import socket
import socketserver
import ssl
import sys
import threading
from http.server import ThreadingHTTPServer

from simplelb.specs import bracket

from .behaviour import Behaviour, BehaviourError, parse_error_rate, parse_health, parse_latency
from .handler import ROUTES, MockHandler

__all__ = [
    "BehaviourError", "MockServer", "address_family", "bracket", "parse_error_rate", "parse_health", "parse_latency",
]

log = logging.getLogger(__name__)


def address_family(host: str) -> socket.AddressFamily:
    """The socket family to listen on ``host`` with: IPv6 for IPv6 literals and names resolving to one."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: listen on whatever it resolves to first
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]


class Listener(ThreadingHTTPServer):
    """What every mockserv listener (a mock or the control endpoints) does differently from the default."""

    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can wait on DNS at every restart.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # socketserver's default prints a traceback to stderr; a client that goes away is not news.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("client %s: %s", client_address[0], error)
        else:
            log.exception("connection from %s failed", client_address[0])


class _Server(Listener):
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler_class, name: str):
        self.address_family = address_family(address[0])
        self.name = name
        super().__init__(address, handler_class)

    def process_request(self, request, client_address) -> None:
        # ThreadingMixIn's threads are anonymous; ours say whose connection they serve.
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         name=f"mockserv {self.name} connection", daemon=True).start()


class MockServer:
    """A mock backend on its own listener and thread. ``start()``, then ``stop()`` or ``crash()``.

    ``ssl_context``: a server-side context to speak HTTPS (and wss) instead of HTTP.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        error_rate: float = 0.0,
        seed: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.name = name
        self.host = host
        self.ssl_context = ssl_context
        self.behaviour = Behaviour(latency_ms, error_rate, random.Random(seed))
        self.handler_class = type(
            f"MockHandler_{name}", (MockHandler,), {"mock": self, "routes": dict(ROUTES)}
        )
        self._lock = threading.Lock()  # guards _connections, requests and websockets
        self._lifecycle = threading.Lock()  # guards _httpd and _thread: start and stop, one at a time
        self._connections: set[socket.socket] = set()
        self._cutting = False  # stopped: a connection accepted just before is cut as it is tracked
        self.requests = 0  # non-control requests served (a WebSocket handshake counts as one)
        self.websockets = 0  # WebSocket connections open now
        self._httpd: _Server | None = _Server((host, port), self.handler_class, name)
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.address}/ws"

    @property
    def address(self) -> str:
        return f"{bracket(self.host)}:{self.port}"

    @property
    def backend(self) -> str:
        """What simplelb's ``--backends`` takes for this server: ``host:port``, or its https:// URL."""
        return self.url if self.ssl_context else self.address

    def start(self) -> MockServer:
        """Serve on a background thread; after ``stop()`` or a crash, listen again on the same port.

        Raises ``OSError`` if that port has been taken meanwhile.
        """
        with self._lifecycle:
            if self._thread is not None:
                return self
            if self._httpd is None:
                self._httpd = _Server((self.host, self.port), self.handler_class, self.name)
            with self._lock:
                self._cutting = False
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), name=f"mockserv {self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, spare: socket.socket | None = None) -> None:
        """Stop the listener and cut every open connection (but ``spare``: the crash route answers on it)."""
        with self._lifecycle:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join()
                self._thread = None
            if self._httpd is not None:
                self._httpd.server_close()
                self._httpd = None
        with self._lock:
            self._cutting = True
            connections = [sock for sock in self._connections if sock is not spare]
        for sock in connections:
            _cut(sock)

    crash = stop  # from outside, a crash and a stop look the same: the port goes dead

    @property
    def running(self) -> bool:
        return self._thread is not None

    # --- behaviour, for the control routes, the control listener and Python callers ---

    def set_health(self, state: str | bool) -> dict:
        """``"up"``/``"down"`` (or a bool): what ``/health`` answers. Returns the new state."""
        healthy = state if isinstance(state, bool) else parse_health(state)
        self.behaviour.set(healthy=healthy)
        log.info("%s marked %s", self.name, "up" if healthy else "down")
        return self.state()

    def set_latency(self, latency: str) -> dict:
        """``"50"`` or ``"20-80"`` milliseconds per request. Returns the new state."""
        self.behaviour.set(latency_ms=parse_latency(latency))
        return self.state()

    def set_error_rate(self, rate: str | float) -> dict:
        """The fraction of requests answered with 500. Returns the new state."""
        self.behaviour.set(error_rate=parse_error_rate(rate))
        return self.state()

    def state(self) -> dict:
        """Who and how this server is now, as JSON-ready values."""
        with self._lock:
            counts = {"requests": self.requests, "websockets": self.websockets}
        return {"name": self.name, "port": self.port, "address": self.address, "url": self.url,
                "running": self.running, "tls": self.ssl_context is not None,
                **self.behaviour.snapshot(), **counts}

    # --- bookkeeping for the handler --------------------------------------

    def _track(self, sock: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(sock)
            cut = open_ and self._cutting  # accepted, but its thread got here after the crash
        if cut:
            _cut(sock)

    @contextlib.contextmanager
    def _serving(self):
        """Around writing a request's answer: counts it, unless the server has been stopped meanwhile.

        Counted before the write, so that whoever reads the answer finds it counted; taken back if the
        write fails (a crash cut the connection while the request waited out its latency).
        """
        with self._lock:
            counted = not self._cutting
            self.requests += counted
        try:
            yield
        except BaseException:
            with self._lock:
                self.requests -= counted
            raise

    @contextlib.contextmanager
    def _websocket_open(self):
        with self._lock:
            self.websockets += 1
        try:
            yield
        finally:
            with self._lock:
                self.websockets -= 1


def _cut(sock: socket.socket) -> None:
    """Wake and end whatever reads ``sock``: the plain socket's shutdown, also for a TLS socket.

    (SSLSocket.shutdown would first drop its SSL state under the thread that is reading it.)
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
