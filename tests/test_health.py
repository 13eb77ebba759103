import threading
import time

import requests

from simplelb.backend import Backend
from simplelb.config import ClusterConfig
from simplelb.health import HealthChecker, probe
from simplelb.specs import BackendSpec

from .conftest import free_port, state, wait_for


def test_probe_passes_on_2xx_and_fails_otherwise(mock_servers):
    (mock,) = mock_servers(1)
    assert probe(mock.host, mock.port, "/health", 1.0) == (True, "HTTP 200")
    requests.post(mock.url + "/_mock/health", data="down", timeout=5)
    assert probe(mock.host, mock.port, "/health", 1.0) == (False, "HTTP 503")


def test_probe_of_a_closed_port_fails_with_the_reason():
    ok, reason = probe("127.0.0.1", free_port(), "/health", 1.0)
    assert not ok and "refused" in reason


def test_probe_of_garbage_fails(scripted):
    backend = scripted(lambda conn: conn.send(b"hello there\r\n\r\n"))
    ok, reason = probe("127.0.0.1", backend.port, "/health", 1.0)
    assert not ok and "not an HTTP response" in reason


def test_probe_of_a_status_of_more_digits_than_int_reads_fails_as_garbage(scripted):
    backend = scripted(lambda conn: conn.send(b"HTTP/1.1 " + b"2" * 5000 + b" OK\r\n\r\n"))
    ok, reason = probe("127.0.0.1", backend.port, "/health", 1.0)  # (int() of it was a ValueError)
    assert not ok and "not an HTTP response" in reason


def test_hanging_probe_times_out_without_delaying_the_others(scripted, mock_servers):
    release = threading.Event()
    hanging = [scripted(lambda conn: release.wait(10)) for _ in range(4)]  # accept, never answer
    (mock,) = mock_servers(1)
    backends = [Backend(BackendSpec("127.0.0.1", h.port), fall=1) for h in hanging]
    backends.append(Backend(BackendSpec("127.0.0.1", mock.port), fall=1))
    config = ClusterConfig(backends=tuple(b.spec for b in backends), health_interval_s=10, health_timeout_s=0.5)
    checker = HealthChecker(lambda: (config, backends))
    started = time.monotonic()
    checker.run_round(backends)
    took = time.monotonic() - started
    release.set()
    assert [b.healthy for b in backends] == [False] * 4 + [True], backends[4].status()["last_probe"]
    assert backends[0].status()["last_probe"] == "no answer within 0.5s"
    assert took < 1.8  # about one probe timeout for all four, not 2 s one after the other, and no hang


def test_a_verdict_is_given_while_another_probe_still_hangs(scripted):
    # A refused probe's verdict comes at once, not after the hanging one's timeout: each result is
    # recorded as it arrives, not when the whole round is done.
    release = threading.Event()
    hanging = scripted(lambda conn: release.wait(10))
    backends = [Backend(BackendSpec("127.0.0.1", hanging.port), fall=1),
                Backend(BackendSpec("127.0.0.1", free_port()), fall=1)]
    config = ClusterConfig(backends=tuple(b.spec for b in backends), health_interval_s=10, health_timeout_s=5)
    checker = HealthChecker(lambda: (config, backends))
    round_ = threading.Thread(target=checker.run_round, args=(backends,), daemon=True)
    round_.start()
    try:
        wait_for(lambda: not backends[1].healthy, timeout_s=4, what="the refused backend's verdict")
        assert round_.is_alive() and backends[0].healthy  # the hanging probe is still waiting
        assert "refused" in backends[1].status()["last_probe"]
    finally:
        release.set()
        round_.join(10)


def test_probe_that_drips_bytes_still_ends_at_the_total_timeout(scripted):
    stop = threading.Event()

    def drip(conn):
        for byte in b"HTTP/1.1 200 OK":  # never finishes the status line
            if stop.wait(0.05):
                return
            conn.send(bytes([byte]))

    backend = scripted(drip)
    started = time.monotonic()
    ok, _ = probe("127.0.0.1", backend.port, "/health", 0.3)
    assert not ok and time.monotonic() - started < 2.0
    stop.set()


def test_balancer_takes_a_failing_backend_out_and_brings_it_back(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, health_interval_s=0.2, rise=2, fall=2)
    requests.post(mocks[0].url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 0) == "down", what="mock-1 marked down")
    before = mocks[0].requests
    answered_by = {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(10)}
    assert answered_by == {"mock-2"}
    assert mocks[0].requests == before  # no traffic to the unhealthy backend

    requests.post(mocks[0].url + "/_mock/health", data="up", timeout=5)
    wait_for(lambda: state(lb, 0) == "up", what="mock-1 back up")
    answered_by = {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(10)}
    assert answered_by == {"mock-1", "mock-2"}


def test_health_checker_stops(mock_servers):
    (mock,) = mock_servers(1)
    backends = [Backend(BackendSpec(mock.host, mock.port))]
    config = ClusterConfig(backends=(backends[0].spec,), health_interval_s=0.05)
    checker = HealthChecker(lambda: (config, backends))
    checker.start()
    wait_for(lambda: checker.rounds >= 2, what="two rounds")
    checker.stop()
    rounds = checker.rounds
    assert "health-checker" not in {thread.name for thread in threading.enumerate()}
    time.sleep(0.2)  # not waiting for a condition: checking that nothing more happens
    assert checker.rounds == rounds
