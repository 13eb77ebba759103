"""Converters for settings: text (or a typed value from TOML/JSON) -> a checked value.

Each converter is idempotent (a converted value converts to itself) and
raises ``ConfigError`` saying what is wrong ("must be ..."); the caller puts
the flag or the file and key in front. Enumerated values are
case-insensitive (``Round-Robin``, ``WARNING``).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable
from typing import Any

from .affinity import validate_key_spec
from .algorithms import ALGORITHMS
from .errors import ConfigError
from .files import open_regular, read_regular
from .http1 import is_token
from .specs import HOSTNAME_RE, bracket, digits

LOG_LEVELS = ("debug", "info", "warning", "error")

_SIZE_RE = re.compile(r"([0-9]+)\s*([KMG]i?B?|B)?", re.IGNORECASE)
MAX_SIZE = 2**63 - 1  # the largest file or offset there is: no size setting means more


def number(low: float, high: float, *, integer: bool = False, above_low: bool = False, what: str = "") -> Callable:
    """A converter to a number within ``[low, high]`` (``(low, high]`` with ``above_low``)."""
    kind = "a whole number" if integer else what or "a number"

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or integer and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"must be {kind}, not {value!r}")
        try:
            result = int(value) if integer else float(value)
        except OverflowError:  # float() of a whole number past 1e308 (from TOML): past any bound
            result = math.inf if value > 0 else -math.inf
        except (TypeError, ValueError):
            raise ConfigError(f"must be {kind}, not {value!r}") from None
        if (result <= low if above_low else result < low) or not result <= high:  # NaN fails too
            bound = f"greater than {low:g}" if above_low else f"from {low:g}"
            raise ConfigError(f"must be {bound} up to {high:g}, not {value!r}")
        return result

    return convert


def seconds(*, zero_ok: bool = False) -> Callable[[Any], float]:
    return number(0, 86_400, above_low=not zero_ok, what="a number of seconds")


def int_range(low: int, high: int) -> Callable[[Any], int]:
    return number(low, high, integer=True)


def workers(value: Any) -> int:
    """``N`` processes (1-64), or ``auto``: one per CPU this process may run on (``taskset`` counts)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no CPU affinity on this system
            cpus = os.cpu_count() or 1
        return max(1, min(64, cpus))
    try:
        return int_range(1, 64)(value)
    except ConfigError:
        raise ConfigError(f"must be a whole number from 1 up to 64, or auto, not {value!r}") from None


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``None`` (unset) passes; anything else is converted."""
    return lambda value: None if value is None else convert(value)


def size(minimum: int = 0) -> Callable[[Any], int]:
    """``65536``, ``64K``, ``10M``, ``1G`` (binary multiples) -> bytes, at least ``minimum``."""

    def convert(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        else:
            match = _SIZE_RE.fullmatch(str(value).strip())
            if not match or not digits(match.group(1)) or isinstance(value, (bool, float)):
                raise ConfigError(f"must be a size like 65536, 64K or 10M, not {value!r}")
            unit = (match.group(2) or "B")[0].upper()
            result = int(match.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]
        if result < minimum:
            raise ConfigError(f"must be at least {minimum} bytes, not {value!r}")
        if result > MAX_SIZE:
            raise ConfigError(f"must be at most {MAX_SIZE} bytes (8 EiB), not {value!r}")
        return result

    return convert


def switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"must be true or false, not {value!r}")


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ConfigError(f"must be one of {', '.join(choices)}, not {value!r}")

    return convert


def algorithm(value: Any) -> str:
    if isinstance(value, str) and value.lower() in ALGORITHMS:
        return value.lower()
    raise ConfigError(f"unknown algorithm {value!r}; choose one of: {', '.join(ALGORITHMS)}")


def health_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"[\x00-\x20\x7f-\xff]", value):
        raise ConfigError(f"must start with / and contain no spaces, not {value!r}")
    return value


def listen_host(value: Any) -> str:
    # All digits and dots is meant as an IPv4 address (256.1.1.1 is no host name), so it must be one.
    if (not isinstance(value, str) or not value or not (HOSTNAME_RE.fullmatch(value) or _is_ip(value))
            or re.fullmatch(r"[0-9.]+", value) and not _is_ip(value)):
        raise ConfigError(f"must be a host name or IP address, not {value!r}")
    return value.strip("[]")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_address(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000``; port 0 picks a free one) -> (host, port)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{bracket(str(value[0]))}:{value[1]}"
    host, sep, port = str(value).rpartition(":")
    if not sep or not digits(port, 5) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"must be HOST:PORT, e.g. 127.0.0.1:9000, not {value!r}")
    return listen_host(host), int(port)


def _path(value: Any) -> str:
    path = str(value)
    if not path or "\x00" in path:  # open() would raise ValueError, not OSError
        raise ConfigError(f"{path!r} is not a file name")
    return path


def token_file(value: Any, what: str = "token") -> str:
    """A readable file with a token of at least 16 characters in it."""
    path = _path(value)
    try:
        token = read_regular(path).decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    if len(token) < 16 or any(ch.isspace() for ch in token):
        raise ConfigError(f"{path} must hold one {what} of at least 16 characters, without spaces")
    return os.path.abspath(path)


def secret_file(value: Any) -> str:
    return token_file(value, "secret")


def etcd_url(value: Any) -> str:
    """``etcd://HOST[:PORT]/PREFIX``, checked; kept as written."""
    from .etcd import EtcdError, parse_etcd_url

    try:
        parse_etcd_url(str(value))
    except EtcdError as exc:
        raise ConfigError(str(exc)) from None
    return str(value)


def dns_server(value: Any) -> tuple[str, int]:
    """``IP`` or ``IP:PORT`` (``[::1]:5353``) -> (ip, port); a resolver is addressed by IP, port 53 by default."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{bracket(str(value[0]))}:{value[1]}"
    text = str(value).strip()
    host, port = text, "53"
    if text.startswith("[") and "]:" in text or text.count(":") == 1:
        host, _, port = text.rpartition(":")
    if not _is_ip(host) or not digits(port, 5) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"must be a resolver's IP[:PORT], e.g. 127.0.0.1:5353, not {value!r}")
    return host.strip("[]"), int(port)


def readable_file(value: Any) -> str:
    path = _path(value)
    try:
        with open_regular(path):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return os.path.abspath(path)


def ca_file(value: Any) -> str:
    """A readable PEM file of CA certificates (loaded once here, so a wrong file is an error now, not later)."""
    path = readable_file(value)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{path} holds no usable CA certificate (PEM): {getattr(exc, 'reason', None) or exc}") from None
    return path


def certificate_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """(certificate, key) file pairs, each loaded once to check it (a mismatched pair is an error here)."""
    from .tls import load_certificates  # not at import time: tls needs the cryptography package

    if not isinstance(value, (tuple, list)) or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in value):
        raise ConfigError(f"must be (certificate, key) pairs, not {value!r}")
    pairs = tuple((readable_file(cert), readable_file(key)) for cert, key in value)
    if pairs:
        load_certificates(pairs)
    return pairs


def log_path(value: Any) -> str:
    """``-`` (standard output) or a file whose directory exists and is writable."""
    path = _path(value)
    if path == "-":
        return path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ConfigError(f"cannot write to {path}: {directory} is not a writable directory")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory")
    return os.path.abspath(path)


def header_name(value: Any) -> str:
    if not isinstance(value, str) or not is_token(value):
        raise ConfigError(f"must be a header name (letters, digits, -), not {value!r}")
    return value


def cookie_name(value: Any) -> str:
    if not isinstance(value, str) or not is_token(value):
        raise ConfigError(f"must be a cookie name (letters, digits, -_.), not {value!r}")
    return value


def hash_key(value: Any) -> str:
    try:
        return validate_key_spec(str(value))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
