"""--threshold: each kind passing and failing, on measured runs, and the exit status a CI job gates on."""

import json

import pytest

from traffic.outcome import Result
from traffic.report import latency_histogram, summarize
from traffic.thresholds import evaluate, parse_threshold

from .conftest import run_cli
from .traffic_support import recorder  # noqa: F401 - a fixture

# 100 requests: latencies 1..100 ms; 3 of them failed (2 timeouts, one 503), over 2 seconds.
RESULTS = [Result(0.0, (i + 1) / 1000, 200, "a", None) for i in range(97)] + [
    Result(0.0, 0.098, 503, "a", None), Result(0.0, 0.099, None, None, "timeout"),
    Result(0.0, 0.100, None, None, "timeout")]
SUMMARY = summarize(RESULTS, 2.0)


@pytest.mark.parametrize("text, passed", [
    ("p50<60ms", True), ("p50<40ms", False),
    ("p99<=0.1s", True), ("p99<90", False),  # no unit: milliseconds
    ("p99.9<101ms", True), ("max<50000us", False), ("min>1ms", False), ("min>=1ms", True), ("min<2ms", True),
    ("errors<5%", True), ("errors<1%", False), ("errors<=3", True), ("errors<3", False),
    ("rps>=50", True), ("rps>50", False),
])
def test_each_threshold_passes_and_fails(text, passed):
    (row,) = evaluate([parse_threshold(text)], SUMMARY, latency_histogram(RESULTS))
    assert row["passed"] is passed, row


def test_the_measured_values_are_the_reports():
    rows = evaluate([parse_threshold(t) for t in ("errors<1%", "errors<1", "rps>1", "p50<1")], SUMMARY,
                    latency_histogram(RESULTS))
    assert [row["shown"] for row in rows] == ["3.00%", "3", "50.0 req/s", f"{SUMMARY['latency_ms']['p50']:.2f} ms"]


def test_a_run_with_no_requests_passes_no_threshold():
    rows = evaluate([parse_threshold("p99<1s"), parse_threshold("errors<1%")], summarize([], 1.0), latency_histogram([]))
    assert [(row["passed"], row["shown"]) for row in rows] == [(False, "nothing (no requests)")] * 2


@pytest.mark.parametrize("text", ["p99", "p99<", "p101<1ms", "errors<1ms", "rps>5%", "p50<5%", "speed>1", "p0<1"])
def test_malformed_thresholds_are_refused(text):
    with pytest.raises(ValueError):
        parse_threshold(text)


def test_ci_gates_on_the_exit_status(recorder):  # noqa: F811
    server = recorder(delay_s=0.02)
    args = ("-m", "traffic", "--url", server.url, "--n", "20", "--concurrency", "2")
    passing = run_cli(*args, "--threshold", "p99<5s", "--threshold", "errors<1%", "--threshold", "rps>1")
    assert passing.returncode == 0, passing.stderr
    assert "Thresholds" in passing.stdout and passing.stdout.count("passed ") == 3
    failing = run_cli(*args, "--threshold", "p50<1ms", "--threshold", "errors<1%", "--json")
    assert failing.returncode == 3
    report = json.loads(failing.stdout)
    assert [(row["threshold"], row["passed"]) for row in report["thresholds"]] == [("p50<1ms", False),
                                                                                  ("errors<1%", True)]
    assert failing.stderr.count("threshold failed") == 1 and "p50<1ms (measured" in failing.stderr
