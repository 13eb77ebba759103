"""``--redirect-http PORT``: a plain-HTTP listener that sends every request to HTTPS with a 308.

The usual companion of a TLS front end: ``http://host/path?q`` answers
``308 Permanent Redirect`` to ``https://host[:tls port]/path?q`` (308, not
301: the method and body are kept). The host is the request's own ``Host``,
checked for syntax; a request without one, or with a malformed one, is 400.
Nothing is forwarded from here.
"""

from __future__ import annotations

import logging
import re

from .request import HOST_RE, split_absolute
from .sideserver import DeadlineHandler, SideServer, printable
from .specs import bracket, host_of

log = logging.getLogger(__name__)

HEAD_DEADLINE_S = 10.0  # for a whole request head

# RFC 9112 3.2: a request target is made of URI characters, visible ASCII (as http1's parser has it).
TARGET_RE = re.compile(r"[\x21-\x7e]+")


class RedirectHandler(DeadlineHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"
    server_version = "simplelb"
    timeout = 10  # seconds of silence before a client is dropped
    https_port: int

    def deadline_s(self) -> float:
        return HEAD_DEADLINE_S

    def __getattr__(self, name: str):
        # http.server dispatches to do_<METHOD>; every method is redirected alike.
        if name.startswith("do_"):
            return self._redirect
        raise AttributeError(name)

    def _redirect(self) -> None:
        host, target = self.headers.get("Host", ""), self.path
        if not TARGET_RE.fullmatch(target):  # (http.server takes any byte but spaces; the traffic port does not)
            self._answer(400, "a request target is visible ASCII characters only\n")
            return
        if target[:7].lower() == "http://" or target[:8].lower() == "https://":  # absolute form (RFC 9112
            # 3.2.2), either scheme as on the traffic port: its authority is the host, its path the target
            host, path = split_absolute(target)
            target = path if path.startswith("/") else "/" + path
        if (not host or len(self.headers.get_all("Host", [])) > 1 or not HOST_RE.fullmatch(host)
                or not host_of(host)):  # (":80" matches HOST_RE, and has no host in it)
            self._answer(400, "a request to be redirected to HTTPS needs one valid Host header\n")
            return
        name = bracket(host_of(host))
        port = "" if self.https_port == 443 else f":{self.https_port}"
        target = target if target.startswith("/") else "/"
        self._answer(308, "moved to HTTPS\n", [("Location", f"https://{name}{port}{target}")])

    def _answer(self, status: int, text: str, headers: list[tuple[str, str]] = ()) -> None:
        body = text.encode()
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # its body is never read: it must not be taken for a request
        headers = [*headers, ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   *self._connection_header()]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _connection_header(self) -> list[tuple[str, str]]:
        """Say what becomes of the connection where the client would not assume it.

        A close: the client must not send its next request on it. Kept for an HTTP/1.0 client: it
        assumes a close unless told (ab -k waited for one until the listener's timeout).
        """
        if self.close_connection:
            return [("Connection", "close")]
        return [("Connection", "keep-alive")] if self.request_version == "HTTP/1.0" else []

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("redirect %s: %s", self.client_address[0], printable(format % args))


class RedirectServer(SideServer):
    """Binds in the constructor (a taken port fails there); ``start()`` and ``stop()``."""

    def __init__(self, host: str, port: int, https_port: int):
        handler = type("RedirectHandler", (RedirectHandler,), {"https_port": https_port})
        super().__init__((host, port), handler, "redirect", max_connections=256)
