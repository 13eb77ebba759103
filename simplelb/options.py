"""The table of settings: every setting declared once, as an ``Option``, in ``OPTIONS``.

An ``Option`` names a setting's flag, its field (in ``ListenerConfig`` or
``ClusterConfig``), its converter (which raises ``ConfigError`` "must be
..."), its help and its *scope*: ``listener`` (fixed for the life of the
process) or ``cluster`` (may change while it runs). The command line
(``cli.py``, its flags and ``--help``), the config file (``configfile.py``: a
key is the flag without its dashes) and ``config.build`` all read this one
table; ``OPTION_BY_FIELD`` finds an option by its field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import convert as c
from .specs import BackendSpec, parse_backends

LISTENER, CLUSTER = "listener", "cluster"


@dataclass(frozen=True)
class Option:
    """One setting: flag, field, converter (raising ``ConfigError`` "must be ..."), help and scope.

    A ``switch`` is a flag without a value (present: True).
    """

    flag: str
    field: str
    convert: Callable[[Any], Any]
    help: str
    scope: str
    metavar: str | None = None
    switch: bool = False

    @property
    def key(self) -> str:
        """The key in a config file."""
        return self.flag[2:]


def _backups(value: Any) -> tuple[BackendSpec, ...]:
    return parse_backends(value, backup=True)


L, C = LISTENER, CLUSTER
OPTIONS: tuple[Option, ...] = (
    Option("--backends", "backends", parse_backends, "comma-separated backends: host:port[=WEIGHT] or http://host:port", C, "LIST"),
    Option("--backup", "backups", _backups, "backends used only when every primary is unavailable", C, "LIST"),
    Option("--discovery", "discovery", c.optional(c.etcd_url),
           "also read backends from etcd: keys PREFIX/backends/NAME, listed then watched", C, "etcd://HOST:PORT/PREFIX"),
    Option("--dns-server", "dns_server", c.optional(c.dns_server),
           "resolve dns:// and dns+srv:// backends with this server instead of the system's", C, "HOST:PORT"),
    Option("--dns-refresh", "dns_refresh_s", c.optional(c.number(0.1, 86_400, what="a number of seconds")),
           "seconds between lookups of dns:// backends (off: each answer's TTL, within 1..300)", C, "S"),
    Option("--sticky-secret-file", "sticky_secret_file", c.optional(c.secret_file),
           "file holding the sticky-cookie secret, so balancers that share it honour each other's cookies", L, "FILE"),
    Option("--host", "host", c.listen_host, "address to listen on", L, "ADDR"),
    Option("--port", "port", c.int_range(0, 65535), "port to listen on (0 picks a free one)", L),
    Option("--workers", "workers", c.workers,
           "processes serving the listening port (auto: one per CPU), each with its own health checks", L, "N"),
    Option("--cpu-affinity", "cpu_affinity", c.choice(("one", "any")),
           "one: each balancer process keeps its threads on one CPU (faster under load); any: wherever the system puts them", L, "MODE"),
    Option("--admin", "admin", c.optional(c.admin_address), "admin listener HOST:PORT (status, API, reload); off by default", L, "HOST:PORT"),
    Option("--admin-token-file", "admin_token_file", c.optional(c.token_file),
           "file holding a token the admin API requires as 'Authorization: Bearer <token>'", L, "FILE"),
    Option("--log-level", "log_level", c.choice(c.LOG_LEVELS), "how much to log: debug, info, warning, error", L, "LEVEL"),
    Option("--access-log", "access_log", c.optional(c.log_path),
           "write the access log to this file (- for stdout) instead of one info line per request on stderr", L, "PATH"),
    Option("--access-log-format", "access_log_format", c.choice(("combined", "json")),
           "the access log's format with --access-log: combined or json", L, "FORMAT"),
    Option("--request-id-header", "request_id_header", c.optional(c.header_name),
           "give each request an id in this header (kept if the client sent a well-formed one), e.g. X-Request-Id",
           L, "NAME"),
    Option("--algorithm", "algorithm", c.algorithm, "how to choose a backend for each request", C, "NAME"),
    Option("--hash-key", "hash_key", c.hash_key, "what the hash algorithm hashes: ip, path, header:NAME or cookie:NAME", C, "KEY"),
    Option("--hash-balance-factor", "hash_balance_factor", c.optional(c.number(1.0, 100.0)),
           "with hash: no backend takes more than F x the average in-flight load (bounded-load hashing)", C, "F"),
    Option("--sticky-cookie", "sticky_cookie", c.optional(c.cookie_name),
           "pin each client to a backend with this cookie (any algorithm)", C, "NAME"),
    Option("--health-path", "health_path", c.health_path, "path probed on each backend with GET", C, "PATH"),
    Option("--health-interval", "health_interval_s", c.seconds(), "seconds between health probes", C, "S"),
    Option("--health-timeout", "health_timeout_s", c.optional(c.seconds()),
           "seconds before a probe counts as failed (default: 1, or the interval if shorter)", C, "S"),
    Option("--rise", "rise", c.int_range(1, 100), "consecutive passed probes that bring a backend back", C, "N"),
    Option("--fall", "fall", c.int_range(1, 100), "consecutive failed probes that take a backend out", C, "N"),
    Option("--connect-timeout", "connect_timeout_s", c.seconds(), "seconds to open a backend connection", C, "S"),
    Option("--read-timeout", "read_timeout_s", c.seconds(), "seconds a backend may stay silent while answering (504 after)", C, "S"),
    Option("--tls-cert", "tls_cert", c.optional(c.readable_file),
           "serve HTTPS with this PEM certificate (the file may hold the chain); needs --tls-key", L, "FILE"),
    Option("--tls-key", "tls_key", c.optional(c.readable_file), "the private key of --tls-cert (PEM)", L, "FILE"),
    Option("--redirect-http", "redirect_http", c.optional(c.int_range(0, 65535)),
           "with TLS: also listen on this port for plain HTTP and answer every request with 308 to HTTPS", L, "PORT"),
    Option("--backend-ca", "backend_ca", c.optional(c.ca_file),
           "verify https:// backends against the CA certificates in this PEM file (default: the system's)", C, "FILE"),
    Option("--backend-tls-insecure", "backend_tls_insecure", c.switch,
           "do not verify the certificates of https:// backends (a warning says so at start-up)", C, switch=True),
    Option("--tunnel-timeout", "tunnel_timeout_s", c.seconds(),
           "seconds an upgraded connection (WebSocket) may be idle both ways before it is closed", L, "S"),
    Option("--backend-header", "backend_header", c.optional(c.header_name),
           "name the backend that answered in this response header, e.g. X-Upstream (off: nothing is added)", L, "NAME"),
    Option("--allow-underscore-headers", "allow_underscore_headers", c.switch,
           "forward request header fields whose names contain an underscore (dropped by default)", L, switch=True),
    Option("--client-header-timeout", "client_header_timeout_s", c.seconds(), "seconds a client has to send a whole request head (and, on a new connection, to begin it)", L, "S"),
    Option("--keepalive-timeout", "keepalive_timeout_s", c.seconds(), "seconds an idle client connection is kept open", L, "S"),
    Option("--client-body-timeout", "client_body_timeout_s", c.seconds(), "seconds a client may pause while sending a request body", L, "S"),
    Option("--send-timeout", "send_timeout_s", c.seconds(), "seconds a client may stop reading a response before it is cut off", L, "S"),
    Option("--grace-period", "grace_period_s", c.seconds(), "seconds in-flight requests get to finish on shutdown", L, "S"),
    Option("--max-url", "max_url_bytes", c.size(64), "longest request line (414 beyond)", L, "SIZE"),
    Option("--max-header-bytes", "max_header_bytes", c.size(64), "largest request head (431 beyond; more than 100 fields is 431 too)", L, "SIZE"),
    Option("--max-body", "max_body_bytes", c.size(), "largest request body (413 beyond; 0: no limit)", L, "SIZE"),
    Option("--max-clients", "max_clients", c.int_range(1, 100_000),
           "client connections at once; at the cap the longest-idle one is closed to admit a new one", L, "N"),
    Option("--retries", "retries", c.int_range(0, 10), "how many times a failed request may be retried on another backend", C, "N"),
    Option("--retry-budget", "retry_budget", c.number(0, 1, what="a fraction from 0 to 1"),
           "retries allowed as a fraction of the requests of the last 10 s", C, "FRACTION"),
    Option("--retry-body-limit", "retry_body_limit_bytes", c.size(),
           "request bodies up to this size are kept so an idempotent request can be retried", C, "SIZE"),
    Option("--eject-after", "eject_after", c.int_range(0, 1000), "consecutive failures of real traffic that eject a backend (0: never)", C, "N"),
    Option("--eject-on-5xx", "eject_on_5xx", c.switch, "count 5xx answers as failures for ejection", C, switch=True),
    Option("--eject-time", "eject_time_s", c.seconds(), "seconds of the first ejection; each repeated one doubles, up to 300 s", C, "S"),
    Option("--max-eject-percent", "max_eject_percent", c.int_range(0, 100), "never eject more than this percentage of the backends", C, "P"),
    Option("--eject-return", "eject_return", c.choice(("timer", "health")),
           "an ejected backend returns when its time is up (timer) or when health probes pass (health)", C, "HOW"),
    Option("--max-conns", "max_conns", c.int_range(0, 100_000), "requests in flight per backend (0: no limit); beyond it requests queue", C, "N"),
    Option("--queue-timeout", "queue_timeout_s", c.seconds(), "seconds a request may wait for a backend under --max-conns before 503", C, "S"),
    Option("--max-queue", "max_queue", c.int_range(0, 1_000_000), "requests allowed to wait at once under --max-conns; more get 503 at once", C, "N"),
    Option("--slow-start", "slow_start_s", c.seconds(zero_ok=True), "seconds over which a returning backend's share ramps up to full (0: at once)", C, "S"),
)
OPTION_BY_FIELD = {option.field: option for option in OPTIONS}
