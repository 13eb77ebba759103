"""Tunnels: after ``101 Switching Protocols``, bytes copied both ways until both sides are done.

Go's ``httputil.ReverseProxy`` (``handleUpgradeResponse``) and RFC 9110
§7.8 show the way: the backend's 101 goes to the client, then the two
connections are joined. One thread copies each direction, so neither can
block the other (a side that sends a lot while the other does not read
would deadlock a single copier).

* A direction that reaches EOF is passed on as a half-close (``shutdown``
  of the writing side; over TLS, of the TCP connection, with no close_notify)
  and the other direction keeps going: the tunnel ends when both have.
* A reset or a failed write in either direction ends both at once.
* ``idle_timeout_s`` without a byte in either direction ends both.
* Bytes already read past a head (a client that spoke early, a backend
  that sent its first frame with the 101) are passed on first.

Copying goes through one reusable buffer per direction (``recv_into``), so
a tunnel holds 2 x ``BUFFER`` however much passes through it.

``OpenTunnels`` counts the tunnels open now and ends them all, both ways,
when a shutdown's grace period is over.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

from .headers import encode_head, response_headers_for_client, upgrade_headers
from .http1 import comma_tokens, header_values

BUFFER = 64 * 1024


class _Activity:
    """When a byte last moved, in either direction (a float write is atomic)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.last


class OpenTunnels:
    """The tunnels open now: how many (``/status``, the metrics), and a way to end them all at once.

    A shutdown closes the client connections once its grace period is over. A tunnel's backend side
    must go then too: a backend that keeps its half open would otherwise keep the tunnel's copier
    waiting (up to ``--tunnel-timeout``), and the process end before the tunnel was logged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _open
        self._open: set[tuple[socket.socket, socket.socket]] = set()

    @property
    def value(self) -> int:
        return len(self._open)

    @contextmanager
    def opened(self, client: socket.socket, backend: socket.socket):
        """Count the tunnel between ``client`` and ``backend`` as open for the ``with`` block."""
        pair = (client, backend)
        with self._lock:
            self._open.add(pair)
        try:
            yield
        finally:
            with self._lock:
                self._open.discard(pair)

    def close_all(self) -> None:
        """End every open tunnel, both ways: their copiers return and their requests are logged."""
        with self._lock:
            pairs = list(self._open)
        for client, backend in pairs:
            _close_both(client, backend)


def _close_both(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _half_close(sock: socket.socket) -> None:
    # socket.socket's shutdown, below TLS: an SSLSocket's own drops its TLS state first, and the
    # other direction would then read, and pass on, raw TLS records as if they were data.
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass


def _pump(src: socket.socket, dst: socket.socket, activity: _Activity, idle_timeout_s: float, moved: list) -> None:
    """Copy ``src`` to ``dst`` until EOF (passed on as a half-close), an error or the idle timeout."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    while True:
        try:
            count = src.recv_into(buffer)
        except TimeoutError:
            if activity.idle_s() < idle_timeout_s:
                continue  # the other direction is busy: the tunnel is not idle
            _close_both(src, dst)
            return
        except OSError:
            _close_both(src, dst)
            return
        if not count:
            _half_close(dst)
            return
        try:
            dst.sendall(view[:count])
        except OSError:
            _close_both(src, dst)
            return
        activity.last = time.monotonic()
        moved[0] += count


def run_tunnel(
    client: socket.socket,
    backend: socket.socket,
    *,
    client_early: bytes = b"",
    backend_early: bytes = b"",
    idle_timeout_s: float,
) -> tuple[int, int]:
    """Join the two sockets until both directions are done; return (bytes up, bytes down)."""
    activity = _Activity()
    up, down = [len(client_early)], [len(backend_early)]
    for sock in (client, backend):
        sock.settimeout(idle_timeout_s)  # one value for both directions: the threads share each socket
    try:
        if client_early:
            backend.sendall(client_early)
        if backend_early:
            client.sendall(backend_early)
    except OSError:
        _close_both(client, backend)
        return up[0], down[0]
    downstream = threading.Thread(
        target=_pump, args=(backend, client, activity, idle_timeout_s, down), name="tunnel-down", daemon=True
    )
    downstream.start()
    _pump(client, backend, activity, idle_timeout_s, up)
    downstream.join()
    return up[0], down[0]


def switch_protocols(conn, backend, request, head, client, *, backend_header, idle_timeout_s: float) -> tuple[int, int]:
    """Send the backend's 101 to the client, then tunnel; return (bytes up, bytes down).

    The connection to the backend is the tunnel's from here on: the caller
    closes it afterwards and never pools it.
    """
    chosen = [p.strip() for value in header_values(head.headers, "Upgrade") for p in value.split(",") if p.strip()]
    headers = response_headers_for_client(head.headers, comma_tokens(head.headers, "Connection"), backend_header)
    client.send_head(101, encode_head(f"HTTP/1.1 101 {head.reason or 'Switching Protocols'}", headers
                                      + upgrade_headers(chosen)))
    up, down = run_tunnel(
        client.sock, conn.sock, client_early=client.reader.take_pending(), backend_early=conn.reader.take_pending(),
        idle_timeout_s=idle_timeout_s,
    )
    client.bytes_sent += down
    client.body_bytes_sent += down  # (what follows the 101's head, as nginx's $body_bytes_sent counts it)
    client.body_bytes_received += up
    return up, down
