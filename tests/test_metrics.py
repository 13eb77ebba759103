"""``/metrics``: read back with prometheus_client's own parser, checked against the traffic sent."""

import socket
import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import JSON, free_port, read_then_reset, serve_forever_ok, start_lb_process, wait_for


def scrape(admin: str) -> dict[tuple, float]:
    """Every sample as {(name, sorted labels): value}."""
    response = requests.get(admin + "/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples, name, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, labs), v in samples.items() if n == name and wanted <= set(labs))


def test_counts_match_the_traffic_exactly(scripted, balancer):
    def answers(conn):
        while (request := conn.read_request()) is not None:
            status = int(request.target.strip("/")) if request.target.strip("/").isdigit() else 200
            conn.respond(status, b"x")

    backend = scripted(answers)
    lb = balancer([backend], admin="127.0.0.1:0")
    with requests.Session() as session:
        for path in ["/"] * 7 + ["/404"] * 3 + ["/503"] * 2 + ["/302"]:
            session.get(lb.url + path, timeout=5, allow_redirects=False)
    with socket.create_connection(("127.0.0.1", lb.port)) as raw:  # a 400 of the balancer's own
        raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    # A request is counted when its handler is done with it, just after the client has its answer.
    wait_for(lambda: value(scrape(lb.admin.url), "simplelb_request_duration_seconds_count") == 14,
             what="every request counted")
    samples = scrape(lb.admin.url)
    assert {code: value(samples, "simplelb_requests_total", code=code) for code in ("1xx", "2xx", "3xx", "4xx", "5xx")} \
        == {"1xx": 0, "2xx": 7, "3xx": 1, "4xx": 4, "5xx": 2}
    assert value(samples, "simplelb_request_duration_seconds_count") == 14
    name = backend.address
    assert value(samples, "simplelb_backend_responses_total", backend=name, code="2xx") == 7
    assert value(samples, "simplelb_backend_responses_total", backend=name, code="4xx") == 3
    assert value(samples, "simplelb_backend_response_duration_seconds_count", backend=name) == 13
    assert value(samples, "simplelb_backend_response_duration_seconds_bucket", backend=name, le="+Inf") == 13
    assert value(samples, "simplelb_backend_up", backend=name) == 1
    assert value(samples, "simplelb_backend_state", backend=name, state="up") == 1
    assert value(samples, "simplelb_backend_state", backend=name, state="down") == 0
    assert value(samples, "simplelb_backend_in_flight", backend=name) == 0
    assert value(samples, "simplelb_backend_weight", backend=name) == 1
    assert total(samples, "simplelb_backend_failures_total", backend=name) == 0
    assert value(samples, "simplelb_build_info", version=__import__("simplelb").__version__,
                 python=__import__("platform").python_version()) == 1


def test_failures_are_counted_by_reason(scripted, balancer):
    def silent(conn):
        conn.read_request()
        conn.backend.event("never").wait(5)

    def garbage(conn):
        conn.read_request()
        conn.send(b"NOT HTTP AT ALL\r\n\r\n")

    reset, hung, bad = scripted(read_then_reset), scripted(silent), scripted(garbage)
    dead = f"127.0.0.1:{free_port()}"
    lb = balancer(f"{reset.address},{hung.address},{bad.address},{dead}", admin="127.0.0.1:0", retries=0,
                  eject_after=0, read_timeout_s=0.3, algorithm="round-robin")
    statuses = [requests.post(lb.url, data=b"x", timeout=5).status_code for _ in range(4)]
    assert sorted(statuses) == [502, 502, 502, 504]
    samples = scrape(lb.admin.url)
    assert value(samples, "simplelb_backend_failures_total", backend=reset.address, reason="reset") == 1
    assert value(samples, "simplelb_backend_failures_total", backend=hung.address, reason="timeout") == 1
    assert value(samples, "simplelb_backend_failures_total", backend=bad.address, reason="protocol") == 1
    assert value(samples, "simplelb_backend_failures_total", backend=dead, reason="connect") == 1
    assert total(samples, "simplelb_backend_failures_total", reason="5xx") == 0


def test_retries_and_an_exhausted_budget(scripted, balancer):
    good = scripted(serve_forever_ok)
    dead = f"127.0.0.1:{free_port()}"
    lb = balancer(f"{dead},{good.address}", admin="127.0.0.1:0", retry_budget=0, eject_after=0)
    with requests.Session() as session:
        statuses = [session.get(lb.url, timeout=5).status_code for _ in range(80)]
    samples = scrape(lb.admin.url)
    retried = value(samples, "simplelb_backend_retries_total", backend=good.address)
    refused = value(samples, "simplelb_retry_budget_exhausted_total")
    assert retried == 30  # the floor: 3 retries a second over the 10 s window
    assert refused == statuses.count(502) == 10
    assert value(samples, "simplelb_backend_failures_total", backend=dead, reason="connect") == 40


def test_a_retry_with_nowhere_to_go_takes_nothing_from_the_budget(scripted, balancer, caplog):
    # One backend, and it fails every request: there is no other backend to retry on, so no retry is
    # counted, logged or paid for (phantom retries had spent the budget real ones would need).
    lb = balancer([scripted(read_then_reset)], admin="127.0.0.1:0", retry_budget=0, eject_after=0)
    with caplog.at_level("INFO", logger="simplelb.proxy"):
        statuses = [requests.get(lb.url, timeout=5).status_code for _ in range(40)]
    assert statuses == [502] * 40
    assert value(scrape(lb.admin.url), "simplelb_retry_budget_exhausted_total") == 0
    assert "retrying" not in caplog.text


def test_queue_gauges_and_timeouts(scripted, balancer):
    def slow(conn):
        while conn.read_request() is not None:
            conn.backend.event("release").wait(10)
            conn.respond()

    backend = scripted(slow)
    lb = balancer([backend], admin="127.0.0.1:0", max_conns=1, queue_timeout_s=0.3)
    holder = threading.Thread(target=requests.get, args=(lb.url,), kwargs={"timeout": 10})
    holder.start()
    wait_for(lambda: value(scrape(lb.admin.url), "simplelb_backend_in_flight", backend=backend.address) == 1,
             what="the slot taken")
    waiter = threading.Thread(target=requests.get, args=(lb.url,), kwargs={"timeout": 10})
    waiter.start()
    wait_for(lambda: value(scrape(lb.admin.url), "simplelb_queue_waiting") == 1, what="a request waiting")
    waiter.join(5)
    samples = scrape(lb.admin.url)
    assert value(samples, "simplelb_queue_timeouts_total") == 1 and value(samples, "simplelb_queue_waiting") == 0
    backend.event("release").set()
    holder.join(5)


def test_client_connections_by_state(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0")
    sessions = [requests.Session() for _ in range(3)]
    for session in sessions:
        session.get(lb.url, timeout=5)  # each keeps an idle keep-alive connection
    reading = socket.create_connection(("127.0.0.1", lb.port))
    reading.sendall(b"GET / HTTP/1.1\r\n")  # a head that has started
    try:
        wait_for(lambda: value(scrape(lb.admin.url), "simplelb_client_connections", state="reading") == 1,
                 what="the reading connection")
        assert value(scrape(lb.admin.url), "simplelb_client_connections", state="idle") == 3
    finally:
        reading.close()
        for session in sessions:
            session.close()


def test_health_checks_reloads_and_a_removed_backend(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, admin="127.0.0.1:0", health_interval_s=0.05)
    admin = lb.admin.url
    requests.post(mocks[1].url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: value(scrape(admin), "simplelb_backend_up", backend=mocks[1].address) == 0, what="down")
    samples = scrape(admin)
    assert value(samples, "simplelb_health_checks_total", backend=mocks[0].address, result="pass") >= 1
    assert value(samples, "simplelb_health_checks_total", backend=mocks[1].address, result="fail") >= 3
    assert value(samples, "simplelb_backend_state", backend=mocks[1].address, state="down") == 1
    requests.delete(admin + f"/backends/{mocks[1].address}", headers=JSON, timeout=5)
    wait_for(lambda: ("simplelb_backend_up", ((("backend", mocks[1].address)),)) not in scrape(admin),
             what="the removed backend gone from the metrics")
    assert requests.post(admin + "/reload", headers=JSON, timeout=5).status_code == 200
    samples = scrape(admin)
    assert value(samples, "simplelb_config_reloads_total", result="success") == 1
    assert value(samples, "simplelb_config_reloads_total", result="failure") == 0


@pytest.mark.parametrize("workers", ["2"])
def test_workers_add_up_exactly(process, mock_servers, workers):
    mocks = mock_servers(2)
    proc, url, admin = start_lb_process(process, "--backends", ",".join(m.address for m in mocks), "--workers", workers,
                                        "--admin", "127.0.0.1:0", "--health-interval", "60")
    for _ in range(50):
        with requests.Session() as session:  # new connections: the kernel spreads them over the workers
            assert session.get(url, timeout=5).status_code == 200
    wait_for(lambda: value(scrape(admin), "simplelb_request_duration_seconds_count") == 50,
             what="every request counted")  # just after its answer went out (and summed from the workers)
    samples = scrape(admin)
    assert value(samples, "simplelb_requests_total", code="2xx") == 50
    assert total(samples, "simplelb_backend_responses_total") == 50
    assert value(samples, "simplelb_request_duration_seconds_count") == 50
    proc.proc.terminate()
    assert proc.wait(30) == 0
