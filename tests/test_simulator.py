"""The traffic simulator: histogram, open loop, timeline, scenarios, HTML report, terminal manners."""

import json
import math
import random
import signal
import threading
import time

import pytest

from traffic.histogram import LogHistogram
from traffic.outcome import Result
from traffic.report import summarize
from traffic.request import Mix
from traffic.runner import Job, Shard, Target, run_open_loop, run_schedule
from traffic.scenario import ScenarioError, bundled, load_scenario, parse_scenario, run_scenario
from traffic.timeline import build_timeline, format_timeline

from .conftest import run_cli, serve_forever_ok


def exact(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_histogram_percentiles_are_within_one_percent():
    rng = random.Random(42)
    values = [rng.lognormvariate(-6, 1.2) for _ in range(100_000)]  # seconds: ~2.5 ms median, long tail
    histogram = LogHistogram()
    for value in values:
        histogram.record(value)
    for p in (1, 50, 90, 99, 99.9):
        want = exact(values, p) * 1000
        assert abs(histogram.percentile_ms(p) - want) / want < 0.01, p
    assert histogram.count == 100_000
    assert histogram.max_us / 1000 == pytest.approx(max(values) * 1000)


def test_histogram_merge_equals_recording_everything():
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i in range(1, 500):
        (a if i % 2 else b).record(i / 1e4)
        both.record(i / 1e4)
    a.merge(b)
    assert [a.percentile_ms(p) for p in (50, 99)] == [both.percentile_ms(p) for p in (50, 99)]


def test_open_loop_keeps_its_schedule_and_counts_the_stall(scripted):
    stall = {"until": 0.0}

    def stalling(conn):
        while conn.read_request() is not None:
            wait = stall["until"] - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the server freezes; everything that arrives waits for it
            conn.respond()

    backend = scripted(stalling)
    target = Target("127.0.0.1", backend.port, "/")
    timer = threading.Timer(0.3, lambda: stall.update(until=time.monotonic() + 0.5))
    timer.start()
    results, elapsed = run_open_loop(target, 50, duration_s=1.2)
    timer.join()
    assert len(results) == 60
    # Sent on schedule although answers stopped coming for half a second: a loop that waited for
    # answers would send half a second late. (The bound allows for a busy machine's slow thread start.)
    assert max(r.lag_s for r in results) < 0.25
    # ...and the stall shows as latency for every request scheduled during it, not just one.
    stalled = [r for r in results if r.latency_s > 0.2]
    assert len(stalled) >= 15
    summary = summarize(results, elapsed, rate=50)
    assert summary["latency_ms"]["p99"] > 300
    # The send rate is over the sends, not the wait for the stalled answers. (Not "fell_behind":
    # with 60 sends its p99 lag is the one latest send, which a busy CI machine can make 20 ms.)
    assert summary["generator"]["sent_rps"] >= 0.95 * 50


def test_a_burst_of_due_sends_does_not_wait_behind_a_busy_sender(scripted):
    # Four sends due at once while one sender is free: each needs a sender of its own. Counting
    # free senders when they wake, not when a send is queued, gave all four to the one free
    # sender, and they went out 0.5, 1.0 and 1.5 s late behind the slow answers.
    first_answered = threading.Event()

    def slow_after_the_first(conn):
        while conn.read_request() is not None:
            if first_answered.is_set():
                time.sleep(0.5)
            first_answered.set()
            conn.respond()

    backend = scripted(slow_after_the_first)
    target = Target("127.0.0.1", backend.port, "/")
    results, _ = run_schedule([(0.0, target)] + [(0.2, target)] * 4)
    assert len(results) == 5
    assert max(r.lag_s for r in results) < 0.45  # (a busy machine's slow thread starts, but not 0.5 s)


def test_an_open_loop_run_lasts_to_the_end_of_its_schedule(scripted):
    backend = scripted(serve_forever_ok)
    target = Target("127.0.0.1", backend.port, "/")
    # 6 requests at 20/s are due at 0, 50, ... 250 ms: the run is 300 ms long, at 20 req/s. (Ended at
    # the last answer, it read 6 requests in 0.25 s: 24 req/s, and 'rps<=21' failed.)
    results, elapsed = run_open_loop(target, 20, n=6)
    assert len(results) == 6 and 0.3 <= elapsed < 5
    assert summarize(results, elapsed, rate=20)["throughput_rps"] <= 20
    results, elapsed = run_open_loop(target, 20, duration_s=0.3)
    assert len(results) == 6 and 0.3 <= elapsed < 5


def test_a_process_keeps_the_shared_start_of_an_open_loop_schedule(scripted):
    backend = scripted(serve_forever_ok)
    job = Job(Mix([Target("127.0.0.1", backend.port, "/")]), n=3, rate=100)
    # A process that woke up 300 ms after the common start sends late, and says so; its requests keep
    # their times on the shared clock. (Its schedule began when it woke up: no lag, times off by 0.3 s.)
    start_at = time.perf_counter() - 0.3
    results, _ = job.run(stop=threading.Event(), start_at=start_at, shard=Shard(0, 1))
    assert sorted(r.started_s for r in results) == pytest.approx([0.0, 0.01, 0.02], abs=1e-9)
    assert min(r.lag_s for r in results) >= 0.25


def on_schedule(n: int, rate: float, late: dict[int, float] | None = None) -> list[Result]:
    """``n`` answered sends at ``rate``/s, each on time but those in ``late`` (index -> seconds late)."""
    late = late or {}
    return [Result(i / rate, 0.001 + late.get(i, 0.0), 200, "b", None, late.get(i, 0.0)) for i in range(n)]


@pytest.mark.parametrize(("results", "behind"), [
    (on_schedule(60, 50), False),
    (on_schedule(60, 50, {30: 0.05}), False),  # one late send on a short run: a thread starting, not a trend
    (on_schedule(60, 50, {10: 0.05, 40: 0.05}), True),
    (on_schedule(1000, 50, {i: 0.03 for i in range(0, 1000, 90)}), True),  # 12 of 1,000: over 1%
    (on_schedule(1000, 50, {i: 0.03 for i in range(0, 1000, 120)}), False),  # 9 of 1,000
    (on_schedule(60, 40), True),  # sent at 40/s of the 50 asked
])
def test_the_generator_is_said_to_fall_behind_on_a_trend_not_one_late_send(results, behind):
    summary = summarize(results, results[-1].started_s + 0.01, rate=50)
    assert summary["generator"]["fell_behind"] is behind


def test_a_ten_second_run_has_a_timeline_row_a_second(capsys):
    import argparse

    from traffic.modes import Run, finish
    from traffic.terminal import Console

    # --duration 10 at 20/s: the last request starts at 9.95 s. Bucketed by that, the rows were half a second.
    results = [Result(i / 20, 0.001, 200, "b", None) for i in range(200)]
    args = argparse.Namespace(csv=None, json_file=None, html=None, json=True, threshold=[], max_error_rate=None)
    assert finish(args, Run("t", results, 10.004, "http://x/"), Console(notes_to_stderr=True), {}) == 0
    timeline = json.loads(capsys.readouterr().out)["timeline"]
    assert [(row["width_s"], row["requests"]) for row in timeline] == [(1.0, 20)] * 10


def test_timeline_attributes_traffic_when_a_backend_is_taken_down():
    scenario = parse_scenario(
        """
        servers = 2
        latency_ms = "1"
        health_interval = 0.1
        [[phase]]
        duration = 3
        rate = 100
        [[event]]
        at = 1.0
        server = "mock-2"
        action = "down"
        """,
        "inline",
    )
    run = run_scenario(scenario, say=lambda text: None)
    timeline = build_timeline(run["results"], 1.0)
    # Three seconds; a phase that began a few ms late on a busy machine puts its last sends in a 4th.
    assert len(timeline) == 3 or (len(timeline) == 4 and timeline[3]["requests"] <= 3), timeline
    # Round robin halves the first second; a request or two at its edge may be picked out of
    # start order, or meet mock-2 just as it goes down (seen once in CI: 0.51 / 0.49).
    assert timeline[0]["share"] == pytest.approx({"mock-1": 0.5, "mock-2": 0.5}, abs=0.02)
    assert timeline[2]["share"] == {"mock-1": 1.0}  # taken out within a second of the event
    assert sum(row["failed"] for row in timeline) == 0
    assert run["events"][0][1] == "mock-2 down" and 1.0 <= run["events"][0][0] < 1.2
    text = format_timeline(timeline, run["backends"], run["events"])
    assert "<- mock-2 down" in text


def test_a_scenario_keeps_its_timetable_when_a_phase_ends_with_slow_answers_in_flight():
    scenario = parse_scenario(
        """
        servers = 1
        latency_ms = "400"
        [[phase]]
        duration = 1
        rate = 10
        [[phase]]
        duration = 1
        rate = 10
        """,
        "inline",
    )
    run = run_scenario(scenario, say=lambda text: None)
    # The second phase begins at t = 1 s, as written, not when the first one's last answer came (1.3 s).
    assert [row["requests"] for row in build_timeline(run["results"], 1.0)] == [10, 10]
    assert sorted(round(r.started_s, 2) for r in run["results"])[10] == 1.0


@pytest.mark.parametrize("name", ["rolling-restart", "slow-backend", "flapping", "burst"])
def test_bundled_scenarios_parse(name):
    scenario = load_scenario(str(bundled(name)))
    assert scenario.phases and scenario.duration_s > 0


BAD_SCENARIOS = {
    "not toml": ("phase = [", "not valid TOML"),
    "number too long": ("servers = " + "9" * 5000, "not valid TOML: Exceeds the limit (4300 digits)"),  # not TOMLDecodeError
    "no phase": ("servers = 2", "needs at least one [[phase]]"),
    "bad rate": ("[[phase]]\nduration = 1\nrate = 'fast'", "phase 1: 'rate' must be a number"),
    "rate and concurrency": ("[[phase]]\nduration = 1\nrate = 5\nconcurrency = 2", "phase 1: give exactly one"),
    "no duration": ("[[phase]]\nrate = 5", "phase 1: 'duration' (seconds) is required"),
    "unknown field": ("[[phase]]\nduration = 1\nrate = 5\nspeed = 3", "phase 1: unknown field 'speed'"),
    "method not a token": ("[[phase]]\nduration = 1\nrate = 5\nmethod = 'G\u00c9T'", "phase 1: 'method' must be an HTTP"),
    "nul in path": ('[[phase]]\nduration = 1\nrate = 5\npath = "/a\\u0000b"', "phase 1: 'path' must start with /"),
    "unknown server": ("[[phase]]\nduration = 2\nrate = 5\n[[event]]\nat = 1\nserver = 'mock-9'\naction = 'down'",
                       "event 1: 'server' must be one of mock-1, mock-2, mock-3"),
    "unknown action": ("[[phase]]\nduration = 2\nrate = 5\n[[event]]\nat = 1\nserver = 'mock-1'\naction = 'explode'",
                       "event 1: 'action' must be one of"),
    "event after the end": ("[[phase]]\nduration = 2\nrate = 5\n[[event]]\nat = 5\nserver = 'mock-1'\naction = 'down'",
                            "event 1: 'at' must be a number from 0 to 2"),
    "latency without value": ("[[phase]]\nduration = 2\nrate = 5\n[[event]]\nat = 1\nserver = 'mock-1'\naction = 'latency'",
                              "event 1: 'value' is required for latency"),
    "bad algorithm": ("algorithm = 'fastest'\n[[phase]]\nduration = 1\nrate = 5", "'algorithm' must be one of"),
}


@pytest.mark.parametrize("text, message", BAD_SCENARIOS.values(), ids=BAD_SCENARIOS.keys())
def test_scenario_errors_name_the_field_in_one_line(text, message):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "my.toml")
    assert str(info.value).startswith("my.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_scenario_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[phase]]\nduration = 1\nrate = -5\n")
    result = run_cli("-m", "traffic", "--scenario", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "phase 1: 'rate'" in result.stderr


def test_cli_max_error_rate_gates_the_exit_status(mock_servers, balancer):
    import requests

    (mock,) = mock_servers(1)
    requests.post(mock.url + "/_mock/error-rate?p=1", timeout=5)
    lb = balancer([mock], eject_after=0)
    failing = run_cli("-m", "traffic", "--n", "20", "--url", lb.url, "--max-error-rate", "0.1")
    assert failing.returncode == 3 and "threshold failed: --max-error-rate 0.1" in failing.stderr
    requests.post(mock.url + "/_mock/error-rate?p=0", timeout=5)
    passing = run_cli("-m", "traffic", "--n", "20", "--url", lb.url, "--max-error-rate", "0.1")
    assert passing.returncode == 0


def test_cli_open_loop_json_has_timeline_and_generator(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks)
    result = run_cli("-m", "traffic", "--rate", "100", "--duration", "1.5", "--url", lb.url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 140 <= report["requests"] <= 151
    assert report["generator"]["requested_rps"] == 100
    # A 1.5 s run is drawn in 0.1 s buckets, so no chart of it is empty.
    assert {row["width_s"] for row in report["timeline"]} == {0.1}
    assert [row["t_s"] for row in report["timeline"]][:15] == [round(0.1 * i, 1) for i in range(15)]
    assert len(report["timeline"]) <= 16


def test_ctrl_c_stops_early_and_still_reports(mock_servers, balancer, process):
    (mock,) = mock_servers(1)
    lb = balancer([mock])
    proc = process("-m", "traffic", "--duration", "30", "--concurrency", "2", "--url", lb.url)
    deadline = time.monotonic() + 10
    while mock.requests < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    out = "".join(proc.stdout_lines)
    assert "requests to" in out and "Latency" in out
    assert "Traceback" not in proc.stderr


def test_report_fits_80_columns(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks)
    result = run_cli("-m", "traffic", "--duration", "2.2", "--concurrency", "2", "--url", lb.url)
    assert result.returncode == 0
    assert "Timeline" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
