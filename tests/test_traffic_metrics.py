"""--metrics: the balancer's /metrics scraped during the run, parsed with prometheus_client, in every report.

The balancer does not serve /metrics yet; this server's body is written by
prometheus_client itself from a registry with the balancer's metric names
(issue 12), and it changes from one scrape to the next.
"""

import json

import pytest

from traffic.metrics import check, parse

from .conftest import run_cli
from .traffic_support import MetricsServer, recorder  # noqa: F401 - a fixture

A, B = "127.0.0.1:8081", "127.0.0.1:8082"


def story(server: MetricsServer, scrape: int) -> None:
    """Scrapes 1 (the check) and 2 (t=0): both up. From scrape 3 on: B down, A busier, 2 retries to A each time."""
    if scrape <= 2:
        server.set_state(A, "up")
        server.set_state(B, "up")
        server.in_flight.labels(backend=A).set(1)
        server.in_flight.labels(backend=B).set(2)
        server.retries.labels(backend=A).inc(0)
        server.retries.labels(backend=B).inc(0)
    else:
        server.set_state(B, "down")
        server.in_flight.labels(backend=A).set(3)
        server.in_flight.labels(backend=B).set(0)
        server.retries.labels(backend=A).inc(2)


@pytest.fixture
def metrics_server():
    server = MetricsServer(story)
    yield server
    server.stop()


def test_parse_reads_state_in_flight_and_retries(metrics_server):
    from prometheus_client import generate_latest

    story(metrics_server, 2)
    story(metrics_server, 3)
    seen = parse(generate_latest(metrics_server.registry).decode())
    assert seen[B] == {"state": "down", "in_flight": 0.0, "retries_total": 0.0}
    assert seen[A] == {"state": "up", "in_flight": 3.0, "retries_total": 2.0}


def test_a_url_without_the_metrics_is_refused_in_one_line(recorder):  # noqa: F811
    server = recorder()
    assert check(server.url + "/metrics").startswith(f"--metrics {server.url}/metrics: not Prometheus metrics")
    result = run_cli("-m", "traffic", "--url", server.url, "--n", "3", "--metrics", "http://127.0.0.1:1/metrics")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "cannot scrape --metrics" in result.stderr
    assert [r["target"] for r in server.received] == ["/metrics"]  # the check above; the run sent nothing


def test_the_run_reports_what_the_balancer_saw_every_second(recorder, metrics_server, tmp_path):  # noqa: F811
    server = recorder()
    html = tmp_path / "report.html"
    result = run_cli("-m", "traffic", "--url", server.url, "--duration", "2.5", "--concurrency", "2",
                     "--metrics", metrics_server.url, "--json", "--html", str(html), timeout_s=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    samples = report["balancer"]["samples"]
    assert 4 <= len(samples) <= 5  # t = 0, 1, 2 and the end (one more if the machine was slow)
    assert [round(s["t_s"]) for s in samples[:3]] == [0, 1, 2]
    assert samples[0]["backends"][B] == {"state": "up", "in_flight": 2.0, "retries": 0.0}
    assert samples[-1]["backends"][B]["state"] == "down" and samples[-1]["backends"][A]["in_flight"] == 3.0
    summary = report["balancer"]["summary"]
    assert summary[A]["retries"] == 2 * (len(samples) - 1)  # the counter's increase, scrape by scrape
    assert [state for _, state in summary[B]["states"]] == ["up", "down"]
    # Next to what the client saw: the timeline rows carry the sample taken during them.
    with_balancer = [row for row in report["timeline"] if "balancer" in row]
    assert len(with_balancer) >= 3
    page = html.read_text()
    assert "What the balancer saw" in page and "Backend state" in page


def test_the_text_report_shows_it_per_scrape(recorder, metrics_server):  # noqa: F811
    server = recorder()
    result = run_cli("-m", "traffic", "--url", server.url, "--duration", "1.2", "--metrics", metrics_server.url)
    assert result.returncode == 0, result.stderr
    assert "What the balancer saw (--metrics, per scrape)" in result.stdout
    assert "up/2/0" in result.stdout and "down/0/0" in result.stdout
    assert f"  {A}: up from 0.0s; in flight at most 3; retries" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


def test_metrics_with_processes_share_the_runs_clock(recorder, metrics_server):  # noqa: F811
    server = recorder()
    result = run_cli("-m", "traffic", "--url", server.url, "--duration", "1.5", "--concurrency", "2",
                     "--processes", "2", "--metrics", metrics_server.url, "--json", timeout_s=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    samples = report["balancer"]["samples"]
    assert samples[0]["t_s"] < 0.2 and round(samples[1]["t_s"]) == 1  # t = 0 is when the processes began
    assert report["requests"] == len(server.received) > 0
