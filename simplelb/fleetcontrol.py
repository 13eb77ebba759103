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
backwards when a worker is replaced. Health state may differ between
workers for a moment (each probes on its own); a backend's state in
``/status`` is the one most workers report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from .channel import ChannelClosed
from .config import ClusterConfig, Config
from .configfile import FixedSource
from .control import ReloadCounter, load_for_reload

log = logging.getLogger(__name__)

COUNTERS = ("requests", "failures", "ejections", "retries")
# When workers disagree and the vote is tied, the state shown is the first of these.
STATE_PRECEDENCE = ("removing", "maint", "draining", "down", "ejected", "up")


def _each(workers, action: Callable) -> None:
    """Run ``action(worker)`` for every worker at once and wait for all (each bounds its own wait)."""
    threads = [threading.Thread(target=action, args=(w,), name=f"fleet-{w.number}", daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def merge_backends(reports: list[list[dict]], retired: dict[str, Counter]) -> list[dict]:
    """One entry per backend (first-seen order): counters and in-flight summed, state by vote."""
    merged: dict[str, dict] = {}
    votes: dict[str, Counter] = {}
    latencies: dict[str, list[float]] = {}
    for report in reports:
        for entry in report:
            name = entry["name"]
            if name not in merged:
                merged[name] = {**entry, "in_flight": 0, **{key: retired.get(name, Counter())[key] for key in COUNTERS}}
                votes[name], latencies[name] = Counter(), []
            row = merged[name]
            row["in_flight"] += entry["in_flight"]
            for key in COUNTERS:
                row[key] += entry[key]
            votes[name][entry["state"]] += 1
            if entry["latency_ms"] is not None:
                latencies[name].append(entry["latency_ms"])
    for name, row in merged.items():
        top = max(votes[name].values())
        row["state"] = next(s for s in STATE_PRECEDENCE if votes[name][s] == top)
        if len(votes[name]) > 1:
            row["worker_states"] = dict(votes[name])
        row["latency_ms"] = round(sum(latencies[name]) / len(latencies[name]), 3) if latencies[name] else None
    return list(merged.values())


class FleetControl:
    def __init__(self, supervisor, source, running: Config):
        self._supervisor = supervisor
        self.source = source or FixedSource(running)
        self.running = running
        self.started = time.monotonic()
        self.shutting_down = False
        self.reloads = ReloadCounter()
        self._changing = threading.Lock()  # one change at a time; guards _cluster and _generation
        self._cluster = running.cluster
        self._generation = 1
        self._retired: dict[str, Counter] = {}  # counters of workers that are gone, by backend
        self._retired_lock = threading.Lock()

    def current(self) -> tuple[int, ClusterConfig]:
        with self._changing:
            return self._generation, self._cluster

    def config(self) -> ClusterConfig:
        return self._cluster

    def change(self, edit: Callable[[ClusterConfig], ClusterConfig]) -> int:
        with self._changing:
            return self._apply(edit(self._cluster))

    def reload(self) -> int:
        with self._changing:
            config = load_for_reload(self.source, self.running, self.reloads)
            generation = self._apply(config.cluster)
            self.reloads.success += 1
            self.reloads.last_error = None
        log.info("reloaded: generation %d sent to every worker", generation)
        return generation

    def _apply(self, cluster: ClusterConfig) -> int:
        # Caller holds _changing.
        self._generation += 1
        self._cluster = cluster
        message = {"op": "apply", "generation": self._generation, "cluster": cluster.to_dict()}

        def apply(worker) -> None:
            try:
                answer = worker.ask(message, timeout_s=1.0)
            except ChannelClosed as exc:
                log.warning("worker %d did not confirm generation %d: %s", worker.number, message["generation"], exc)
                return
            if answer.get("ok"):
                worker.generation = answer["generation"]
            else:
                log.error("worker %d refused generation %d: %s", worker.number, message["generation"], answer.get("error"))

        _each(self._supervisor.live_workers(), apply)
        return self._generation

    def refresh(self) -> None:
        """Ask every worker for its stats now."""

        def ask(worker) -> None:
            try:
                worker.stats = worker.ask({"op": "stats"}, timeout_s=1.0)["stats"]
            except ChannelClosed:
                pass

        _each(self._supervisor.live_workers(), ask)

    def retire(self, worker) -> None:
        """A worker is gone: keep its last counters in the sums."""
        if worker.stats is None:
            return
        with self._retired_lock:
            for entry in worker.stats["backends"]:
                counts = self._retired.setdefault(entry["name"], Counter())
                for key in COUNTERS:
                    counts[key] += entry[key]

    def ready(self) -> bool:
        if self.shutting_down:
            return False
        return any(
            entry["state"] in ("up", "draining")
            for worker in self._supervisor.live_workers() if worker.stats
            for entry in worker.stats["backends"]
        )

    def backend(self, name: str) -> dict | None:
        return next((b for b in self.status()["backends"] if b["name"] == name and b["state"] != "removing"), None)

    def status(self) -> dict:
        from . import __version__

        self.refresh()
        workers = [w for w in self._supervisor.live_workers() if w.stats is not None]
        with self._retired_lock:
            retired = {name: Counter(counts) for name, counts in self._retired.items()}
        generation, cluster = self.current()
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "algorithm": cluster.algorithm,
            "generation": generation,
            "applied": all(w.generation == generation for w in workers),
            "ready": self.ready(),
            "workers": [{"number": w.number, "pid": w.pid, "generation": w.generation} for w in workers],
            "reloads": self.reloads.as_dict(),
            "backends": merge_backends([w.stats["backends"] for w in workers], retired),
        }
