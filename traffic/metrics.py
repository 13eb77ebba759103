"""``--metrics URL``: what the balancer saw, scraped from its Prometheus ``/metrics`` during the run.

A ``Scraper`` thread fetches the URL at the start, every second, and once
more at the end, and parses the text with ``prometheus_client``'s own parser.
Of the balancer's metrics (the observability issue's table) it keeps, per
backend (the ``backend`` label):

* ``state``: the ``state`` label of ``simplelb_backend_state`` whose value is 1,
* ``in_flight``: ``simplelb_backend_in_flight``,
* ``retries``: the increase of ``simplelb_backend_retries_total`` since the
  previous scrape (a counter's total says little; its rate says what happened).

Each scrape becomes a sample ``{"t_s": seconds since the run began,
"backends": {name: {...}}}``. A scrape that fails is counted and skipped: the
run goes on.
"""

from __future__ import annotations

import threading
import time
import urllib.request

INTERVAL_S = 1.0
STATE = "simplelb_backend_state"
IN_FLIGHT = "simplelb_backend_in_flight"
RETRIES = "simplelb_backend_retries_total"


class MetricsError(ValueError):
    """The URL does not answer with Prometheus metrics; the message is one line."""


def fetch(url: str, timeout_s: float = 2.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the user's URL
            return response.read().decode("utf-8")
    except (OSError, ValueError) as exc:
        raise MetricsError(f"cannot scrape --metrics {url}: {getattr(exc, 'reason', None) or exc}") from None


def parse(text: str) -> dict[str, dict]:
    """Per backend: ``state``, ``in_flight`` and the ``retries_total`` counter, from the exposition text."""
    from prometheus_client.parser import text_string_to_metric_families  # only runs with --metrics import it

    backends: dict[str, dict] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.labels.get("backend")
                if name is None:
                    continue
                seen = backends.setdefault(name, {"state": None, "in_flight": None, "retries_total": None})
                if sample.name == STATE and sample.value == 1:
                    seen["state"] = sample.labels.get("state")
                elif sample.name == IN_FLIGHT:
                    seen["in_flight"] = sample.value
                elif sample.name == RETRIES:
                    seen["retries_total"] = sample.value
    except ValueError as exc:
        raise MetricsError(f"not Prometheus metrics: {exc}") from None
    return backends


def check(url: str) -> str | None:
    """None when the URL answers with the balancer's metrics; else a one-line reason."""
    try:
        text = fetch(url)
    except MetricsError as exc:
        return str(exc)
    try:
        backends = parse(text)
    except MetricsError as exc:
        return f"--metrics {url}: {exc}"
    if not backends:
        return f"--metrics {url}: no per-backend simplelb_backend_* metrics there"
    return None


class Scraper:
    """Scrapes ``url`` every ``interval_s`` on a named daemon thread until ``stop()``."""

    def __init__(self, url: str, start_at: float, interval_s: float = INTERVAL_S):
        self.url = url
        self.start_at = start_at  # perf_counter value of the run's t = 0
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.failed = 0
        self._previous: dict[str, float] = {}  # retries_total per backend at the last scrape
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traffic-metrics", daemon=True)

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def stop(self) -> list[dict]:
        """Stop, after one last scrape; return the samples."""
        self._stopping.set()
        self._thread.join(5)
        return self.samples

    def _loop(self) -> None:
        tick = 0
        while True:
            self.scrape()
            tick += 1
            delay = self.start_at + tick * self.interval_s - time.perf_counter()
            if self._stopping.wait(max(0.0, delay)):
                break
        self.scrape()  # the state at the end

    def scrape(self) -> None:
        t_s = time.perf_counter() - self.start_at
        try:
            backends = parse(fetch(self.url))
        except MetricsError:
            self.failed += 1
            return
        sample = {}
        for name, seen in sorted(backends.items()):
            total = seen.pop("retries_total")
            before = self._previous.get(name)
            seen["retries"] = None if total is None else total - (before if before is not None else total)
            if total is not None:
                self._previous[name] = total
            sample[name] = seen
        self.samples.append({"t_s": round(t_s, 3), "backends": sample})


def summarize_samples(samples: list[dict]) -> dict:
    """Per backend over the run: the states it went through (with when), peak in-flight, retries."""
    out: dict[str, dict] = {}
    for sample in samples:
        for name, seen in sample["backends"].items():
            row = out.setdefault(name, {"states": [], "max_in_flight": None, "retries": 0})
            if seen["state"] is not None and (not row["states"] or row["states"][-1][1] != seen["state"]):
                row["states"].append((sample["t_s"], seen["state"]))
            if seen["in_flight"] is not None:
                row["max_in_flight"] = max(row["max_in_flight"] or 0, seen["in_flight"])
            row["retries"] += seen["retries"] or 0
    return out


def format_samples_summary(summary: dict) -> list[str]:
    lines = []
    for name, row in summary.items():
        states = ", ".join(f"{state} from {t:.1f}s" for t, state in row["states"]) or "unknown"
        peak = "?" if row["max_in_flight"] is None else f"{row['max_in_flight']:g}"
        lines.append(f"  {name}: {states}; in flight at most {peak}; retries {row['retries']:g}")
    return lines
