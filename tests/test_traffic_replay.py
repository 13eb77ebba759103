"""--replay: a simplelb JSON access log sent again with its mix and spacing, to a URL or through --compare."""

import json
import random
from collections import Counter

import pytest

from traffic.replay import ReplayError, parse_access_log, schedule
from traffic.request import parse_target

from .conftest import run_cli
from .traffic_support import recorder, write_access_log  # noqa: F401 - a fixture

MIX = [("GET", "/a"), ("GET", "/a"), ("GET", "/a"), ("POST", "/b"), ("POST", "/b"), ("DELETE", "/c?x=1")]


def recorded_traffic(seed: int = 7) -> list[tuple[float, str, str]]:
    """200 requests over about 3.5 s: bursts with random gaps, then half a second of silence, then more."""
    rng = random.Random(seed)
    requests, t = [], 0.0
    while len(requests) < 200:
        t += rng.expovariate(1 / 0.015)
        if len(requests) == 120:
            t += 0.5  # a quiet stretch that must stay quiet
        method, target = rng.choice(MIX)
        requests.append((round(t, 3), method, target))
    return requests


def test_the_log_is_sorted_by_time_and_offset_from_the_first(tmp_path):
    log = tmp_path / "access.log"
    write_access_log(log, [(1.5, "GET", "/late"), (0.25, "POST", "/first"), (1.0, "GET", "/mid")])
    entries = parse_access_log(log.read_text(), str(log)).entries
    assert [(e.offset_s, e.method, e.target) for e in entries] == [(0.0, "POST", "/first"), (0.75, "GET", "/mid"),
                                                                   (1.25, "GET", "/late")]


@pytest.mark.parametrize("line, message", [
    ("not json", ":2: not a simplelb JSON access-log line"),
    ('{"time": "2024-05-01T12:00:00.000Z", "method": "GET"}', "no 'target' field"),
    ('{"time": "2024-05-01 12:00:00", "method": "GET", "target": "/"}', "needs a time zone"),
    ('{"time": "yesterday", "method": "GET", "target": "/"}', "Invalid isoformat"),
    ('{"time": "2024-05-01T12:00:00.000Z", "method": "G T", "target": "/"}', "not an HTTP method"),
    ('{"time": "2024-05-01T12:00:00.000Z", "method": "GET", "target": "x"}', "must start with /"),
    ("[" * 100_000, "not a simplelb JSON access-log line"),  # deep nesting: a RecursionError, not a traceback
])
def test_a_bad_line_is_named(line, message):
    good = '{"time": "2024-05-01T12:00:00.000Z", "method": "GET", "target": "/"}'
    with pytest.raises(ReplayError) as info:
        parse_access_log(good + "\n" + line + "\n", "my.log")
    assert str(info.value).startswith("my.log:2: ") and message in str(info.value) and "\n" not in str(info.value)


def test_an_empty_or_binary_log_is_one_line(tmp_path):
    empty, binary = tmp_path / "empty.log", tmp_path / "bin.log"
    empty.write_text("\n\n")
    binary.write_bytes(b"\xff\xfe{}\n")
    for path, message in ((empty, "no requests in it"), (binary, "not UTF-8 text")):
        result = run_cli("-m", "traffic", "--replay", str(path), "--url", "http://127.0.0.1:1")
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr


def test_a_real_log_replays_its_malformed_asterisk_and_absolute_form_lines(recorder, tmp_path):  # noqa: F811
    # What simplelb logs: "-" for a request it could not parse (a 400, never forwarded), OPTIONS *, and a
    # target in absolute form. The replay refused the whole log for any of them.
    log = tmp_path / "access.log"
    write_access_log(log, [(0.0, "GET", "/a"), (0.01, "-", "-"), (0.02, "OPTIONS", "*"),
                           (0.03, "GET", "http://example/abs?q=1"), (0.04, "-", "-")])
    server = recorder()
    result = run_cli("-m", "traffic", "--replay", str(log), "--url", server.url, "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["method"], r["target"]) for r in server.received] == [("GET", "/a"), ("OPTIONS", "*"),
                                                                     ("GET", "/abs?q=1")]
    assert json.loads(result.stdout)["replay_skipped"] == 2
    assert "replay: skipped 2 log lines with method '-'" in result.stderr  # (with --json, notes go there)
    only_bad = tmp_path / "bad.log"
    write_access_log(only_bad, [(0.0, "-", "-")])
    with pytest.raises(ReplayError, match="no requests in it .*1 with method '-' skipped"):
        parse_access_log(only_bad.read_text())
    with pytest.raises(ReplayError, match="must start with /"):
        parse_access_log('{"time": "2024-05-01T12:00:00.000Z", "method": "GET", "target": "*"}')


def test_a_replay_slower_than_a_day_is_refused(tmp_path):
    log = parse_access_log('{"time": "2024-05-01T12:00:00.000Z", "method": "GET", "target": "/"}\n'
                           '{"time": "2024-05-01T12:20:00.000Z", "method": "GET", "target": "/"}')
    base = parse_target("http://127.0.0.1:1")
    assert schedule(log.entries, base, 0.014)[-1][0] == pytest.approx(1200 / 0.014)  # 23.8 hours
    with pytest.raises(ReplayError, match="at --speed 0.01 the replay would take 120,000s, more than a day"):
        schedule(log.entries, base, 0.01)  # it ran for 33 hours
    path = tmp_path / "access.log"
    path.write_text('{"time": "2024-05-01T12:00:00.000Z", "method": "GET", "target": "/"}\n')
    for speed in ("1e-300", "0.0009"):  # 1e-300 was an OverflowError traceback; 1e-9 a run of decades
        result = run_cli("-m", "traffic", "--replay", str(path), "--url", "http://127.0.0.1:1", "--speed", speed)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"--speed: must be from 0.001 to 1,000, not '{speed}'" in result.stderr


def arrivals(server) -> list[float]:
    first = server.received[0]["t"]
    return [r["t"] - first for r in server.received]


@pytest.mark.parametrize("speed", [1, 2])
def test_replay_reproduces_the_mix_and_the_spacing_within_5_percent(recorder, tmp_path, speed):  # noqa: F811
    requests = recorded_traffic()
    log = tmp_path / "access.log"
    write_access_log(log, random.Random(1).sample(requests, len(requests)))  # written out of order, as logs are
    server = recorder()
    result = run_cli("-m", "traffic", "--replay", str(log), "--url", server.url, "--speed", str(speed), "--json",
                     timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == len(requests)
    # The mix: exactly the recorded requests.
    assert Counter((r["method"], r["target"]) for r in server.received) == Counter((m, t) for _, m, t in requests)
    # The spacing: never faster than recorded, and 95% of the requests each within 5% of the span
    # of its time. Not every one: a busy machine may stall this process for a moment (the report's
    # send lag says so), and once that was the last send, 0.22 s late.
    want = [offset / speed for offset, _, _ in requests]
    span = want[-1]
    got = sorted(arrivals(server))
    assert got[-1] >= 0.95 * span, (got[-1], span)
    off = sorted(abs(g - w) for g, w in zip(got, want, strict=True))
    assert off[int(0.95 * len(off))] <= 0.05 * span, off[-10:]
    quiet_from, quiet_to = want[119], want[120]  # the half second of silence stays silent
    assert not any(quiet_from + 0.05 * span < t < quiet_to - 0.05 * span for t in got)


def test_compare_on_replayed_traffic(tmp_path):
    log = tmp_path / "access.log"
    write_access_log(log, [(i * 0.01, "GET", f"/item/{i % 5}") for i in range(60)])
    result = run_cli("-m", "traffic", "--compare", "round-robin,least-connections", "--replay", str(log),
                     "--slow-backend", "20", "--json", timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == "60 replayed requests"
    for summary in report["algorithms"].values():
        assert summary["requests"] == 60 and summary["status_codes"] == {"200": 60}
    assert report["algorithms"]["round-robin"]["backends"]["mock-3"]["requests"] == 20
