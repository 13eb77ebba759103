"""Which backend a client belongs to: hash keys and sticky-session cookies.

Two independent mechanisms, both pure functions of the request:

* ``key_function(spec)`` turns ``--hash-key`` (``ip``, ``path``,
  ``header:NAME``, ``cookie:NAME``) into a function from a request to its
  affinity key (or ``None`` when the request has no such key), which the
  ``hash`` algorithm hashes.
* ``StickyCookies`` implements ``--sticky-cookie NAME``: the first response
  sets ``NAME=<id>``; later requests carrying it go back to the same backend
  while it is healthy. The id is an HMAC of the backend's address under a
  secret, so it reveals nothing, and ids are only ever looked up in a table
  of the configured backends: an unknown or forged value is ignored, never
  turned into a host to connect to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .http1 import Headers, header_values, is_token

if TYPE_CHECKING:
    from .backend import Backend

KeyFunction = Callable[[Headers, str, str], "str | None"]  # (headers, target, client ip) -> key


def validate_key_spec(spec: str) -> str:
    """Check a ``--hash-key`` value; raise ``ValueError`` with a user-facing message."""
    kind, _, name = spec.partition(":")
    kind = kind.lower()
    if kind in ("ip", "path") and not name:
        return kind
    if kind in ("header", "cookie") and is_token(name):
        return f"{kind}:{name}"
    raise ValueError(f"must be ip, path, header:NAME or cookie:NAME, not {spec!r}")


def cookie_value(headers: Headers, name: str) -> str | None:
    """The value of cookie ``name`` in the request's Cookie fields (RFC 6265 §5.4 syntax)."""
    for field in header_values(headers, "Cookie"):
        for pair in field.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


def key_function(spec: str) -> KeyFunction:
    kind, _, name = spec.partition(":")
    if kind == "ip":
        return lambda headers, target, client_ip: client_ip
    if kind == "path":
        # The path without the query: /cart?item=1 and /cart?item=2 share a backend.
        return lambda headers, target, client_ip: target.split("?", 1)[0]
    if kind == "header":

        def from_header(headers: Headers, target: str, client_ip: str) -> str | None:
            values = header_values(headers, name)
            return ",".join(values) if values else None

        return from_header
    if kind == "cookie":
        return lambda headers, target, client_ip: cookie_value(headers, name)
    raise ValueError(validate_key_spec(spec))


class StickyCookies:
    """Opaque, unforgeable backend ids for a sticky-session cookie."""

    def __init__(self, name: str, backends: Sequence[Backend], secret: bytes | None = None):
        self.name = name
        key = secret or secrets.token_bytes(32)
        self._id_of = {b: hmac.new(key, b.address.encode(), hashlib.sha256).hexdigest()[:20] for b in backends}
        self._backend_of = {value: backend for backend, value in self._id_of.items()}

    def lookup(self, headers: Headers) -> Backend | None:
        """The backend the request's cookie names, if it names a configured one."""
        value = cookie_value(headers, self.name)
        return self._backend_of.get(value) if value else None

    def set_cookie(self, backend: Backend) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.name}={self._id_of[backend]}; Path=/; HttpOnly; SameSite=Lax")
