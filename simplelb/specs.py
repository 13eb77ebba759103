"""What a backend is in the configuration: ``BackendSpec``, and the text forms that produce one.

A spec is a value: name, address, weight, whether it is a backup, and its
administrative state (``ready``, ``drain`` or ``maint``). The cluster keys
its live backends by ``name`` (by default the address), so a reload or an
admin call that keeps a name keeps the backend's state.

Addresses are written ``host:port``, ``http://host:port`` or ``[v6]:port``;
``bracket`` is the one place that puts an IPv6 literal in brackets. A spec
keeps its host lower-cased: DNS names are case-insensitive (RFC 4343) and an
IPv6 literal is hex, so ``LOCALHOST:8081`` and ``localhost:8081`` are one
address, with one default name, one sticky-cookie id and one place in the
hash ring.

A ``SourceSpec`` is not a backend but a discovery source written where
backends are: ``dns://NAME:PORT`` (every A and AAAA record of NAME) or
``dns+srv://_service._proto.NAME`` (the targets of its SRV records). It
stands for the backends it resolves to (see ``discovery``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

from .errors import ConfigError

MAX_WEIGHT = 1000
ADMIN_STATES = ("ready", "drain", "maint")
SOURCE_SCHEMES = ("dns://", "dns+srv://")

# A DNS name or an IPv4 literal, or an IPv6 literal in brackets.
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
# Names appear in admin URLs (/backends/NAME) and metric labels: no spaces, slashes or quotes.
NAME_RE = re.compile(r"[A-Za-z0-9._~:\[\]@+-]{1,128}")
# A DNS name as dns:// and dns+srv:// take it: SRV owner names have labels like _http and _tcp.
DNS_NAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_\-.]*[A-Za-z0-9_.])?")


def digits(text: str, most: int = 18) -> bool:
    """1 to ``most`` ASCII digits: text that ``int`` reads as a whole number, and reads at once.

    ``str.isdigit`` also takes "²" and "٣", which ``int`` refuses or reads; and ``int`` refuses
    text of more than 4300 digits with a ``ValueError`` (``sys.set_int_max_str_digits``). A port
    needs 5 digits, a weight 4; 18 (under 2**63) is more than any count or length here needs.
    """
    return len(text) <= most and text.isascii() and text.isdigit()


def bracket(host: str) -> str:
    """``::1`` -> ``[::1]``; anything else unchanged (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_of(authority: str) -> str:
    """The host of ``host[:port]`` (a Host header value): ``[::1]:9000`` -> ``::1``, ``a:80`` -> ``a``."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend listens, its share of traffic, and what the operator wants of it."""

    host: str
    port: int
    weight: int = 1
    backup: bool = False
    name: str = ""  # "" means the location
    state: str = "ready"  # ready | drain | maint
    tls: bool = False  # reached over HTTPS (given as https://host:port)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", self.host.lower())  # (first: the default name is made of it)
        if not self.name:
            object.__setattr__(self, "name", self.location)

    @cached_property  # (read for every request forwarded)
    def address(self) -> str:
        """``host:port``: where to connect (and the Host a request without one gets)."""
        return f"{bracket(self.host)}:{self.port}"

    @property
    def location(self) -> str:
        """The address as configured: ``host:port``, or ``https://host:port`` over TLS."""
        return f"https://{self.address}" if self.tls else self.address

    def to_dict(self) -> dict:
        """Plain values ``backend_from_table`` reads back as this spec (a ``[[backend]]`` table).

        A name that is the default (the location) is left out: read back, it is made again. Given,
        it would be checked as a chosen name is, and ``https://host:port`` or a host name of more than
        128 characters is none (a worker would refuse every configuration holding such a backend).
        """
        values = {"address": self.location, "weight": self.weight, "backup": self.backup, "state": self.state}
        return values if self.name == self.location else {"name": self.name, **values}

    def but(self, **changes) -> BackendSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class SourceSpec:
    """A DNS discovery source given among the backends; each backend it finds gets ``weight`` and ``backup``.

    SRV records carry their own weights, which take the place of ``weight``.
    """

    url: str  # dns://NAME:PORT or dns+srv://_service._proto.NAME, lower-cased (every part of it is case-insensitive)
    weight: int = 1
    backup: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.strip().lower())

    @property
    def kind(self) -> str:
        return self.url.split("://", 1)[0]

    def to_dict(self) -> dict:
        return {"address": self.url, "weight": self.weight, "backup": self.backup}


def is_source(text: str) -> bool:
    return text.strip().lower().startswith(SOURCE_SCHEMES)


def parse_dns_url(url: str) -> tuple[str, str, int | None]:
    """``dns://NAME:PORT`` -> ("dns", NAME, PORT); ``dns+srv://NAME`` -> ("dns+srv", NAME, None)."""
    scheme, _, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if scheme == "dns":
        name, sep, port_text = rest.rpartition(":")
        if not sep or not digits(port_text, 5) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"backend {url!r}: expected dns://NAME:PORT")
    elif scheme == "dns+srv":
        name, port_text = rest, None
        if ":" in name:
            raise ConfigError(f"backend {url!r}: dns+srv:// takes no port (the SRV records give them)")
    else:
        raise ConfigError(f"backend {url!r}: discovery sources are dns://NAME:PORT or dns+srv://_service._proto.NAME")
    if not DNS_NAME_RE.fullmatch(name) or len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        raise ConfigError(f"backend {url!r}: {name!r} is not a DNS name")
    return scheme, name, int(port_text) if port_text else None


def parse_source(text: str, weight: int = 1, backup: bool = False) -> SourceSpec:
    parse_dns_url(text)
    return SourceSpec(text.strip(), weight, backup)


def parse_address(text: str, what: str = "backend") -> tuple[str, int, bool]:
    """``host:port``, ``http://host:port[/]`` or ``https://...`` -> (host, port, tls), IPv6 unbracketed."""
    original = text
    spec = text.strip()
    scheme, sep, rest = spec.partition("://")
    tls = False
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise ConfigError(f"{what} {original!r}: only http:// and https:// backends are supported")
        spec, tls = rest.rstrip("/"), scheme.lower() == "https"
    host, sep, port_text = spec.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {original!r}: expected host:port")
    if not HOSTNAME_RE.fullmatch(host):
        raise ConfigError(f"{what} {original!r}: {host!r} is not a valid host name")
    if not digits(port_text, 5) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} {original!r}: {port_text!r} is not a port number (1-65535)")
    return host.strip("[]"), int(port_text), tls


def check_weight(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
        raise ConfigError(f"{where}: weight must be a whole number from 1 to {MAX_WEIGHT}, not {value!r}")
    return value


def parse_backend(text: str, *, backup: bool = False) -> BackendSpec | SourceSpec:
    """Parse ``host:port``, ``http://host:port``, a ``dns://`` source, or any of them with ``=WEIGHT``."""
    spec = text.strip()
    weight = 1
    if "=" in spec:
        spec, _, weight_text = spec.rpartition("=")
        weight = check_weight(int(weight_text) if digits(weight_text, len(str(MAX_WEIGHT))) else weight_text,
                              f"backend {text.strip()!r}")
    if is_source(spec):
        return parse_source(spec, weight, backup)
    host, port, tls = parse_address(spec)
    return BackendSpec(host, port, weight, backup, tls=tls)


def backend_from_table(table: dict, where: str) -> BackendSpec:
    """A ``[[backend]]`` table of a config file, or the JSON body of ``POST /backends``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table with an address")
    unknown = sorted(set(table) - {"address", "weight", "backup", "name", "state"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: address, weight, backup, name, state)")
    address = table.get("address")
    if not isinstance(address, str):
        raise ConfigError(f"{where}: 'address' must be a string like \"localhost:8081\", not {address!r}")
    try:
        host, port, tls = parse_address(address, "address")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    weight = check_weight(table.get("weight", 1), where)
    backup = table.get("backup", False)
    if not isinstance(backup, bool):
        raise ConfigError(f"{where}: 'backup' must be true or false, not {backup!r}")
    name = table.get("name", "")
    if not isinstance(name, str) or "name" in table and not NAME_RE.fullmatch(name):  # ("" given is no name)
        raise ConfigError(f"{where}: 'name' must be 1-128 letters, digits or ._~:[]@+-, not {name!r}")
    state = table.get("state", "ready")
    if state not in ADMIN_STATES:
        raise ConfigError(f"{where}: 'state' must be one of {', '.join(ADMIN_STATES)}, not {state!r}")
    return BackendSpec(host, port, weight, backup, name, state, tls)


def entry_from_table(table: dict, where: str) -> BackendSpec | SourceSpec:
    """A ``[[backend]]`` table of a config file: a backend, or a ``dns://`` source (no name, no state)."""
    address = table.get("address") if isinstance(table, dict) else None
    if not isinstance(address, str) or not is_source(address):
        return backend_from_table(table, where)
    unknown = sorted(set(table) - {"address", "weight", "backup"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]!r} does not apply to a DNS source (its backends are named by address)")
    backup = table.get("backup", False)
    if not isinstance(backup, bool):
        raise ConfigError(f"{where}: 'backup' must be true or false, not {backup!r}")
    weight = check_weight(table.get("weight", 1), where)  # (its error names where already)
    try:
        return parse_source(address, weight, backup)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


Entry = BackendSpec | SourceSpec


def parse_backends(value: object, *, backup: bool = False) -> tuple[Entry, ...]:
    """A comma-separated list, or a list of texts or specs, -> specs and sources (empty allowed)."""
    if isinstance(value, (BackendSpec, SourceSpec)):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(item if isinstance(item, (BackendSpec, SourceSpec)) else parse_backend(str(item), backup=backup)
                     for item in value)
    if value is None:
        return ()
    if not isinstance(value, str):
        raise ConfigError(f"must be a comma-separated list of host:port, not {value!r}")
    return tuple(parse_backend(item, backup=backup) for item in value.split(",") if item.strip())


def check_unique(specs: tuple[BackendSpec, ...]) -> None:
    """No two backends with one name or one address."""
    names: set[str] = set()
    addresses: dict[str, BackendSpec] = {}
    for spec in specs:
        other = addresses.get(spec.address)
        if other is not None:
            role = "both a primary and a backup" if other.backup != spec.backup else "listed twice"
            raise ConfigError(f"backend {spec.address} is {role}", field="backends")
        addresses[spec.address] = spec
        if spec.name in names:
            raise ConfigError(f"backend name {spec.name!r} is used twice", field="backends")
        names.add(spec.name)


def describe(specs: tuple[BackendSpec, ...], sources: tuple[str, ...] = ()) -> str:
    """``a:1, b:2 (weight 3), c:3 (backup)`` for banners and ``--check``; then any discovery sources."""
    parts = []
    for spec in specs:
        notes = [f"weight {spec.weight}"] if spec.weight != 1 else []
        notes += ["backup"] if spec.backup else []
        notes += [spec.state] if spec.state != "ready" else []
        label = spec.location if spec.name == spec.location else f"{spec.name}={spec.location}"
        parts.append(label + (f" ({', '.join(notes)})" if notes else ""))
    parts += [f"{source} (discovered)" for source in sources]
    return ", ".join(parts)
