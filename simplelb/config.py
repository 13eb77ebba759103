"""The balancer's configuration: one table of settings, two frozen halves.

Every setting is declared once in ``OPTIONS``: its flag, its field, its
converter, its help and its *scope*. The command line, the config file (a key
is the flag without its dashes) and ``Config.of(**fields)`` all go through
``build``, which converts every value, collects every error (``--check``
prints them all) and only then builds the configuration.

The scope splits ``Config`` in two:

* ``ListenerConfig`` -- what is fixed for the life of the process: where it
  listens, how many workers, client limits and timeouts. A reload that
  changes one of these is logged as needing a restart and not applied.
* ``ClusterConfig`` -- what may change while it runs: the backends and
  their weights, the algorithm, health checks, ejection, retries, limits.
  ``Cluster.update`` applies a new one atomically.

Units are in the field names (``connect_timeout_s``); each default is
commented where it is not obvious.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import convert as c
from .errors import ConfigError
from .files import read_regular
from .specs import BackendSpec, SourceSpec, check_unique, parse_backends

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
    Option("--client-header-timeout", "client_header_timeout_s", c.seconds(), "seconds a client has to send a whole request head", L, "S"),
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
# Listener settings a reload does apply: certificates and the admin token are read again, whoever named them.
RELOADABLE_LISTENER = {"tls", "admin_token_file"}

# Settings without a flag: internal, but validated like the rest.
_INTERNAL: dict[str, Callable[[Any], Any]] = {
    "tls": c.certificate_pairs,
    "max_header_count": c.int_range(1, 10_000),
    "active_requests": c.int_range(1, 64),
    "pool_size": c.int_range(1, 10_000),
}


def _validate(instance: Any) -> None:
    """Convert every field of a frozen config in place; the first error is raised, naming the flag."""
    for f in fields(instance):
        if f.name in ("backends", "sources"):
            continue
        option = OPTION_BY_FIELD.get(f.name)
        converter = option.convert if option else _INTERNAL[f.name]
        try:
            value = converter(getattr(instance, f.name))
        except ConfigError as exc:
            raise ConfigError(f"{option.flag if option else f.name}: {exc}") from None
        object.__setattr__(instance, f.name, value)


@dataclass(frozen=True)
class ListenerConfig:
    """Fixed for the life of the process; changing one needs a restart."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    cpu_affinity: str = "one"
    admin: tuple[str, int] | None = None  # None: no admin listener
    admin_token_file: str | None = None
    log_level: str = "info"
    access_log: str | None = None  # None: one line per request through logging, at info
    access_log_format: str = "combined"
    request_id_header: str | None = None
    sticky_secret_file: str | None = None  # None: the secret comes from etcd with --discovery, or is random
    tls: tuple[tuple[str, str], ...] = ()  # (certificate, key) files; the first is for clients without SNI
    redirect_http: int | None = None  # None: no plain-HTTP listener redirecting to HTTPS
    tunnel_timeout_s: float = 3600.0  # an idle WebSocket is usually pinged well within an hour
    backend_header: str | None = None  # None: clients are not told which backend answered
    allow_underscore_headers: bool = False  # as nginx's underscores_in_headers off
    client_header_timeout_s: float = 10.0  # total, not per read: a slow drip cannot hold a thread
    keepalive_timeout_s: float = 60.0  # below common client-side idle limits, above most think times
    client_body_timeout_s: float = 60.0  # per read of a request body, as nginx's client_body_timeout
    send_timeout_s: float = 60.0  # per write to a client that stopped reading, as nginx's send_timeout
    grace_period_s: float = 10.0
    max_url_bytes: int = 8 * 1024  # as nginx's large_client_header_buffers: longer targets are 414
    max_header_bytes: int = 64 * 1024  # the whole head, request line included; beyond it 431
    max_header_count: int = 100
    max_body_bytes: int = 0  # 0: unlimited
    max_clients: int = 1024  # client connections at once; idle ones are closed first to admit more
    # Requests doing CPU work at once per process (see gate.py). One thread
    # holds the GIL at a time anyway, so one is enough to keep it busy, and
    # measured best: more only make requests wait for each other in a random
    # order instead of in line (bench/README.md).
    active_requests: int = 1

    def __post_init__(self) -> None:
        _validate(self)
        if self.max_header_bytes < self.max_url_bytes:
            raise ConfigError(
                f"--max-header-bytes {self.max_header_bytes} is smaller than --max-url {self.max_url_bytes}: "
                "a request head must have room for its request line"
            )
        if self.redirect_http is not None and not self.tls:
            raise ConfigError("--redirect-http goes with TLS: give --tls-cert and --tls-key (or [[tls]] tables)")
        if self.admin is not None and self.admin_token_file is None and not c.is_loopback(self.admin[0]):
            raise ConfigError(
                f"--admin {self.admin[0]}: an admin listener off loopback needs --admin-token-file"
            )


@dataclass(frozen=True)
class ClusterConfig:
    """The backends and how traffic reaches them; may change while the balancer runs."""

    backends: tuple[BackendSpec, ...] = ()  # primaries and backups, each spec says which
    sources: tuple[SourceSpec, ...] = ()  # the dns:// and dns+srv:// entries of the backends
    discovery: str | None = None  # etcd://HOST:PORT/PREFIX
    dns_server: tuple[str, int] | None = None  # None: the system's resolvers (/etc/resolv.conf)
    dns_refresh_s: float | None = None  # None: each answer's TTL, bounded to 1..300 s
    algorithm: str = "round-robin"
    hash_key: str = "ip"
    hash_balance_factor: float | None = None  # None: plain consistent hashing
    sticky_cookie: str | None = None  # None: no sticky sessions
    health_path: str = "/health"
    health_interval_s: float = 2.0
    health_timeout_s: float | None = None  # None: 1 s, or the interval when that is shorter
    rise: int = 2  # as HAProxy: one lucky probe does not bring a flapping backend back
    fall: int = 3  # as HAProxy: one lost probe does not take a good backend out
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    retries: int = 1
    retry_budget: float = 0.2  # as Linkerd: retries add at most 20% to the load
    retry_body_limit_bytes: int = 64 * 1024
    eject_after: int = 5  # as Envoy's consecutive_5xx default
    eject_on_5xx: bool = False
    eject_time_s: float = 10.0
    max_eject_percent: int = 50  # a bad deploy must not eject the whole pool
    eject_return: str = "timer"
    max_conns: int = 0
    queue_timeout_s: float = 5.0
    max_queue: int = 1024
    slow_start_s: float = 0.0
    backend_ca: str | None = None  # None: the system's CA certificates
    backend_tls_insecure: bool = False
    # Idle connections kept per backend. Connections beyond it are still opened
    # under load, just not kept afterwards.
    pool_size: int = 128

    def __post_init__(self) -> None:
        _validate(self)
        entries = self.backends
        if not isinstance(entries, tuple) or not all(isinstance(s, BackendSpec) for s in entries):
            entries = parse_backends(entries)
        specs = tuple(s for s in entries if isinstance(s, BackendSpec))
        sources = tuple(self.sources) + tuple(s for s in entries if isinstance(s, SourceSpec))
        object.__setattr__(self, "backends", specs)
        object.__setattr__(self, "sources", sources)
        check_unique(specs)
        if len({s.url for s in sources}) != len(sources):
            raise ConfigError("a dns:// backend is listed twice", field="backends")
        if not any(not s.backup for s in specs) and not self.discovers:
            raise ConfigError("no backends given: pass --backends host:port[,host:port...] or [[backend]] in --config, "
                              "or a source (dns://NAME:PORT, --discovery etcd://...)")
        if self.health_timeout_s is None:
            object.__setattr__(self, "health_timeout_s", min(1.0, self.health_interval_s))
        elif self.health_timeout_s > self.health_interval_s:
            raise ConfigError("--health-timeout must not be longer than --health-interval")

    @property
    def discovers(self) -> bool:
        """Whether backends come from discovery sources (then the static set may be empty)."""
        return bool(self.sources or self.discovery)

    @property
    def source_urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.sources) + ((self.discovery,) if self.discovery else ())

    @property
    def primaries(self) -> tuple[BackendSpec, ...]:
        return tuple(s for s in self.backends if not s.backup)

    def spec(self, name: str) -> BackendSpec | None:
        return next((s for s in self.backends if s.name == name), None)

    def with_backends(self, specs: tuple[BackendSpec, ...]) -> ClusterConfig:
        """The same settings over other backends (validated)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ClusterConfig(**{**values, "backends": tuple(specs)})

    def to_dict(self) -> dict:
        """Plain JSON-able values; ``cluster_from_dict`` reads them back."""
        values = asdict(self)
        values["backends"] = [spec.to_dict() for spec in self.backends]
        values["sources"] = [source.to_dict() for source in self.sources]
        return values


def cluster_from_dict(values: dict) -> ClusterConfig:
    from .specs import backend_from_table, entry_from_table

    specs = tuple(backend_from_table(table, "backend") for table in values["backends"])
    sources = tuple(entry_from_table(table, "source") for table in values.get("sources", ()))
    return ClusterConfig(**{**values, "backends": specs, "sources": sources})


def listener_from_dict(values: dict) -> ListenerConfig:
    admin = values.get("admin")
    tls = tuple(tuple(pair) for pair in values.get("tls", ()))
    return ListenerConfig(**{**values, "admin": tuple(admin) if admin else None, "tls": tls})


@dataclass(frozen=True)
class Config:
    """Both halves. Build it with ``Config.of(**fields)``, or from flags and a file with ``build``."""

    listener: ListenerConfig = field(default_factory=ListenerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @classmethod
    def of(cls, **settings: Any) -> Config:
        """From field names (``backends=``, ``port=``, ``health_interval_s=`` ...), text or values."""
        return build(settings)

    def changed_listener_settings(self, other: Config) -> list[str]:
        """The flags of listener settings that differ in ``other`` (a reload cannot apply them)."""
        return [
            OPTION_BY_FIELD[f.name].flag if f.name in OPTION_BY_FIELD else f.name
            for f in fields(ListenerConfig)
            if f.name not in RELOADABLE_LISTENER and getattr(self.listener, f.name) != getattr(other.listener, f.name)
        ]


_LISTENER_FIELDS = {f.name for f in fields(ListenerConfig)} | {"tls_cert", "tls_key"}
_CLUSTER_FIELDS = {f.name for f in fields(ClusterConfig)} | {"backups"}


def build(settings: dict[str, Any], where: Callable[[str], str] | None = None, errors: list[str] | None = None) -> Config:
    """Convert and check every setting; raise one ``ConfigError`` listing every problem.

    ``settings`` maps field names to values (text or typed; ``None`` means
    unset). ``where(field)`` says where a value came from, for messages
    (default: the flag). ``errors`` are problems found before (in a file's
    tables): they are reported with the rest, and the whole is not built.
    """
    where = where or (lambda name: OPTION_BY_FIELD[name].flag if name in OPTION_BY_FIELD else name)
    errors = list(errors or [])
    converted: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue
        if name not in _LISTENER_FIELDS and name not in _CLUSTER_FIELDS:
            errors.append(f"unknown setting {name!r}")
            continue
        option = OPTION_BY_FIELD.get(name)
        try:
            converted[name] = option.convert(value) if option else _INTERNAL.get(name, lambda v: v)(value)
        except ConfigError as exc:
            errors.append(f"{where(name)}: {exc}")
    if errors:
        raise ConfigError(errors[0], errors)
    backups = converted.pop("backups", ())
    converted["backends"] = tuple(converted.get("backends", ())) + tuple(backups)
    cert, key = converted.pop("tls_cert", None), converted.pop("tls_key", None)
    if (cert is None) != (key is None):
        errors.append("--tls-cert and --tls-key go together: give both")
    elif cert is not None:
        converted["tls"] = ((cert, key), *converted.get("tls", ()))
    try:
        listener = ListenerConfig(**{k: v for k, v in converted.items() if k in _LISTENER_FIELDS})
    except ConfigError as exc:
        errors.append(str(exc))
    try:
        cluster = ClusterConfig(**{k: v for k, v in converted.items() if k in _CLUSTER_FIELDS})
    except ConfigError as exc:
        errors.append(f"{where(exc.field)}: {exc}" if exc.field else str(exc))
    if errors:
        raise ConfigError(errors[0], errors)
    return Config(listener, cluster)


def read_token(path: str) -> str:
    """The admin token in ``path`` (surrounding whitespace removed)."""
    return read_regular(path).decode("utf-8").strip()


def defaults() -> dict[str, Any]:
    """Every field's default, for ``--help`` and the README check."""
    values = {f.name: f.default for f in fields(ListenerConfig)}
    values.update({f.name: f.default for f in fields(ClusterConfig)})
    values.update(backups=(), tls_cert=None, tls_key=None)
    return values
