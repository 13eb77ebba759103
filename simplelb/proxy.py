"""The life of one proxied request: choose a backend, forward, relay the answer.

``Forwarder.forward`` takes a parsed client request and either relays a
complete response, raises an ``HTTPError`` before any byte of a response was
sent (the server's funnel answers it), or raises ``ResponseAborted`` once the
response has started and cannot be finished honestly (the client connection
is then closed, so a truncated body never looks complete).

Failover rules
--------------
* Each attempt that fails before any response byte reached the client raises
  ``AttemptFailed``; ``retry.RetryPolicy`` decides whether another backend
  (one not tried yet) gets the request: always when nothing was sent (the
  connection could not be opened), otherwise only for idempotent requests
  whose body, if any, was small enough to keep -- and only within
  ``--retries`` and the retry budget. A POST that reached a backend is never
  sent again.
* A pooled connection that turns out to be dead before any response byte
  (the backend closed it while idle) is replaced by a fresh connection to the
  same backend for replayable idempotent requests. This is not a retry and not
  the backend's failure: it is how keep-alive works.
* Otherwise a failure is a 502 (504 for a read timeout). Once the response
  has started, nothing is retried.
* Backups are chosen only when no primary is available; when every available
  backend is at ``--max-conns``, the request waits in the ``CapacityQueue``.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from .affinity import KeyFunction, StickyCookies
from .algorithms import Algorithm
from .backend import Backend, BackendFull
from .errors import (
    BadGateway,
    BadRequest,
    BodyTooLarge,
    ClientBodyError,
    ClientDisconnected,
    ConnectFailed,
    GatewayTimeout,
    HTTPError,
    NoHealthyBackend,
    ResponseAborted,
)
from .gate import NO_TURN, Turn
from .headers import encode_head, request_headers_for_backend, response_headers_for_client, with_content_length
from .http1 import (
    CHUNKED,
    LAST_CHUNK,
    NO_BODY,
    BodyError,
    Framing,
    HeadTooLarge,
    RequestHead,
    ResponseHead,
    SocketReader,
    chunk,
    comma_tokens,
    header_values,
    iter_body,
    parse_response_head,
    request_framing,
    response_framing,
)
from .limits import CapacityQueue
from .retry import IDEMPOTENT_METHODS, RetryPolicy
from .upstream import BackendPool, PooledConnection

log = logging.getLogger(__name__)



class _StaleConnection(Exception):
    """A reused connection failed before the backend said anything."""


@dataclass
class ClientRequest:
    """A request as received, plus what the forwarder needs to know about its client."""

    head: RequestHead
    target: str  # the request-target to send (origin-form, or "*")
    headers: list[tuple[str, str]]  # the client's fields, Host already settled
    framing: Framing
    client_ip: str
    keep_alive: bool  # the client wants the connection kept open
    expect_continue: bool
    connection: list[str]  # the Connection header's tokens, lower-cased
    body: bytes | None = None  # the whole body, when it was small enough to keep for a retry

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def replayable(self) -> bool:
        """Whether the request could be sent again in full."""
        return self.framing is NO_BODY or self.body is not None


@dataclass
class Outcome:
    """What happened, for the access log and the connection's fate."""

    status: int
    upstream: str
    keep_alive: bool


class ClientConnection:
    """The client side of the exchange: its socket and buffered reader.

    One socket timeout serves both directions, so it is switched as the
    exchange moves between reading the body and sending the response.
    """

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
        self.continue_sent = False
        self._timeout: float | None = None

    def use_timeout(self, timeout_s: float) -> None:
        """Set the socket timeout, making the system call only when the value changes."""
        if self._timeout != timeout_s or self.reader.timeout_changed:
            self.sock.settimeout(timeout_s)
            self._timeout = timeout_s
            self.reader.timeout_changed = False

    def wait_for_request(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the next request's first bytes; False if none came."""
        if self.reader.pending:
            return True
        self.use_timeout(timeout_s)
        try:
            return self.reader.fill()
        except OSError:  # timeout, reset, or shut down by the server
            return False

    def send(self, data: bytes) -> None:
        self.use_timeout(self.send_timeout_s)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None

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
        self.use_timeout(self.body_timeout_s)
        received = 0
        try:
            for data in iter_body(self.reader, framing):
                received += len(data)
                if self.max_body_bytes and received > self.max_body_bytes:
                    raise BodyTooLarge(f"request body larger than {self.max_body_bytes} bytes")
                yield data
        except BodyError as exc:
            raise ClientBodyError(f"malformed request body: {exc}") from None
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from None


# RFC 9112 §3.2 / RFC 3986 §3.2.2: a Host value is a host and an optional port, nothing else.
_HOST_RE = re.compile(r"([A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(:[0-9]*)?")


def admit(head: RequestHead, client_ip: str, *, max_body_bytes: int = 0) -> ClientRequest:
    """Decide whether a parsed request may be forwarded, and in what form.

    Raises ``BadRequest`` (400, 405, 501) for what we refuse. The target is
    kept byte for byte; only an absolute-form target is reduced to its path,
    because the balancer never connects to a host a client names.
    """
    if head.method == "CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy", status=405, close=False)
    target = head.target
    headers = list(head.headers)
    hosts = header_values(headers, "Host")
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if head.version >= (1, 1) and not hosts:
        raise BadRequest("HTTP/1.1 request without a Host header")
    if hosts and not _HOST_RE.fullmatch(hosts[0]):
        raise BadRequest("invalid Host header")
    if target == "*":
        if head.method != "OPTIONS":
            raise BadRequest("the * target is only valid with OPTIONS")
    elif target.startswith("/"):
        pass
    elif target[:7].lower() == "http://" or target[:8].lower() == "https://":
        # RFC 9112 §3.2.2: the authority in the target replaces Host.
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query = rest.find("?")
        cut = min(i for i in (slash, query, len(rest)) if i >= 0)
        authority, path = rest[:cut], rest[cut:]
        if not authority or "@" in authority:
            raise BadRequest("invalid authority in absolute-form target")
        target = path if path.startswith("/") else "/" + path
        headers = [(k, v) for k, v in headers if k.lower() != "host"]
        headers.insert(0, ("Host", authority))
    else:
        raise BadRequest("request target must be a path (origin-form)")
    framing = request_framing(head)
    if max_body_bytes and framing.kind == "length" and framing.length > max_body_bytes:
        # Refused before any backend is contacted, and without a 100 Continue.
        raise BadRequest(f"request body of {framing.length} bytes is larger than {max_body_bytes}", status=413)
    connection = comma_tokens(headers, "Connection")
    if head.version >= (1, 1):
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    expect = [v.strip().lower() for v in header_values(headers, "Expect")]
    expect_continue = head.version >= (1, 1) and "100-continue" in expect and framing is not NO_BODY
    return ClientRequest(head, target, headers, framing, client_ip, keep_alive, expect_continue, connection)


class AttemptFailed(Exception):
    """One attempt failed before any response byte reached the client.

    ``error`` is what the client gets if there is no retry; ``sent`` says
    whether any of the request reached the backend.
    """

    def __init__(self, error: HTTPError, *, sent: bool):
        super().__init__(error.message)
        self.error = error
        self.sent = sent


class Forwarder:
    """Forwards requests to a set of backends with a given algorithm."""

    def __init__(
        self,
        backends: Sequence[Backend],
        algorithm: Algorithm,
        pools: dict[Backend, BackendPool],
        *,
        read_timeout_s: float,
        max_header_bytes: int,
        max_header_count: int,
        retry: RetryPolicy,
        retry_body_limit_bytes: int = 64 * 1024,
        backups: Sequence[Backend] = (),
        queue: CapacityQueue | None = None,
        key_function: KeyFunction | None = None,
        sticky: StickyCookies | None = None,
    ):
        self.backends = list(backends)
        self.backups = list(backups)  # used only when no primary is available
        self.algorithm = algorithm
        self.pools = pools
        self.read_timeout_s = read_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        self.retry = retry
        self.retry_body_limit_bytes = retry_body_limit_bytes
        self.queue = queue  # set when backends have a connection limit
        self.key_function = key_function  # set when the algorithm hashes an affinity key
        self.sticky = sticky

    def forward(
        self, request: ClientRequest, client: ClientConnection, *, closing: bool = False, turn: Turn = NO_TURN
    ) -> Outcome:
        """Forward ``request``. ``turn`` is held for CPU work and paused around every blocking wait."""
        self.retry.budget.record_request()
        if self._should_keep_body(request):
            with turn.paused():
                client.answer_expectation(request)
                request.body = b"".join(client.body(request.framing))
        key = None
        if self.key_function is not None:
            key = self.key_function(request.headers, request.target, request.client_ip)
        pinned = self.sticky.lookup(request.headers) if self.sticky is not None else None
        tried: set[Backend] = set()
        retries = 0
        last_failure: AttemptFailed | None = None
        queue_deadline = None
        while True:
            backend, queue_deadline = self._choose(key, pinned, tried, queue_deadline, turn)
            if backend is None:
                if last_failure is not None:
                    raise last_failure.error
                raise NoHealthyBackend("no healthy backend is available")
            extra_headers = []
            if self.sticky is not None and backend is not pinned:
                extra_headers.append(self.sticky.set_cookie(backend))
            try:
                return self._attempt(backend, request, client, closing, extra_headers, turn)
            except BackendFull:
                continue  # another request took its last slot first; choose again
            except AttemptFailed as failure:
                tried.add(backend)
                last_failure = failure
                if not self.retry.may_retry(
                    method=request.method, sent=failure.sent, replayable=request.replayable, retries_so_far=retries
                ):
                    raise failure.error from None
                retries += 1
                backend.count_retry()
                log.info("retrying %s %s on another backend: %s", request.method, request.target, failure)

    def _should_keep_body(self, request: ClientRequest) -> bool:
        """Whether to read the body up front so the request can be retried: small, and idempotent."""
        framing = request.framing
        return (
            framing.kind == "length"
            and framing.length <= self.retry_body_limit_bytes
            and request.method in IDEMPOTENT_METHODS
        )

    def _choose(
        self, key: str | None, pinned: Backend | None, tried: set[Backend], queue_deadline: float | None, turn: Turn
    ) -> tuple[Backend | None, float | None]:
        """The backend for the next attempt (None: none left), waiting in the queue if all are full."""
        while True:
            candidates = [b for b in self.backends if b not in tried and b.available()]
            if not candidates:
                candidates = [b for b in self.backups if b not in tried and b.available()]
                if not candidates:
                    return None, queue_deadline
            free = [b for b in candidates if b.has_capacity()]
            if free:
                if pinned is not None and pinned in free:
                    return pinned, queue_deadline
                return self.algorithm.pick(free, key), queue_deadline
            with turn.paused():  # (only under --max-conns)
                queue_deadline = self.queue.wait(queue_deadline)

    def _attempt(
        self,
        backend: Backend,
        request: ClientRequest,
        client: ClientConnection,
        closing: bool,
        extra_headers: list[tuple[str, str]],
        turn: Turn,
    ) -> Outcome:
        pool = self.pools[backend]
        with backend.track() as attempt:
            try:
                conn, reused = pool.take()
                if not reused:
                    with turn.paused():
                        pool.connect(conn)
            except ConnectFailed as exc:
                raise AttemptFailed(BadGateway(f"could not connect to backend {backend.address} ({exc})"), sent=False) from None
            try:
                try:
                    head = self._exchange(conn, backend, request, client, turn)
                except _StaleConnection as exc:
                    pool.release(conn, reusable=False)
                    conn = None
                    if not (reused and request.method in IDEMPOTENT_METHODS and request.replayable):
                        raise AttemptFailed(
                            BadGateway(f"backend {backend.address} closed the connection without answering ({exc})"),
                            sent=True,
                        ) from None
                    # The backend closed an idle pooled connection: not its failure, not a retry.
                    log.debug("pooled connection to %s was dead (%s); retrying on a new one", backend.address, exc)
                    fresh = pool.take_fresh()
                    try:
                        with turn.paused():
                            pool.connect(fresh)  # on failure it gives the slot back itself
                    except ConnectFailed as exc2:
                        raise AttemptFailed(
                            BadGateway(f"could not connect to backend {backend.address} ({exc2})"), sent=False
                        ) from None
                    conn = fresh
                    try:
                        head = self._exchange(conn, backend, request, client, turn)
                    except _StaleConnection as exc2:
                        raise AttemptFailed(
                            BadGateway(f"backend {backend.address} closed the connection without answering ({exc2})"),
                            sent=True,
                        ) from None
            except (GatewayTimeout, BadGateway) as exc:
                if conn is not None:
                    pool.release(conn, reusable=False)
                raise AttemptFailed(exc, sent=True) from None
            except BaseException:
                if conn is not None:  # each connection goes back to its pool exactly once
                    pool.release(conn, reusable=False)
                raise
            attempt.responded(head.status)
            reusable = False
            try:
                keep_alive, reusable = self._relay(conn, backend, request, head, client, closing, extra_headers, turn)
            finally:
                pool.release(conn, reusable)
            return Outcome(head.status, backend.address, keep_alive)

    # --- sending the request and reading the response head ----------------

    def _exchange(
        self, conn: PooledConnection, backend: Backend, request: ClientRequest, client: ClientConnection, turn: Turn
    ) -> ResponseHead:
        """Send the request; return the final response head."""
        headers = request_headers_for_backend(
            request.headers, request.client_ip, connection=request.connection, default_host=backend.address
        )
        if request.framing is CHUNKED:
            headers.append(("Transfer-Encoding", "chunked"))  # the framing of our hop; we re-chunk
        elif request.framing.kind == "length":
            headers = with_content_length(headers, request.framing.length)
        head_bytes = encode_head(f"{request.method} {request.target} HTTP/1.1", headers)
        sock = conn.sock
        try:
            sock.sendall(head_bytes)
        except OSError as exc:
            raise _StaleConnection(str(exc)) from None
        body_failure = None
        with turn.paused():  # sending a body and waiting for the answer: no CPU to speak of
            if request.framing is not NO_BODY:
                body_failure = self._send_body(sock, request, client)
            try:
                return self._read_head(conn, request.method)
            except _StaleConnection as exc:
                if body_failure is not None:
                    raise BadGateway(f"backend {backend.address} stopped reading the request body ({body_failure})") from None
                raise exc

    def _send_body(self, sock: socket.socket, request: ClientRequest, client: ClientConnection) -> str | None:
        """Send the request body to the backend; return why the backend stopped taking it, if it did."""
        if request.body is not None:
            pieces = (request.body,)
        else:
            client.answer_expectation(request)
            pieces = client.body(request.framing)
        chunked = request.framing is CHUNKED
        for data in pieces:
            try:
                sock.sendall(chunk(data) if chunked else data)
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

    def _read_head(self, conn: PooledConnection, method: str) -> ResponseHead:
        reader = conn.reader
        while True:
            try:
                raw = reader.read_head(self.max_header_bytes)
            except TimeoutError:
                raise GatewayTimeout(f"backend did not answer within {self.read_timeout_s:g}s") from None
            except HeadTooLarge:
                raise BadGateway("backend response head is too large") from None
            except EOFError:
                raise BadGateway("backend closed the connection in the middle of its response head") from None
            except OSError as exc:
                raise _StaleConnection(str(exc)) from None
            if raw is None:
                raise _StaleConnection("connection closed")
            head = parse_response_head(raw, self.max_header_count)
            if head.status >= 200:
                return head
            if head.status == 101:
                raise BadGateway("backend switched protocols without being asked")
            # Other 1xx are interim responses for this hop only (see _send_body).

    # --- relaying the response --------------------------------------------

    def _relay(
        self,
        conn: PooledConnection,
        backend: Backend,
        request: ClientRequest,
        head: ResponseHead,
        client: ClientConnection,
        closing: bool,
        extra_headers: list[tuple[str, str]],
        turn: Turn,
    ) -> tuple[bool, bool]:
        """Send the response to the client; return (keep client connection, reuse backend connection)."""
        framing = response_framing(request.method, head)
        connection = comma_tokens(head.headers, "Connection")
        headers = response_headers_for_client(head.headers, backend.address, connection)
        if framing.kind == "length":
            headers = with_content_length(headers, framing.length)
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
        turn.release()  # what is left is waiting on sockets
        client.send(head_bytes)

        body = iter_body(conn.reader, framing)
        while True:
            try:
                data = next(body, None)
            except TimeoutError:
                raise ResponseAborted(f"backend {backend.address} went silent mid-body for {self.read_timeout_s:g}s") from None
            except (BodyError, OSError) as exc:
                raise ResponseAborted(f"backend {backend.address} failed mid-body: {exc}") from None
            if data is None:
                break
            client.send(chunk(data) if rechunk else data)
        if rechunk:
            client.send(LAST_CHUNK)
        return keep_alive, framing.kind != "close" and _backend_keeps_alive(head, connection)


def _backend_keeps_alive(head: ResponseHead, connection: list[str]) -> bool:
    if head.version >= (1, 1):
        return "close" not in connection
    return "keep-alive" in connection

