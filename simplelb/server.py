"""The balancer as a server: the listening socket, client connections, the error funnel.

``LoadBalancer`` is a ``ThreadingHTTPServer`` that owns everything with a
lifetime: the ``Cluster`` (backends, pools, health checks), the client
connections and, when configured, the admin listener. ``start()`` runs it
on a named daemon thread; ``stop()`` drains it: stop accepting, close idle
keep-alive connections, let in-flight requests finish within the grace
period.

``ProxyRequestHandler`` runs one client connection: it reads each request
head (with our strict parser, not ``http.server``'s lenient one), hands the
request to the ``Forwarder`` and turns any ``HTTPError`` into a response
through ``error_response`` -- the one place where error responses are made.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import ThreadingHTTPServer

from . import algorithms
from .accesslog import AccessLog, RequestRecord, format_text
from .client import ClientConnection
from .cluster import Cluster
from .config import Config
from .configfile import FixedSource
from .connections import ConnectionTracker
from .control import LocalControl
from .discovery import shared_secret
from .errors import (
    BadRequest,
    ClientBodyError,
    ClientDisconnected,
    HTTPError,
    ListenError,
    ResponseAborted,
    TooManyClients,
)
from .gate import FairGate
from .headers import encode_head, request_id_for
from .http1 import HeadTooLarge, SocketReader, parse_request_head
from .proxy import Forwarder
from .redirect import RedirectServer
from .request import ForwardOptions, admit
from .specs import bracket
from .stats import Gauge, ServerStats
from .tls import HandshakeFailed, TLSFrontEnd

log = logging.getLogger(__name__)
access_log = logging.getLogger("simplelb.access")

# Seconds a client is told to wait when no backend is healthy: about one
# health-check round, after which a recovered backend may be back.
RETRY_AFTER_S = 2

# Logged (never sent) when the client left before its response was complete; nginx's code for it.
CLIENT_CLOSED_REQUEST = 499


def error_response(exc: HTTPError, *, close: bool, extra: list[tuple[str, str]] = ()) -> bytes:
    """The error funnel: every error response the balancer itself writes is made here."""
    phrase = _phrase(exc.status)
    body = f"{exc.status} {phrase}: {exc.message}\n".encode("utf-8", "replace")
    headers = [
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    if exc.status == 503:  # no backend, all at their limit, or too many clients: each passes
        headers.append(("Retry-After", str(RETRY_AFTER_S)))
    headers += exc.headers + list(extra)
    if close:
        headers.append(("Connection", "close"))
    return encode_head(f"HTTP/1.1 {exc.status} {phrase}", headers) + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# A plain BaseRequestHandler, not http.server's BaseHTTPRequestHandler: we read
# and write the wire ourselves (strict parsing, exact forwarding), and use
# nothing of its request parsing, buffered files or response helpers.
class ProxyRequestHandler(socketserver.BaseRequestHandler):
    """One client connection, any number of requests on it."""

    server: LoadBalancer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _start(self) -> bool:
        """The connection's TLS handshake, if any (here, on its own thread); False if it failed."""
        if self.server.tls is not None:
            tracker = self.server.connections
            tracker.reading(self.connection)  # a slow handshake is evicted like a slow head
            deadline = time.monotonic() + self.server.config.listener.client_header_timeout_s

            def wrapped(tls) -> None:
                tracker.replace(self.connection, tls)
                self.connection = tls

            try:
                self.server.tls.accept(self.request, deadline, on_wrapped=wrapped)
            except HandshakeFailed as exc:
                log.debug("client %s: %s", self.client_address[0], exc)
                return False
        listener = self.server.config.listener
        self.reader = SocketReader(self.connection)
        self.client = ClientConnection(
            self.connection, self.reader,
            body_timeout_s=listener.client_body_timeout_s, send_timeout_s=listener.send_timeout_s,
            max_body_bytes=listener.max_body_bytes,
        )
        return True

    def handle(self) -> None:
        tracker = self.server.connections
        keepalive_s = self.server.config.listener.keepalive_timeout_s
        try:
            if not self._start():
                return
            while tracker.idle(self.connection) and self.client.wait_for_request(keepalive_s):
                tracker.reading(self.connection)
                if not self._serve_one():
                    break
        finally:
            tracker.remove(self.connection)

    def finish(self) -> None:
        if self.connection is not self.request:  # the TLS socket took over the descriptor: close it here
            try:
                self.connection.close()
            except OSError:
                pass

    def _read_head(self, started: float) -> bytes | None:
        listener = self.server.config.listener
        try:
            return self.reader.read_head(
                listener.max_header_bytes, started + listener.client_header_timeout_s, listener.max_url_bytes
            )
        except TimeoutError:
            raise BadRequest("request head not received in time", status=408) from None
        except HeadTooLarge as exc:
            if exc.start_line:
                raise BadRequest("request line too long", status=414) from None
            raise BadRequest("request header section too large", status=431) from None
        except EOFError:
            return None

    def _serve_one(self) -> bool:
        """Read, forward and log one request; return whether the connection stays open."""
        listener = self.server.config.listener
        record = RequestRecord(time.monotonic(), time.time(), self.client_address[0])
        self.client.begin_request()
        request = None
        try:
            raw = self._read_head(record.started)
            if raw is None:
                return False
            record.bytes_received = len(raw)
            self.server.connections.busy(self.connection)
            turn = self.server.gate.turn()
            try:
                head = parse_request_head(raw, listener.max_header_count)
                _describe_request(record, head)
                request = admit(head, self.client_address[0], max_body_bytes=listener.max_body_bytes,
                                buffered=self.reader.peek() if self.reader.pending else b"")
                if listener.request_id_header:
                    request.request_id = (listener.request_id_header,
                                          request_id_for(request.headers, listener.request_id_header))
                outcome = self.server.forwarder.forward(
                    request, self.client, closing=self.server.connections.closing, turn=turn
                )
            finally:
                turn.release()
            keep_alive = outcome.keep_alive
        except HTTPError as exc:
            keep_alive = not (exc.close or request is None or not request.keep_alive or request.framing.kind != "none")
            self._send_error(exc, not keep_alive, request)
        except ClientBodyError as exc:
            keep_alive = False
            self._send_error(BadRequest(str(exc), status=exc.status), True, request)
        except ResponseAborted as exc:
            log.warning("response aborted, closing client connection: %s", exc)
            keep_alive, record.aborted = False, True
        except ClientDisconnected as exc:
            log.debug("client %s disconnected: %s", self.client_address[0], exc)
            keep_alive, record.status = False, CLIENT_CLOSED_REQUEST
            if record.method == "-":
                return False  # it left before saying anything: nothing to log
        except OSError as exc:
            log.debug("client %s connection error: %s", self.client_address[0], exc)
            return False
        self.server.finish(record, request, self.client)
        return keep_alive

    def _send_error(self, exc: HTTPError, close: bool, request) -> None:
        extra = [request.request_id] if request is not None and request.request_id is not None else []
        try:
            self.client.send_head(exc.status, error_response(exc, close=close, extra=extra))
        except ClientDisconnected:
            pass


def _describe_request(record: RequestRecord, head) -> None:
    record.method, record.target = head.method, head.target
    record.protocol = f"HTTP/{head.version[0]}.{head.version[1]}"
    for name, value in head.headers:
        lname = name.lower()
        if lname == "user-agent":
            record.user_agent = value
        elif lname == "referer":
            record.referer = value


class LoadBalancer(ThreadingHTTPServer):
    """The balancer: construct with a ``Config``, then ``start()`` and ``stop()``.

    Binding happens in the constructor, so a port in use fails there (with
    ``OSError``) before any thread starts. With ``port=0`` the OS picks a port:
    read it back from ``.port``. ``listen_socket`` serves an already bound
    socket instead (a worker gets one from its supervisor). ``source`` is
    what a reload reads (a config file and flags); by default the config
    itself, so a reload undoes changes made through the admin API.
    ``discover=False`` (a worker: its parent discovers) runs no discovery
    source; otherwise ``start()`` starts them (``discovery``).
    """

    daemon_threads = True  # a stuck client must never keep the process alive
    block_on_close = False  # stop() drains connections itself, with a deadline
    request_queue_size = 1024  # absorb connection bursts instead of refusing them

    def __init__(
        self,
        config: Config,
        *,
        algorithm: algorithms.Algorithm | None = None,
        source=None,
        listen_socket: socket.socket | None = None,
        sticky_secret: bytes | None = None,
        admin: bool = True,
        discover: bool = True,
    ):
        self.config = config
        listener = config.listener
        if sticky_secret is None and discover:
            sticky_secret = shared_secret(config)
        self.cluster = Cluster(config.cluster, sticky_secret=sticky_secret, algorithm=algorithm)
        self.tunnels = Gauge()  # upgraded connections open now
        self.forwarder = Forwarder(self.cluster, ForwardOptions(
            max_response_head=(64 * 1024, listener.max_header_count),
            scheme="https" if listener.tls else "http",
            allow_underscores=listener.allow_underscore_headers,
            backend_header=listener.backend_header,
            tunnel_timeout_s=listener.tunnel_timeout_s,
        ), self.tunnels)
        self.tls = TLSFrontEnd(listener.tls) if listener.tls else None
        self.control = LocalControl(self.cluster, source or FixedSource(config), config, snapshot=self.snapshot,
                                    tls=self.tls, discover=discover)
        self.connections = ConnectionTracker(listener.max_clients)
        self.gate = FairGate(listener.active_requests)
        self.stats = ServerStats()
        self.access_log = None
        self._serve_thread: threading.Thread | None = None
        self.admin = None
        self.address_family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        try:
            if listen_socket is None:
                try:
                    super().__init__((listener.host, listener.port), ProxyRequestHandler)
                except OSError as exc:
                    raise ListenError(f"cannot listen on {bracket(listener.host)}:{listener.port}", exc) from None
            else:
                super().__init__(listen_socket.getsockname()[:2], ProxyRequestHandler, bind_and_activate=False)
                self.socket.close()
                self.socket = listen_socket
                self.server_address = listen_socket.getsockname()
            if admin and listener.admin is not None:
                from .admin import AdminServer

                self.admin = AdminServer(listener.admin, self.control, token_file=listener.admin_token_file)
            self.redirect = None
            if listener.redirect_http is not None:
                self.redirect = RedirectServer(listener.host, listener.redirect_http, self.port)
            if listener.access_log is not None:
                try:
                    self.access_log = AccessLog(listener.access_log, listener.access_log_format)
                except OSError as exc:
                    raise ListenError(f"cannot open the access log {listener.access_log}", exc) from None
        except BaseException:
            self.cluster.stop()
            self.server_close()
            raise

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.config.listener.host == "::":
            # "::" means every address: take IPv4 too where the system allows (dual stack).
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: it looks up our FQDN, slowly

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{bracket(self.server_address[0])}:{self.port}"

    @property
    def backends(self):
        """The backends of the cluster's current view (primaries, then backups)."""
        return self.cluster.view.backends

    def start(self) -> LoadBalancer:
        """Start health checks, the admin listener and serving on background threads; return self."""
        self.cluster.start()
        self.control.start()
        if self.admin is not None:
            self.admin.start()
        if self.redirect is not None:
            self.redirect.start()
        # A short poll interval makes stop() prompt; the wake-ups cost nothing measurable.
        self._serve_thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"simplelb :{self.port}", daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self, grace_s: float | None = None) -> bool:
        """Stop accepting, drain, and release everything; False if requests were cut off."""
        grace = self.config.listener.grace_period_s if grace_s is None else grace_s
        self.control.shutting_down = True
        self.control.stop()
        if self._serve_thread is not None:
            self.shutdown()
            self._serve_thread.join()
        self.server_close()
        self.connections.close_idle()
        drained = self.connections.wait_quiet(grace)
        if not drained:
            log.warning("grace period over with %d request(s) in flight; closing them", self.connections.in_flight)
        self.connections.close_all()
        self.cluster.stop()
        if self.admin is not None:
            self.admin.stop()
        if self.redirect is not None:
            self.redirect.stop()
        if self.access_log is not None:
            self.access_log.stop()
        return drained

    def finish(self, record: RequestRecord, request, client: ClientConnection) -> None:
        """Count and log one request: every path through the handler ends here."""
        record.duration_s = time.monotonic() - record.started
        record.bytes_sent = client.bytes_sent
        record.bytes_received += client.body_bytes_received
        if client.status_sent:
            self.stats.record(client.status_sent, record.duration_s)
            record.status = record.status or client.status_sent
        if request is not None:
            record.attempts, record.backend = request.attempts, request.backend
            record.backend_status, record.backend_duration_s = request.backend_status, request.backend_duration_s
            record.request_id = request.request_id[1] if request.request_id else None
        if self.access_log is not None:
            self.access_log.write(record)
        elif access_log.isEnabledFor(logging.INFO):
            access_log.info(format_text(record))

    def reopen_logs(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    def snapshot(self) -> dict:
        """What this process counted and holds now, as plain values (``/status``, ``/metrics``, the fleet)."""
        cluster = self.cluster
        return {
            **self.stats.snapshot(),
            "connections": self.connections.counts(),
            "queue": {"waiting": cluster.queue.waiting, "timeouts": cluster.queue.timeouts},
            "retry_budget_exhausted": cluster.budget.exhausted,
            "access_log_dropped": self.access_log.dropped if self.access_log is not None else 0,
            "tunnels": self.tunnels.value,
            "backends": cluster.status(),
        }

    def process_request(self, request, client_address) -> None:
        if not self.connections.open(request):
            # Every connection is busy forwarding: refuse rather than grow without bound.
            try:
                request.settimeout(1)
                request.sendall(error_response(TooManyClients("too many client connections"), close=True))
                self.stats.record(503, 0.0)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        # Reached only for bugs: expected failures are handled in the handler.
        log.exception("unexpected error while serving %s", client_address[0])
