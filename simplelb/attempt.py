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

A streamed body whose client sent ``Expect: 100-continue`` waits for the
backend's word first (``EXPECT_CONTINUE_S``): its 100, or silence, lets
the client's expectation be answered and the body through; an early final
answer (417, 413, 401) goes to the client without a 100, the body unread.
While no byte of the body has been read, a pooled connection found dead is
replaced as for a request without a body.

Every connection taken here goes back to its pool exactly once: on failure
here, on success by the caller once the response has been relayed.
"""

from __future__ import annotations

import logging
import socket
import time

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
from .upstream import CLIENT_CHECK_S, PooledConnection

log = logging.getLogger(__name__)


# A body kept for retries up to this size is sent with the head (one copy, one
# system call); a larger one (--retry-body-limit raised) is sent after it.
WITH_HEAD_MAX = 64 * 1024

# How long a streamed body that the client offered with "Expect: 100-continue" waits for the
# backend's 100 Continue or early final answer before it is sent anyway: Go's transport's
# ExpectContinueTimeout. A backend that refuses early (417, 413, 401) is then heard before the
# client sends its body; one that ignores Expect (an HTTP/1.0 server, many frameworks) costs at
# most this long -- what curl itself waits for a 100 before sending.
EXPECT_CONTINUE_S = 1.0


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
        if not (reused and request.method in IDEMPOTENT_METHODS and (request.replayable or _body_unread(request, client))):
            raise _closed_without_answer(backend, exc) from None
        log.debug("pooled connection to %s was dead (%s); sending again on a new one", backend.name, exc)
    conn, _ = _connect(backend, turn, fresh=True)
    try:
        return conn, _exchange(conn, backend, request, client, turn, options)
    except _StaleConnection as exc:
        raise _closed_without_answer(backend, exc) from None


def _body_unread(request: ClientRequest, client: ClientConnection) -> bool:
    """Whether a streamed body still waits, all of it, in the client's connection (no 100 Continue yet)."""
    return request.expect_continue and request.body is None and not client.continue_sent


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
            if _body_unread(request, client):
                early = _await_continue(conn, request, backend, options.max_response_head, client)
                if early is not None:
                    # Answered without the body: the client never gets a 100 and never sends it
                    # (RFC 9110 §10.1.1), and what it might still send would be read as its next
                    # request -- its connection closes after this response. The backend's is not
                    # reused (sent_whole stays False): it may still be waiting for the body.
                    request.keep_alive = False
                    return early
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
    conn.reader.between_parts = client.raise_if_gone  # a client that gave up is not waited for (pool.release clears it)
    interim_seen = False  # an interim head came: the connection was alive, and sending again is a duplicate
    while True:
        head = _receive_head(conn, backend, max_head, interim_seen)
        interim_seen = True
        if head.status >= 200 or _is_final(head, request, backend):  # (the usual answer, without a call)
            return head
        _interim(head, request, client)


def _await_continue(
    conn: PooledConnection, request: ClientRequest, backend: Backend, max_head: tuple[int, int], client: ClientConnection
) -> ResponseHead | None:
    """After a head with ``Expect: 100-continue``: the backend's early final answer, or None to send the body.

    None when the backend said 100 Continue, or nothing within
    ``EXPECT_CONTINUE_S``. Other interim responses (103) are relayed as
    they come, and the wait goes on until its deadline.
    """
    deadline = time.monotonic() + EXPECT_CONTINUE_S
    conn.reader.between_parts = client.raise_if_gone  # (once a head has begun, its rest waits the read timeout)
    interim_seen = False
    while _answers_within(conn, backend, deadline - time.monotonic()):
        head = _receive_head(conn, backend, max_head, interim_seen)
        interim_seen = True
        if head.status == 100:
            return None
        if _is_final(head, request, backend):
            return head
        _interim(head, request, client)
    return None


def _answers_within(conn: PooledConnection, backend: Backend, seconds: float) -> bool:
    """Whether the backend sends something (or closes) within ``seconds``; its read timeout is set back after.

    One receive under a short limit, through the reader: over TLS the socket
    can be readable with no response byte (a session ticket), which a poll
    alone would take for an answer.
    """
    reader = conn.reader
    if reader.pending:
        return True
    if seconds <= 0:
        return False
    reader.recv_timeout(seconds)
    try:
        reader.fill()  # (an EOF counts: the head read next finds the connection closed)
        return True
    except TimeoutError:
        return False
    except OSError as exc:
        raise _StaleConnection(str(exc)) from None
    finally:
        reader.recv_timeout(backend.pool.read_timeout_s, every_s=CLIENT_CHECK_S)


def _receive_head(conn: PooledConnection, backend: Backend, max_head: tuple[int, int], interim_seen: bool) -> ResponseHead:
    """One response head, final or interim; failures become the errors the client would get."""
    max_bytes, max_fields = max_head
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
    return parse_response_head(raw, max_fields)


def _is_final(head: ResponseHead, request: ClientRequest, backend: Backend) -> bool:
    """Whether ``head`` ends the wait: a final status, or a 101 to the protocols the client offered."""
    if head.status >= 200:
        return True
    if head.status == 101:
        if request.upgrade and switches_to_offer(head, request.upgrade):
            return True
        raise BadGateway("the backend switched protocols without being asked to (or to another)",
                         backend=backend.name)
    return False


def switches_to_offer(head: ResponseHead, offered: list[str]) -> bool:
    """Whether a 101 names protocols, all among those the client offered (RFC 9110 §7.8)."""
    chosen = [p.strip().lower() for value in header_values(head.headers, "Upgrade") for p in value.split(",") if p.strip()]
    return bool(chosen) and set(chosen) <= {p.lower() for p in offered}


def _interim(head: ResponseHead, request: ClientRequest, client: ClientConnection) -> None:
    """A 1xx other than 101: relayed to an HTTP/1.1 client as it comes (RFC 9110 §15.2).

    A 100 is the one exception: we answer the client's expectation
    ourselves (``ClientConnection.answer_expectation``), once the backend
    said 100 or let ``EXPECT_CONTINUE_S`` pass, so the backend's is for our
    hop only. HTTP/1.0 clients know no interim responses.
    """
    if head.status == 100 or request.head.version < (1, 1):
        return
    headers = remove_hop_by_hop(head.headers, comma_tokens(head.headers, "Connection"))
    client.send(encode_head(f"HTTP/1.1 {head.status} {head.reason}", headers))
    request.interim_sent = True
