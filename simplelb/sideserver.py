"""The small listeners beside the traffic port (admin, redirect): one way to run them.

``SideServer`` binds a ``ThreadingHTTPServer`` for a handler class in its
constructor (a taken port is a ``ListenError`` there, naming what it is for),
serves on a named daemon thread, admits at most ``max_connections`` at once
(the rest are closed at once: they cost no thread), and ``stop()`` closes
the listener and every open connection, so a client polling on keep-alive
sees it go. A client that goes away mid-answer is not news: no traceback.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ListenError
from .specs import bracket

log = logging.getLogger(__name__)


class DeadlineHandler(BaseHTTPRequestHandler):
    """A request must arrive within ``deadline_s()`` in all, not a byte every ``timeout``: clients that
    drip bytes cannot hold a side listener's few connections for as long as they keep dripping.
    (The admin's handler clears the deadline once it has the body, so slow work is not cut short.)"""

    def deadline_s(self) -> float:
        raise NotImplementedError

    def handle_one_request(self) -> None:
        self.server.expire_at(self.connection, self.deadline_s())
        try:
            super().handle_one_request()
        finally:
            self.server.expire_at(self.connection, None)


# Control characters (C0, DEL, C1) and the backslash, written as escapes: a request line is the
# client's bytes, and raw in a log it could forge lines or drive the terminal that shows it.
_ESCAPES = str.maketrans({c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {ord("\\"): "\\\\"})


def printable(text: str) -> str:
    """``text`` for a log line: control characters escaped, as http.server's own ``log_message`` does."""
    return text.translate(_ESCAPES)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst of connections is accepted (and refused past the cap), not SYN-dropped

    def __init__(self, address, handler, max_connections: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()  # guarded by _open_lock, for close_connections()
        self._deadlines: dict[socket.socket, float] = {}  # guarded by _open_lock: closed when passed
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def expire_at(self, sock: socket.socket, after_s: float | None) -> None:
        """Close ``sock`` if it is still here ``after_s`` from now (None: no deadline)."""
        with self._open_lock:
            if after_s is None:
                self._deadlines.pop(sock, None)
            else:
                self._deadlines[sock] = time.monotonic() + after_s

    def service_actions(self) -> None:
        # Called by serve_forever between polls: the reaper of overdue connections.
        now = time.monotonic()
        with self._open_lock:
            overdue = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
            for sock in overdue:
                del self._deadlines[sock]
        for sock in overdue:
            _shut(sock)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: it looks up our FQDN, slowly

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many connections: this one waits for nothing
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
                self._deadlines.pop(request, None)
            self._slots.release()

    def close_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for sock in connections:
            _shut(sock)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("client %s: %s", client_address[0], sys.exc_info()[1])
            return
        log.exception("connection from %s failed", client_address[0])


class SideServer:
    """One side listener; ``what`` names it in errors and thread names (``admin``, ``redirect``)."""

    def __init__(self, address: tuple[str, int], handler: type, what: str, *, max_connections: int = 32):
        self.what = what
        try:
            self._httpd = _Server(address, handler, max_connections)
        except OSError as exc:
            raise ListenError(f"cannot listen on {what} {bracket(address[0])}:{address[1]}", exc) from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{bracket(self._httpd.server_address[0])}:{self.port}"

    def start(self):
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name=f"simplelb-{self.what} :{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        self._httpd.close_connections()
