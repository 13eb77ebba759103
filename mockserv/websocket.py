"""WebSocket echo (RFC 6455) on a connection whose upgrade request ``http.server`` has read.

Theory of operation
-------------------
The opening handshake is ours: ``http.server`` has already parsed the
request, so ``accept_key`` checks it against RFC 6455 §4.2.1 (a pure
function, tested without sockets) and either returns the
``Sec-WebSocket-Accept`` value or raises ``HandshakeRefused`` carrying the
status and headers to answer with. After the ``101``, the bytes belong to
``EchoSession``, which drives wsproto's low-level ``Connection`` (frames
only): wsproto is sans-I/O, so it fits the thread-per-connection server as it
is, and it does the parts that are easy to get subtly wrong (masking,
fragmentation, UTF-8 validation of text, control-frame rules, close codes).

The echo streams: each piece of a message is sent back as it arrives, as a
piece of the same message, so a message of any size costs one read buffer of
memory. Pings are answered with pongs. The close handshake works both ways:
the client closes and we answer, or ``close_after`` messages have been echoed
and we close and wait (at most ``CLOSE_TIMEOUT_S``) for the client's answer.
A protocol error from the client is answered with a Close frame carrying
wsproto's code (1002, 1007, ...) and the connection is dropped. Permessage
compression is declined (RFC 6455 §9.1 lets a server ignore an offer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import socket
from collections.abc import Callable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

# RFC 6455 §1.3: appended to the client's key before hashing.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = "13"  # RFC 6455 §4.1: the only version there is
CLOSE_TIMEOUT_S = 5.0  # how long a client may take to answer our Close
READ_SIZE = 64 * 1024


class HandshakeRefused(Exception):
    """The upgrade request is not a valid WebSocket opening handshake."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or []


def has_token(value: str | None, token: str) -> bool:
    """Whether a comma-separated header value lists ``token`` (case-insensitive, RFC 9110 §5.6.1)."""
    return token.lower() in (part.strip().lower() for part in (value or "").split(","))


def accept_key(method: str, request_version: str, headers) -> str:
    """The ``Sec-WebSocket-Accept`` value for a valid opening handshake (RFC 6455 §4.2.1, §4.2.2).

    ``headers`` is an ``email.message.Message`` as ``http.server`` gives it.
    """
    upgrade = headers.get_all("Upgrade") or []
    if not any(has_token(value, "websocket") for value in upgrade):
        # RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
        raise HandshakeRefused(426, "this endpoint speaks WebSocket only: send Upgrade: websocket",
                               [("Upgrade", "websocket"), ("Connection", "Upgrade")])
    if method != "GET" or request_version != "HTTP/1.1":
        raise HandshakeRefused(400, "a WebSocket handshake is an HTTP/1.1 GET")
    if not headers.get("Host"):
        raise HandshakeRefused(400, "a WebSocket handshake needs a Host header")
    if not any(has_token(value, "upgrade") for value in headers.get_all("Connection") or []):
        raise HandshakeRefused(400, "a WebSocket handshake needs Connection: Upgrade")
    versions = headers.get_all("Sec-WebSocket-Version") or []
    if [v.strip() for v in versions] != [VERSION]:
        # RFC 6455 §4.4: answer with the versions we speak.
        raise HandshakeRefused(426, f"unsupported WebSocket version {versions}; this server speaks {VERSION}",
                               [("Sec-WebSocket-Version", VERSION)])
    keys = headers.get_all("Sec-WebSocket-Key") or []
    if len(keys) != 1:
        raise HandshakeRefused(400, "a WebSocket handshake needs exactly one Sec-WebSocket-Key")
    key = keys[0].strip()
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeRefused(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest()).decode("ascii")


class EchoSession:
    """Echo one WebSocket connection until it closes; ``run()`` says how it ended."""

    def __init__(self, sock: socket.socket, read: Callable[[], bytes], close_after: int | None = None):
        self._sock = sock
        self._read = read  # the handler's buffered reader may already hold the first frames
        self._close_after = close_after
        self._conn = Connection(ConnectionType.SERVER)
        self.messages = 0  # whole messages echoed

    def run(self) -> str:
        while True:
            try:
                data = self._read()
            except OSError:  # reset, timeout waiting for a Close, a crash shutting the socket
                data = b""
            self._conn.receive_data(data or None)
            for event in self._conn.events():
                ended = self._handle(event)
                if ended:
                    return ended

    def _handle(self, event) -> str | None:
        state = self._conn.state
        if isinstance(event, (TextMessage, BytesMessage)):
            if state is ConnectionState.OPEN:
                self._echo(event)
        elif isinstance(event, Ping):
            if state is ConnectionState.OPEN:
                self._send(event.response())
        elif isinstance(event, CloseConnection):
            if state is ConnectionState.REMOTE_CLOSING:
                self._send(event.response())
                return "closed by the client"
            if state is ConnectionState.CLOSED:
                return "connection lost" if event.code == 1006 else "closed by the server"
            # Still OPEN: wsproto reports a protocol error in what the client sent.
            self._send(CloseConnection(code=event.code, reason=(event.reason or "")[:100]))
            return f"protocol error ({event.code}: {event.reason})"
        return None

    def _echo(self, event: Message) -> None:
        self._send(type(event)(data=event.data, message_finished=event.message_finished))
        if not event.message_finished:
            return
        self.messages += 1
        if self._close_after is not None and self.messages >= self._close_after:
            self._send(CloseConnection(code=1000, reason="close_after reached"))
            # The client's Close is due now; do not wait for ever on one that never sends it.
            self._sock.settimeout(CLOSE_TIMEOUT_S)

    def _send(self, event) -> None:
        data = self._conn.send(event)
        try:
            self._sock.sendall(data)
        except OSError:
            pass  # the next read sees the connection gone and ends the session
