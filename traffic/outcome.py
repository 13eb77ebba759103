"""What happened to one request (``Result``), and the one definition of a failed request.

A request **failed** when either

* no answer came back: a *transport* error, named by kind (``connection
  refused``, ``timeout``, ``connection closed``, ``certificate verify
  failed``, ...), or
* the answer was a **5xx**: the server (or the balancer in front of it) says
  it could not serve the request.

A request still unanswered when a run is stopped (Ctrl-C) is a transport
failure of the kind ``unanswered at stop``, with the time it had waited.

A 4xx is an answer to what was asked, not a failure of the service, so it is
not counted (as in hey, vegeta and the balancer's own passive health). A
request sent again on a new connection because the server had closed the idle
keep-alive one (``Result.reconnected``) is not a failure either: see
``sender.py``.

Every report -- the progress line, the summary, the timeline, JSON, CSV, HTML,
``--compare``, ``--threshold 'errors<1%'`` and ``--max-error-rate`` -- counts
through ``failure_of`` and ``count_failures`` here, and shows the two kinds
separately and together the same way (``describe``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TRANSPORT = "transport"
# The transport kind of a request still waiting for its answer when the run was stopped.
UNANSWERED = "unanswered at stop"
HTTP_5XX = "http_5xx"


@dataclass(frozen=True, slots=True)
class Result:
    """One request: when it started (seconds since the run began), how long it took, and how it ended."""

    started_s: float  # open loop: the scheduled time; closed loop: when it was sent
    latency_s: float  # open loop: from the scheduled time, so a stalled server shows
    status: int | None  # None when no response arrived
    backend: str | None  # from X-Backend, else X-Upstream
    error: str | None  # a short kind, e.g. "connection refused", "timeout"
    lag_s: float = 0.0  # open loop: how late the request was sent after its scheduled time
    reconnected: bool = False  # sent again on a new connection: the kept-alive one had been closed
    target: Any = None  # the ``request.Target`` it was (method and URL for --csv)


def failure_of(result: Result) -> str | None:
    """``TRANSPORT``, ``HTTP_5XX`` or None: the one rule for "this request failed"."""
    if result.error is not None:
        return TRANSPORT
    if result.status is not None and result.status >= 500:
        return HTTP_5XX
    return None


def is_failed(result: Result) -> bool:
    return result.error is not None or (result.status is not None and result.status >= 500)


def count_failures(results: Iterable[Result]) -> dict:
    """Failed requests, together and by kind: what every report prints."""
    total = failed = 0
    kinds: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for result in results:
        total += 1
        kind = failure_of(result)
        if kind == TRANSPORT:
            kinds[result.error] += 1
        elif kind == HTTP_5XX:
            codes[str(result.status)] += 1
        failed += kind is not None
    return {
        "failed": failed,
        "rate": round(failed / total, 6) if total else 0.0,
        TRANSPORT: sum(kinds.values()),
        HTTP_5XX: sum(codes.values()),
        "transport_by_kind": dict(kinds.most_common()),
        "http_5xx_by_status": dict(sorted(codes.items())),
    }


def describe(failures: dict, requests: int) -> str:
    """One sentence, the same everywhere: '3 of 600 (0.50%): transport 1 (timeout x 1) + HTTP 5xx 2 (503 x 2)'."""
    if not failures["failed"]:
        return f"none of {requests}"

    def detail(counts: dict) -> str:
        return " (" + ", ".join(f"{name} x {count}" for name, count in counts.items()) + ")" if counts else ""

    return (
        f"{failures['failed']} of {requests} ({failures['rate']:.2%}): "
        f"transport {failures[TRANSPORT]}{detail(failures['transport_by_kind'])}"
        f" + HTTP 5xx {failures[HTTP_5XX]}{detail(failures['http_5xx_by_status'])}"
    )
