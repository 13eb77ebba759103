"""``GET /metrics``: the Prometheus text exposition, made by ``prometheus_client``.

Nothing is counted here. A custom collector turns one ``status()`` -- read
at scrape time, summed over the workers in the parent of ``--workers`` --
into metric families, as ``prometheus_client``'s own custom collectors do,
so the hot path only increments integers and no gauge can go stale: a
backend removed at runtime is simply absent from the next scrape.

The names and labels are a contract (dashboards and alerts are written
against them); the README's table lists them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .backend import FAILURE_REASONS, STATES
from .stats import BOUNDS_S, STATUS_CLASSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _buckets(histogram: dict) -> list[tuple[str, float]]:
    """Our per-bucket counts as Prometheus' cumulative ``le`` buckets."""
    buckets, running = [], 0
    for bound, count in zip([*BOUNDS_S, float("inf")], histogram["counts"], strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets


def _traffic(status: dict) -> Iterator[Metric]:
    requests = CounterMetricFamily("simplelb_requests", "Responses sent to clients on the traffic port, by status class",
                                   labels=["code"])
    for code in STATUS_CLASSES:
        requests.add_metric([code], status["responses"][code])
    yield requests
    duration = status["request_duration"]
    yield HistogramMetricFamily("simplelb_request_duration_seconds",
                                "From a request's head read to its last response byte",
                                buckets=_buckets(duration), sum_value=duration["sum"])
    yield CounterMetricFamily("simplelb_retry_budget_exhausted", "Retries refused by the retry budget",
                              value=status["retry_budget_exhausted"])
    yield GaugeMetricFamily("simplelb_queue_waiting", "Requests waiting for a backend under --max-conns",
                            value=status["queue"]["waiting"])
    yield CounterMetricFamily("simplelb_queue_timeouts", "Requests that got 503 after waiting under --max-conns",
                              value=status["queue"]["timeouts"])
    connections = GaugeMetricFamily("simplelb_client_connections", "Open client connections", labels=["state"])
    for state, count in status["connections"].items():
        connections.add_metric([state], count)
    yield connections
    yield GaugeMetricFamily("simplelb_tunnels_active", "Upgraded connections (WebSocket) open now",
                            value=status["tunnels"])
    yield CounterMetricFamily("simplelb_access_log_dropped", "Access-log lines dropped rather than stall a request",
                              value=status["access_log_dropped"])
    reloads = CounterMetricFamily("simplelb_config_reloads", "Configuration reloads", labels=["result"])
    reloads.add_metric(["success"], status["reloads"]["success"])
    reloads.add_metric(["failure"], status["reloads"]["failure"])
    yield reloads
    info = GaugeMetricFamily("simplelb_build_info", "Always 1; the labels say what runs", labels=["version", "python"])
    info.add_metric([status["version"], platform.python_version()], 1)
    yield info


def _backends(backends: list[dict]) -> Iterator[Metric]:
    responses = CounterMetricFamily("simplelb_backend_responses", "Responses received from each backend",
                                    labels=["backend", "code"])
    duration = HistogramMetricFamily("simplelb_backend_response_duration_seconds",
                                     "From sending to a backend to its response head", labels=["backend"])
    failures = CounterMetricFamily("simplelb_backend_failures", "Failed attempts", labels=["backend", "reason"])
    retries = CounterMetricFamily("simplelb_backend_retries", "Retries sent to each backend", labels=["backend"])
    up = GaugeMetricFamily("simplelb_backend_up", "1 when the backend takes new requests, else 0", labels=["backend"])
    state = GaugeMetricFamily("simplelb_backend_state", "1 for the backend's current state", labels=["backend", "state"])
    in_flight = GaugeMetricFamily("simplelb_backend_in_flight", "Requests the backend is serving now", labels=["backend"])
    weight = GaugeMetricFamily("simplelb_backend_weight", "Effective weight (slow start included)", labels=["backend"])
    probes = CounterMetricFamily("simplelb_health_checks", "Health probes", labels=["backend", "result"])
    ejections = CounterMetricFamily("simplelb_backend_ejections", "Passive-health ejections", labels=["backend"])
    seen: set[str] = set()
    for b in backends:
        name = b["name"]
        if name in seen:
            # A name that moved to another address while the old backend finishes its requests: the
            # current one is listed first; a second series with the same labels would void the scrape.
            continue
        seen.add(name)
        for code in STATUS_CLASSES:
            responses.add_metric([name, code], b["responses"][code])
        duration.add_metric([name], _buckets(b["response_time"]), b["response_time"]["sum"])
        for reason in FAILURE_REASONS:
            failures.add_metric([name, reason], b["failure_reasons"][reason])
        retries.add_metric([name], b["retries"])
        up.add_metric([name], 1 if b["up"] else 0)
        for each in STATES:
            state.add_metric([name, each], 1 if b["state"] == each else 0)
        in_flight.add_metric([name], b["in_flight"])
        weight.add_metric([name], b["effective_weight"])
        probes.add_metric([name, "pass"], b["probes"]["pass"])
        probes.add_metric([name, "fail"], b["probes"]["fail"])
        ejections.add_metric([name], b["ejections"])
    yield from (responses, duration, failures, retries, up, state, in_flight, weight, probes, ejections)


def _discovery(sources: list[dict]) -> Iterator[Metric]:
    up = GaugeMetricFamily("simplelb_discovery_up",
                           "1 when the source's last lookup or watch worked; 0: stale, its last set is kept",
                           labels=["source"])
    found = GaugeMetricFamily("simplelb_discovery_backends", "Backends the source found last", labels=["source"])
    for source in sources:
        up.add_metric([source["source"]], 1 if source["up"] else 0)
        found.add_metric([source["source"]], source["backends"])
    yield from (up, found)


class _StatusCollector:
    def __init__(self, status: dict):
        self._status = status

    def collect(self) -> Iterator[Metric]:
        yield from _traffic(self._status)
        yield from _backends(self._status["backends"])
        yield from _discovery(self._status.get("discovery", []))


def render(status: dict) -> bytes:
    """The exposition of one status, in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry)
