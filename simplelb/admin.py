"""The admin listener: status, the backend API, reload, liveness and readiness.

A separate ``ThreadingHTTPServer`` on ``--admin HOST:PORT``, never the
traffic port, with its own threads: it reads the cluster through a control
object (``control.LocalControl``, or ``fleet.FleetControl`` in the parent of
``--workers``) and never holds a lock while it talks to a client, so a slow
or hostile admin client costs only its own thread (and is dropped after
``AdminHandler.timeout`` seconds of silence; at most ``MAX_CONNECTIONS`` at
once).

Routes (JSON unless noted; errors are always ``{"error": "..."}``):

=======  ===================  ===========================================
GET      /                    the live status page (HTML; no token needed:
                              it holds no data and asks for the token)
GET      /metrics             Prometheus text exposition
GET      /livez               200 while the process runs (no token needed)
GET      /readyz              200 when a backend takes new requests and we are
                              not shutting down, else 503 (no token needed)
GET      /status              the balancer and every backend
GET      /backends[/NAME]     the backends, or one
POST     /backends            add one: {"address", "weight", "backup", "name"}
PATCH    /backends/NAME       {"weight": N} and/or {"state": ready|drain|maint}
DELETE   /backends/NAME       remove it gracefully (202)
POST     /reload              re-read the configuration (400: nothing changed)
=======  ===================  ===========================================

Security, after Caddy's admin endpoint: it listens on loopback unless a
token is set (``--admin-token-file``, checked in constant time); mutating
requests need ``Content-Type: application/json``, which a form on another
site cannot send without a CORS preflight we never answer; a request whose
``Origin`` is another site, or (on loopback) whose ``Host`` is not a
loopback name, is refused with 403, so DNS rebinding cannot reach it.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from . import changes
from .convert import is_loopback
from .errors import ConfigError, HTTPError, NotFound
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render as render_metrics
from .sideserver import DeadlineHandler, SideServer, printable
from .specs import digits, host_of

log = logging.getLogger(__name__)

STATUS_PAGE = Path(__file__).with_name("statuspage.html")
MAX_CONNECTIONS = 32
HEAD_DEADLINE_S = 10.0  # for a whole request head, and its body, on the admin listener
MAX_BODY_BYTES = 64 * 1024

PUBLIC, PRIVATE, MUTATING = "public", "private", "mutating"

# (method, path pattern, handler method, access). "{name}" matches one path segment.
ROUTES = (
    ("GET", "/", "page", PUBLIC),  # the page holds no data: it asks /status, with the token if one is set
    ("GET", "/metrics", "metrics", PRIVATE),
    ("GET", "/livez", "livez", PUBLIC),
    ("GET", "/readyz", "readyz", PUBLIC),
    ("GET", "/status", "status", PRIVATE),
    ("GET", "/backends", "list_backends", PRIVATE),
    ("POST", "/backends", "add_backend", MUTATING),
    ("GET", "/backends/{name}", "get_backend", PRIVATE),
    ("PATCH", "/backends/{name}", "patch_backend", MUTATING),
    ("DELETE", "/backends/{name}", "delete_backend", MUTATING),
    ("POST", "/reload", "reload", MUTATING),
)


class Raw(NamedTuple):
    """A response body that is not JSON."""

    body: bytes
    content_type: str


def refused(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> HTTPError:
    """A refused admin request (its answer is JSON, and the connection stays open)."""
    return HTTPError(message, status=status, close=False, headers=headers)


def match_route(method: str, path: str) -> tuple[str, str, dict[str, str]]:
    """(handler name, access, path arguments); 404 or 405."""
    segments = path.split("/")
    allowed = []
    for route_method, pattern, handler, access in ROUTES:
        parts = pattern.split("/")
        if len(parts) != len(segments):
            continue
        args = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    break
                args[part[1:-1]] = unquote(segment)
            elif part != segment:
                break
        else:
            if route_method == method or method == "HEAD" and route_method == "GET":
                return handler, access, args
            allowed.append(route_method)
    if allowed:
        raise refused(405, f"{method} is not allowed on {path}", [("Allow", ", ".join(allowed))])
    raise refused(404, f"no such admin path: {path}")


class AdminHandler(DeadlineHandler):
    """One admin connection; ``admin`` is set on a subclass per server."""

    protocol_version = "HTTP/1.1"
    # Answer even a garbage request line with a status line and headers, not HTTP/0.9's bare body.
    default_request_version = "HTTP/1.1"
    server_version = "simplelb-admin"
    timeout = 10  # seconds of silence before a client is dropped: it holds only its own thread
    admin: AdminServer

    def deadline_s(self) -> float:
        return HEAD_DEADLINE_S

    def do_GET(self) -> None:
        self._dispatch()

    # Every method the routes know, and OPTIONS: a 405 with Allow, where http.server would say 501.
    do_HEAD = do_POST = do_PATCH = do_DELETE = do_PUT = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        # The head's deadline runs on through the body: a client that drips its body holds a slot
        # no longer than one that drips its head. Once the request is in, the work takes its time.
        self._body_read = False
        try:
            path = urlsplit(self.path).path
            handler, access, args = match_route(self.command, path)
            if access != PUBLIC:
                self._check_caller()
            body = self._read_json() if access == MUTATING else None
            self.server.expire_at(self.connection, None)
            status, payload, headers = getattr(self, handler)(body=body, **args)
        except HTTPError as exc:
            status, payload, headers = exc.status, {"error": exc.message}, exc.headers
        except ConfigError as exc:  # a change whose result the control refused (a fleet's workers would): nothing moved
            status, payload, headers = 400, {"error": str(exc)}, []
        except Exception:  # a bug: answer, log it, keep serving
            log.exception("admin request %s %s failed", self.command, self.path)
            status, payload, headers = 500, {"error": "internal error (logged)"}, []
        if not self._body_read and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                    or "Transfer-Encoding" in self.headers):
            # A body we did not read (a refused request, a GET with one) must never be read
            # as the next request: a page elsewhere could smuggle a mutation in it.
            self.close_connection = True
        self._send_json(status, payload, headers)

    # --- who may call -------------------------------------------------------------

    def _check_caller(self) -> None:
        host = self.headers.get("Host")
        if self.admin.loopback and host is not None and not is_loopback(host_of(host)):
            raise refused(403, f"Host {host!r} is not a loopback name; use 127.0.0.1 or localhost")
        origin = self.headers.get("Origin")
        if origin not in (None, "null") and host is not None and origin != f"http://{host}":
            raise refused(403, f"requests from {origin} are not allowed")
        token = self.admin.control.admin_token  # (the control's: a reload may have read a new one)
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise refused(401, "missing or wrong token: send Authorization: Bearer <token>",
                             [("WWW-Authenticate", 'Bearer realm="simplelb admin"')])

    def _read_json(self) -> Any:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise refused(415, "send Content-Type: application/json")
        if "Transfer-Encoding" in self.headers:
            raise refused(411, "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length", "0").strip()
        if not digits(length_text):
            raise refused(400, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body stays unread
            raise refused(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True
            raise refused(408, "request body not received in time") from None
        self._body_read = True
        if len(raw) != length:
            self.close_connection = True
            raise refused(400, "body shorter than its Content-Length")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise refused(400, f"malformed JSON: {str(exc)[:200]}") from None

    # --- routes ---------------------------------------------------------------------

    def page(self, body=None):
        return 200, Raw(STATUS_PAGE.read_bytes(), "text/html; charset=utf-8"), [
            ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"),
            ("X-Frame-Options", "DENY"),
        ]

    def metrics(self, body=None):
        return 200, Raw(render_metrics(self.admin.control.status()), METRICS_CONTENT_TYPE), []

    def livez(self, body=None):
        return 200, {"status": "alive"}, []

    def readyz(self, body=None):
        ready = self.admin.control.ready()
        return (200 if ready else 503), {"ready": ready}, []

    def status(self, body=None):
        return 200, self.admin.control.status(), []

    def list_backends(self, body=None):
        return 200, self.admin.control.status()["backends"], []

    def get_backend(self, name: str, body=None):
        return 200, self._backend(name), []

    def add_backend(self, body=None):
        spec = changes.new_backend(body)
        generation, backend = self._change(lambda config: changes.add_backend(config, spec), spec.name)
        # A name may be an address with a scheme (https://host:port): escaped, its slashes stay in one segment.
        return 201, {**backend, "generation": generation}, [("Location", f"/backends/{quote(spec.name, safe=':@+')}")]

    def patch_backend(self, name: str, body=None):
        generation, backend = self._change(lambda config: changes.patch_backend(config, name, body), name)
        return 200, {**backend, "generation": generation}, []

    def _change(self, edit, name: str) -> tuple[int, dict]:
        """Apply ``edit``; the backend ``name`` as that change left it, read before any later change."""
        read: list[dict | None] = []
        generation = self.admin.control.change(edit, then=lambda: read.append(self.admin.control.backend(name)))
        if read[0] is None:
            raise NotFound(f"no backend named {name!r}")
        return generation, read[0]

    def delete_backend(self, name: str, body=None):
        generation = self.admin.control.change(lambda config: changes.remove_backend(config, name))
        return 202, {"name": name, "state": "removing", "generation": generation}, []

    def reload(self, body=None):
        try:
            generation = self.admin.control.reload()
        except ConfigError as exc:
            return 400, {"error": str(exc), "errors": exc.messages}, []
        return 200, {"generation": generation}, []

    def _backend(self, name: str) -> dict:
        found = self.admin.control.backend(name)
        if found is None:
            raise NotFound(f"no backend named {name!r}")
        return found

    # --- answering ----------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: list[tuple[str, str]]) -> None:
        if isinstance(payload, Raw):
            body, content_type = payload
        else:
            body, content_type = (json.dumps(payload, indent=1) + "\n").encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line, ...), as JSON like every other error."""
        self.close_connection = True
        try:
            self._send_json(code, {"error": message or explain or "bad request"}, [])
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("admin %s: %s", self.client_address[0], printable(format % args))


class AdminServer(SideServer):
    """The admin listener; binds in the constructor (a taken port fails there), ``start()``/``stop()``."""

    def __init__(self, address: tuple[str, int], control):
        self.control = control
        self.loopback = is_loopback(address[0])
        handler = type("AdminHandler", (AdminHandler,), {"admin": self})
        super().__init__(address, handler, "admin", max_connections=MAX_CONNECTIONS)
