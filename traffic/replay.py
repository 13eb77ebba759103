"""``--replay ACCESS_LOG``: the requests of a simplelb JSON access log, again, with their spacing.

The log is simplelb's ``--access-log-format json``: one object per line with
``time`` (RFC 3339, UTC, milliseconds, e.g. ``2024-05-01T12:00:00.123Z``),
``method`` and ``target`` (the other fields are not needed here). Each line
becomes one request with the same method and target, sent at the same offset
from the first line as in the log, divided by ``--speed`` (2 sends twice as
fast). Lines are sorted by time first: a log is written as requests end, not
as they start. Request bodies are not in the log, so none are sent.

What a real log holds besides paths:

* ``"method": "-"`` (and ``"target": "-"``): a request the balancer could not
  parse, answered 400 and never forwarded. There is nothing to send again;
  such lines are skipped and counted (``AccessLog.skipped``), and the run
  says how many.
* ``OPTIONS *`` (RFC 9112 section 3.2.4, asterisk-form): sent as it is.
* absolute-form targets (``http://example/abs``, section 3.2.2, as a proxy
  is sent): their path and query go to ``--url``, as every other request.

A schedule longer than a day (``--duration``'s limit), at the given speed, is
refused: a slow ``--speed`` could otherwise start a run of decades.

The schedule can go to a URL, or through ``--compare`` to a balancer per
algorithm: what would peak-ewma have done with this traffic?
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlsplit

from .request import TOKEN, Target, read_text, request_path

MAX_SPAN_S = 86_400.0  # the longest replay, at its speed: a day, as --duration
SKIPPED_METHOD = "-"  # simplelb's method (and target) of a request it could not parse


class ReplayError(ValueError):
    """The access log cannot be replayed; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    offset_s: float  # since the log's first request
    method: str
    target: str  # what to send: a path (and query), or * for OPTIONS


@dataclass(frozen=True)
class AccessLog:
    entries: list[Entry]  # sorted by time
    skipped: int = 0  # lines of requests the balancer could not parse (method "-"): nothing to send again

    @property
    def note(self) -> str:
        """What was left out, for the run's notes; empty when nothing was."""
        if not self.skipped:
            return ""
        return (f"replay: skipped {self.skipped} log line{'s' * (self.skipped != 1)} with method '-' "
                f"(requests the balancer could not parse and answered 400 without forwarding)")


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"'time' must be an RFC 3339 string, not {text!r}")
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"'time' needs a time zone (Z for UTC), not {text!r}")
    return stamp


def replay_target(method: str, target: str) -> str:
    """What to send for a logged target: origin-form as it is, asterisk-form for OPTIONS, absolute-form's path."""
    if target == "*" and method == "OPTIONS":
        return target
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return request_path(target)


def _entry(line: str) -> tuple[datetime, str, str] | None:
    """One line's time, method and what to send; None for a request the balancer could not parse."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in ("time", "method", "target") if key not in record]
    if missing:
        raise ValueError(f"no '{missing[0]}' field")
    method, target = record["method"], record["target"]
    if method == SKIPPED_METHOD:
        parse_time(record["time"])  # (still a line of the log, or the file is not one)
        return None
    if not isinstance(method, str) or not TOKEN.fullmatch(method):
        raise ValueError(f"'method' is not an HTTP method: {method!r}")
    if not isinstance(target, str):
        raise ValueError(f"'target' must be a path starting with /, not {target!r}")
    return parse_time(record["time"]), method.upper(), replay_target(method.upper(), target)


def parse_access_log(text: str, source: str = "access log") -> AccessLog:
    """Entries sorted by time, with offsets from the first; ``ReplayError`` names the line of any mistake."""
    stamped, skipped = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = _entry(line)
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is one; deep nesting the other
            raise ReplayError(f"{source}:{number}: not a simplelb JSON access-log line: {exc}") from None
        if entry is None:
            skipped += 1
        else:
            stamped.append(entry)
    if not stamped:
        also = f"; {skipped} with method '-' skipped" if skipped else ""
        raise ReplayError(f"{source}: no requests in it (expected simplelb's JSON access log, one object a line"
                          f"{also})")
    stamped.sort(key=lambda item: item[0])
    first = stamped[0][0]
    return AccessLog([Entry((stamp - first).total_seconds(), method, target) for stamp, method, target in stamped],
                     skipped)


def load_access_log(path: str) -> AccessLog:
    return parse_access_log(read_text(path, "access log", ReplayError), path)


def check_span(entries: list[Entry], speed: float) -> None:
    """``ReplayError`` if replaying ``entries`` at ``speed`` would take more than ``MAX_SPAN_S``."""
    took = span_s(entries) / speed
    if took > MAX_SPAN_S:
        raise ReplayError(f"at --speed {speed:g} the replay would take {took:,.0f}s, more than a day "
                          f"({MAX_SPAN_S:,.0f}s, as --duration); give a higher --speed")


def schedule(entries: list[Entry], base: Target, speed: float = 1.0) -> tuple[tuple[float, Target], ...]:
    """Each entry as a request to ``base``'s origin (with its headers), at its offset divided by ``speed``."""
    check_span(entries, speed)
    targets: dict[tuple[str, str], Target] = {}  # one object per distinct request: built, and pickled, once
    for e in entries:
        if (e.method, e.target) not in targets:
            targets[e.method, e.target] = replace(base, method=e.method, path=e.target, body=None)
    return tuple((e.offset_s / speed, targets[e.method, e.target]) for e in entries)


def span_s(entries: list[Entry]) -> float:
    return entries[-1].offset_s if entries else 0.0
