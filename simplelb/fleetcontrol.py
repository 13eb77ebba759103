"""Changing and reporting a fleet of ``--workers`` processes from their parent.

``FleetControl`` offers what ``control.LocalControl`` offers (``change``,
``reload``, ``status``, ``backend``, ``ready``), for the one admin listener
in the parent. The parent holds the configuration and its generation: a
change is validated and numbered here once, then sent to every worker, each
of which confirms the generation it runs; ``/status`` shows each worker's
pid and generation and ``applied`` once all run the newest.

Counters are summed over the workers (a request is counted once, by the
worker that served it). A worker that dies leaves its last report behind
(``retire``), added to the sums from then on, so a counter never goes
backwards when a worker is replaced. What it counted for a backend (a name
at an address) is kept while that backend is in the configuration, and
dropped when a change takes it out: added again, it starts from zero, as in
one process. Health state may differ between workers for a moment (each
probes on its own); a backend's state in ``/status`` is the one most workers
report, and its ``up`` follows from that state by the rule one process uses
(``backend.takes_new_in``), so the two never disagree.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from .backend import takes_new_in
from .channel import ChannelClosed
from .config import ClusterConfig, Config, cluster_from_dict
from .configfile import FixedSource
from .control import ReloadCounter, admin_token, find_backend, load_for_reload
from .discovery import Discovery, Prepared
from .stats import BOUNDS_S, add_counts, zeroed

log = logging.getLogger(__name__)

APPLY_TIMEOUT_S = 1.0  # a change reaches every worker within a second, or that worker is replaced

# Per backend: these add up over the workers; the rest is the backend's description.
BACKEND_SUMS = ("in_flight", "requests", "failures", "attempts", "errors", "ejections", "retries", "responses",
                "response_time", "failure_reasons", "probes")
# Gauges: what a worker holds now. A dead worker's gauges are gone with it; its counters stay.
GAUGES = {"connections", "queue.waiting", "in_flight", "tunnels"}
# When workers disagree and the vote is tied, the state shown is the first of these.
STATE_PRECEDENCE = ("removing", "maint", "draining", "down", "ejected", "up")


def _each(workers, action: Callable) -> None:
    """Run ``action(worker)`` for every worker at once and wait for all (each bounds its own wait)."""
    threads = [threading.Thread(target=action, args=(w,), name=f"fleet-{w.number}", daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def without_gauges(values: dict, prefix: str = "") -> dict:
    """``values`` with every gauge zeroed: what a dead worker leaves to the sums."""
    out = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in GAUGES or key in GAUGES:
            out[key] = zeroed(value)
        elif isinstance(value, dict):
            out[key] = without_gauges(value, path + ".")
        else:
            out[key] = value
    return out


def backend_key(entry: dict) -> tuple[str, str]:
    """What makes a backend in a report one backend: its name and address."""
    return entry["name"], entry["address"]


def merge_backends(reports: list[list[dict]], retired: dict[tuple[str, str], dict]) -> list[dict]:
    """One entry per backend (first-seen order): counters and in-flight summed, state by vote, ``up`` from the state.

    A backend is its name and address: a name a reload moved to another address is a new
    backend, listed beside the old one while that finishes its requests, as in one process.
    ``retired`` (what dead workers counted, by name and address) is consumed.
    """
    merged: dict[tuple[str, str], dict] = {}
    votes: dict[tuple[str, str], Counter] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    for report in reports:
        for entry in report:
            key = backend_key(entry)
            if key not in merged:
                # What dead workers counted for this backend goes to its row, once.
                base = retired.pop(key, None) or {k: zeroed(entry[k]) for k in BACKEND_SUMS}
                merged[key] = {**entry, **{k: base[k] for k in BACKEND_SUMS}}
                votes[key], latencies[key] = Counter(), []
            row = merged[key]
            for k in BACKEND_SUMS:
                row[k] = add_counts(row[k], entry[k])
            votes[key][entry["state"]] += 1
            if entry["latency_ms"] is not None:
                latencies[key].append(entry["latency_ms"])
    for key, row in merged.items():
        top = max(votes[key].values())
        row["state"] = next(s for s in STATE_PRECEDENCE if votes[key][s] == top)
        # Not an OR of the workers' ``up``: one worker up and one down is state down, and so not up.
        row["up"] = takes_new_in(row["state"])
        if len(votes[key]) > 1:
            row["worker_states"] = dict(votes[key])
        row["latency_ms"] = round(sum(latencies[key]) / len(latencies[key]), 3) if latencies[key] else None
    return list(merged.values())


def merge_stats(reports: list[dict], retired: dict | None) -> dict:
    """The process-wide figures of several workers (and of the dead ones), backends aside."""
    total = None if retired is None else retired
    for report in reports:
        figures = {key: value for key, value in report.items() if key not in ("backends", "pid", "generation")}
        total = figures if total is None else add_counts(total, figures)
    return total or {}


class FleetControl:
    def __init__(self, supervisor, source, running: Config):
        self._supervisor = supervisor
        self.source = source or FixedSource(running)
        self.running = running
        self.admin_token = admin_token(running)  # in force: a reload reads the file again
        self.started = time.monotonic()
        self.shutting_down = False
        self.reloads = ReloadCounter()
        self._changing = threading.Lock()  # one change at a time; the only writer of _current
        self.discovery = Discovery(self.change)  # runs here, once for every worker
        # (generation, cluster), replaced whole: readers (/status, /metrics) take it without the
        # lock, so they never wait behind a change that is being sent to the workers.
        self._current = (1, self.discovery.configure(running.cluster))
        # The certificate files in force (a reload may name, or re-read, others): a worker started
        # later (a replacement) must serve what the others do, not what the fleet started with.
        self.tls = running.listener.tls
        self._retired_lock = threading.Lock()  # guards the two below: what dead workers counted
        self._retired_backends: dict[tuple[str, str], dict] = {}  # by backend_key; only backends configured
        self._retired: dict | None = None

    def start(self) -> None:
        """Start discovery, before the workers: they start with what it found."""
        self.discovery.start()

    def stop(self, wait: bool = True) -> None:
        self.discovery.stop(wait)

    def current(self) -> tuple[int, ClusterConfig]:
        return self._current

    @contextlib.contextmanager
    def held(self) -> Iterator[tuple[int, ClusterConfig, tuple | None]]:
        """The current generation and certificate files, with changes held off until the block ends (a new
        worker's first message)."""
        with self._changing:
            yield (*self._current, self.tls)

    def config(self) -> ClusterConfig:
        return self._current[1]

    def change(self, edit: Callable[[ClusterConfig], ClusterConfig], *, operator: bool = True,
               then: Callable[[], None] | None = None) -> int:
        """Apply ``edit`` in every worker; ``then`` runs once it is, before any later change (an answer's read)."""
        with self._changing:
            before = self._current[1]
            after = edit(before)
            generation = self._apply(self.discovery.prepare_edit(before, after) if operator else Prepared(after))
            if then is not None:
                then()
            return generation

    def reload(self) -> int:
        with self._changing, self.reloads.counted():
            reloaded = load_for_reload(self.source, self.running)
            tls = reloaded.config.listener.tls if reloaded.certificates is not None else None
            generation = self._apply(self.discovery.prepare(reloaded.config.cluster), tls)
            self.admin_token = reloaded.admin_token
        log.info("reloaded: generation %d sent to every worker", generation)
        return generation

    def _apply(self, prepared: Prepared, tls: tuple | None = None) -> int:
        # Caller holds _changing. ``tls``: certificate files every worker reads again (checked here already).
        cluster = prepared.merged
        as_sent = cluster.to_dict()
        cluster_from_dict(as_sent)  # what every worker will do with it: a ConfigError here, not in each of them
        prepared.commit()  # only once it is valid: a refused change leaves discovery's sources and lists as they were
        generation = self._current[0] + 1
        self._current = (generation, cluster)
        if tls is not None:
            self.tls = tls
        self._forget_unconfigured()
        message = {"op": "apply", "generation": generation, "cluster": as_sent, "tls": tls}

        def apply(worker) -> None:
            if not worker.ready.is_set():
                # Starting: it reads this once it serves (its channel keeps it) and confirms then. Its
                # answer is not awaited, nor its silence held against it: a kill here would throw
                # away a worker that is only slow to start, again and again on a busy machine.
                with contextlib.suppress(ChannelClosed):
                    worker.channel.send(message)
                return
            try:
                answer = worker.ask(message, timeout_s=APPLY_TIMEOUT_S)
            except ChannelClosed as exc:
                answer = {"ok": False, "error": f"no confirmation ({exc})"}
            if answer.get("ok"):
                worker.generation = answer["generation"]
                return
            # Every worker must run what was validated here: one that cannot is replaced, and its
            # successor starts with this generation. Until then /status says it is not applied.
            log.error("worker %d failed generation %d (%s); replacing it", worker.number, message["generation"],
                      answer.get("error"))
            worker.proc.kill()

        _each(self._supervisor.live_workers(), apply)
        return generation

    def _configured(self) -> set[tuple[str, str]]:
        """The backends of the current configuration, as ``backend_key`` names them."""
        return {(spec.name, spec.location) for spec in self._current[1].backends}

    def _forget_unconfigured(self) -> None:
        """Drop what dead workers counted for backends the configuration no longer has.

        A backend taken out and added again is a new one in every worker, counting from
        zero; what a dead worker counted for the old one must not come back on it. (One
        taken out that live workers are still finishing shows what they counted, no more.)
        ``retire`` reads ``_current`` under the same lock, so a worker that dies during a
        change leaves nothing behind for a backend that change took out.
        """
        configured = self._configured()
        with self._retired_lock:
            self._retired_backends = {key: counts for key, counts in self._retired_backends.items()
                                      if key in configured}

    def refresh(self) -> None:
        """Ask every worker for its stats now."""

        def ask(worker) -> None:
            try:
                worker.stats = worker.ask({"op": "stats"}, timeout_s=1.0)["stats"]
            except ChannelClosed:
                pass

        _each(self._supervisor.live_workers(), ask)

    def retire(self, worker) -> None:
        """A worker is gone: keep its last counters in the sums (not its gauges). Called once or more."""
        with self._retired_lock:
            if worker.retired:
                return
            worker.retired = True  # from now on its counts are in the totals, not read from it
            if worker.stats is None:
                return
            stats = without_gauges(worker.stats)
            configured = self._configured()
            for entry in stats["backends"]:
                key = backend_key(entry)
                if key not in configured:  # taken out since: added again, it starts from zero
                    continue
                counts = {k: entry[k] for k in BACKEND_SUMS}
                earlier = self._retired_backends.get(key)
                self._retired_backends[key] = counts if earlier is None else add_counts(earlier, counts)
            self._retired = merge_stats([stats], self._retired)

    def ready(self) -> bool:
        if self.shutting_down:
            return False
        # By the merged rows, as /status shows them: a backend one worker sees up and another down is
        # down there (the vote's tie), and must not make the fleet ready behind /status's back.
        reports = [worker.stats["backends"] for worker in self._supervisor.live_workers() if worker.stats]
        return any(row["up"] for row in merge_backends(reports, {}))

    def backend(self, name: str) -> dict | None:
        return find_backend(self.status()["backends"], name)

    def status(self) -> dict:
        from . import __version__

        self.refresh()
        with self._retired_lock:  # who is counted live and what the dead left, seen at one moment
            workers = [w for w in self._supervisor.all_workers() if not w.retired and w.stats is not None]
            reports = [w.stats for w in workers]
            retired_backends = dict(self._retired_backends)
            retired = self._retired
        generation, cluster = self.current()
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "algorithm": cluster.algorithm,
            "generation": generation,
            # Every worker asked for runs it: one missing (dying at start, again and again) is not "applied".
            "applied": len(workers) == self._supervisor.config.listener.workers
                       and all(w.generation == generation for w in workers),
            "ready": self.ready(),
            "workers": [{"number": w.number, "pid": w.pid, "generation": w.generation} for w in workers],
            "reloads": self.reloads.as_dict(),
            "histogram_bounds_s": BOUNDS_S,
            "discovery": self.discovery.status(),
            **merge_stats(reports, retired),
            "backends": merge_backends([report["backends"] for report in reports], retired_backends),
        }
