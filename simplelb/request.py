"""Admitting a client request: what may be forwarded, and in what form.

``admit`` takes a parsed request head and either refuses it (``BadRequest``
with its status: 400, 405, 413, 501) or returns a ``ClientRequest``: the
target to send, the header fields with ``Host`` settled, the body framing,
and what the client asked of the connection. The target is kept byte for
byte; only an absolute-form target is reduced to its path, because the
balancer never connects to a host a client names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .body import check_chunked_prefix
from .errors import BadRequest
from .headers import upgrade_offer
from .http1 import (
    CHUNKED,
    NO_BODY,
    Framing,
    RequestHead,
    request_framing,
    tokens,
)


@dataclass(frozen=True)
class ForwardOptions:
    """Listener settings that shape what is forwarded (from ``ListenerConfig``)."""

    max_response_head: tuple[int, int] = (64 * 1024, 100)  # bytes and fields of a backend's response head
    scheme: str = "http"  # how clients reach us, for X-Forwarded-Proto
    allow_underscores: bool = False  # forward request fields whose names have an underscore
    backend_header: str | None = None  # name the backend that answered in this response field
    tunnel_timeout_s: float = 3600.0  # an upgraded connection idle this long both ways is closed


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
    upgrade: list[str] | None = None  # the protocols it asks to switch to (RFC 9110 §7.8)
    interim_sent: bool = False  # a 1xx went to the client: the response has begun
    request_id: tuple[str, str] | None = None  # with --request-id-header: (name, id), seen by backend and client
    # What the forwarder learns, for the access log: the last backend tried and how it answered.
    attempts: int = 0
    backend: str | None = None
    backend_status: int | None = None
    backend_duration_s: float | None = None

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def replayable(self) -> bool:
        """Whether the request could be sent again in full."""
        return self.framing is NO_BODY or self.body is not None


# RFC 9112 §3.2 / RFC 3986 §3.2.2: a Host value is a host and an optional port, nothing else.
HOST_RE = re.compile(r"([A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(:[0-9]*)?")


def split_absolute(target: str) -> tuple[str, str]:
    """An absolute-form target ``scheme://AUTHORITY/path?query`` -> (AUTHORITY, ``/path?query``, or "" if none)."""
    rest = target.split("://", 1)[1]
    cut = min(i for i in (rest.find("/"), rest.find("?"), len(rest)) if i >= 0)
    return rest[:cut], rest[cut:]


def admit(head: RequestHead, client_ip: str, *, max_body_bytes: int = 0, buffered: bytes = b"") -> ClientRequest:
    """Decide whether a parsed request may be forwarded, and in what form.

    ``buffered`` is what arrived with the head (the body's first bytes, if
    any): a chunked body already malformed there is refused before any
    backend is contacted.

    Raises ``BadRequest`` (400, 405, 501) for what we refuse. The target is
    kept byte for byte; only an absolute-form target is reduced to its path,
    because the balancer never connects to a host a client names.
    """
    if head.method == "CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy", status=405, close=False)
    target = head.target
    headers = head.headers  # (never changed in place: the absolute form below makes a new list)
    hosts = head.values("host")
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if head.version >= (1, 1) and not hosts:
        raise BadRequest("HTTP/1.1 request without a Host header")
    if hosts and not HOST_RE.fullmatch(hosts[0]):
        raise BadRequest("invalid Host header")
    if target == "*":
        if head.method != "OPTIONS":
            raise BadRequest("the * target is only valid with OPTIONS")
    elif target.startswith("/"):
        pass
    elif target[:7].lower() == "http://" or target[:8].lower() == "https://":
        # RFC 9112 §3.2.2: the authority in the target replaces Host.
        authority, path = split_absolute(target)
        # It becomes the Host: the same check as a Host field.
        if not authority or not HOST_RE.fullmatch(authority):
            raise BadRequest("invalid authority in absolute-form target")
        if not path and head.method == "OPTIONS":
            target = "*"  # RFC 9112 3.2.4: OPTIONS for the server as a whole
        else:
            target = path if path.startswith("/") else "/" + path
        headers = [(k, v) for k, v in headers if k.lower() != "host"]
        headers.insert(0, ("Host", authority))
    else:
        raise BadRequest("request target must be a path (origin-form)")
    framing = request_framing(head)
    if framing is CHUNKED and buffered and (error := check_chunked_prefix(buffered)):
        raise BadRequest(f"malformed chunked body: {error}")
    if max_body_bytes and framing.kind == "length" and framing.length > max_body_bytes:
        # Refused before any backend is contacted, and without a 100 Continue.
        raise BadRequest(f"request body of {framing.length} bytes is larger than {max_body_bytes}", status=413)
    connection = tokens(head.values("connection"))
    if head.version >= (1, 1):
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    expect = [v.strip().lower() for v in head.values("expect")]
    expect_continue = head.version >= (1, 1) and "100-continue" in expect and framing is not NO_BODY
    request = ClientRequest(head, target, headers, framing, client_ip, keep_alive, expect_continue, connection)
    if "upgrade" in connection and head.version >= (1, 1):
        request.upgrade = upgrade_offer(headers, connection)
    return request


