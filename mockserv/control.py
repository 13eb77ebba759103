"""The process's control listener: list the mock servers, start, crash and change them, in JSON.

A server's own ``/_mock/...`` routes die with it; this listener belongs to
the process, so a crashed server can be started again from outside without
restarting the process. It acts on a ``MockFleet``, as Python callers do.

Endpoints (answers are JSON; a server's state is what ``MockServer.state()`` says)
----------------------------------------------------------------------------------
* ``GET /servers``: ``{"servers": [state, ...]}``
* ``GET /servers/NAME``: that server's state.
* ``POST /servers/NAME/start``: listen again on its port (a no-op if it is
  running; 409 if the port has been taken meanwhile).
* ``POST /servers/NAME/crash``: close its listener and connections.
* ``POST /servers/NAME/health``, ``.../latency``, ``.../error-rate``: the
  value as the body or as ``?state=``, ``?ms=``, ``?p=`` (as on the server's
  own routes; a bad value is 400).

Unknown server or path: 404; a known path with the wrong method: 405.

Like Caddy's admin endpoint, it listens on loopback by default and refuses
(403) a request whose ``Host`` is not this listener's own address or
``localhost``, or that carries an ``Origin`` other than those: a web page in
a browser on the same machine cannot drive it (DNS rebinding, cross-site POST).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from simplelb.specs import digits

from .behaviour import BehaviourError
from .fleet import FleetError, MockFleet, UnknownServer
from .server import Listener, MockServer, address_family, bracket

log = logging.getLogger(__name__)

# What POST /servers/NAME/ACTION does: the server's setter and the query parameter carrying the value.
SETTERS = {
    "health": (MockServer.set_health, "state"),
    "latency": (MockServer.set_latency, "ms"),
    "error-rate": (MockServer.set_error_rate, "p"),
}
ACTIONS = {"start", "crash", *SETTERS}


def allowed_hosts(listen_host: str, port: int) -> set[str]:
    """The ``Host`` values (and ``Origin`` authorities) this listener answers to."""
    names = {bracket(listen_host), "localhost"}
    if listen_host in ("127.0.0.1", "::1"):
        names |= {"127.0.0.1", "[::1]"}
    return {f"{name}:{port}" for name in names}


def request_allowed(host: str | None, origin: str | None, allowed: set[str]) -> bool:
    """Whether a request comes from a local tool rather than a web page (Caddy's rule)."""
    if (host or "").lower() not in allowed:
        return False
    return origin is None or urlsplit(origin).netloc.lower() in allowed


class _NoEndpoint(LookupError):
    pass


class _MethodNotAllowed(Exception):
    def __init__(self, allowed: str):
        super().__init__(allowed)
        self.allowed = allowed


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise _MethodNotAllowed(allowed)


class ControlHandler(BaseHTTPRequestHandler):
    """Base of the per-listener handler class; ``fleet`` and ``allowed`` are set per listener."""

    protocol_version = "HTTP/1.1"
    fleet: MockFleet
    allowed: set[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    # The other methods reach the routes too: a known path answers 405 with Allow (not http.server's 501).
    def do_PUT(self) -> None:  # noqa: N802
        self._route(self.command)

    do_PATCH = do_DELETE = do_OPTIONS = do_PUT  # noqa: N815

    def _route(self, method: str) -> None:
        length = self.headers.get("Content-Length") or "0"
        if not digits(length) or int(length) > 64 * 1024:  # control values are a few bytes
            self.close_connection = True
            self._reply(400, {"error": "send a Content-Length of at most 64 KiB"})
            return
        body = self.rfile.read(int(length)).decode("utf-8", "replace")
        if not request_allowed(self.headers.get("Host"), self.headers.get("Origin"), self.allowed):
            self._reply(403, {"error": "the control listener answers local tools only (Host/Origin refused)"})
            return
        try:
            self._reply(200, self._serve(method, self.path, body))
        except _MethodNotAllowed as exc:
            self._reply(405, {"error": f"use {exc.allowed}"}, [("Allow", exc.allowed)])
        except (UnknownServer, _NoEndpoint) as exc:
            self._reply(404, {"error": str(exc)})
        except BehaviourError as exc:
            self._reply(400, {"error": str(exc)})
        except FleetError as exc:
            self._reply(409, {"error": str(exc)})

    def _serve(self, method: str, target: str, body: str) -> dict:
        parts = urlsplit(target)
        segments = [s for s in parts.path.split("/") if s]
        if segments == ["servers"]:
            _only(method, "GET")
            return {"servers": self.fleet.states()}
        if len(segments) == 2 and segments[0] == "servers":
            _only(method, "GET")
            return self.fleet[segments[1]].state()
        if len(segments) == 3 and segments[0] == "servers" and segments[2] in ACTIONS:
            _only(method, "POST")
            name, action = segments[1], segments[2]
            if action == "start":
                return self.fleet.restart(name)
            if action == "crash":
                return self.fleet.crash(name)
            setter, parameter = SETTERS[action]
            return setter(self.fleet[name], parse_qs(parts.query).get(parameter, [body])[0])
        raise _NoEndpoint(f"no such endpoint: {parts.path} (see GET /servers)")

    def _reply(self, status: int, payload: dict, headers: list[tuple[str, str]] = ()) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("control: " + format, *args)


class ControlListener:
    """The control endpoints of ``fleet`` on ``host:port`` (0: a free port). ``start()``, ``stop()``."""

    def __init__(self, fleet: MockFleet, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        listener_class = type("ControlListener", (Listener,), {"address_family": address_family(host)})
        handler_class = type("ControlHandler_bound", (ControlHandler,), {"fleet": fleet, "allowed": set()})
        self._httpd = listener_class((host, port), handler_class)
        self.port = self._httpd.server_address[1]
        handler_class.allowed = allowed_hosts(host, self.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{bracket(self.host)}:{self.port}"

    def start(self) -> ControlListener:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="mockserv control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

