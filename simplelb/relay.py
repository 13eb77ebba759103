"""Relaying a backend's response to the client: head, then body, re-framed where needed.

Once the head has been sent nothing can be retried or turned into an error
response, so a backend that fails mid-body raises ``ResponseAborted`` and
the client connection is closed: a truncated body never looks complete (no
final chunk, a short ``Content-Length``).

Framing toward the client: a fixed length is kept; chunked or
until-close bodies are re-chunked for HTTP/1.1 clients, and an HTTP/1.0
client learns the end from the close.
"""

from __future__ import annotations

from .backend import Backend
from .body import LAST_CHUNK, BodyError, iter_body
from .client import ClientConnection
from .errors import BadGateway, ResponseAborted
from .headers import encode_head, response_headers_for_client, with_content_length, with_field
from .http1 import NO_BODY, Framing, ResponseHead, content_length, response_framing, tokens
from .request import ClientRequest
from .sockio import SCRATCH
from .upstream import PooledConnection


def relay(
    conn: PooledConnection,
    backend: Backend,
    request: ClientRequest,
    head: ResponseHead,
    client: ClientConnection,
    *,
    closing: bool,
    extra_headers: list[tuple[str, str]],
    backend_header: tuple[str, str] | None = None,
) -> tuple[bool, bool]:
    """Send the response to the client; return (keep client connection, reuse backend connection).

    ``extra_headers`` are added (a sticky cookie); the request id, if any,
    replaces whatever the backend sent under that name; ``backend_header``
    names the backend that answered, when the operator asked for it.
    """
    framing = response_framing(request.method, head)
    connection = tokens(head.values("connection"))
    headers = response_headers_for_client(head.headers, connection, backend_header)
    if framing.kind == "length" and not _plain_length(head, headers, framing.length):
        headers = with_content_length(headers, framing.length)
    elif framing is NO_BODY and head.values("content-length"):
        headers = _bodiless_length(head, headers)
    if request.request_id is not None:
        headers = with_field(headers, *request.request_id)
    headers += extra_headers
    keep_alive = request.keep_alive and not closing
    rechunk = False
    if framing.kind in ("chunked", "close"):
        if request.head.version >= (1, 1):
            headers.append(("Transfer-Encoding", "chunked"))
            rechunk = True
        else:
            keep_alive = False  # an HTTP/1.0 client can only learn the end from the close
    if not keep_alive:
        headers.append(("Connection", "close"))
    elif request.head.version < (1, 1):
        headers.append(("Connection", "keep-alive"))
    head_bytes = encode_head(f"HTTP/1.1 {head.status} {head.reason}", headers)
    if framing.kind == "length":
        # The body bytes that came with the head go out with it, in one system call;
        # a small body is then complete, with no buffer or generator set up for it.
        early = conn.reader.take(framing.length)
        client.send_head(head.status, head_bytes, early)
        if len(early) < framing.length:
            _relay_body(conn, backend, Framing("length", framing.length - len(early)), client, rechunk)
    else:
        client.send_head(head.status, head_bytes)
        try:
            _relay_body(conn, backend, framing, client, rechunk)
        except ResponseAborted as exc:
            exc.unframed = not rechunk  # sent as it came, to be ended by the close
            raise
    return keep_alive, framing.kind != "close" and _backend_keeps_alive(head, connection)


def _relay_body(conn: PooledConnection, backend: Backend, framing, client: ClientConnection, rechunk: bool) -> None:
    with SCRATCH.borrow() as scratch:
        _copy_body(iter_body(conn.reader, framing, scratch), backend, client, rechunk)
    if rechunk:
        client.send_body(LAST_CHUNK)


def _copy_body(body, backend: Backend, client: ClientConnection, rechunk: bool) -> None:
    while True:
        try:
            data = next(body, None)
        except TimeoutError:
            raise ResponseAborted(
                f"backend {backend.name} went silent mid-body for {backend.pool.read_timeout_s:g}s", "timeout"
            ) from None
        except BodyError as exc:
            raise ResponseAborted(f"backend {backend.name} broke its body framing: {exc}", "protocol") from None
        except OSError as exc:
            raise ResponseAborted(f"backend {backend.name} failed mid-body: {exc}", "reset") from None
        if data is None:
            return
        if rechunk:
            client.send_chunk(data)
        else:
            client.send_body(data)


def _backend_keeps_alive(head: ResponseHead, connection: list[str]) -> bool:
    if head.version >= (1, 1):
        return "close" not in connection
    return "keep-alive" in connection


def _bodiless_length(head: ResponseHead, headers):
    """A 204 has no Content-Length (RFC 9110 8.6); a HEAD's or a 304's says what a GET's would have:
    checked as a body's would be, and made one plain value."""
    if head.status == 204:
        return [(name, value) for name, value in headers if name.lower() != "content-length"]
    length = content_length(head.values("content-length"), BadGateway)
    return headers if _plain_length(head, headers, length) else with_content_length(headers, length)


def _plain_length(head: ResponseHead, headers, length: int) -> bool:
    """Whether the one Content-Length field is already exactly what ``with_content_length`` writes."""
    return len(head.values("content-length")) == 1 and ("Content-Length", str(length)) in headers
