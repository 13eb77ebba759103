import json

import pytest

from traffic.report import format_report, summarize
from traffic.runner import Result, Target, TargetError, parse_target, run_load

from .conftest import free_port, run_cli


def test_summary_counts_backends_statuses_and_errors():
    results = [
        Result(0.0, 0.010, 200, "a", None),
        Result(0.0, 0.020, 200, "b", None),
        Result(0.0, 0.030, 500, "a", None),
        Result(0.0, 0.040, None, None, "timeout"),
    ]
    summary = summarize(results, 2.0, url="http://x/", concurrency=2)
    assert {name: (row["requests"], row["share"], row["failed"]) for name, row in summary["backends"].items()} == {
        "a": (2, 0.6667, 1), "b": (1, 0.3333, 0)}
    assert summary["backends"]["a"]["p99_ms"] == pytest.approx(30.0, rel=0.01)
    assert summary["status_codes"] == {"200": 2, "500": 1}
    assert summary["errors"] == {"timeout": 1}
    # One definition of failed: the transport error and the 5xx, apart and together.
    assert summary["failures"] == {"failed": 2, "rate": 0.5, "transport": 1, "http_5xx": 1,
                                   "transport_by_kind": {"timeout": 1}, "http_5xx_by_status": {"500": 1}}
    assert summary["throughput_rps"] == 2.0
    assert summary["latency_ms"]["min"] == 10.0 and summary["latency_ms"]["max"] == 40.0
    text = format_report(summary)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "Failed: 2 of 4 (50.00%): transport 1 (timeout x 1) + HTTP 5xx 1 (500 x 1)" in text


def test_reconnects_that_failed_are_not_said_to_have_not_failed():
    resent = [Result(0.0, 0.01, 200, "a", None, reconnected=True),
              Result(0.0, 0.01, None, None, "connection refused", reconnected=True)]
    summary = summarize(resent, 1.0)
    assert (summary["reconnects"], summary["reconnects_failed"]) == (2, 1)
    text = " ".join(format_report(summary).split())  # (the line is wrapped at 80 columns)
    # It read "2 (... sent again on a new one, not failed)" though one had failed there.
    assert "Reconnects: 2 (the server had closed an idle keep-alive connection; sent again on a new one: " \
           "1 not failed, 1 failed (counted above))" in text
    assert "sent again on a new one: not failed" in " ".join(format_report(summarize(resent[:1], 1.0)).split())


def test_one_open_loop_request_is_not_said_to_fall_behind():
    # One send has no rate: it was taken for 1 req/s, and "fell behind" any rate asked above that.
    summary = summarize([Result(0.0, 0.01, 200, "a", None)], 0.1, rate=50)
    assert summary["generator"]["fell_behind"] is False and summary["generator"]["sent_rps"] is None
    text = format_report(summary)
    assert "sent 1 request (too few for a rate)," in text and "WARNING" not in text


def test_parse_target():
    assert parse_target("http://127.0.0.1:8080") == Target("127.0.0.1", 8080, "/")
    assert parse_target("http://localhost:81/base?q=1") == Target("localhost", 81, "/base?q=1")
    assert parse_target("http://h:1/base", "/other").path == "/other"
    for bad in ("ftp://h:1", "127.0.0.1:8080", "http://h:notaport"):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_run_load_through_the_balancer_attributes_every_response(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks)
    results, elapsed = run_load(Target("127.0.0.1", lb.port, "/"), 90, concurrency=5)
    summary = summarize(results, elapsed)
    assert summary["requests"] == 90
    assert {name: row["requests"] for name, row in summary["backends"].items()} == {"mock-1": 30, "mock-2": 30, "mock-3": 30}
    assert summary["status_codes"] == {"200": 90}


def test_run_load_classifies_errors():
    results, _ = run_load(Target("127.0.0.1", free_port(), "/"), 3, concurrency=1)
    assert [r.error for r in results] == ["connection refused"] * 3


def test_cli_json_report(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks)
    result = run_cli("-m", "traffic", "--n", "40", "--concurrency", "4", "--url", lb.url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 40
    assert report["backends"]["mock-1"]["requests"] == 20
    assert result.stderr == ""  # no progress bar when not on a terminal


def test_cli_text_report_uses_upstream_when_there_is_no_x_backend(scripted, balancer):
    from .conftest import serve_forever_ok

    backend = scripted(serve_forever_ok)
    lb = balancer([backend], backend_header="X-Upstream")
    result = run_cli("-m", "traffic", "--n", "10", "--url", lb.url, "--method", "post", "--path", "/p")
    assert result.returncode == 0
    assert backend.address in result.stdout
    assert "200 x 10" in result.stdout
    assert {r.method for r in backend.received} == {"POST"}


def test_cli_unreachable_target_is_one_line():
    port = free_port()
    result = run_cli("-m", "traffic", "--n", "5", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr == f"traffic: error: cannot connect to http://127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize("args", [["--n", "0"], ["--concurrency", "x"], ["--url", "nope"], ["--timeout", "-1"]])
def test_cli_bad_flags_are_one_line(args):
    result = run_cli("-m", "traffic", *args)
    assert result.returncode in (1, 2)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("traffic: error:")


def test_demo_shows_the_traffic_move_and_come_back():
    result = run_cli("-m", "traffic", "--demo", "--n", "90", "--json", timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    phase1, phase2, phase3 = report["phases"]
    assert set(phase1["backends"]) == {"mock-1", "mock-2", "mock-3"}
    assert set(phase2["backends"]) == {"mock-1", "mock-3"}
    assert set(phase3["backends"]) == {"mock-1", "mock-2", "mock-3"}
    assert report["requests"] == 90
    assert report["status_codes"] == {"200": 90}
    assert "took mock-2 out" in result.stderr


def test_demo_with_a_rate_sends_at_that_rate():
    result = run_cli("-m", "traffic", "--demo", "--n", "30", "--rate", "40", "--json", timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 30 and report["generator"]["requested_rps"] == 40
    # 10 a phase on the open loop's schedule (it used to ignore --rate and send as fast as it could)
    assert all(30 <= phase["generator"]["sent_rps"] <= 60 for phase in report["phases"]), report["phases"]


def test_compare_runs_each_algorithm_and_shows_the_slow_backend_avoided():
    result = run_cli(
        "-m", "traffic", "--compare", "round-robin,peak-ewma", "--slow-backend", "30",
        "--n", "90", "--concurrency", "3", "--json", timeout_s=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["slow_backend"] == "mock-3"
    rows = report["algorithms"]
    assert set(rows) == {"round-robin", "peak-ewma"}
    assert rows["round-robin"]["backends"]["mock-3"]["requests"] == 30
    assert rows["peak-ewma"]["backends"].get("mock-3", {"requests": 0})["requests"] < 30
    assert all(row["status_codes"] == {"200": 90} for row in rows.values())


def test_compare_table_fits_80_columns():
    from traffic.compare import format_comparison

    summary = summarize([Result(0, 0.001, 200, "mock-1", None)], 1.0)
    text = format_comparison({"source": "10 requests", "slow_backend": "mock-3", "slow_backend_ms": 50,
                              "backends": ["mock-1", "mock-2", "mock-3"], "algorithms": {"least-connections": summary}})
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "100.0%" in text


def test_compare_rejects_unknown_algorithms_in_one_line():
    result = run_cli("-m", "traffic", "--compare", "round-robin,fastest")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "fastest" in result.stderr and "peak-ewma" in result.stderr


def test_slow_backend_needs_compare():
    result = run_cli("-m", "traffic", "--slow-backend", "10")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--slow-backend does not apply to a run against --url (only to --compare" in result.stderr


def test_a_slow_backend_the_mocks_cannot_be_is_refused_not_reported():
    # Accepted, the mock refused it (400) unheard, and the report said mock-3 answered in 700000 ms.
    result = run_cli("-m", "traffic", "--compare", "round-robin", "--slow-backend", "700000", "--n", "3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--slow-backend: must be greater than zero and at most 600,000, not '700000'" in result.stderr


def test_a_control_request_the_mock_refuses_is_an_error():
    from traffic.rig import ControlError, start_rig

    with pytest.raises(ControlError, match=r"/_mock/latency\?ms=700000 .* answered 400: latency must be"):
        start_rig(2, slow_ms=700_000)
    rig = start_rig(2)
    try:
        with pytest.raises(ControlError, match="answered 400: error rate must be"):
            rig.control("mock-1", "/_mock/error-rate?p=2")
        rig.control("mock-1", "/_mock/error-rate?p=0.5")  # (and an accepted one is quiet)
    finally:
        rig.stop(grace_s=0)


def test_compare_on_a_scenario_runs_its_events_for_each_algorithm(tmp_path):
    scenario = tmp_path / "slow.toml"
    scenario.write_text('servers = 2\nalgorithm = "random"\n[[phase]]\nduration = 1.5\nrate = 100\n'
                        '[[event]]\nat = 0.2\nserver = "mock-2"\naction = "latency"\nvalue = "150"\n')
    result = run_cli("-m", "traffic", "--compare", "round-robin,peak-ewma", "--scenario", str(scenario), "--json",
                     timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == "scenario slow" and report["backends"] == ["mock-1", "mock-2"]
    assert [label for _, label in report["events"]["peak-ewma"]] == ["mock-2 latency 150"]
    rows = report["algorithms"]
    assert all(row["requests"] == 150 and row["failures"]["failed"] == 0 for row in rows.values())
    slow = {name: row["backends"]["mock-2"]["requests"] for name, row in rows.items()}
    assert slow["round-robin"] == 75 and slow["peak-ewma"] < 60  # peak-ewma steers around the slow one
