"""What to send: targets (where, method, headers, body), the flags that describe them, and mixes.

A ``Target`` is one kind of request, fully resolved: scheme, host, port,
method, path, headers and body. A ``Mix`` is the weighted set of targets a run
draws from -- one target for a plain run, the lines of a ``--targets`` file
otherwise. It picks by *smooth weighted round robin* (nginx's), not at random:
with weights 3 and 1, exactly 3 of every 4 requests go to the first, spread
out, so counts are exact and even a short run has the asked proportions.

Pick number ``i`` is always ``mix.pick(i)``, whichever thread sends it. With
``--processes``, each process walks its own block of the picks in order
(``runner.Shard.first``), so the processes together send exactly the mix one
would, and each one's own requests are mixed too.

Every mistake is a ``TargetError`` whose message is one line fit to show a
user.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from simplelb.files import read_regular
from simplelb.specs import bracket, digits

# RFC 9110 section 5.6.2: methods and field names are tokens.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a request target may hold as it is: printable ASCII but the space. Anything else not a control
# (é, 中) goes as its UTF-8 bytes percent-encoded, as a browser sends it.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
_CONTROLS = re.compile(r"[\x00-\x20\x7f]")
DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "simplelb-traffic"
MAX_WEIGHT = 1000


class TargetError(ValueError):
    """A target, header, body or targets file is not usable; the message is one line for a user."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # request-target sent on the wire
    scheme: str = "http"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @functools.cached_property
    def origin(self) -> tuple[str, str, int]:
        """Where a connection goes: requests to one origin share a worker's keep-alive connection."""
        return (self.scheme, self.host, self.port)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{bracket(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    @functools.cached_property
    def header_dict(self) -> dict[str, str]:
        """The headers as ``http.client`` takes them, built once per target rather than once per request."""
        names = {name.lower() for name, _ in self.headers}
        defaults = {} if "user-agent" in names else {"User-Agent": USER_AGENT}
        return {**defaults, **dict(self.headers)}


def parse_target(url: str, path: str | None = None, *, method: str = "GET",
                 headers: Sequence[tuple[str, str]] = (), body: bytes | None = None) -> Target:
    """``http(s)://host[:port][/path]``, with ``path`` (if given) replacing the URL's own."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an unclosed [ (IPv6)
        raise TargetError(f"a URL must look like http://host:port or https://host:port, not {url!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise TargetError(f"a URL must look like http://host:port or https://host:port, not {url!r}")
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        raise TargetError(f"invalid port in {url!r}") from None
    if port == 0:  # (it used to become the scheme's default, silently)
        raise TargetError(f"invalid port in {url!r}")
    target = path if path is not None else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, port, request_path(target), scheme, parse_method(method), tuple(headers), body)


def request_path(text: str) -> str:
    """A path (and query) to send: starts with /, no spaces or controls; non-ASCII percent-encoded."""
    if not text.startswith("/") or _CONTROLS.search(text):
        raise TargetError(f"a path must start with / and contain no spaces or control characters, not {text!r}")
    return text if text.isascii() else quote(text, safe=_TARGET_SAFE)


def parse_method(text: str) -> str:
    if not TOKEN.fullmatch(text):
        raise TargetError(f"not an HTTP method: {text!r}")
    return text.upper()


def parse_header(text: str) -> tuple[str, str]:
    """``-H 'Name: value'`` (curl's form)."""
    name, colon, value = text.partition(":")
    if not colon or not TOKEN.fullmatch(name.strip()) or any(c in value for c in "\r\n\0"):
        raise TargetError(f"a header must look like 'Name: value', not {text!r}")
    try:
        value.encode("latin-1")  # what HTTP/1.1 sends a field value as
    except UnicodeEncodeError:
        raise TargetError(f"a header's value must be Latin-1 text, not {value.strip()!r}") from None
    return name.strip(), value.strip()


def read_body(text: str) -> bytes:
    """``-d DATA`` or ``-d @FILE`` (curl's form)."""
    if not text.startswith("@"):
        return text.encode("utf-8")
    try:
        return read_regular(text[1:])
    except OSError as exc:
        raise TargetError(f"cannot read the body file {text[1:]}: {exc.strerror or exc}") from None


def smooth_order(weights: Sequence[int]) -> list[int]:
    """One cycle of smooth weighted round robin: indexes, each ``weights[i]`` times, interleaved."""
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


class Mix:
    """Targets and their weights; ``pick(i)`` is the ``i``-th target of the cycle, repeated for ever."""

    def __init__(self, targets: Sequence[Target], weights: Sequence[int] | None = None):
        if not targets:
            raise TargetError("no targets to send to")
        self.targets = tuple(targets)
        self.weights = tuple(weights or [1] * len(targets))
        self._order = tuple(smooth_order(self.weights))

    def pick(self, ticket: int) -> Target:
        return self.targets[self._order[ticket % len(self._order)]]

    @property
    def first(self) -> Target:
        return self.targets[0]


def parse_targets_file(path: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None) -> Mix:
    """``--targets FILE``: lines ``METHOD URL [weight]``; blank lines and ``#`` comments are skipped."""
    text = read_text(path, "targets file")
    targets, weights = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) not in (2, 3):
            raise TargetError(f"{where}: expected 'METHOD URL [weight]', got {line.strip()!r}")
        weight = fields[2] if len(fields) == 3 else "1"
        if not digits(weight) or not 1 <= int(weight) <= MAX_WEIGHT:
            raise TargetError(f"{where}: the weight must be a whole number from 1 to {MAX_WEIGHT}, not {weight!r}")
        try:
            targets.append(parse_target(fields[1], method=fields[0], headers=headers, body=body))
        except TargetError as exc:
            raise TargetError(f"{where}: {exc}") from None
        weights.append(int(weight))
    if not targets:
        raise TargetError(f"{path}: no targets (lines of 'METHOD URL [weight]')")
    return Mix(targets, weights)


def read_text(path: str, what: str, error: type[ValueError] = TargetError) -> str:
    """A UTF-8 text file (targets, scenario, access log), or ``error`` saying in one line why not."""
    try:
        return read_regular(path).decode("utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None
