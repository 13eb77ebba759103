"""One client connection: read each request head, forward it, answer errors through the one funnel.

``ProxyRequestHandler`` runs a connection (its TLS handshake first, on its
own thread, if the listener speaks TLS), reading each request head with our
strict parser, not ``http.server``'s lenient one, and handing the request to
the ``Forwarder``. Every ``HTTPError`` raised on the way becomes a response
through ``error_response``: the one place where the balancer's own error
responses are made. Each request ends in ``LoadBalancer.finish`` (counted,
logged) whatever happened to it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

from .accesslog import RequestRecord
from .client import ClientConnection
from .errors import BadRequest, ClientBodyError, ClientDisconnected, HTTPError, ResponseAborted
from .headers import encode_head, request_id_for
from .http1 import parse_request_head
from .request import admit
from .sockio import HeadTooLarge, SocketReader
from .tls import HandshakeFailed

if TYPE_CHECKING:
    from .server import LoadBalancer

log = logging.getLogger(__name__)

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

# Seconds a client is told to wait when no backend is healthy: about one
# health-check round, after which a recovered backend may be back.
RETRY_AFTER_S = 2

# Logged (never sent) when the client left before its response was complete; nginx's code for it.
CLIENT_CLOSED_REQUEST = 499


def error_response(
    exc: HTTPError, *, close: bool, extra: list[tuple[str, str]] = (), head_only: bool = False
) -> tuple[bytes, bytes]:
    """The error funnel: every error response the balancer itself writes is made here, as (head, body).

    ``head_only``: the answer to a HEAD, whose response has no content (RFC 9110 9.3.2) although its
    Content-Length says what a GET would have had; a body there would be read as the next response.
    """
    phrase = _phrase(exc.status)
    body = f"{exc.status} {phrase}: {exc.message}\n".encode("utf-8", "replace")
    headers = [
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    if exc.status == 503:  # no backend, all at their limit, or too many clients: each passes
        headers.append(("Retry-After", str(RETRY_AFTER_S)))
    headers += exc.headers + list(extra)
    if close:
        headers.append(("Connection", "close"))
    return encode_head(f"HTTP/1.1 {exc.status} {phrase}", headers), b"" if head_only else body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# A plain BaseRequestHandler, not http.server's BaseHTTPRequestHandler: we read
# and write the wire ourselves (strict parsing, exact forwarding), and use
# nothing of its request parsing, buffered files or response helpers.
class ProxyRequestHandler(socketserver.BaseRequestHandler):
    """One client connection, any number of requests on it."""

    server: LoadBalancer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A response was cut off (its body read to the close, or its client taken for gone): end with a reset (see finish).
        self.reset_on_close = False

    def _start(self) -> bool:
        """The connection's TLS handshake, if any (here, on its own thread); False if it failed."""
        if self.server.tls is not None:
            # Idle until its handshake is done (it was registered so): evicted first at the cap, and
            # closed at once by a shutdown, which need not wait for a client that has asked nothing.
            tracker = self.server.connections
            deadline = time.monotonic() + self.server.config.listener.client_header_timeout_s

            def wrapped(tls) -> None:
                tracker.replace(self.connection, tls)
                self.connection = tls

            try:
                self.server.tls.accept(self.request, deadline, on_wrapped=wrapped)
            except HandshakeFailed as exc:
                log.debug("client %s: %s", self.client_address[0], exc)
                return False
        listener = self.server.config.listener
        self.reader = SocketReader(self.connection, kernel_timeouts=True)
        self.client = ClientConnection(
            self.connection, self.reader,
            body_timeout_s=listener.client_body_timeout_s, send_timeout_s=listener.send_timeout_s,
            max_body_bytes=listener.max_body_bytes,
        )
        return True

    def handle(self) -> None:
        tracker = self.server.connections
        listener = self.server.config.listener
        # A new connection's first request must begin within the head's limit, as HAProxy's
        # "timeout http-request" and nginx's client_header_timeout have it: a client that connects
        # and says nothing holds a thread that long, not a keep-alive period. Later ones may idle.
        wait_s = min(listener.client_header_timeout_s, listener.keepalive_timeout_s)
        try:
            if not self._start():
                return
            while tracker.idle(self.connection) and self.client.wait_for_request(wait_s):
                if not self.reader.has_head():  # (a head already here goes from idle to busy at once)
                    tracker.reading(self.connection)
                if not self._serve_one():
                    break
                wait_s = listener.keepalive_timeout_s
        finally:
            tracker.remove(self.connection)

    def finish(self) -> None:
        if self.reset_on_close:
            # A reset, not a FIN (nor close_notify): the client reads a body to the close, so a
            # FIN would make the cut body look whole. (The server's own close then finds it closed.)
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                self.connection.close()
            except OSError:
                pass
            return
        if self.connection is not self.request:  # the TLS socket took over the descriptor: close it here
            try:
                # TLS's goodbye (close_notify), sent without waiting for the client's: a client that
                # reads a close-delimited body to its end can then tell the end from a cut connection.
                self.connection.setblocking(False)
                self.connection.unwrap()
            except (OSError, ValueError):  # (ssl.SSLWantReadError, expected: the client's is not awaited)
                pass
            try:
                self.connection.close()
            except OSError:
                pass

    def _read_head(self, started: float) -> bytes | None:
        listener = self.server.config.listener
        try:
            return self.reader.read_head(
                listener.max_header_bytes, started + listener.client_header_timeout_s, listener.max_url_bytes
            )
        except TimeoutError:
            raise BadRequest("request head not received in time", status=408) from None
        except HeadTooLarge as exc:
            if exc.start_line:
                raise BadRequest("request line too long", status=414) from None
            raise BadRequest("request header section too large", status=431) from None
        except EOFError:
            return None

    def _serve_one(self) -> bool:
        """Read, forward and log one request; return whether the connection stays open."""
        listener = self.server.config.listener
        record = RequestRecord(time.monotonic(), time.time(), self.client_address[0])
        self.client.begin_request()
        request = None
        try:
            raw = self._read_head(record.started)
            if raw is None:
                return False
            record.bytes_received = len(raw)
            self.server.connections.busy(self.connection)
            turn = self.server.gate.turn()
            try:
                head = parse_request_head(raw, listener.max_header_count)
                _describe_request(record, head)
                request = admit(head, self.client_address[0], max_body_bytes=listener.max_body_bytes,
                                buffered=self.reader.peek() if self.reader.pending else b"")
                if listener.request_id_header:
                    request.request_id = (listener.request_id_header,
                                          request_id_for(request.headers, listener.request_id_header))
                outcome = self.server.forwarder.forward(
                    request, self.client, closing=self.server.connections.closing, turn=turn
                )
            finally:
                turn.release()
            keep_alive = outcome.keep_alive
        except HTTPError as exc:
            keep_alive = not (exc.close or request is None or not request.keep_alive or request.framing.kind != "none")
            if exc.status >= 500 and (exc.backend or (request is not None and request.backend)):
                # The client is not told which backend failed, or the particulars; the operator is.
                exc.backend = exc.backend or request.backend
                log.warning("%s %s: %d %s", record.method, record.target, exc.status, exc.for_log())
            self._send_error(exc, not keep_alive, request, record.method == "HEAD")
        except ClientBodyError as exc:
            keep_alive = False
            self._send_error(BadRequest(str(exc), status=exc.status), True, request, record.method == "HEAD")
        except ResponseAborted as exc:
            log.warning("response aborted, closing client connection: %s", exc)
            keep_alive, record.aborted, self.reset_on_close = False, True, exc.unframed
        except ClientDisconnected as exc:
            log.debug("client %s disconnected: %s", self.client_address[0], exc)
            keep_alive, record.status = False, CLIENT_CLOSED_REQUEST
            # A response cut off after its head ends with a reset, as an aborted one does: a client that
            # only half-closed (taken for gone) may still read, and a close would end a close-delimited body.
            self.reset_on_close = bool(self.client.status_sent)
            if record.method == "-":
                return False  # it left before saying anything: nothing to log
        except OSError as exc:
            log.debug("client %s connection error: %s", self.client_address[0], exc)
            return False
        self.server.finish(record, request, self.client)
        return keep_alive

    def _send_error(self, exc: HTTPError, close: bool, request, head_only: bool = False) -> None:
        extra = [request.request_id] if request is not None and request.request_id is not None else []
        if not close and request is not None and request.head.version < (1, 1):
            # An HTTP/1.0 client assumes a close unless told otherwise (as relay tells it): without
            # this, ab -k waits for a close that comes only at --keepalive-timeout.
            extra.append(("Connection", "keep-alive"))
        try:
            self.client.send_head(exc.status, *error_response(exc, close=close, extra=extra, head_only=head_only))
        except ClientDisconnected:
            pass


def _describe_request(record: RequestRecord, head) -> None:
    record.method, record.target = head.method, head.target
    record.protocol = _PROTOCOLS.get(head.version) or f"HTTP/{head.version[0]}.{head.version[1]}"
    if agents := head.values("user-agent"):
        record.user_agent = agents[-1]  # (the last one, as a scan that kept overwriting found)
    if referers := head.values("referer"):
        record.referer = referers[-1]


_PROTOCOLS = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0"}


