"""Files a run writes: ``--csv`` (one row per request), ``--json-file``, ``--html``; checked before the run.

An output path that cannot be written is found out before a single request
is sent (``check_writable``), not after a long run whose report would then be
lost.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

from .outcome import Result, failure_of

CSV_FIELDS = ("scheduled_s", "start_s", "latency_ms", "status", "backend", "error", "failure", "reconnected",
              "method", "url")


def check_writable(path: str) -> str | None:
    """None if ``path`` can be written; else a one-line reason. Leaves no file behind."""
    existed = os.path.exists(path)
    if os.path.isdir(path):
        return f"{path} is a directory"
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    if not existed:
        os.unlink(path)
    return None


def csv_row(result: Result) -> tuple:
    target = result.target
    return (
        f"{result.started_s:.6f}",
        f"{result.started_s + result.lag_s:.6f}",
        f"{result.latency_s * 1000:.3f}",
        result.status if result.status is not None else "",
        result.backend or "",
        result.error or "",
        failure_of(result) or "",
        int(result.reconnected),
        target.method if target is not None else "",
        target.url if target is not None else "",
    )


def write_csv(path: str, results: Sequence[Result]) -> None:
    """One row per request, in the order they were started (scheduled, in open loop)."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        writer.writerows(csv_row(r) for r in sorted(results, key=lambda r: r.started_s))


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
