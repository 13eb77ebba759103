"""The backends and all their state: one owner, read through views, changed by ``update()``.

Theory of operation
-------------------
``Cluster`` owns the backend set and everything that lives per backend
(health, ejection, in-flight counts, latency, counters, connection pools,
slow start) or per cluster (the algorithm and its state, the sticky-cookie
secret, the retry budget, the wait queue, the health checker, the outlier
detector). Nothing else keeps a copy.

Readers take ``cluster.view``: an immutable ``ClusterView`` of one
generation -- the settings, the primaries and backups in order, the
algorithm, the sticky cookies, the retry policy. A request reads it once and
uses it to the end, so no request ever sees half a change. The health
checker and the outlier detector read it at every round or failure.

``update(config)`` applies a whole new ``ClusterConfig`` under one lock and
publishes the next view. Backends are matched by name:

* present before and after (same address): the same ``Backend`` object, so
  health, counters, warm connections and the latency estimate stay; a new
  weight or admin state (``ready``/``drain``/``maint``) takes effect on the
  next pick.
* new (or moved to another address): probed at once, and given traffic when
  the first probe passes (then slow start, if configured). A typo in an
  address never costs a request.
* gone: marked ``removing``. It gets no new request; its in-flight requests
  finish; when the last one ends its connections are closed and it leaves
  ``status()``. Added again meanwhile, it is taken back as it is.

The algorithm object is kept across updates unless its name or settings
change, so round-robin keeps its place.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import algorithms
from .affinity import KeyFunction, StickyCookies, key_function
from .backend import Backend
from .config import ClusterConfig
from .files import read_regular
from .health import HealthChecker
from .limits import CapacityQueue
from .outlier import OutlierDetector
from .retry import RetryBudget, RetryPolicy
from .tls import backend_context
from .tracking import BackendEvents
from .upstream import BackendPool

log = logging.getLogger(__name__)


def _file_version(path: str | None) -> bytes | None:
    """What tells a file rewritten in place (a new CA under the same name) from the one read before."""
    if not path:
        return None
    try:
        return hashlib.sha256(read_regular(path)).digest()  # a few kB, read at a change of the cluster only
    except OSError:
        return None  # (checked readable when the configuration was loaded; gone since: no news)


@dataclass(frozen=True)
class ClusterView:
    """One generation of the cluster. Immutable; the backends in it are live objects."""

    generation: int
    config: ClusterConfig
    primaries: tuple[Backend, ...]
    backups: tuple[Backend, ...]
    algorithm: algorithms.Algorithm
    key_function: KeyFunction | None  # set when the algorithm hashes an affinity key
    sticky: StickyCookies | None
    retry: RetryPolicy

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self.primaries + self.backups

    def find(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)


def _policy(config: ClusterConfig) -> dict:
    """What each backend needs to know of the cluster settings."""
    return {
        "rise": config.rise,
        "fall": config.fall,
        "max_conns": config.max_conns,
        "slow_start_s": config.slow_start_s,
        "count_5xx_as_failure": config.eject_on_5xx,
    }


class Cluster(BackendEvents):
    """Owns the backends; ``start()`` begins health checks, ``stop()`` ends them and closes every pool."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        sticky_secret: bytes | None = None,
        algorithm: algorithms.Algorithm | None = None,
    ):
        self._lock = threading.Lock()  # guards _view and _retiring: one update at a time
        self._secret = sticky_secret or secrets.token_bytes(32)
        self.budget = RetryBudget(config.retry_budget)
        self.queue = CapacityQueue()
        self.outliers = OutlierDetector(lambda: (self._view.config, self._view.backends))
        self.health = HealthChecker(lambda: (self._view.config, [b for b in self._view.backends if b.probed]))
        self._retiring: dict[Backend, None] = {}  # removed, finishing their in-flight requests
        self._tls_settings = None  # (ca file, insecure, its version) the context below was made for
        self._tls: ssl.SSLContext | None = None  # how https:// backends are verified
        self._tls_context(config)
        backends = [self._new_backend(spec, config) for spec in config.backends]
        chosen = algorithm or algorithms.create(config.algorithm, hash_balance_factor=config.hash_balance_factor)
        self._view = self._make_view(1, config, backends, chosen)

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def generation(self) -> int:
        return self._view.generation

    def start(self) -> Cluster:
        self.health.start()
        return self

    def stop(self) -> None:
        self.health.stop()
        with self._lock:
            backends = [*self._view.backends, *self._retiring]
        for backend in backends:
            backend.pool.close()

    # --- building --------------------------------------------------------------

    def _tls_context(self, config: ClusterConfig) -> bool:
        """Make the backends' TLS context if its settings, or the CA file's contents, changed; say if so."""
        settings = (config.backend_ca, config.backend_tls_insecure, _file_version(config.backend_ca))
        if settings == self._tls_settings:
            return False
        self._tls_settings, self._tls = settings, backend_context(config.backend_ca, config.backend_tls_insecure)
        if config.backend_tls_insecure and any(spec.tls for spec in config.backends):
            log.warning("--backend-tls-insecure: the certificates of https:// backends are NOT verified")
        return True

    def _pool(self, spec, config: ClusterConfig) -> BackendPool:
        return BackendPool(
            spec.host, spec.port, size=config.pool_size, connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s, tls=self._tls if spec.tls else None,
        )

    def _new_backend(self, spec, config: ClusterConfig) -> Backend:
        backend = Backend(spec, events=self, **_policy(config))
        backend.pool = self._pool(spec, config)
        return backend

    def _make_view(self, generation: int, config: ClusterConfig, backends: Sequence[Backend], algorithm) -> ClusterView:
        uses_key = getattr(algorithm, "uses_key", False)
        return ClusterView(
            generation=generation,
            config=config,
            primaries=tuple(b for b in backends if not b.backup),
            backups=tuple(b for b in backends if b.backup),
            algorithm=algorithm,
            key_function=key_function(config.hash_key) if uses_key else None,
            sticky=StickyCookies(config.sticky_cookie, backends, self._secret) if config.sticky_cookie else None,
            retry=RetryPolicy(config.retries, self.budget),
        )

    # --- changing ----------------------------------------------------------------

    def update(self, config: ClusterConfig) -> ClusterView:
        """Apply ``config`` (already validated) atomically; return the new view."""
        with self._lock:
            old = self._view
            tls_changed = self._tls_context(config)
            current = {b.name: b for b in old.backends}
            retiring = {b.name: b for b in self._retiring}
            backends, to_probe, notes = [], [], []
            for spec in config.backends:
                backend = current.get(spec.name) or retiring.get(spec.name)
                if backend is not None and backend.address != spec.address:
                    backend = None  # the name moved to another server: a new backend
                if backend is None:
                    backend = self._new_backend(spec, config)
                    backend.await_first_probe()
                    to_probe.append(backend)
                    notes.append(f"added {spec.name}")
                else:
                    if backend in self._retiring:
                        del self._retiring[backend]
                        backend.mark_removing(False)
                        notes.append(f"kept {spec.name}")
                    notes += _describe_change(backend.spec, spec)
                    if backend.reconfigure(spec, **_policy(config)):
                        to_probe.append(backend)
                    if tls_changed and spec.tls:  # verified otherwise now: no connection made before is kept
                        backend.pool.close()
                        backend.pool = self._pool(spec, config)
                    backend.pool.configure(config.connect_timeout_s, config.read_timeout_s)
                backends.append(backend)
            removed = [b for b in old.backends if b not in backends]
            for backend in removed:
                backend.mark_removing()
                self._retiring[backend] = None
                notes.append(f"removing {backend.name}")
            algorithm = old.algorithm
            if (config.algorithm, config.hash_balance_factor) != (old.config.algorithm, old.config.hash_balance_factor):
                algorithm = algorithms.create(config.algorithm, hash_balance_factor=config.hash_balance_factor)
                notes.append(f"algorithm {config.algorithm}")
            self.budget.ratio = config.retry_budget
            self._view = view = self._make_view(old.generation + 1, config, backends, algorithm)
        log.info("cluster generation %d applied%s", view.generation, ": " + ", ".join(notes) if notes else "")
        for backend in removed:
            self._reap_if_idle(backend)
        self.health.check_soon(to_probe)
        self.health.nudge()
        return view

    def _reap_if_idle(self, backend: Backend) -> None:
        with self._lock:
            if backend not in self._retiring or backend.in_flight:
                return
            del self._retiring[backend]
        backend.pool.close()
        log.info("backend %s removed: no request in flight, connections closed", backend.name)

    # --- what backends report (BackendEvents) --------------------------------------

    def released(self, backend: Backend) -> None:
        if self._view.config.max_conns:
            self.queue.released()
        if backend.removing:
            self._reap_if_idle(backend)

    def failed(self, backend: Backend, streak: int, reason: str) -> None:
        self.outliers.failed(backend, streak, reason)

    # --- reading ---------------------------------------------------------------

    def status(self) -> list[dict]:
        """Every backend's status, removing ones included, in configuration order."""
        with self._lock:
            backends = [*self._view.backends, *self._retiring]
        return [backend.status() for backend in backends]

    def available(self) -> bool:
        """Whether some backend could take a new request now (one that nothing pins to a backend)."""
        return any(b.takes_new() for b in self._view.backends)


def _describe_change(before, after) -> list[str]:
    notes = []
    if before.weight != after.weight:
        notes.append(f"{after.name} weight {before.weight}->{after.weight}")
    if before.state != after.state:
        notes.append(f"{after.name} {after.state}")
    if before.backup != after.backup:
        notes.append(f"{after.name} {'backup' if after.backup else 'primary'}")
    return notes
