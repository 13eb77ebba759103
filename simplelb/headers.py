"""Which header fields cross the proxy, and the ones it adds.

Pure functions over ``[(name, value), ...]`` lists: order and duplicates are
preserved, and nothing here touches a socket, so every rule is unit-tested.
"""

from __future__ import annotations

import re
import uuid

from .http1 import Headers, comma_tokens, header_values

# A request id a client may choose: short, and safe to echo in a header and a log line.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._~:+/=@-]{1,128}")

# RFC 9110 §7.6.1: fields that describe one connection, not the message. They
# are dropped in both directions, along with any field named in Connection.
# (Proxy-Authorization and Proxy-Authenticate are not among them since RFC
# 7230: they go end to end unless Connection names them, as HAProxy and nginx
# forward them.)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",  # parameters of a persistent connection (RFC 2068 §19.7.1)
        "proxy-connection",  # non-standard, sent by old clients instead of Connection
        "te",  # which transfer codings this hop accepts
        "transfer-encoding",  # framing of this hop; we re-frame each side ourselves
        "upgrade",  # an offer to this hop; an upgrade we pass on is written anew (upgrade_headers)
        "trailer",  # announces trailers, which we do not forward (RFC 9110 §6.6.2)
    }
)

# Fields a Connection header may not remove: the body's length and the
# target host are end to end, and dropping Content-Length while still sending
# the body would let the body be read as a second request.
_NEVER_CONNECTION_SCOPED = frozenset({"content-length", "host"})

# Forwarding fields that we write ourselves: a client must not be able to
# claim it arrived over another scheme or host.
_REPLACED_FORWARDING = frozenset({"x-forwarded-proto", "x-forwarded-host"})


def remove_hop_by_hop(headers: Headers, connection: list[str] | None = None) -> Headers:
    """Drop hop-by-hop fields and every field the Connection header names.

    ``connection`` is the Connection header's tokens when the caller parsed
    them already (the request and response paths both need them anyway).
    """
    if connection is None:
        connection = comma_tokens(headers, "Connection")
    named = set(connection) - _NEVER_CONNECTION_SCOPED
    return [(k, v) for k, v in headers if (lk := k.lower()) not in HOP_BY_HOP and lk not in named]


def request_headers_for_backend(
    headers: Headers,
    client_ip: str,
    *,
    connection: list[str] | None = None,
    default_host: str = "",
    scheme: str = "http",
    allow_underscores: bool = False,
    upgrade: list[str] | None = None,
) -> Headers:
    """The client's fields as the backend should see them.

    Hop-by-hop fields go; ``X-Forwarded-For`` gets the client's address
    appended to any earlier hops (a proxy in front of us is trusted to have
    appended honestly, as in nginx's ``$proxy_add_x_forwarded_for``);
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set by us. A request
    without Host (HTTP/1.0 allows it) gets ``Host: default_host``, because our
    hop to the backend is HTTP/1.1, which requires one. Field names with an
    underscore are dropped unless ``allow_underscores``: CGI and WSGI turn
    ``X_Forwarded_For`` and ``X-Forwarded-For`` into one variable, so a
    client could forge what we set (nginx drops them too). An ``upgrade``
    offer (the protocols the client asked for) is passed on as
    ``Connection: Upgrade`` and ``Upgrade``.
    """
    if connection is None:
        connection = comma_tokens(headers, "Connection")
    named = set(connection) - _NEVER_CONNECTION_SCOPED
    kept: Headers = []
    prior_for: list[str] = []
    host = ""
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named:  # remove_hop_by_hop, in the same pass
            continue
        if "_" in name and not allow_underscores:
            continue
        if lname == "x-forwarded-for":
            prior_for.append(value)
            continue
        if lname in _REPLACED_FORWARDING:
            continue
        if lname == "host" and not host:
            host = value
        kept.append((name, value))
    if not host and default_host:
        kept.insert(0, ("Host", default_host))
    kept.append(("X-Forwarded-For", ", ".join([*prior_for, client_ip])))
    kept.append(("X-Forwarded-Proto", scheme))
    if host:
        kept.append(("X-Forwarded-Host", host))
    if upgrade:
        kept += upgrade_headers(upgrade)
    return kept


def upgrade_headers(protocols: list[str]) -> Headers:
    """RFC 9110 §7.8: an upgrade, written for the next hop."""
    return [("Connection", "Upgrade"), ("Upgrade", ", ".join(protocols))]


def upgrade_offer(headers: Headers, connection: list[str]) -> list[str] | None:
    """The protocols a request asks to switch to (RFC 9110 §7.8), or None.

    Only with ``upgrade`` among the Connection tokens. ``h2c`` is never
    offered on: our hop to the backend speaks HTTP/1.1 and stays so.
    """
    if "upgrade" not in connection:
        return None
    offered = [p.strip() for value in header_values(headers, "Upgrade") for p in value.split(",") if p.strip()]
    offered = [p for p in offered if p.split("/")[0].strip().lower() != "h2c"]
    return offered or None


def response_headers_for_client(
    headers: Headers, connection: list[str] | None = None, backend_header: tuple[str, str] | None = None
) -> Headers:
    """The backend's fields as the client should see them; ``backend_header`` names the backend, if asked."""
    kept = remove_hop_by_hop(headers, connection)
    return [*kept, backend_header] if backend_header is not None else kept


def request_id_for(headers: Headers, name: str) -> str:
    """The client's request id if it sent exactly one well-formed one, else a fresh random one."""
    values = header_values(headers, name)
    if len(values) == 1 and _REQUEST_ID_RE.fullmatch(values[0]):
        return values[0]
    return str(uuid.uuid4())


def with_field(headers: Headers, name: str, value: str) -> Headers:
    """Exactly one ``name`` field, with ``value``, where the first one stood (else at the end)."""
    lname = name.lower()
    out: Headers = []
    placed = False
    for key, old in headers:
        if key.lower() == lname:
            if not placed:
                out.append((name, value))
                placed = True
            continue
        out.append((key, old))
    if not placed:
        out.append((name, value))
    return out


def encode_head(start_line: str, headers: Headers) -> bytes:
    """Serialise a message head; latin-1 gives back exactly the bytes that were parsed."""
    # (map over str.join: each field line is made in C, with no generator frame per field)
    return "\r\n".join([start_line, *map(_FIELD_LINE, headers), "", ""]).encode("latin-1")


_FIELD_LINE = ": ".join  # (name, value) -> "name: value"


def with_content_length(headers: Headers, length: int) -> Headers:
    """Exactly one Content-Length, with ``length``, where the first one stood.

    A request may arrive with ``Content-Length: 5, 5`` or the field twice
    (valid when the values agree); the next hop gets one plain value, so no
    two parsers downstream can disagree about it.
    """
    return with_field(headers, "Content-Length", str(length))
