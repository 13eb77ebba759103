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


def _positive_float(name: str) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
        if not number > 0 or number == float("inf"):
            raise ConfigError(f"{name} must be greater than zero, not {value!r}")
        return number

    return convert


def _int_range(name: str, low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name} must be from {low} to {high}, not {number}")
        return number

    return convert


def _algorithm(value: Any) -> str:
    from .algorithms import ALGORITHMS  # late: algorithms import backend, which must not need config

    if value not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {value!r}; choose one of: {', '.join(ALGORITHMS)}")
    return value


def _health_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"[\x00-\x20\x7f]", value):
        raise ConfigError(f"health path must start with / and contain no spaces, not {value!r}")
    return value


def _listen_host(value: Any) -> str:
    if not isinstance(value, str) or not value or not _HOSTNAME_RE.fullmatch(value) and value != "::":
        raise ConfigError(f"--host must be a host name or IP address, not {value!r}")
    return value


def _hash_key(value: Any) -> str:
    from .affinity import validate_key_spec

    try:
        return validate_key_spec(str(value))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _balance_factor(value: Any) -> float | None:
    if value is None:
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--hash-balance-factor must be a number, not {value!r}") from None
    if not 1.0 <= factor <= 100.0:
        raise ConfigError(f"--hash-balance-factor must be from 1.0 to 100 (e.g. 1.25), not {value!r}")
    return factor


def _cookie_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ConfigError(f"--sticky-cookie must be a cookie name (letters, digits, -_.), not {value!r}")
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its command-line flag, its ``Config`` field and how to convert text to a value."""

    flag: str
    field: str
    convert: Callable[[Any], Any]
    help: str
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("--backends", "backends", parse_backends, "comma-separated backends: host:port[=WEIGHT] or http://host:port", "LIST"),
    Option("--host", "host", _listen_host, "address to listen on", "ADDR"),
    Option("--port", "port", _int_range("--port", 0, 65535), "port to listen on (0 picks a free one)"),
    Option("--algorithm", "algorithm", _algorithm, "how to choose a backend for each request", "NAME"),
    Option("--hash-key", "hash_key", _hash_key, "what the hash algorithm hashes: ip, path, header:NAME or cookie:NAME", "KEY"),
    Option("--hash-balance-factor", "hash_balance_factor", _balance_factor,
           "with hash: no backend takes more than F x the average in-flight load (bounded-load hashing)", "F"),
    Option("--sticky-cookie", "sticky_cookie", _cookie_name,
           "pin each client to a backend with this cookie (any algorithm)", "NAME"),
    Option("--health-path", "health_path", _health_path, "path probed on each backend with GET", "PATH"),
    Option("--health-interval", "health_interval_s", _positive_float("--health-interval"), "seconds between health probes", "S"),
    Option("--health-timeout", "health_timeout_s", _positive_float("--health-timeout"), "seconds before a probe counts as failed", "S"),
    Option("--rise", "rise", _int_range("--rise", 1, 100), "consecutive passed probes that bring a backend back"),
    Option("--fall", "fall", _int_range("--fall", 1, 100), "consecutive failed probes that take a backend out"),
    Option("--connect-timeout", "connect_timeout_s", _positive_float("--connect-timeout"), "seconds to open a backend connection", "S"),
    Option("--read-timeout", "read_timeout_s", _positive_float("--read-timeout"), "seconds a backend may stay silent while answering (504 after)", "S"),
    Option("--client-header-timeout", "client_header_timeout_s", _positive_float("--client-header-timeout"), "seconds a client has to send a whole request head", "S"),
    Option("--keepalive-timeout", "keepalive_timeout_s", _positive_float("--keepalive-timeout"), "seconds an idle client connection is kept open", "S"),
    Option("--grace-period", "grace_period_s", _positive_float("--grace-period"), "seconds in-flight requests get to finish on shutdown", "S"),
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
    # Idle connections kept per backend. Connections beyond it are still opened
    # under load, just not kept afterwards.
    pool_size: int = 128
    # Upper bound on a message head (request line or status line plus fields).
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    # Per-read/-write timeout for request and response bodies on the client side.
    client_io_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for option in OPTIONS:
            object.__setattr__(self, option.field, option.convert(getattr(self, option.field)))
        if self.health_timeout_s > self.health_interval_s:
            raise ConfigError("--health-timeout must not be longer than --health-interval")

    @classmethod
    def from_flags(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping of field name to (possibly textual) value, ignoring ``None``."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})
