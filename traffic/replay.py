"""``--replay ACCESS_LOG``: the requests of a simplelb JSON access log, again, with their spacing.

The log is simplelb's ``--access-log-format json``: one object per line with
``time`` (RFC 3339, UTC, milliseconds, e.g. ``2024-05-01T12:00:00.123Z``),
``method`` and ``target`` (the other fields are not needed here). Each line
becomes one request with the same method and target, sent at the same offset
from the first line as in the log, divided by ``--speed`` (2 sends twice as
fast). Lines are sorted by time first: a log is written as requests end, not
as they start. Request bodies are not in the log, so none are sent.

The schedule can go to a URL, or through ``--compare`` to a balancer per
algorithm: what would peak-ewma have done with this traffic?
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

from .request import TOKEN, Target, read_text, request_path


class ReplayError(ValueError):
    """The access log cannot be replayed; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    offset_s: float  # since the log's first request
    method: str
    target: str


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"'time' must be an RFC 3339 string, not {text!r}")
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"'time' needs a time zone (Z for UTC), not {text!r}")
    return stamp


def _entry(line: str) -> tuple[datetime, str, str]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in ("time", "method", "target") if key not in record]
    if missing:
        raise ValueError(f"no '{missing[0]}' field")
    method, target = record["method"], record["target"]
    if not isinstance(method, str) or not TOKEN.fullmatch(method):
        raise ValueError(f"'method' is not an HTTP method: {method!r}")
    if not isinstance(target, str):
        raise ValueError(f"'target' must be a path starting with /, not {target!r}")
    return parse_time(record["time"]), method.upper(), request_path(target)


def parse_access_log(text: str, source: str = "access log") -> list[Entry]:
    """Entries sorted by time, with offsets from the first; ``ReplayError`` names the line of any mistake."""
    stamped = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            stamped.append(_entry(line))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is one; deep nesting the other
            raise ReplayError(f"{source}:{number}: not a simplelb JSON access-log line: {exc}") from None
    if not stamped:
        raise ReplayError(f"{source}: no requests in it (expected simplelb's JSON access log, one object a line)")
    stamped.sort(key=lambda item: item[0])
    first = stamped[0][0]
    return [Entry((stamp - first).total_seconds(), method, target) for stamp, method, target in stamped]


def load_access_log(path: str) -> list[Entry]:
    return parse_access_log(read_text(path, "access log", ReplayError), path)


def schedule(entries: list[Entry], base: Target, speed: float = 1.0) -> tuple[tuple[float, Target], ...]:
    """Each entry as a request to ``base``'s origin (with its headers), at its offset divided by ``speed``."""
    targets: dict[tuple[str, str], Target] = {}  # one object per distinct request: built, and pickled, once
    for e in entries:
        if (e.method, e.target) not in targets:
            targets[e.method, e.target] = replace(base, method=e.method, path=e.target, body=None)
    return tuple((e.offset_s / speed, targets[e.method, e.target]) for e in entries)


def span_s(entries: list[Entry]) -> float:
    return entries[-1].offset_s if entries else 0.0
