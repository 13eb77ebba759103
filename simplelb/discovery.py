"""Discovery: backends learned from DNS and etcd, merged into the running configuration.

Theory of operation
-------------------
A *source* is a ``dns://`` or ``dns+srv://`` entry of the backends, or
``--discovery etcd://...``. Each runs on its own named daemon thread (a
``source.Source``: ``source.py``) and sends COMPLETE lists of
``BackendSpec`` -- everything it knows now, never a difference -- into one
channel (a queue). A source never touches the cluster, and when it cannot
reach its DNS server or etcd it sends nothing: the last list it sent
stands, and its status says since when it is stale.

One watcher thread (``Discovery``) takes what arrives, waits ``SETTLE_S``
for the rest of a burst (three keys put at once make one change, not
three), keeps the latest list per source and, when one differs from what it
had, merges and applies:

    static backends (the file, the flags, the admin API's additions)
  + each source's latest list, in configuration order
  + the operator's overrides (weight, state) of discovered backends
  = a whole new ``ClusterConfig``, applied through the control's ``change()``

so a discovery update is serialised with admin changes and reloads, and
with ``--workers`` it is one generation sent to every worker. A discovered
backend whose name or address is taken already (by a static backend, or by
an earlier source) is left out, and logged.

The control calls ``prepare()`` with each configuration it loads (at
every reload; ``configure()`` at start): sources that stay keep running and
keep their lists, new ones start, gone ones stop, and the operator's
overrides end (a reload replaces runtime changes, as it always has). When a
reload starts new sources, the lists of those it stopped stay in the merge
until every new one has listed once: a changed or mistyped URL does not
empty the set. It calls ``prepare_edit()`` with the result of each
operator's change (not of the watcher's): backends the sources did not find
become the static part, and a discovered backend's weight or state that
differs from its source's becomes an override, kept across updates until a
reload. Both only work the change out (``Prepared``): the control validates
and applies the merged result, then commits it. A change it refuses (with
``--workers``, one that a worker would not read back) leaves every source,
list and override as it was, so the next update merges from what runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .config import ClusterConfig, Config, read_token
from .errors import ConfigError, Conflict
from .source import Source, Specs
from .specs import BackendSpec

log = logging.getLogger(__name__)

# Seconds the watcher waits after a list arrives for the rest of a burst, before applying.
SETTLE_S = 0.05
# Seconds start() waits for every source's first answer, so the balancer starts with its backends.
FIRST_ANSWER_S = 3.0
# What an operator's PATCH may set on a discovered backend, kept over what its source says.
OVERRIDABLE = ("weight", "state")
# Seconds stop() waits, in all, for the sources' threads to end (a DNS lookup in flight ends within its lifetime).
JOIN_S = 3.0

Edit = Callable[[ClusterConfig], ClusterConfig]


def plan(cluster: ClusterConfig, publish) -> list[tuple[tuple, Callable[[], Source]]]:
    """The sources ``cluster`` asks for, as (identity, factory), in configuration order."""
    from .dnsdiscovery import DnsSource
    from .etcddiscovery import EtcdSource

    wanted = [(DnsSource.identity_of(s, cluster), lambda s=s: DnsSource(s, cluster, publish)) for s in cluster.sources]
    if cluster.discovery:
        wanted.append((EtcdSource.identity_of(cluster.discovery), lambda: EtcdSource(cluster.discovery, publish)))
    return wanted


class Layout(NamedTuple):
    """What a merge reads: the static part, the sources' lists, the carried lists, the overrides."""

    base: ClusterConfig  # settings and backends not discovered
    lists: list[tuple[str, Specs]]  # (url, latest list) of each running source, in configuration order
    carried: list[tuple[str, Specs]]  # (url, last list) of sources a reload stopped, until the new ones list
    overrides: dict[str, dict]  # backend name -> {"weight": ..., "state": ...}


class Prepared:
    """A change of discovery worked out but not made: ``merged`` is where it leads, ``commit()`` makes it.

    The control validates and applies ``merged`` first and commits only then, so a change it
    refuses (one a worker would not take, say) leaves discovery as it was.
    """

    def __init__(self, merged: ClusterConfig, commit: Callable[[], None] | None = None):
        self.merged = merged
        self._commit = commit

    def commit(self) -> ClusterConfig:
        if self._commit is not None:
            self._commit()
        return self.merged


class Discovery:
    """Runs a configuration's sources and merges their lists into it; ``change`` is the control's."""

    def __init__(self, change: Callable[..., int], *, enabled: bool = True):
        self._change = change
        self._enabled = enabled  # False in a worker: its parent discovers
        self._lock = threading.Lock()  # guards everything below but the queue
        self._base: ClusterConfig | None = None  # the static part: settings and backends not discovered
        self._order: list[tuple] = []  # source identities, in configuration order
        self._sources: dict[tuple, Source] = {}
        self._retired: list[Source] = []  # told to stop by a reload, maybe still finishing a lookup
        self._lists: dict[tuple, Specs] = {}  # each source's latest list
        # A reload that replaces sources keeps the lists of those it stopped until every new one
        # has listed once: a changed URL must not empty the set meanwhile, nor a mistyped one for good.
        self._carried: dict[tuple, tuple[str, Specs]] = {}  # stopped source -> (its url, its last list)
        self._awaited: set[tuple] = set()  # new sources that have not listed yet
        self._overrides: dict[str, dict] = {}  # backend name -> {"weight": ..., "state": ...}
        self._skipped: set[tuple[str, str]] = set()  # (source, name) left out as taken, logged once
        self._updates: queue.Queue = queue.Queue()  # the channel: (source, specs), or None to stop
        self._running = False
        self._thread: threading.Thread | None = None

    # --- what the control calls (holding its change lock) -------------------------------

    def configure(self, cluster: ClusterConfig) -> ClusterConfig:
        """A configuration as loaded, made at once (at start): see ``prepare``. The merged result."""
        return self.prepare(cluster).commit()

    def prepare(self, cluster: ClusterConfig) -> Prepared:
        """A configuration as loaded: which sources stay, start and stop, and the merged result; overrides end.

        Nothing moves until ``commit()``: no source is started or stopped, no list carried, no
        override dropped. A control that refuses the result leaves discovery as it was.
        """
        wanted = plan(cluster, self._updates_put) if self._enabled else []
        with self._lock:
            sources = {identity: self._sources[identity] if identity in self._sources else factory()
                       for identity, factory in wanted}
            gone = [source for identity, source in self._sources.items() if identity not in sources]
            new = [source for identity, source in sources.items() if identity not in self._sources]
            carried, _ = self._carried_after([(source, self._lists.get(source.identity, ())) for source in gone],
                                             {source.identity for source in new}, sources)
            lists = [(source.url, () if source in new else self._lists.get(identity, ()))
                     for identity, source in sources.items()]
            merged = self._merge(Layout(cluster, lists, list(carried.values()), {}))
        return Prepared(merged, lambda: self._reconfigure(cluster, sources, gone, new))

    def _reconfigure(self, cluster: ClusterConfig, sources: dict[tuple, Source], gone: list[Source],
                     new: list[Source]) -> None:
        """Make what ``prepare`` worked out: the sources' lists as they are by now (the watcher may have had one since)."""
        with self._lock:
            self._base, self._overrides = cluster, {}
            self._order, self._sources = list(sources), sources
            self._retired = [source for source in self._retired if source.alive()] + gone
            stopped = [(source, self._lists.pop(source.identity, ())) for source in gone]
            self._lists.update({source.identity: () for source in new})
            self._carried, self._awaited = self._carried_after(stopped, {source.identity for source in new}, sources)
            running = self._running
        # Told, not waited for: the control's lock is held here, and a lookup in flight can take
        # seconds. What a retired source still sends is ignored (see _apply).
        for source in gone:
            log.info("discovery %s: no longer configured; stopping it", source.url)
            source.stop()
        if running:
            for source in new:
                source.start()

    def _carried_after(self, stopped: list[tuple[Source, Specs]], started: set[tuple],
                       order) -> tuple[dict[tuple, tuple[str, Specs]], set[tuple]]:
        # (lock held) What _carried and _awaited become. Only a reload that starts sources carries: one
        # that just drops a source drops its backends, whatever an earlier reload still carries until
        # the sources it started list.
        awaited = (self._awaited & set(order)) | started
        if not awaited:
            return {}, awaited
        carried = dict(self._carried)
        if started:
            carried.update({source.identity: (source.url, specs) for source, specs in stopped if specs})
        return carried, awaited

    def prepare_edit(self, before: ClusterConfig, after: ClusterConfig) -> Prepared:
        """An operator's change: split into static backends and overrides of discovered ones; the merged result.

        Nothing moves until ``commit()``: a change the control then refuses leaves the static
        backends and the overrides as they were, for the next update to merge.
        """
        with self._lock:
            if not self._order:
                return Prepared(after, lambda: self._edit(after, {}))
            discovered = {spec.name: spec for spec in self._discovered(self._layout())}
            # Discovered when the running configuration was merged; its source may have dropped it
            # since (its update waits for the lock this change holds): it goes with that update.
            static_names = {spec.name for spec in self._base.backends}
            was_discovered = {spec.name for spec in before.backends if spec.name not in static_names}
            missing = [name for name in discovered if after.spec(name) is None and before.spec(name) is not None]
            if missing:
                raise Conflict(f"{missing[0]!r} is discovered: remove it at its source, or drain it or put it in "
                               "maintenance here")
            overrides = {name: o for name, o in self._overrides.items() if name not in discovered}
            static = []
            for spec in after.backends:
                found = discovered.get(spec.name)
                if found is None:
                    if spec.name not in was_discovered:
                        static.append(spec)
                    continue
                differs = {key: getattr(spec, key) for key in OVERRIDABLE if getattr(spec, key) != getattr(found, key)}
                if differs:
                    overrides[spec.name] = differs
            base = after.with_backends(tuple(static))
            merged = self._merge(self._layout()._replace(base=base, overrides=overrides))
        # A static backend that a source lists too (left out as taken) comes back as the source's once
        # the static one goes: a DELETE would answer "removing" and remove nothing.
        back = [spec.name for spec in before.backends if after.spec(spec.name) is None
                and merged.spec(spec.name) is not None]
        if back:
            raise Conflict(f"{back[0]!r} is discovered too: removed here, it stays as its source's; remove it at its "
                           "source as well, or drain it or put it in maintenance here")
        return Prepared(merged, lambda: self._edit(base, overrides))

    def _edit(self, base: ClusterConfig, overrides: dict[str, dict]) -> None:
        with self._lock:
            self._base, self._overrides = base, overrides

    def merged(self) -> ClusterConfig:
        with self._lock:
            return self._merge(self._layout())

    # --- merging (lock held) ---------------------------------------------------------------

    def _layout(self) -> Layout:
        """What the merge reads now."""
        return Layout(self._base, [(self._sources[identity].url, self._lists.get(identity, ()))
                                   for identity in self._order],
                      list(self._carried.values()), self._overrides)

    def _discovered(self, layout: Layout) -> list[BackendSpec]:
        """Every source's latest specs that are not taken already, in order, before overrides."""
        names = {s.name for s in layout.base.backends}
        addresses = {s.address for s in layout.base.backends}
        kept = []
        for url, specs, carried in ([(url, specs, False) for url, specs in layout.lists]
                                    + [(url, specs, True) for url, specs in layout.carried]):
            for spec in specs:
                if spec.name in names or spec.address in addresses:
                    if not carried and (url, spec.name) not in self._skipped:  # (a carried one is expected to be)
                        self._skipped.add((url, spec.name))
                        log.warning("discovery %s: %s (%s) is taken already; left out", url, spec.name, spec.address)
                    continue
                names.add(spec.name)
                addresses.add(spec.address)
                kept.append(spec)
        return kept

    def _merge(self, layout: Layout) -> ClusterConfig:
        specs = [spec.but(**layout.overrides[spec.name]) if spec.name in layout.overrides else spec
                 for spec in self._discovered(layout)]
        if not specs:
            return layout.base
        return layout.base.with_backends(layout.base.backends + tuple(specs))

    # --- running ---------------------------------------------------------------------------

    def _updates_put(self, source: Source, specs: Specs) -> None:
        self._updates.put((source, specs))

    def start(self, wait_s: float = FIRST_ANSWER_S) -> None:
        """Start the sources, wait (bounded) for their first answers, apply them, then watch for more."""
        with self._lock:
            self._running = True
            sources = list(self._sources.values())
        for source in sources:
            source.start()
        deadline = time.monotonic() + wait_s
        for source in sources:
            source.answered.wait(max(0.0, deadline - time.monotonic()))
        self._apply(self._take_pending([]))
        if self._enabled:
            self._thread = threading.Thread(target=self._watch, name="discovery-merge", daemon=True)
            self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop the sources and the watcher; with ``wait``, for up to ``JOIN_S`` until their threads end."""
        with self._lock:
            self._running = False
            sources = list(self._sources.values()) + self._retired
        for source in sources:
            source.stop()
        if not wait:
            return
        deadline = time.monotonic() + JOIN_S
        for source in sources:
            source.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._updates.put(None)
            self._thread.join(10)

    def _watch(self) -> None:
        while (first := self._updates.get()) is not None:
            time.sleep(SETTLE_S)
            batch = self._take_pending([first])
            if None in batch:
                return
            self._apply(batch)

    def _take_pending(self, batch: list) -> list:
        while True:
            try:
                batch.append(self._updates.get_nowait())
            except queue.Empty:
                return batch

    def _apply(self, batch: list) -> None:
        changed = False
        with self._lock:
            for source, specs in batch:
                if self._sources.get(source.identity) is not source:
                    continue  # a source stopped by a reload, still talking
                if self._lists.get(source.identity) != specs:
                    self._lists[source.identity] = specs
                    changed = True
                self._awaited.discard(source.identity)
            if self._carried and not self._awaited:
                self._carried.clear()  # every new source has listed: what the stopped ones had goes
                changed = True
        if not changed:
            return
        try:
            self._change(lambda running: self.merged(), operator=False)
        except (ConfigError, Conflict) as exc:  # cannot happen with deduplicated lists; say so if it does
            log.error("discovery: the merged configuration was refused: %s", exc)
        except Exception:  # a bug: logged, and the watcher lives on to apply the next list
            log.exception("discovery: applying the merged configuration failed")

    def status(self) -> list[dict]:
        with self._lock:
            sources = [self._sources[identity] for identity in self._order]
        return [source.status() for source in sources]


def shared_secret(config: Config) -> bytes | None:
    """The sticky-cookie secret shared by balancers: ``--sticky-secret-file``, else etcd's, else None."""
    if config.listener.sticky_secret_file:
        return read_token(config.listener.sticky_secret_file).encode()
    if config.cluster.discovery:
        from .etcddiscovery import etcd_secret

        return etcd_secret(config.cluster.discovery)
    return None
