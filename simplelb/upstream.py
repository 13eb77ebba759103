"""Connections to one backend, pooled by a ``requests.Session``.

Each backend gets its own ``requests.Session`` whose ``HTTPAdapter`` owns a
urllib3 connection pool (LIFO, stale connections dropped when taken). We use
that pool for what it is good at -- keeping warm connections -- and write the
request head ourselves: ``requests`` (and urllib3's ``request()``) would
re-quote the target, merge duplicate headers and add ``User-Agent``,
``Accept-Encoding`` and friends, and the backend must receive what the
client sent.

A connection goes back to the pool only after a response that ended exactly
where its framing said, with no unread bytes, and no ``Connection: close``
from either side.
"""

from __future__ import annotations

import queue
import socket
import ssl

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error

from .errors import ConnectFailed
from .sockio import SocketReader

_PEEK_NOW = socket.MSG_PEEK | socket.MSG_DONTWAIT

# A receive from a backend that has said nothing for this long checks whether the request's client
# is still there (``SocketReader.between_parts``), as nginx notices a client that gave up: once a
# second costs nothing next to a slow backend, and a response that comes sooner never checks.
CLIENT_CHECK_S = 1.0


class _WithReader:
    """A urllib3 connection that also carries the ``SocketReader`` of its socket.

    The reader lives as long as the socket: bytes it has buffered belong to
    this connection and must not be lost between two requests.
    """

    reader: SocketReader | None = None
    timeout_s = -1.0  # the read timeout its socket has (-1: none set yet)
    # Whether the last request went out whole. One that did not (the backend stopped reading its
    # body) leaves the backend mid-body: whatever is sent next on it would be read as that body.
    sent_whole = True

    def connect(self) -> None:
        super().connect()
        self.reader = SocketReader(self.sock, kernel_timeouts=True)

    def close(self) -> None:
        self.reader = None
        super().close()


class PooledConnection(_WithReader, urllib3.connection.HTTPConnection):
    """A plain connection to a backend."""

    @property
    def is_connected(self) -> bool:
        """urllib3's check when the pool hands this connection out: open, and nothing to read.

        The same one system call as urllib3's (a readable idle connection has
        been closed by the backend, or holds bytes nobody asked for: either
        way it is dropped), as a non-blocking peek instead of a ``poll``
        object built, registered and polled for every request.
        """
        sock = self.sock
        if sock is None:
            return False
        try:
            sock.recv(1, _PEEK_NOW)
        except BlockingIOError:
            return True  # nothing to read: idle and open
        except OSError:
            return False
        return False  # readable: closed (b"") or stray bytes, either way not usable


class PooledTLSConnection(_WithReader, urllib3.connection.HTTPSConnection):
    """A connection to an ``https://`` backend: SNI set to its host, its certificate checked by the context."""


class _PoolQueue(queue.LifoQueue):
    """The urllib3 pool's LIFO queue without its condition variables.

    The pool never waits on it (``pool_block=False``: an empty pool opens a
    new connection, a full one closes the extra), yet ``queue.Queue`` signals
    ``not_empty`` and ``not_full`` at every ``get`` and ``put`` -- a few lock
    operations per request for waiters that never exist. Here both only take
    the mutex, and never block: empty raises ``Empty``, full raises ``Full``,
    as the non-blocking calls urllib3 makes expect.
    """

    def get(self, block: bool = True, timeout: float | None = None):
        with self.mutex:
            if self.queue:
                return self.queue.pop()
        raise queue.Empty

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if len(self.queue) < self.maxsize:
                self.queue.append(item)
                return
        raise queue.Full


class BackendPool:
    """Warm connections to one backend."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ):
        self.read_timeout_s = read_timeout_s
        self.tls = tls
        scheme = "https" if tls is not None else "http"
        self.session = requests.Session()
        self.session.trust_env = False  # never route backend traffic through an environment proxy
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size, pool_block=False, max_retries=0)
        self.session.mount(f"{scheme}://{host}:{port}/", adapter)
        pool_kwargs = {"ssl_context": tls} if tls is not None else None
        self._pool = adapter.poolmanager.connection_from_host(host, port, scheme=scheme, pool_kwargs=pool_kwargs)
        self._pool.ConnectionCls = PooledTLSConnection if tls is not None else PooledConnection
        lighter = _PoolQueue(self._pool.pool.maxsize)
        lighter.queue.extend(self._pool.pool.queue)  # the empty slots urllib3 put there
        self._pool.pool = lighter
        self._pool.timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)

    def configure(self, connect_timeout_s: float, read_timeout_s: float) -> None:
        """New timeouts (a reload): new connections get them, and pooled ones when next taken."""
        self.read_timeout_s = read_timeout_s
        self._pool.timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)

    def take(self) -> tuple[PooledConnection, bool]:
        """Take a connection from the pool; the flag says whether it is already connected.

        The pool drops connections the backend has closed while they were idle.
        A connection that is not connected must go through ``connect()``.
        """
        conn = self._pool._get_conn()
        if conn.sock is None:
            return conn, False
        if conn.timeout_s != self.read_timeout_s:  # a reload changed it while the connection was pooled
            self._limit(conn)
        return conn, True

    def take_fresh(self) -> PooledConnection:
        """A connection that is not connected yet (a pooled one is closed first)."""
        conn = self._pool._get_conn()
        if conn.sock is not None:
            conn.close()
        return conn

    def connect(self, conn: PooledConnection) -> None:
        """Open ``conn``; on failure its pool slot is given back and ``ConnectFailed`` raised."""
        try:
            conn.connect()
        except (OSError, Urllib3Error) as exc:
            conn.close()
            self._pool._put_conn(None)  # give the pool its slot back
            raise ConnectFailed(_describe(exc)) from None
        self._limit(conn)

    def _limit(self, conn: PooledConnection) -> None:
        """The read timeout, for each receive and each send (as a Python socket timeout did before)."""
        conn.reader.recv_timeout(self.read_timeout_s, every_s=CLIENT_CHECK_S)
        conn.reader.send_timeout(self.read_timeout_s)
        conn.timeout_s = self.read_timeout_s

    def release(self, conn: PooledConnection, reusable: bool) -> None:
        """Return ``conn`` for reuse, or close it; either way its pool slot is freed.

        Reused only when the request went out whole and nothing is left to read: no bytes in
        the reader, nor (over TLS) decrypted in the socket -- bytes past the end of a response
        would otherwise be read as the next client's answer.
        """
        if (reusable and conn.sent_whole and conn.reader is not None and conn.reader.pending == 0
                and not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending())):
            conn.reader.between_parts = None  # (the check of this request's client)
            self._pool._put_conn(conn)
        else:
            conn.close()
            self._pool._put_conn(None)

    def close(self) -> None:
        self._pool.close()
        self.session.close()


def _describe(exc: BaseException) -> str:
    """A short reason for a failed connect, without urllib3's object reprs."""
    cause = exc
    while cause.__context__ is not None and not isinstance(
        cause, (ConnectionRefusedError, socket.timeout, ssl.SSLCertVerificationError)
    ):
        cause = cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {cause.verify_message or cause.reason}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {cause.reason or cause}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, (socket.timeout, urllib3.exceptions.ConnectTimeoutError)):
        return "connect timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc).split(": ")[-1] or exc.__class__.__name__
