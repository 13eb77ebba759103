"""One attempt at one backend: take a connection, send the request, read the response head.

``send_request`` returns the connection and the final response head, or
raises ``AttemptFailed`` -- a failure before any response byte reached the
client, which the retry loop may try elsewhere -- carrying the error the
client gets if it is not retried and whether any of the request was sent.
Client-side failures (``ClientSideError``) pass through untouched.

A pooled connection that turns out to be dead before the backend said
anything (it closed the connection while idle) is replaced by a fresh one to
the same backend, for idempotent requests that can be sent again in full.
That is how keep-alive works, not the backend's failure, and not a retry.

Every connection taken here goes back to its pool exactly once: on failure
here, on success by the caller once the response has been relayed.
"""

from __future__ import annotations

import logging
import socket

from .backend import Backend
from .body import LAST_CHUNK, send_chunk
from .client import ClientConnection
from .errors import BadGateway, ConnectFailed, GatewayTimeout, HTTPError
from .gate import Turn
from .headers import encode_head, remove_hop_by_hop, request_headers_for_backend, with_content_length, with_field
from .http1 import (
    CHUNKED,
    NO_BODY,
    ResponseHead,
    comma_tokens,
    header_values,
    parse_response_head,
)
from .request import ClientRequest, ForwardOptions
from .retry import IDEMPOTENT_METHODS
from .sockio import HeadTooLarge
from .upstream import PooledConnection

log = logging.getLogger(__name__)


# A body kept for retries up to this size is sent with the head (one copy, one
# system call); a larger one (--retry-body-limit raised) is sent after it.
WITH_HEAD_MAX = 64 * 1024


class AttemptFailed(Exception):
    """One attempt failed before any response byte reached the client.

    ``error`` is what the client gets if there is no retry; ``sent`` says
    whether any of the request reached the backend.
    """

    def __init__(self, error: HTTPError, *, sent: bool):
        super().__init__(error.for_log())
        self.error = error
        self.sent = sent
        self.reason = error.reason  # for the metrics: connect, timeout, reset, protocol


class _StaleConnection(Exception):
    """A connection failed before the backend said anything."""


def send_request(
    backend: Backend, request: ClientRequest, client: ClientConnection, turn: Turn, options: ForwardOptions
) -> tuple[PooledConnection, ResponseHead]:
    """Send ``request`` to ``backend``; return the connection and the final response head (or a 101)."""
    conn, reused = _connect(backend, turn, fresh=False)
    try:
        return conn, _exchange(conn, backend, request, client, turn, options)
    except _StaleConnection as exc:
        if not (reused and request.method in IDEMPOTENT_METHODS and request.replayable):
            raise _closed_without_answer(backend, exc) from None
        log.debug("pooled connection to %s was dead (%s); sending again on a new one", backend.name, exc)
    conn, _ = _connect(backend, turn, fresh=True)
    try:
        return conn, _exchange(conn, backend, request, client, turn, options)
    except _StaleConnection as exc:
        raise _closed_without_answer(backend, exc) from None


def _closed_without_answer(backend: Backend, exc: Exception) -> AttemptFailed:
    return AttemptFailed(
        BadGateway("the backend closed the connection without answering", backend=backend.name, detail=str(exc),
                   reason="reset"), sent=True
    )


def _connect(backend: Backend, turn: Turn, *, fresh: bool) -> tuple[PooledConnection, bool]:
    """A connection to ``backend`` (pooled unless ``fresh``), and whether it was reused."""
    pool = backend.pool
    if fresh:
        conn, reused = pool.take_fresh(), False
    else:
        conn, reused = pool.take()
    log.debug("%s connection to %s", "reusing a pooled" if reused else "opening a new", backend.name)
    if not reused:
        try:
            with turn.paused():
                pool.connect(conn)  # on failure it gives the pool slot back itself
        except ConnectFailed as exc:
            # The client is told the kind ("connection refused", "TLS certificate not accepted"), not
            # the particulars, which can name the backend's address.
            kind, _, particulars = str(exc).partition(": ")
            raise AttemptFailed(BadGateway(f"could not connect to the backend ({kind})", backend=backend.name,
                                           detail=particulars or None, reason="connect"), sent=False) from None
    return conn, reused


def _exchange(
    conn: PooledConnection,
    backend: Backend,
    request: ClientRequest,
    client: ClientConnection,
    turn: Turn,
    options: ForwardOptions,
) -> ResponseHead:
    """Send the request on ``conn`` and read the final response head; on any failure ``conn`` is released."""
    try:
        # A small body kept for retries goes with the head, in one system call.
        with_head = request.body if request.body is not None and len(request.body) <= WITH_HEAD_MAX else b""
        conn.sent_whole = False
        if with_head:
            turn.release()  # a body can fill the backend's window: wait for it outside the gate
        head_send_failed = False
        try:
            _send_head(conn.sock, backend, request, options, with_head)
        except _StaleConnection:
            if not with_head:
                raise
            # The backend may have answered early (e.g. 413) and stopped reading the body
            # that went with the head: its answer is read next; none at all is a dead connection.
            head_send_failed = True
        turn.release()  # sent: the request leaves the gate for good (gate.py); the rest is waiting and relaying
        body_failure = None
        if request.framing is not NO_BODY and not with_head:
            body_failure = _send_body(conn.sock, request, client)
        conn.sent_whole = body_failure is None and not head_send_failed
        try:
            return _read_head(conn, request, backend, options.max_response_head, client)
        except _StaleConnection:
            if body_failure is not None and request.body is None:
                # A streamed body cannot be sent again; a kept one can, as if the connection had
                # been dead from the start (it may have been: nothing came back).
                raise BadGateway("the backend stopped reading the request body", backend=backend.name,
                                 detail=body_failure, reason="reset") from None
            raise
    except BaseException as exc:
        backend.pool.release(conn, reusable=False)
        if isinstance(exc, (GatewayTimeout, BadGateway)):
            exc.backend = exc.backend or backend.name  # (the head parser does not know whose head it read)
            raise AttemptFailed(exc, sent=True) from None
        raise


def _send_head(sock: socket.socket, backend: Backend, request: ClientRequest, options: ForwardOptions,
               body: bytes = b"") -> None:
    headers = request_headers_for_backend(
        request.headers, request.client_ip, connection=request.connection, default_host=backend.address,
        scheme=options.scheme, allow_underscores=options.allow_underscores, upgrade=request.upgrade,
    )
    if request.request_id is not None:
        headers = with_field(headers, *request.request_id)
    if request.framing is CHUNKED:
        headers.append(("Transfer-Encoding", "chunked"))  # the framing of our hop; we re-chunk
    elif request.framing.kind == "length":
        headers = with_content_length(headers, request.framing.length)
    elif request.head.values("content-length"):  # "0", or "0, 0": the next hop gets one plain value
        headers = with_content_length(headers, 0)
    try:
        sock.sendall(encode_head(f"{request.head.method} {request.target} HTTP/1.1", headers) + body)
    except OSError as exc:
        raise _StaleConnection(str(exc)) from None


def _send_body(sock: socket.socket, request: ClientRequest, client: ClientConnection) -> str | None:
    """Send the request body to the backend; return why the backend stopped taking it, if it did."""
    if request.body is not None:
        pieces = (request.body,)
    else:
        client.answer_expectation(request)
        pieces = client.body(request.framing)
    chunked = request.framing is CHUNKED
    for data in pieces:
        try:
            if chunked:
                send_chunk(sock, data)
            else:
                sock.sendall(data)
        except OSError as exc:
            # The backend may have answered early (e.g. 413) and closed; its
            # answer, if any, is read next. The client's remaining body is unread.
            request.keep_alive = False
            return str(exc)
    if chunked:
        try:
            sock.sendall(LAST_CHUNK)
        except OSError as exc:
            return str(exc)
    return None


def _read_head(
    conn: PooledConnection, request: ClientRequest, backend: Backend, max_head: tuple[int, int], client: ClientConnection
) -> ResponseHead:
    """The final response head (or a 101 the client asked for); interim ones are relayed or dropped."""
    max_bytes, max_fields = max_head
    conn.reader.between_parts = client.raise_if_gone  # a client that gave up is not waited for (pool.release clears it)
    interim_seen = False  # an interim head came: the connection was alive, and sending again is a duplicate
    while True:
        try:
            raw = conn.reader.read_head(max_bytes)
        except TimeoutError:
            raise GatewayTimeout(f"the backend did not answer within {backend.pool.read_timeout_s:g}s",
                                 backend=backend.name) from None
        except HeadTooLarge:
            raise BadGateway("the backend sent a response head that is too large", backend=backend.name) from None
        except EOFError:
            raise BadGateway("the backend closed the connection in the middle of its response head",
                             backend=backend.name) from None
        except OSError as exc:
            if interim_seen:
                raise BadGateway("the backend failed after an interim response", backend=backend.name,
                                 detail=str(exc), reason="reset") from None
            raise _StaleConnection(str(exc)) from None
        if raw is None:
            if interim_seen:
                raise BadGateway("the backend closed the connection after an interim response",
                                 backend=backend.name, reason="reset")
            raise _StaleConnection("connection closed")
        interim_seen = True
        head = parse_response_head(raw, max_fields)
        if head.status >= 200:
            return head
        if head.status == 101:
            if request.upgrade and switches_to_offer(head, request.upgrade):
                return head
            raise BadGateway("the backend switched protocols without being asked to (or to another)",
                             backend=backend.name)
        _interim(head, request, client)


def switches_to_offer(head: ResponseHead, offered: list[str]) -> bool:
    """Whether a 101 names protocols, all among those the client offered (RFC 9110 §7.8)."""
    chosen = [p.strip().lower() for value in header_values(head.headers, "Upgrade") for p in value.split(",") if p.strip()]
    return bool(chosen) and set(chosen) <= {p.lower() for p in offered}


def _interim(head: ResponseHead, request: ClientRequest, client: ClientConnection) -> None:
    """A 1xx other than 101: relayed to an HTTP/1.1 client as it comes (RFC 9110 §15.2).

    A 100 is the one exception: we answered the client's expectation
    ourselves (``ClientConnection.answer_expectation``), so the backend's is
    for our hop only. HTTP/1.0 clients know no interim responses.
    """
    if head.status == 100 or request.head.version < (1, 1):
        return
    headers = remove_hop_by_hop(head.headers, comma_tokens(head.headers, "Connection"))
    client.send(encode_head(f"HTTP/1.1 {head.status} {head.reason}", headers))
    request.interim_sent = True
