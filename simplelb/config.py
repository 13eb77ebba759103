"""The balancer's configuration: one frozen ``Config``, validated once.

Every setting is declared once in ``OPTIONS`` (flag, field, converter, help);
the command line is built from that table, and ``Config(...)`` keyword
arguments use the same field names, so the two cannot drift apart. Units are
in the field names (``connect_timeout_s``). Bad values raise ``ConfigError``
with a one-line message fit to show a user.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A setting has a value we cannot run with; the message says which and why."""


MAX_WEIGHT = 1000

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend listens, and its share of traffic relative to the others."""

    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_backend(text: str) -> BackendSpec:
    """Parse ``host:port``, ``http://host:port`` or either with ``=WEIGHT``."""
    spec = text.strip()
    original = spec
    weight = 1
    if "=" in spec:
        spec, _, weight_text = spec.rpartition("=")
        if not weight_text.isdigit() or not 1 <= int(weight_text) <= MAX_WEIGHT:
            raise ConfigError(f"backend {original!r}: weight must be a whole number from 1 to {MAX_WEIGHT}")
        weight = int(weight_text)
    if spec.startswith("http://"):
        spec = spec[len("http://") :].rstrip("/")
    elif "://" in spec:
        raise ConfigError(f"backend {original!r}: only http:// backends are supported")
    host, sep, port_text = spec.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"backend {original!r}: expected host:port")
    if not _HOSTNAME_RE.fullmatch(host):
        raise ConfigError(f"backend {original!r}: {host!r} is not a valid host name")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"backend {original!r}: {port_text!r} is not a port number (1-65535)")
    return BackendSpec(host.strip("[]"), int(port_text), weight)


def parse_backends(text: str | tuple[BackendSpec, ...] | list) -> tuple[BackendSpec, ...]:
    if isinstance(text, (tuple, list)):
        specs = tuple(item if isinstance(item, BackendSpec) else parse_backend(item) for item in text)
    else:
        specs = tuple(parse_backend(item) for item in text.split(",") if item.strip())
    if not specs:
        raise ConfigError("no backends given: pass --backends host:port[,host:port...]")
    seen: set[tuple[str, int]] = set()
    for spec in specs:
        if (spec.host, spec.port) in seen:
            raise ConfigError(f"backend {spec.address} is listed twice")
        seen.add((spec.host, spec.port))
    return specs


def _number(low: float, high: float, *, integer: bool = False, above_low: bool = False, what: str = "") -> Callable:
    """A converter to a number within ``[low, high]`` (``(low, high]`` with ``above_low``)."""
    kind = "a whole number" if integer else what or "a number"

    def convert(value: Any) -> Any:
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"must be {kind}, not {value!r}") from None
        if (number <= low if above_low else number < low) or not number <= high:  # NaN fails too
            bound = f"greater than {low:g}" if above_low else f"from {low:g}"
            raise ConfigError(f"must be {bound} up to {high:g}, not {value!r}")
        return number

    return convert


def _seconds(*, zero_ok: bool = False) -> Callable[[Any], float]:
    return _number(0, 86_400, above_low=not zero_ok, what="a number of seconds")


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    return _number(low, high, integer=True)


def _algorithm(value: Any) -> str:
    from .algorithms import ALGORITHMS  # late: algorithms import backend, which must not need config

    if value not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {value!r}; choose one of: {', '.join(ALGORITHMS)}")
    return value


def _health_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"[\x00-\x20\x7f]", value):
        raise ConfigError(f"must start with / and contain no spaces, not {value!r}")
    return value


def _listen_host(value: Any) -> str:
    if not isinstance(value, str) or not value or not _HOSTNAME_RE.fullmatch(value) and value != "::":
        raise ConfigError(f"must be a host name or IP address, not {value!r}")
    return value


def _hash_key(value: Any) -> str:
    from .affinity import validate_key_spec

    try:
        return validate_key_spec(str(value))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _balance_factor(value: Any) -> float | None:
    return None if value is None else _number(1.0, 100.0)(value)


def _cookie_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ConfigError(f"must be a cookie name (letters, digits, -_.), not {value!r}")
    return value


_SIZE_RE = re.compile(r"(\d+)\s*([KMG]i?B?|B)?", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """``65536``, ``64K``, ``10M``, ``1G`` (binary multiples) -> bytes."""
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE_RE.fullmatch(str(value).strip())
    if not match:
        raise ConfigError(f"must be a size like 65536, 64K or 10M, not {value!r}")
    unit = (match.group(2) or "B")[0].upper()
    return int(match.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"expected true or false, not {value!r}")


def _eject_return(value: Any) -> str:
    if value not in ("timer", "health"):
        raise ConfigError(f"must be timer or health, not {value!r}")
    return value


def _backups(value: Any) -> tuple[BackendSpec, ...]:
    if value in (None, "", ()):
        return ()
    return parse_backends(value)


@dataclass(frozen=True)
class Option:
    """One setting: its command-line flag, its ``Config`` field and how to convert text to a value.

    A converter raises ``ConfigError`` saying what is wrong ("must be ...");
    ``Config`` puts the flag in front. A ``switch`` is a flag without a value
    (present: True).
    """

    flag: str
    field: str
    convert: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    switch: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("--backends", "backends", parse_backends, "comma-separated backends: host:port[=WEIGHT] or http://host:port", "LIST"),
    Option("--host", "host", _listen_host, "address to listen on", "ADDR"),
    Option("--port", "port", _int_range(0, 65535), "port to listen on (0 picks a free one)"),
    Option("--algorithm", "algorithm", _algorithm, "how to choose a backend for each request", "NAME"),
    Option("--hash-key", "hash_key", _hash_key, "what the hash algorithm hashes: ip, path, header:NAME or cookie:NAME", "KEY"),
    Option("--hash-balance-factor", "hash_balance_factor", _balance_factor,
           "with hash: no backend takes more than F x the average in-flight load (bounded-load hashing)", "F"),
    Option("--sticky-cookie", "sticky_cookie", _cookie_name,
           "pin each client to a backend with this cookie (any algorithm)", "NAME"),
    Option("--health-path", "health_path", _health_path, "path probed on each backend with GET", "PATH"),
    Option("--health-interval", "health_interval_s", _seconds(), "seconds between health probes", "S"),
    Option("--health-timeout", "health_timeout_s", _seconds(), "seconds before a probe counts as failed", "S"),
    Option("--rise", "rise", _int_range(1, 100), "consecutive passed probes that bring a backend back"),
    Option("--fall", "fall", _int_range(1, 100), "consecutive failed probes that take a backend out"),
    Option("--connect-timeout", "connect_timeout_s", _seconds(), "seconds to open a backend connection", "S"),
    Option("--read-timeout", "read_timeout_s", _seconds(), "seconds a backend may stay silent while answering (504 after)", "S"),
    Option("--client-header-timeout", "client_header_timeout_s", _seconds(), "seconds a client has to send a whole request head", "S"),
    Option("--keepalive-timeout", "keepalive_timeout_s", _seconds(), "seconds an idle client connection is kept open", "S"),
    Option("--grace-period", "grace_period_s", _seconds(), "seconds in-flight requests get to finish on shutdown", "S"),
    Option("--max-url", "max_url_bytes", parse_size, "longest request line (414 beyond)", "SIZE"),
    Option("--max-header-bytes", "max_header_bytes", parse_size,
           "largest request head (431 beyond; more than 100 fields is 431 too)", "SIZE"),
    Option("--max-body", "max_body_bytes", parse_size, "largest request body (413 beyond; 0: no limit)", "SIZE"),
    Option("--max-clients", "max_clients", _int_range(1, 100_000),
           "client connections at once; at the cap the longest-idle one is closed to admit a new one", "N"),
    Option("--client-body-timeout", "client_body_timeout_s", _seconds(),
           "seconds a client may pause while sending a request body", "S"),
    Option("--send-timeout", "send_timeout_s", _seconds(),
           "seconds a client may stop reading a response before it is cut off", "S"),
    Option("--workers", "workers", _int_range(1, 64),
           "processes sharing the listening port (SO_REUSEPORT), each with its own health checks", "N"),
    Option("--retries", "retries", _int_range(0, 10), "how many times a failed request may be retried on another backend", "N"),
    Option("--retry-budget", "retry_budget", _number(0, 1, what="a fraction from 0 to 1"),
           "retries allowed as a fraction of the requests of the last 10 s", "FRACTION"),
    Option("--retry-body-limit", "retry_body_limit_bytes", parse_size,
           "request bodies up to this size are kept so an idempotent request can be retried", "SIZE"),
    Option("--eject-after", "eject_after", _int_range(0, 1000),
           "consecutive failures of real traffic that eject a backend (0: never)", "N"),
    Option("--eject-on-5xx", "eject_on_5xx", _switch, "count 5xx answers as failures for ejection", switch=True),
    Option("--eject-time", "eject_time_s", _seconds(),
           "seconds of the first ejection; each repeated one doubles, up to 300 s", "S"),
    Option("--max-eject-percent", "max_eject_percent", _int_range(0, 100),
           "never eject more than this percentage of the backends", "P"),
    Option("--eject-return", "eject_return", _eject_return,
           "an ejected backend returns when its time is up (timer) or when health probes pass (health)", "HOW"),
    Option("--max-conns", "max_conns", _int_range(0, 100_000),
           "requests in flight per backend (0: no limit); beyond it requests queue", "N"),
    Option("--queue-timeout", "queue_timeout_s", _seconds(),
           "seconds a request may wait for a backend under --max-conns before 503", "S"),
    Option("--max-queue", "max_queue", _int_range(0, 1_000_000),
           "requests allowed to wait at once under --max-conns; more get 503 at once", "N"),
    Option("--slow-start", "slow_start_s", _seconds(zero_ok=True),
           "seconds over which a returning backend's share ramps up to full (0: at once)", "S"),
    Option("--backup", "backups", _backups, "backends used only when every primary is unavailable", "LIST"),
)


@dataclass(frozen=True)
class Config:
    """Everything the balancer needs to run. Build it with keyword arguments or ``from_flags``."""

    backends: tuple[BackendSpec, ...] = field(default=())
    host: str = "127.0.0.1"
    port: int = 8080
    algorithm: str = "round-robin"
    hash_key: str = "ip"
    hash_balance_factor: float | None = None  # None: plain consistent hashing
    sticky_cookie: str | None = None  # None: no sticky sessions
    health_path: str = "/health"
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    rise: int = 2  # as HAProxy: one lucky probe does not bring a flapping backend back
    fall: int = 3  # as HAProxy: one lost probe does not take a good backend out
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    client_header_timeout_s: float = 10.0  # total, not per read: a slow drip cannot hold a thread
    keepalive_timeout_s: float = 60.0  # below common client-side idle limits, above most think times
    grace_period_s: float = 10.0
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
    backups: tuple[BackendSpec, ...] = ()
    workers: int = 1
    # Requests doing CPU work at once per process (see gate.py). One thread
    # holds the GIL at a time anyway, so one is enough to keep it busy, and
    # measured best: more only make requests wait for each other in a random
    # order instead of in line (bench/README.md).
    active_requests: int = 1
    # Set by the worker supervisor, not by users: bind with SO_REUSEPORT, and
    # share one sticky-cookie secret so every worker understands every cookie.
    reuse_port: bool = False
    sticky_secret: bytes | None = None
    # Idle connections kept per backend. Connections beyond it are still opened
    # under load, just not kept afterwards.
    pool_size: int = 128
    max_url_bytes: int = 8 * 1024  # as nginx's large_client_header_buffers: longer targets are 414
    max_header_bytes: int = 64 * 1024  # the whole head, request line included; beyond it 431
    max_header_count: int = 100
    max_body_bytes: int = 0  # 0: unlimited
    max_clients: int = 1024  # client connections at once; idle ones are closed first to admit more
    client_body_timeout_s: float = 60.0  # per read of a request body, as nginx's client_body_timeout
    send_timeout_s: float = 60.0  # per write to a client that stopped reading, as nginx's send_timeout

    def __post_init__(self) -> None:
        for option in OPTIONS:
            try:
                value = option.convert(getattr(self, option.field))
            except ConfigError as exc:
                message = str(exc)
                raise ConfigError(message if message.startswith(option.flag) else f"{option.flag}: {message}") from None
            object.__setattr__(self, option.field, value)
        if self.health_timeout_s > self.health_interval_s:
            raise ConfigError("--health-timeout must not be longer than --health-interval")
        if self.max_url_bytes < 64 or self.max_header_bytes < self.max_url_bytes:
            raise ConfigError("--max-url must be at least 64 bytes and no larger than --max-header-bytes")
        primaries = {(b.host, b.port) for b in self.backends}
        for backup in self.backups:
            if (backup.host, backup.port) in primaries:
                raise ConfigError(f"backend {backup.address} is both a primary and a backup")

    @classmethod
    def from_flags(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping of field name to (possibly textual) value, ignoring ``None``."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})
