"""The balancer as a server: the listening socket and everything with a lifetime.

``LoadBalancer`` is a ``ThreadingHTTPServer`` that owns everything with a
lifetime: the ``Cluster`` (backends, pools, health checks), the client
connections and, when configured, the admin listener. ``start()`` runs it
on a named daemon thread; ``stop()`` drains it: stop accepting, close idle
keep-alive connections, let in-flight requests finish within the grace
period.

``handler.ProxyRequestHandler`` runs each client connection.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from http.server import ThreadingHTTPServer

from . import algorithms
from .accesslog import AccessLog, RequestRecord, format_text, text_log
from .client import ClientConnection
from .cluster import Cluster
from .config import Config
from .configfile import FixedSource
from .connections import ConnectionTracker
from .control import LocalControl
from .discovery import shared_secret
from .errors import (
    ListenError,
    TooManyClients,
)
from .gate import FairGate
from .handler import ProxyRequestHandler, error_response
from .proxy import Forwarder
from .redirect import RedirectServer
from .request import ForwardOptions
from .sockio import take_ipv4_too
from .specs import bracket
from .stats import ServerStats
from .tls import TLSFrontEnd
from .tunnel import OpenTunnels

log = logging.getLogger(__name__)

# How long a stop waits, once the grace period is over and the rest is cut, for the cut connections
# to end. A request waiting on a silent plain backend notices its client is gone within a second
# (upstream.CLIENT_CHECK_S); one stuck longer is not waited for.
CLOSED_WAIT_S = 2.0


def _forward_options(config: Config) -> ForwardOptions:
    listener = config.listener
    return ForwardOptions(
        max_response_head=(64 * 1024, listener.max_header_count),
        scheme="https" if listener.tls else "http",
        allow_underscores=listener.allow_underscore_headers,
        backend_header=listener.backend_header,
        tunnel_timeout_s=listener.tunnel_timeout_s,
    )


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
        self.tunnels = OpenTunnels()  # upgraded connections open now
        self.forwarder = Forwarder(self.cluster, _forward_options(config), self.tunnels)
        self.tls = TLSFrontEnd(listener.tls) if listener.tls else None
        self.control = LocalControl(self.cluster, source or FixedSource(config), config, snapshot=self.snapshot,
                                    tls=self.tls, discover=discover)
        self.connections = ConnectionTracker(listener.max_clients)
        self.gate = FairGate(listener.active_requests)
        self.stats = ServerStats()
        self._serve_thread: threading.Thread | None = None
        self.admin = self.redirect = self.access_log = None
        self.address_family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        try:
            self._listen(listen_socket)
            self._open_the_rest(with_admin=admin)
        except BaseException:
            self.cluster.stop()
            self.server_close()
            raise

    def _listen(self, listen_socket: socket.socket | None) -> None:
        listener = self.config.listener
        if listen_socket is None:
            try:
                super().__init__((listener.host, listener.port), ProxyRequestHandler)
            except OSError as exc:
                raise ListenError(f"cannot listen on {bracket(listener.host)}:{listener.port}", exc) from None
            return
        super().__init__(listen_socket.getsockname()[:2], ProxyRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listen_socket
        self.server_address = listen_socket.getsockname()

    def _open_the_rest(self, *, with_admin: bool) -> None:
        """The admin and redirect listeners and the access log, as configured."""
        listener = self.config.listener
        if with_admin and listener.admin is not None:
            from .admin import AdminServer

            self.admin = AdminServer(listener.admin, self.control)
        if listener.redirect_http is not None:
            self.redirect = RedirectServer(listener.host, listener.redirect_http, self.port)
        if listener.access_log is not None:
            try:
                self.access_log = AccessLog(listener.access_log, listener.access_log_format)
            except OSError as exc:
                raise ListenError(f"cannot open the access log {listener.access_log}", exc) from None

    def server_bind(self) -> None:
        take_ipv4_too(self.socket, self.config.listener.host)
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
        self.tunnels.close_all()  # (first: nothing a client sent after this reaches a backend)
        self.connections.close_all()
        # The connections just cut end on their threads: give them a moment to log and count their
        # requests (a 499, a tunnel's 101), which a process ending at once would lose.
        self.connections.wait_closed(CLOSED_WAIT_S)
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
        record.bytes_sent, record.body_bytes_sent = client.bytes_sent, client.body_bytes_sent
        record.bytes_received += client.body_bytes_received
        if client.status_sent:
            self.stats.record(client.status_sent, record.duration_s)
            record.status = record.status or client.status_sent
        if request is not None:
            record.attempts, record.backend = request.attempts, request.backend
            record.backend_status, record.backend_duration_s = request.backend_status, request.backend_duration_s
            record.request_id = request.request_id[1] if request.request_id else None
        self._log(record)

    def _log(self, record: RequestRecord) -> None:
        if self.access_log is not None:
            self.access_log.write(record)
        elif text_log.isEnabledFor(logging.INFO):
            text_log.info(format_text(record))

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
            self._refuse(request, client_address[0])
            return
        super().process_request(request, client_address)

    def _refuse(self, request, client: str) -> None:
        """Every connection is busy forwarding: refuse rather than grow without bound.

        Counted and logged as a 503 with no request (its method is ``-``: none was read). A TLS
        client could not read a plain 503 (it would see a protocol error): it is closed unanswered.
        """
        record = RequestRecord(time.monotonic(), time.time(), client, status=503)
        try:
            if self.tls is None:
                head, body = error_response(TooManyClients("too many client connections"), close=True)
                request.settimeout(1)
                request.sendall(head + body)
                record.bytes_sent, record.body_bytes_sent = len(head) + len(body), len(body)
            record.duration_s = time.monotonic() - record.started
            self.stats.record(503, record.duration_s)
            self._log(record)
        except OSError:  # the client left already: nothing was answered
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # Reached only for bugs: expected failures are handled in the handler.
        log.exception("unexpected error while serving %s", client_address[0])
