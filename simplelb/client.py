"""The client side of an exchange: its socket, its buffered reader, and the timeouts between them.

``ClientConnection`` sends to the client and reads the request body from it,
turning socket failures into ``ClientDisconnected`` and malformed bodies
into ``ClientBodyError`` -- the client's doing, never held against a backend.
Each phase sets its limit through the reader (``recv_timeout`` for the wait
for a request and for the body, ``send_timeout`` for the response), which
makes a system call only when a limit changes (``sockio``).
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING

from .body import BodyError, iter_body, send_chunk
from .errors import BodyTimeout, BodyTooLarge, ClientBodyError, ClientDisconnected
from .http1 import Framing
from .sockio import SCRATCH, SocketReader

if TYPE_CHECKING:
    from .request import ClientRequest


# What poll() reports of a client that closed or reset its connection (POLLHUP and POLLERR come unasked).
_POLL_CLOSED = getattr(select, "POLLRDHUP", None)
# A reset (or both directions shut): nothing can be answered, whatever the client sent before.
_POLL_BROKEN = select.POLLHUP | select.POLLERR


class ClientConnection:
    """One client connection's socket and reader, with the timeouts of each direction."""

    def __init__(
        self,
        sock: socket.socket,
        reader: SocketReader,
        *,
        body_timeout_s: float = 60.0,
        send_timeout_s: float = 60.0,
        max_body_bytes: int = 0,
    ):
        self.sock = sock
        self.reader = reader
        self.body_timeout_s = body_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_body_bytes = max_body_bytes
        # The client sent a request before its previous answer was complete: its half-close then
        # means "that is all I ask", not "I gave up" (``raise_if_gone``).
        self.pipelined = False
        self.begin_request()

    def begin_request(self) -> None:
        """Reset what is counted per request (the access log and the metrics read it)."""
        self.continue_sent = False
        self.bytes_sent = 0  # everything sent: heads (interim ones included) and the body
        self.body_bytes_sent = 0  # what followed the response head: its body as sent, chunk framing included
        self.body_bytes_received = 0
        self.status_sent = 0  # the status of the response whose head went out, if one did

    def wait_for_request(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the next request's first bytes; False if none came."""
        if self.reader.pending:  # (sent before the previous answer was complete: read with it, or by a check)
            self.pipelined = True
            return True
        self.reader.recv_timeout(timeout_s)
        try:
            return self.reader.fill()
        except OSError:  # timeout, reset, or shut down by the server
            return False

    def raise_if_gone(self) -> None:
        """Raise ``ClientDisconnected`` if the client has closed its end of the connection, or reset it.

        Asked while a backend is slow to answer. A client that closed has given
        up waiting (as nginx and Go's server read it, a half-close too): it is
        logged as 499, and its request's backend connection is closed rather
        than left working for nobody. Bytes of a next request do not count;
        nor does a half-close from a client that pipelined: it said all it
        will ask, and reads the answers (as Go's server sees it).
        """
        fd = self.sock.fileno()
        if fd < 0:
            raise ClientDisconnected("connection closed")
        if _POLL_CLOSED is None:
            return  # (no POLLRDHUP on this system: the client's leaving shows when its answer is sent)
        poller = select.poll()
        poller.register(fd, _POLL_CLOSED)
        for _, events in poller.poll(0):
            if events & _POLL_BROKEN or not self._pipelines():
                raise ClientDisconnected("the client closed the connection while the backend was answering")

    def _pipelines(self) -> bool:
        """Whether the client sent a request before its previous answer was complete (asked once its sending side shut).

        Bytes after the request being answered are read into the reader, where
        the next head is read from: over TLS only a read tells them from a
        goodbye, and after the client's FIN a read never waits.
        """
        if not self.pipelined:
            try:
                self.pipelined = bool(self.reader.pending) or self.reader.fill()
            except OSError:  # reset, or a broken TLS record: gone
                pass
        return self.pipelined

    def send(self, data: bytes) -> None:
        self.reader.send_timeout(self.send_timeout_s)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ClientDisconnected(_why(exc)) from None
        self.bytes_sent += len(data)

    def send_body(self, data) -> None:
        """Part of the response body, as it goes on the wire."""
        self.send(data)
        self.body_bytes_sent += len(data)

    def send_chunk(self, data) -> None:
        """One chunk of a re-chunked body (``data`` may be a view of a scratch buffer)."""
        self.reader.send_timeout(self.send_timeout_s)
        try:
            sent = send_chunk(self.sock, data)
        except OSError as exc:
            raise ClientDisconnected(_why(exc)) from None
        self.bytes_sent += sent
        self.body_bytes_sent += sent

    def send_head(self, status: int, head: bytes, body: bytes = b"") -> None:
        """Send a response head with its final ``status``, and the start of its body (or all of a small one).

        Head and body go out in one system call; they are counted apart (the access log's body bytes).
        """
        self.send(head + body if body else head)
        self.status_sent = status
        self.body_bytes_sent += len(body)

    def answer_expectation(self, request: ClientRequest) -> None:
        """Send ``100 Continue`` once, just before the body is first read.

        We answer the expectation ourselves and forward the Expect field; a
        backend's own 100 is dropped as an interim response of its hop.
        """
        if request.expect_continue and not self.continue_sent:
            self.continue_sent = True
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body(self, framing: Framing):
        """The request body's data; client-side failures become ``ClientBodyError``/``ClientDisconnected``.

        A length-framed body over ``max_body_bytes`` was refused by ``admit``
        already; a chunked one is counted here as it arrives.
        """
        self.reader.recv_timeout(self.body_timeout_s)
        try:
            with SCRATCH.borrow() as scratch:
                yield from self._counted(iter_body(self.reader, framing, scratch))
        except BodyError as exc:
            raise ClientBodyError(f"malformed request body: {exc}") from None
        except TimeoutError:  # (an OSError, but the client is still there to be answered, as nginx does)
            raise BodyTimeout(f"request body not received within {self.body_timeout_s:g}s") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None

    def _counted(self, pieces):
        received = 0
        for data in pieces:
            received += len(data)
            self.body_bytes_received = received
            if self.max_body_bytes and received > self.max_body_bytes:
                raise BodyTooLarge(f"request body larger than {self.max_body_bytes} bytes")
            yield data




def _why(exc: OSError) -> str:
    # A send that ran into SO_SNDTIMEO fails with EAGAIN: say what it means.
    return "timed out" if isinstance(exc, BlockingIOError) else str(exc)
