"""One worker's connections: send a request, return a ``Result``; resend once on a stale connection.

Each worker thread owns a ``Sender``, which keeps one ``http.client``
connection per origin (scheme, host, port) alive between requests and drops it
after any error or a ``Connection: close``.

**Stale keep-alive connections.** A server may close a kept-alive connection
while it sits idle (its keep-alive timeout: nginx 75 s, simplelb 60 s, Node
5 s). A request written to it meanwhile meets a closed socket: the server
never read it, and the client sees an empty read (``RemoteDisconnected``) or
a reset before any byte of the response. Browsers, urllib3 and Go's
``net/http`` send such a request again, once, on a new connection; so do we,
and mark the result ``reconnected`` instead of failed. Only when the
connection had already carried a request (a fresh connection that fails is
the server's failure) and only before the status line arrived (after that the
server may have acted on it).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass

from simplelb.files import open_regular

from .outcome import Result
from .request import Target

# What a request on a connection the server had already closed runs into.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Tls:
    """``--cacert`` and ``--insecure``: picklable, so each process builds its own ``SSLContext``."""

    cacert: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        if self.cacert:
            open_regular(self.cacert).close()  # (OpenSSL would wait on a FIFO for a writer)
        context = ssl.create_default_context(cafile=self.cacert)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def classify(exc: BaseException) -> str:
    """A short, stable name for what went wrong with a request."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate verify failed"
    if isinstance(exc, ssl.SSLError):
        return "tls error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated body"
    if isinstance(exc, STALE):
        return "connection closed"
    if isinstance(exc, http.client.HTTPException):
        return "protocol error"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError):
        return (exc.strerror or exc.__class__.__name__).lower()
    return exc.__class__.__name__


def open_connection(target: Target, timeout_s: float, tls: ssl.SSLContext | None) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return http.client.HTTPSConnection(target.host, target.port, timeout=timeout_s, context=tls)
    return http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)


class Sender:
    """One worker's keep-alive connections, one per origin."""

    def __init__(self, timeout_s: float, tls: ssl.SSLContext | None = None):
        self.timeout_s = timeout_s
        self.tls = tls
        self._conns: dict[tuple, http.client.HTTPConnection] = {}

    def send(self, target: Target, started_s: float, t0: float, lag_s: float = 0.0) -> Result:
        """Send one request; latency counts from ``t0`` (a ``perf_counter`` value)."""
        reconnected = False
        while True:
            conn = self._conns.get(target.origin)
            reused = conn is not None
            if conn is None:
                conn = self._conns[target.origin] = open_connection(target, self.timeout_s, self.tls)
            response = None
            try:
                conn.request(target.method, target.path, body=target.body, headers=target.header_dict)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(target.origin)
                if reused and response is None and not reconnected and isinstance(exc, STALE):
                    reconnected = True  # the server had closed it while idle: once more, on a new one
                    continue
                return Result(started_s, time.perf_counter() - t0, None, None, classify(exc), lag_s, reconnected, target)
            except Exception as exc:  # a bug here must cost this request, counted, not the worker thread
                self._drop(target.origin)
                return Result(started_s, time.perf_counter() - t0, None, None, f"client error ({type(exc).__name__})",
                              lag_s, reconnected, target)
            if response.will_close:
                self._drop(target.origin)
            backend = response.getheader("X-Backend") or response.getheader("X-Upstream")
            return Result(started_s, time.perf_counter() - t0, response.status, backend, None, lag_s, reconnected, target)

    def _drop(self, origin: tuple) -> None:
        conn = self._conns.pop(origin, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for origin in list(self._conns):
            self._drop(origin)


def check_reachable(target: Target, timeout_s: float, tls: ssl.SSLContext | None = None) -> str | None:
    """None if the target accepts connections (and, for HTTPS, a TLS handshake); else a one-line reason."""
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout_s)
        with sock:
            if target.scheme == "https":
                (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=target.host).close()
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed ({exc.verify_message}; see --cacert and --insecure)"
        elif isinstance(exc, TimeoutError):
            reason = "timed out"
        else:
            reason = classify(exc)
        return f"cannot connect to {target.base_url}: {reason}"
    return None
