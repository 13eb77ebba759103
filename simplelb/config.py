"""The balancer's configuration: one table of settings, two frozen halves.

Every setting is declared once in ``OPTIONS`` (``options.py``): its flag,
its field, its converter, its help and its *scope*. The command line, the
config file (a key is the flag without its dashes) and ``Config.of(**fields)``
all go through ``build``, which converts every value, collects every error
(``--check`` prints them all) and only then builds the configuration.

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
from .options import OPTION_BY_FIELD
from .specs import BackendSpec, SourceSpec, check_unique, parse_backends

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
