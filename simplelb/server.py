"""The balancer as a server: listening socket, client connections, the error funnel.

``LoadBalancer`` is a ``ThreadingHTTPServer`` that owns everything with a
lifetime: the backends, their connection pools, the health checker and the
client connections. ``start()`` runs it on a named daemon thread, ``stop()``
drains it: stop accepting, close idle keep-alive connections, let in-flight
requests finish within the grace period.

``ProxyRequestHandler`` runs one client connection: it reads each request
head (with our strict parser, not ``http.server``'s lenient one), hands the
request to the ``Forwarder`` and turns any ``HTTPError`` into a response --
the one place where error responses are written.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import algorithms
from .affinity import StickyCookies, key_function
from .backend import Backend
from .config import Config
from .connections import ConnectionTracker
from .errors import BadRequest, ClientBodyError, ClientDisconnected, HTTPError, ResponseAborted
from .gate import FairGate
from .headers import encode_head
from .health import HealthChecker
from .http1 import HeadTooLarge, SocketReader, parse_request_head
from .limits import CapacityQueue
from .outlier import OutlierDetector
from .proxy import ClientConnection, Forwarder, admit
from .retry import RetryBudget, RetryPolicy
from .upstream import BackendPool

log = logging.getLogger(__name__)
access_log = logging.getLogger("simplelb.access")

# Seconds a client is told to wait when no backend is healthy: about one
# health-check round, after which a recovered backend may be back.
RETRY_AFTER_S = 2

# Logged (never sent) when the client left before its response was complete; nginx's code for it.
CLIENT_CLOSED_REQUEST = 499


class ProxyRequestHandler(BaseHTTPRequestHandler):
    """One client connection, any number of requests on it."""

    protocol_version = "HTTP/1.1"
    server: LoadBalancer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = SocketReader(self.connection)
        config = self.server.config
        self.client = ClientConnection(
            self.connection, self.reader,
            body_timeout_s=config.client_body_timeout_s, send_timeout_s=config.send_timeout_s,
            max_body_bytes=config.max_body_bytes,
        )

    def handle(self) -> None:
        tracker = self.server.connections
        try:
            while tracker.idle(self.connection) and self.client.wait_for_request(
                self.server.config.keepalive_timeout_s
            ):
                tracker.reading(self.connection)
                if not self._serve_one():
                    break
        finally:
            tracker.remove(self.connection)

    def _serve_one(self) -> bool:
        """Read, forward and log one request; return whether the connection stays open."""
        config = self.server.config
        started = time.monotonic()
        request = None
        head = None
        try:
            try:
                raw = self.reader.read_head(
                    config.max_header_bytes, started + config.client_header_timeout_s, config.max_url_bytes
                )
            except TimeoutError:
                raise BadRequest("request head not received in time", status=408) from None
            except HeadTooLarge as exc:
                if exc.start_line:
                    raise BadRequest("request line too long", status=414) from None
                raise BadRequest("request header section too large", status=431) from None
            except EOFError:
                return False
            if raw is None:
                return False
            self.server.connections.busy(self.connection)
            turn = self.server.gate.turn()
            try:
                head = parse_request_head(raw, config.max_header_count)
                request = admit(head, self.client_address[0], max_body_bytes=config.max_body_bytes)
                outcome = self.server.forwarder.forward(
                    request, self.client, closing=self.server.connections.closing, turn=turn
                )
            finally:
                turn.release()
        except HTTPError as exc:
            close = exc.close or request is None or not request.keep_alive or request.framing.kind != "none"
            self._send_error(exc, close)
            self._log_access(head, exc.status, "-", started)
            return not close
        except ClientBodyError as exc:
            self._send_error(BadRequest(str(exc), status=exc.status), close=True)
            self._log_access(head, exc.status, "-", started)
            return False
        except ResponseAborted as exc:
            log.warning("response aborted, closing client connection: %s", exc)
            self._log_access(head, 0, "-", started)
            return False
        except ClientDisconnected as exc:
            log.debug("client %s disconnected: %s", self.client_address[0], exc)
            if head is not None:
                self._log_access(head, CLIENT_CLOSED_REQUEST, "-", started)
            return False
        except OSError as exc:
            log.debug("client %s connection error: %s", self.client_address[0], exc)
            return False
        self._log_access(head, outcome.status, outcome.upstream, started)
        return outcome.keep_alive

    def _send_error(self, exc: HTTPError, close: bool) -> None:
        """The error funnel: every error response the balancer itself writes comes from here."""
        body = f"{exc.status} {_phrase(exc.status)}: {exc.message}\n".encode("utf-8", "replace")
        headers = [
            ("Date", formatdate(usegmt=True)),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        if exc.status == 503:  # no backend, or all at their limit: both pass
            headers.append(("Retry-After", str(RETRY_AFTER_S)))
        if close:
            headers.append(("Connection", "close"))
        try:
            self.client.send(encode_head(f"HTTP/1.1 {exc.status} {_phrase(exc.status)}", headers) + body)
        except ClientDisconnected:
            pass

    def _log_access(self, head, status: int, upstream: str, started: float) -> None:
        if access_log.isEnabledFor(logging.INFO):
            method, target = (head.method, head.target) if head else ("-", "-")
            access_log.info(
                "%s %s %s %s %s %.1fms",
                self.client_address[0],
                method,
                target,
                status or "aborted",
                upstream,
                (time.monotonic() - started) * 1000,
            )

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug(format, *args)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class LoadBalancer(ThreadingHTTPServer):
    """The balancer: construct with a ``Config``, then ``start()`` and ``stop()``.

    Binding happens in the constructor, so a port in use fails there (with
    ``OSError``) before any thread starts. With ``port=0`` the OS picks a port:
    read it back from ``.port``.
    """

    daemon_threads = True  # a stuck client must never keep the process alive
    block_on_close = False  # stop() drains connections itself, with a deadline
    request_queue_size = 1024  # absorb connection bursts instead of refusing them

    def __init__(self, config: Config, *, algorithm: algorithms.Algorithm | None = None):
        self.config = config

        def backend(spec, backup: bool = False) -> Backend:
            return Backend(
                spec,
                rise=config.rise,
                fall=config.fall,
                max_conns=config.max_conns,
                slow_start_s=config.slow_start_s,
                count_5xx_as_failure=config.eject_on_5xx,
                backup=backup,
            )

        self.primaries = [backend(spec) for spec in config.backends]
        self.backups = [backend(spec, backup=True) for spec in config.backups]
        self.backends = self.primaries + self.backups
        self.outliers = OutlierDetector(
            self.backends,
            eject_after=config.eject_after,
            eject_time_s=config.eject_time_s,
            max_percent=config.max_eject_percent,
            until_probes_pass=config.eject_return == "health",
        )
        self.outliers.attach()
        queue = None
        if config.max_conns:
            queue = CapacityQueue(config.queue_timeout_s, config.max_queue)
            for b in self.backends:
                b.on_release = queue.released
        self.pools = {
            b: BackendPool(
                b.host,
                b.port,
                size=config.pool_size,
                connect_timeout_s=config.connect_timeout_s,
                read_timeout_s=config.read_timeout_s,
            )
            for b in self.backends
        }
        self.algorithm = algorithm or algorithms.create(
            config.algorithm, hash_balance_factor=config.hash_balance_factor
        )
        self.forwarder = Forwarder(
            self.primaries,
            self.algorithm,
            self.pools,
            read_timeout_s=config.read_timeout_s,
            max_header_bytes=config.max_header_bytes,
            max_header_count=config.max_header_count,
            retry=RetryPolicy(config.retries, RetryBudget(config.retry_budget)),
            retry_body_limit_bytes=config.retry_body_limit_bytes,
            backups=self.backups,
            queue=queue,
            key_function=key_function(config.hash_key) if getattr(self.algorithm, "uses_key", False) else None,
            sticky=StickyCookies(config.sticky_cookie, self.backends, config.sticky_secret)
            if config.sticky_cookie
            else None,
        )
        self.health = HealthChecker(
            self.backends,
            path=config.health_path,
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
        )
        self.connections = ConnectionTracker(config.max_clients)
        self.gate = FairGate(config.active_requests)
        self._serve_thread: threading.Thread | None = None
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        try:
            super().__init__((config.host, config.port), ProxyRequestHandler)
        except OSError:
            for pool in self.pools.values():
                pool.close()
            raise

    def server_bind(self) -> None:
        if self.config.reuse_port:
            # Several worker processes listen on one port; the kernel spreads connections.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.server_address[0]}]" if ":" in self.server_address[0] else self.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> LoadBalancer:
        """Start health checks and serving on a background thread; return self."""
        self.health.start()
        # A short poll interval makes stop() prompt; the wake-ups cost nothing measurable.
        self._serve_thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"simplelb :{self.port}", daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self, grace_s: float | None = None) -> bool:
        """Stop accepting, drain, and release everything; False if requests were cut off."""
        grace = self.config.grace_period_s if grace_s is None else grace_s
        if self._serve_thread is not None:
            self.shutdown()
            self._serve_thread.join()
        self.server_close()
        self.connections.close_idle()
        drained = self.connections.wait_quiet(grace)
        if not drained:
            log.warning("grace period over with %d request(s) in flight; closing them", self.connections.in_flight)
        self.connections.close_all()
        self.health.stop()
        for pool in self.pools.values():
            pool.close()
        return drained

    def process_request(self, request, client_address) -> None:
        if not self.connections.open(request):
            # Every connection is busy forwarding: refuse rather than grow without bound.
            try:
                request.settimeout(1)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 29\r\n"
                    b"Retry-After: %d\r\nConnection: close\r\n\r\ntoo many client connections\r\n" % RETRY_AFTER_S
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        # Reached only for bugs: expected failures are handled in the handler.
        log.exception("unexpected error while serving %s", client_address[0])
