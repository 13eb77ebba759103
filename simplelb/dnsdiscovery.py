"""DNS as a discovery source: ``dns://NAME:PORT`` and ``dns+srv://_service._proto.NAME``.

What a lookup gives (``lookup``, a function of a resolver, so tests can aim
it at their own server):

* ``dns://NAME:PORT`` -- one backend per A and AAAA record of NAME, on PORT,
  each with the source's weight (``dns://web:80=3``) and backup flag;
* ``dns+srv://NAME`` -- per SRV record, its target's A and AAAA addresses on
  the record's port, with the record's weight (clamped to 1..1000: SRV allows
  0). Records of the lowest priority are primaries, higher ones backups
  (RFC 2782: a client tries the lowest priority first).

Backends are named by their address (``10.0.0.7:8080``, ``[fd00::7]:8080``),
so one that stays across lookups keeps its state in the cluster.

When to look again (``DnsSource.run``): when the answer's TTL runs out (the
smallest TTL among the records used), bounded to 1..300 s, or every
``--dns-refresh`` seconds. A failed lookup (timeout, SERVFAIL, refused, an
answer without records) keeps the last set, is logged, and is retried after
1, 2, 4 ... 30 s (never later than the refresh interval). NXDOMAIN -- the
name does not exist -- empties the set only when it is seen twice in a row,
so one bad answer from a server being reconfigured does not take every
backend out.
"""

from __future__ import annotations

import logging

import dns.exception
import dns.resolver

from .config import ClusterConfig
from .source import Source
from .specs import MAX_WEIGHT, BackendSpec, SourceSpec, parse_dns_url

log = logging.getLogger(__name__)

MIN_TTL_S, MAX_TTL_S = 1.0, 300.0
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0
LIFETIME_S = 2.0  # a whole lookup (all tries of one name and type) gives up after this


class NoRecords(Exception):
    """The name exists but has no address records (NOERROR, empty answer)."""


def make_resolver(server: tuple[str, int] | None) -> dns.resolver.Resolver:
    """A resolver asking ``server`` (ip, port), or the system's from /etc/resolv.conf; no cache."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = LIFETIME_S
    resolver.timeout = LIFETIME_S / 2
    resolver.cache = None  # the TTL decides when to ask again, here
    return resolver


def addresses(resolver: dns.resolver.Resolver, name: str) -> tuple[list[str], float]:
    """Every A and AAAA address of ``name`` (sorted), and the smallest TTL; ``NoRecords`` if none."""
    found: list[str] = []
    ttl = MAX_TTL_S
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NoAnswer:
            continue
        found += sorted(record.address for record in answer)
        ttl = min(ttl, answer.rrset.ttl)
    if not found:
        raise NoRecords(f"{name} has no A or AAAA records")
    return found, ttl


def lookup(resolver: dns.resolver.Resolver, source: SourceSpec) -> tuple[list[BackendSpec], float]:
    """The backends ``source`` stands for now, and the TTL of the answer. Raises what dnspython raises."""
    kind, name, port = parse_dns_url(source.url)
    if kind == "dns":
        ips, ttl = addresses(resolver, name)
        return [BackendSpec(ip, port, source.weight, source.backup) for ip in ips], ttl
    answer = resolver.resolve(name, "SRV", search=False)
    ttl = answer.rrset.ttl
    lowest = min(record.priority for record in answer)
    specs: dict[str, BackendSpec] = {}
    for record in sorted(answer, key=lambda r: (r.priority, str(r.target), r.port)):
        if record.port == 0 or str(record.target) == ".":
            # RFC 2782: target "." says the service is not offered there; port 0 is no port to connect to.
            log.warning("discovery %s: SRV record %s port %d skipped: no service there", source.url, record.target,
                        record.port)
            continue
        try:
            ips, target_ttl = addresses(resolver, str(record.target))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, NoRecords) as exc:
            # One target without addresses is that target's problem, not the service's: the others
            # stand (and the next lookup tries it again).
            log.warning("discovery %s: SRV target %s skipped: %s", source.url, record.target, _reason(exc))
            continue
        ttl = min(ttl, target_ttl)
        weight = max(1, min(MAX_WEIGHT, record.weight))
        backup = source.backup or record.priority != lowest
        for ip in ips:
            spec = BackendSpec(ip, record.port, weight, backup)
            specs.setdefault(spec.address, spec)
    if not specs:
        raise NoRecords(f"no target of {name} has an address")  # a failed lookup: the last set stays
    return list(specs.values()), ttl


def _reason(exc: Exception) -> str:
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no server answered (SERVFAIL or refused)"
    if isinstance(exc, dns.exception.Timeout):
        return f"no answer within {LIFETIME_S:g}s"
    return str(exc) or type(exc).__name__


class DnsSource(Source):
    """One ``dns://`` or ``dns+srv://`` entry of the backends, looked up again and again on its thread."""

    def __init__(self, source: SourceSpec, cluster: ClusterConfig, publish):
        super().__init__(source.url, self.identity_of(source, cluster), publish)
        self.source = source
        self.refresh_s = cluster.dns_refresh_s
        self._server = cluster.dns_server
        self.resolver: dns.resolver.Resolver | None = None

    @staticmethod
    def identity_of(source: SourceSpec, cluster: ClusterConfig) -> tuple:
        return ("dns", source, cluster.dns_server, cluster.dns_refresh_s)

    def run(self) -> None:
        failures = nxdomains = 0
        interval_s = self.refresh_s or MAX_RETRY_S  # until a first answer gives a TTL
        while not self.stopping.is_set():
            try:
                self.resolver = self.resolver or make_resolver(self._server)
                specs, ttl = lookup(self.resolver, self.source)
            except dns.resolver.NXDOMAIN:
                nxdomains += 1
                failures += 1
                if nxdomains >= 2:
                    (log.warning if nxdomains == 2 else log.debug)("discovery %s: NXDOMAIN twice in a row: the name is gone, and its backends",
                                self.url)
                    self.found(())
                else:
                    self.failed("NXDOMAIN (once: the last set is kept until it is seen twice in a row)")
            except (dns.exception.DNSException, NoRecords, OSError) as exc:
                nxdomains = 0
                failures += 1
                self.failed(_reason(exc))
            else:
                failures = nxdomains = 0
                interval_s = self.refresh_s or max(MIN_TTL_S, min(MAX_TTL_S, ttl))
                self.found(tuple(specs))
            delay_s = interval_s
            if failures:
                delay_s = min(interval_s, FIRST_RETRY_S * 2 ** min(failures - 1, 5), MAX_RETRY_S)
            self.stopping.wait(delay_s)
