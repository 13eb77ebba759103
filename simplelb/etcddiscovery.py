"""etcd as a discovery source: ``--discovery etcd://HOST:PORT/PREFIX``.

The layout (what ``mockserv --register`` writes, and what a deploy script or
an operator writes by hand)::

    PREFIX/backends/NAME   {"address": "host:port", "weight": 2, "state": "drain", "backup": false}
    PREFIX/secret          the sticky-cookie secret, created once by the first balancer

``address`` is required; ``weight`` (default 1), ``backup`` (false) and
``state`` (``ready``, ``drain`` or ``maint``: one write drains a backend on
every balancer) are optional, and other fields are ignored, so a registrar
may keep its own metadata there. The backend is named NAME, so it keeps its
state in the cluster across updates. A key whose value is not such an object
is logged and skipped: at start it is left out; if it replaces a good value,
the good value stays. Never does a bad value stop the watch or empty the set.

The source lists ``PREFIX/backends/`` and then watches it from the next
revision, sending the whole set after every change (an added, changed or
deleted key -- a lease that expired is a delete). When etcd cannot be
reached, or the watch breaks, the last set stands and the status says since
when it is stale; the source tries again after 0.2, 0.4 ... 3 s, and catches
up with a fresh list (which also covers a history compacted meanwhile).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time

from .errors import ConfigError
from .etcd import EtcdClient, EtcdError, Watch, parse_etcd_url
from .source import Source
from .specs import NAME_RE, BackendSpec, backend_from_table

log = logging.getLogger(__name__)

FIRST_RETRY_S, MAX_RETRY_S = 0.2, 3.0
CALL_TIMEOUT_S = 2.0  # one list or put; a watch waits for as long as the prefix stays quiet
SECRET_ATTEMPTS = 3
MIN_SECRET = 16  # characters, as --sticky-secret-file asks
FIELDS = ("address", "weight", "backup", "state")


def parse_entry(key: str, value: bytes, directory: str) -> BackendSpec:
    """The backend one key describes; ``ValueError`` (or ``ConfigError``) saying what is wrong."""
    name = key[len(directory):]
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"the name {name!r} is not 1-128 letters, digits or ._~:[]@+-")
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (nesting deeper than the parser goes)
        raise ValueError(f"not JSON: {value[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f'not a JSON object like {{"address": "host:port"}}: {value[:80]!r}')
    return backend_from_table({**{k: data[k] for k in FIELDS if k in data}, "name": name}, "value")


class EtcdSource(Source):
    """The backends under ``PREFIX/backends/`` in etcd, listed, then watched."""

    def __init__(self, url: str, publish):
        super().__init__(url, self.identity_of(url), publish)
        self.endpoint, prefix = parse_etcd_url(url)
        self.directory = prefix + "/backends/"
        self._client: EtcdClient | None = None  # made by run(), closed when it ends
        self._entries: dict[str, BackendSpec] = {}  # key -> backend; only the source's thread touches it
        self._watch_lock = threading.Lock()  # guards _watch: run() opens it, stop() ends it
        self._watch: Watch | None = None

    @staticmethod
    def identity_of(url: str) -> tuple:
        return ("etcd", url)

    def run(self) -> None:
        self._client = EtcdClient(self.endpoint, timeout_s=CALL_TIMEOUT_S)
        delay_s = FIRST_RETRY_S
        while not self.stopping.is_set():
            try:
                revision = self._list()
                delay_s = FIRST_RETRY_S
                self._follow(revision + 1)
            except EtcdError as exc:
                if self.stopping.is_set():
                    break
                self.failed(str(exc))
            self.stopping.wait(delay_s)
            delay_s = min(delay_s * 2, MAX_RETRY_S)
        self._client.close()

    def _list(self) -> int:
        kvs, revision = self._client.get_prefix(self.directory)
        entries = {}
        for kv in kvs:
            spec = self._parse(kv.key, kv.value, self._entries.get(kv.key))
            if spec is not None:
                entries[kv.key] = spec
        self._entries = entries
        self._send()
        return revision

    def _follow(self, revision: int) -> None:
        watch = self._client.watch(self.directory, start_revision=revision)
        with self._watch_lock:
            self._watch = watch
        if self.stopping.is_set():
            return
        try:
            for event in watch:
                if event.type == "DELETE":
                    if self._entries.pop(event.kv.key, None) is None:
                        continue
                else:
                    spec = self._parse(event.kv.key, event.kv.value, self._entries.get(event.kv.key))
                    if spec is None or self._entries.get(event.kv.key) == spec:
                        continue
                    self._entries[event.kv.key] = spec
                self._send()
        finally:
            with self._watch_lock:
                self._watch = None

    def _parse(self, key: str, value: bytes, previous: BackendSpec | None) -> BackendSpec | None:
        try:
            return parse_entry(key, value, self.directory)
        except (ValueError, ConfigError) as exc:
            keeping = f"keeping its last good value ({previous.address})" if previous else "skipped"
            log.warning("discovery %s: %s: %s; %s", self.url, key, exc, keeping)
            return previous

    def _send(self) -> None:
        self.found(tuple(self._entries[key] for key in sorted(self._entries)))

    def interrupt(self) -> None:
        with self._watch_lock:
            watch = self._watch
        if watch is not None:
            watch.stop()


def etcd_secret(url: str) -> bytes | None:
    """The sticky-cookie secret at ``PREFIX/secret``, created (once, atomically) if absent; None if unreachable."""
    endpoint, prefix = parse_etcd_url(url)
    client = EtcdClient(endpoint, timeout_s=CALL_TIMEOUT_S)
    try:
        for attempt in range(SECRET_ATTEMPTS):
            try:
                created, kv = client.create_if_absent(prefix + "/secret", secrets.token_hex(32))
            except EtcdError as exc:
                log.warning("cannot read the shared sticky-cookie secret (attempt %d of %d): %s",
                            attempt + 1, SECRET_ATTEMPTS, exc)
                time.sleep(FIRST_RETRY_S * 2 ** attempt)
                continue
            if len(kv.value.strip()) < MIN_SECRET:  # as --sticky-secret-file asks: a short one is guessable
                log.error("the sticky-cookie secret at %s/secret in etcd has %d characters, fewer than %d: not "
                          "used; this balancer's sticky cookies are its own", prefix, len(kv.value.strip()), MIN_SECRET)
                return None
            log.info("sticky-cookie secret %s %s/secret in etcd", "created at" if created else "read from", prefix)
            return kv.value  # as stored: balancers of every version must agree on it, byte for byte
    finally:
        client.close()
    log.warning("etcd unreachable: this balancer's sticky cookies are its own until a restart with etcd up")
    return None
