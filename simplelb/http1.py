"""HTTP/1.1 on the wire: parsing message heads and deciding how their bodies are framed.

Theory of operation
-------------------
A message is a *head* (start line and header fields, ended by an empty line)
and an optional body whose length is decided by the head (RFC 9112 §6.3). A
proxy that gets the framing wrong forwards two requests as one, or one as two
(request smuggling), so every decision here is strict and made in one pure
function:

* ``request_framing`` and ``response_framing`` follow RFC 9112 §6.3 step by
  step and answer with a ``Framing``: no body, a fixed length, chunked, or
  (responses only) everything until the connection closes.
* ``parse_request_head`` / ``parse_response_head`` turn raw head bytes into
  a start line and a list of ``(name, value)`` pairs, in order, duplicates
  kept, names and values as latin-1 text so every byte survives. Obsolete line
  folding, whitespace before the colon and control characters are rejected
  rather than "repaired": a repair is exactly the disagreement between two
  parsers that smuggling exploits.

Reading and writing the bodies themselves is ``body.py``'s job.

All socket reading goes through ``sockio.SocketReader``, a small buffer whose
unread bytes are visible (``pending``): a backend connection is only reused
when the response ended exactly where its framing said, with nothing left
over.
"""

from __future__ import annotations

import re

from .errors import BadGateway, BadRequest, HTTPError

# RFC 9110 §5.6.2: tchar.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_TEXT_TOKEN_RE = re.compile(_TOKEN.decode())
_HEADER_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
# Field values may hold visible characters, space, tab and obs-text; no other controls.
_BAD_VALUE_CHAR_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Request targets: visible ASCII only (RFC 9112 §3.2 builds them from URI characters).
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_VERSION_RE = re.compile(rb"HTTP/(\d)\.(\d)")
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")

Headers = list[tuple[str, str]]


def is_token(text: str) -> bool:
    """RFC 9110 §5.6.2: one or more tchar (header names, methods, cookie names, upgrade protocols)."""
    return _TEXT_TOKEN_RE.fullmatch(text) is not None


# --- heads ------------------------------------------------------------------


class _Head:
    """What both heads share: the fields in order, and each field's values by lower-case name."""

    __slots__ = ()

    def values(self, lname: str) -> list[str] | tuple[str, ...]:
        """Every value of the field named ``lname`` (lower case), in order; ``header_values`` without a scan."""
        index = self._index
        if index is None:
            index = self._index = _index(self.headers)
        return index.get(lname, _NONE)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


class RequestHead(_Head):
    __slots__ = ("method", "target", "version", "headers", "_index")
    _fields = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: tuple[int, int], headers: Headers, index=None):
        self.method = method
        self.target = target  # exactly as on the wire
        self.version = version
        self.headers = headers
        self._index = index


class ResponseHead(_Head):
    __slots__ = ("version", "status", "reason", "headers", "_index")
    _fields = ("version", "status", "reason", "headers")

    def __init__(self, version: tuple[int, int], status: int, reason: str, headers: Headers, index=None):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self._index = index


_NONE: tuple[str, ...] = ()


def _index(headers: Headers) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in index:
            index[lname].append(value)
        else:
            index[lname] = [value]
    return index


def _split_lines(head: bytes) -> list[bytes]:
    """The start line and field lines, without line ends (CRLF, or a bare LF)."""
    if b"\r\n" in head and head.count(b"\n") == head.count(b"\r\n"):
        return head.split(b"\r\n")[:-2]  # the usual case, all in C
    lines = head.split(b"\n")
    # The head ends with an empty line, so the last two items are b"" / b"\r" and b"".
    return [line[:-1] if line.endswith(b"\r") else line for line in lines[:-2]]


def _has_bare_cr(head: bytes) -> bool:
    """A CR that does not end a line: never valid in a head (RFC 9112 §2.2)."""
    return head.count(b"\r") != head.count(b"\r\n")


def parse_header_lines(lines: list[bytes], max_count: int, error: type[HTTPError]) -> Headers:
    """Parse field lines strictly (RFC 9112 §5), keeping order and duplicates."""
    if len(lines) > max_count:
        raise error(f"too many header fields (more than {max_count})", status=431 if error is BadRequest else None)
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise error("obsolete line folding in header section")
        match = _HEADER_RE.fullmatch(line)
        if not match:
            raise error(f"malformed header line {line[:60]!r}")
        value = match.group(2)
        if _BAD_VALUE_CHAR_RE.search(value):
            raise error(f"control character in header {match.group(1).decode('latin-1')!r}")
        headers.append((match.group(1).decode("latin-1"), value.decode("latin-1")))
    return headers


def parse_request_head(head: bytes, max_headers: int = 100) -> RequestHead:
    """Parse a request head (RFC 9112 §3); raise ``BadRequest`` (400/505) when it is not valid."""
    return _fast_request(head, max_headers) or _strict_request(head, max_headers)


def parse_response_head(head: bytes, max_headers: int = 100) -> ResponseHead:
    """Parse a response head (RFC 9112 §4); raise ``BadGateway`` when it is not valid."""
    return _fast_response(head, max_headers) or _strict_response(head, max_headers)


# The fast path takes the heads almost every peer sends -- CRLF line ends, no
# control characters, plain names, HTTP/1.x -- with a few bytes and string
# methods over the whole head instead of regular expressions per line, and
# indexes the fields by name as it goes. Anything else returns None and
# goes the strict way, which accepts exactly the same heads (tests/test_http1.py
# runs both) and says what is wrong with the others.


def _clean_lines(head: bytes, max_headers: int) -> list[str] | None:
    """The lines of a head with CRLF line ends only and no control character but HTAB, as text."""
    # Dropping every control (CR and LF included) must remove exactly the CRLF pairs: then there
    # is no bare CR or LF and no other control. One translate and one count, where three counts
    # and a regular expression cost nearly three times the instructions (bench/README.md).
    if len(head.translate(None, _CONTROLS_BUT_HTAB)) != len(head) - 2 * head.count(b"\r\n"):
        return None
    lines = head.decode("latin-1").split("\r\n")
    del lines[-2:]  # the empty line that ends the head
    return lines if lines and len(lines) - 1 <= max_headers else None


def _fast_fields(lines: list[str]) -> tuple[Headers, dict[str, list[str]]] | None:
    headers: Headers = []
    index: dict[str, list[str]] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not (colon and name):
            return None  # no colon, or no name: the strict path decides
        value = value.strip(" \t")
        headers.append((name, value))
        lname = name.lower()
        if lname in index:
            index[lname].append(value)
        else:
            index[lname] = [value]
    # Every name at once (one check, not three a line): ASCII letters, digits and dashes;
    # folding or an odd name leaves this to the strict path. (Lower-casing a latin-1 name
    # changes nothing of this: only A-Z lower to ASCII.)
    names = "".join(index)
    if names and not (names.isascii() and names.replace("-", "").isalnum()):
        return None
    return headers, index


def _fast_request(head: bytes, max_headers: int) -> RequestHead | None:
    lines = _clean_lines(head, max_headers)
    if lines is None:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not (parts[0].isascii() and parts[0].isalpha()) or not _TEXT_TARGET_RE.fullmatch(parts[1]):
        return None
    version = _FAST_VERSIONS.get(parts[2])
    fields = _fast_fields(lines[1:]) if version else None
    if fields is None:
        return None
    return RequestHead(parts[0], parts[1], version, *fields)


def _fast_response(head: bytes, max_headers: int) -> ResponseHead | None:
    lines = _clean_lines(head, max_headers)
    if lines is None:
        return None
    parts = lines[0].split(" ", 2)
    version = _FAST_VERSIONS.get(parts[0])
    if not version or len(parts) < 2 or len(parts[1]) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    status = int(parts[1])
    fields = _fast_fields(lines[1:]) if status >= 100 else None
    if fields is None:
        return None
    return ResponseHead(version, status, parts[2] if len(parts) == 3 else "", *fields)


_FAST_VERSIONS = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}
_CONTROLS_BUT_HTAB = bytes(range(0x00, 0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
_TEXT_TARGET_RE = re.compile(r"[\x21-\x7e]+")


def _strict_request(head: bytes, max_headers: int) -> RequestHead:
    lines = _split_lines(head)
    parts = lines[0].split(b" ") if lines else []
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise BadRequest("malformed request method")
    if not _TARGET_RE.fullmatch(target):
        raise BadRequest("malformed request target")
    match = _VERSION_RE.fullmatch(version)
    if not match:
        raise BadRequest("malformed HTTP version")
    major, minor = int(match.group(1)), int(match.group(2))
    if (major, minor) not in ((1, 0), (1, 1)):
        raise BadRequest(f"HTTP version {major}.{minor} is not supported", status=505)
    if _has_bare_cr(head):
        raise BadRequest("bare CR in request head")
    headers = parse_header_lines(lines[1:], max_headers, BadRequest)
    return RequestHead(method.decode("ascii"), target.decode("ascii"), (major, minor), headers)


def _strict_response(head: bytes, max_headers: int) -> ResponseHead:
    lines = _split_lines(head)
    match = _STATUS_LINE_RE.fullmatch(lines[0]) if lines else None
    if not match:
        raise BadGateway("backend sent a malformed status line")
    status = int(match.group(2))
    if status < 100:
        raise BadGateway(f"backend sent an invalid status code {status}")
    if _has_bare_cr(head):
        raise BadGateway("backend sent a bare CR in its response head")
    headers = parse_header_lines(lines[1:], max_headers, BadGateway)
    reason = (match.group(3) or b"").decode("latin-1")
    return ResponseHead((1, int(match.group(1))), status, reason, headers)


# --- framing ----------------------------------------------------------------


class Framing:
    """How a body is delimited: ``kind`` is "none", "length", "chunked" or "close"."""

    __slots__ = ("kind", "length")

    def __init__(self, kind: str, length: int = 0):
        self.kind = kind
        self.length = length

    def __eq__(self, other) -> bool:
        return type(other) is Framing and (self.kind, self.length) == (other.kind, other.length)

    def __hash__(self) -> int:
        return hash((self.kind, self.length))

    def __repr__(self) -> str:
        return f"Framing(kind={self.kind!r}, length={self.length!r})"


NO_BODY = Framing("none")
CHUNKED = Framing("chunked")
UNTIL_CLOSE = Framing("close")


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of ``name`` (case-insensitive), in order."""
    lname = name.lower()
    return [value for key, value in headers if key.lower() == lname]


def comma_tokens(headers: Headers, name: str) -> list[str]:
    """The comma-separated list elements of every ``name`` field, lower-cased."""
    return tokens(header_values(headers, name))


def tokens(values) -> list[str]:
    """The comma-separated list elements of field values (``head.values(name)``), lower-cased."""
    if not values:
        return []  # (most requests have no Connection field: no comprehension set up for nothing)
    return [item.strip().lower() for value in values for item in value.split(",") if item.strip()]


def content_length(values: list[str], error: type[HTTPError]) -> int:
    """The one length ``values`` (every Content-Length field) give, or ``error``."""
    if len(values) == 1 and values[0].isdigit() and values[0].isascii() and len(values[0]) <= 18:
        return int(values[0])  # the usual case, which the rules below accept as it is
    # RFC 9110 §8.6: a list of identical values may be taken as one; anything else is invalid.
    items = {item.strip() for value in values for item in value.split(",")}
    if len(items) != 1:
        raise error("conflicting Content-Length values")
    (item,) = items
    if not item.isdigit() or not item.isascii() or len(item) > 18:
        raise error(f"invalid Content-Length {item[:30]!r}")
    return int(item)


def request_framing(head: RequestHead) -> Framing:
    """RFC 9112 §6.3, for a request."""
    lengths = head.values("content-length")
    if te := head.values("transfer-encoding"):
        transfer_codings = tokens(te)
        if head.version < (1, 1):
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        if transfer_codings != ["chunked"]:
            if transfer_codings.count("chunked") != 1 or transfer_codings[-1] != "chunked" and "chunked" in transfer_codings:
                if transfer_codings and "chunked" not in transfer_codings:
                    raise BadRequest(f"unsupported transfer coding {transfer_codings[-1]!r}", status=501)
                raise BadRequest("chunked must be the final transfer coding, exactly once")
            raise BadRequest(f"unsupported transfer coding {transfer_codings[0]!r}", status=501)
        return CHUNKED
    if lengths:
        length = content_length(lengths, BadRequest)
        return Framing("length", length) if length else NO_BODY
    return NO_BODY


def response_framing(request_method: str, head: ResponseHead) -> Framing:
    """RFC 9112 §6.3, for a response to ``request_method``."""
    if request_method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return NO_BODY
    if te := head.values("transfer-encoding"):
        if head.values("content-length"):
            raise BadGateway("backend response has both Transfer-Encoding and Content-Length")
        codings = tokens(te)
        if codings == ["chunked"]:
            return CHUNKED
        # Another transfer coding (gzip, ...) is of the backend's hop: we would have to
        # undo it or pass it on, and passing it to an HTTP/1.0 client is impossible.
        # Relaying the bytes without it would hand the client a coded body as plain:
        # refused, as nginx does.
        other = next((c for c in codings if c != "chunked"), codings[-1] if codings else "")
        raise BadGateway(f"backend response has a transfer coding we do not relay: {other!r}")
    lengths = head.values("content-length")
    if lengths:
        return Framing("length", content_length(lengths, BadGateway))
    return UNTIL_CLOSE
