"""Passive health, retries and their budget, per-backend limits, slow start, backups."""

import math
import socket
import threading
import time
from collections import Counter

import pytest
import requests

from simplelb.backend import Backend
from simplelb.config import ClusterConfig
from simplelb.errors import ClientDisconnected
from simplelb.outlier import OutlierDetector
from simplelb.retry import RetryBudget, RetryPolicy
from simplelb.specs import BackendSpec
from simplelb.tracking import BackendEvents

from .conftest import free_port, holding, read_then_reset, serve_forever_ok, state, wait_for


class FakeClock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


def fail_once(backend: Backend) -> None:
    with pytest.raises(RuntimeError), backend.track():
        raise RuntimeError("backend broke")


# --- unit: retry budget and policy ---------------------------------------------------


def test_retry_budget_is_a_fraction_of_recent_requests():
    clock = FakeClock()
    budget = RetryBudget(0.2, window_s=10, min_per_s=0, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(50)) == 20
    clock.now += 11  # the window slid past those requests
    assert not budget.try_spend()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    assert budget.try_spend() and not budget.try_spend()


def test_retry_budget_floor_lets_a_quiet_balancer_retry():
    budget = RetryBudget(0.2, window_s=10, min_per_s=1, clock=FakeClock())
    assert sum(budget.try_spend() for _ in range(20)) == 10


def test_retry_policy_rules():
    policy = RetryPolicy(1, RetryBudget(1.0, min_per_s=100))
    assert policy.may_retry(method="POST", sent=False, replayable=False, retries_so_far=0)
    assert not policy.may_retry(method="POST", sent=True, replayable=True, retries_so_far=0)
    assert not policy.may_retry(method="PATCH", sent=True, replayable=True, retries_so_far=0)
    assert policy.may_retry(method="PUT", sent=True, replayable=True, retries_so_far=0)
    assert not policy.may_retry(method="PUT", sent=True, replayable=False, retries_so_far=0)
    assert not policy.may_retry(method="GET", sent=False, replayable=True, retries_so_far=1)
    assert not RetryPolicy(0, RetryBudget(1.0)).may_retry(method="GET", sent=False, replayable=True, retries_so_far=0)


# --- unit: ejection ---------------------------------------------------------------------


class ToDetector(BackendEvents):
    def __init__(self, detector):
        self.detector = detector

    def failed(self, backend, streak, reason):
        self.detector.failed(backend, streak, reason)


def detector_for(backends, **settings):
    options = {"eject_after": 3, "eject_time_s": 10, "max_eject_percent": 50, **settings}
    config = ClusterConfig(backends=tuple(b.spec for b in backends), **options)
    detector = OutlierDetector(lambda: (config, backends))
    for backend in backends:
        backend.events = ToDetector(detector)
    return detector


def test_consecutive_failures_eject_for_a_doubling_time():
    clock = FakeClock()
    pool = [Backend(BackendSpec("a", 1), clock=clock), Backend(BackendSpec("b", 1), clock=clock)]
    detector_for(pool)
    a = pool[0]
    for _ in range(3):
        fail_once(a)
    assert a.ejected and not a.available()
    clock.now += 10
    assert a.available() and not a.ejected  # back when its time is up
    for _ in range(3):
        fail_once(a)
    clock.now += 10
    assert not a.available()  # second ejection in a row: 20 s
    clock.now += 10
    assert a.available()
    assert a.status()["ejections"] == 2


def test_a_success_breaks_the_streak():
    pool = [Backend(BackendSpec("a", 1)), Backend(BackendSpec("b", 1))]
    detector_for(pool)
    for _ in range(10):
        fail_once(pool[0])
        fail_once(pool[0])
        with pool[0].track():
            pass
    assert not pool[0].ejected


def test_a_client_that_leaves_before_the_answer_neither_fails_the_backend_nor_breaks_its_streak():
    # A backend that hangs, with a client that gives up before --read-timeout between two that wait:
    # that client's leaving says nothing of the backend, and must not wipe the failures around it.
    pool = [Backend(BackendSpec("a", 1)), Backend(BackendSpec("b", 1))]
    detector_for(pool)
    fail_once(pool[0])
    fail_once(pool[0])
    with pytest.raises(ClientDisconnected), pool[0].track():
        raise ClientDisconnected("the client closed the connection while the backend was answering")
    assert pool[0].status()["failures"] == 2 and not pool[0].ejected
    fail_once(pool[0])
    assert pool[0].ejected


def test_a_client_that_leaves_mid_answer_still_breaks_the_streak():
    pool = [Backend(BackendSpec("a", 1)), Backend(BackendSpec("b", 1))]
    detector_for(pool)
    for _ in range(5):
        fail_once(pool[0])
        fail_once(pool[0])
        with pytest.raises(ClientDisconnected), pool[0].track() as attempt:
            attempt.responded(200)  # the backend answered: the client left while it was relayed
            raise ClientDisconnected("broken pipe")
    assert not pool[0].ejected


def test_good_behaviour_resets_the_doubling():
    clock = FakeClock()
    pool = [Backend(BackendSpec("a", 1), clock=clock), Backend(BackendSpec("b", 1), clock=clock)]
    detector_for(pool)
    for _ in range(2):
        for _ in range(3):
            fail_once(pool[0])
        clock.now += 40
        assert pool[0].available()
    clock.now += 60  # six base times without an ejection
    for _ in range(3):
        fail_once(pool[0])
    clock.now += 10
    assert pool[0].available()  # back to the 10 s base, not 40 s


def test_never_more_than_max_percent_ejected():
    pool = [Backend(BackendSpec(f"b{i}", 1)) for i in range(4)]
    detector_for(pool, max_eject_percent=50)
    for backend in pool:
        for _ in range(3):
            fail_once(backend)
    assert sum(b.ejected for b in pool) == 2


def test_a_single_backend_is_never_ejected():
    (only,) = pool = [Backend(BackendSpec("a", 1))]
    detector_for(pool)
    for _ in range(10):
        fail_once(only)
    assert only.available()


def test_the_last_backend_taking_new_requests_is_never_ejected():
    # The other one is in maintenance, down or draining: ejecting this one would turn some failed
    # requests into all of them failing, for the whole ejection time.
    for put_out in ("maint", "drain", "down"):
        state = "ready" if put_out == "down" else put_out
        a, b = pool = [Backend(BackendSpec("a", 1)), Backend(BackendSpec("b", 1, state=state), fall=1)]
        if put_out == "down":
            b.record_probe(False, "connection refused")
        detector_for(pool, max_eject_percent=100)
        for _ in range(5):
            fail_once(a)
        assert a.available() and not a.ejected, put_out


def test_an_ejection_whose_time_is_up_no_longer_counts_against_others():
    # c's ejection ended while nothing asked whether c was available (a backup, say): it must not
    # still count as out and stop a's ejection (50% of 3 backends: one may be out).
    clock = FakeClock()
    a, b, c = pool = [Backend(BackendSpec(name, 1), clock=clock) for name in "abc"]
    detector_for(pool)
    for _ in range(3):
        fail_once(c)
    assert c.ejected
    clock.now += 10
    for _ in range(3):
        fail_once(a)
    assert a.ejected and not a.available()


def test_eject_until_probes_pass():
    pool = [Backend(BackendSpec("a", 1), rise=2), Backend(BackendSpec("b", 1))]
    detector_for(pool, eject_return="health")
    for _ in range(3):
        fail_once(pool[0])
    assert not pool[0].available()
    pool[0].record_probe(True, "HTTP 200")
    assert not pool[0].available()
    pool[0].record_probe(True, "HTTP 200")
    assert pool[0].available()


def test_client_side_errors_are_not_held_against_the_backend():
    from simplelb.errors import ClientDisconnected

    pool = [Backend(BackendSpec("a", 1)), Backend(BackendSpec("b", 1))]
    detector_for(pool)
    for _ in range(5):
        with pytest.raises(ClientDisconnected), pool[0].track():
            raise ClientDisconnected("gone")
    assert not pool[0].ejected and pool[0].status()["failures"] == 0


# --- unit: slow start --------------------------------------------------------------------------


def test_slow_start_ramps_the_weight_after_recovery():
    clock = FakeClock()
    backend = Backend(BackendSpec("a", 1, 10), rise=1, fall=1, slow_start_s=10, clock=clock)
    assert backend.weight == 10  # a backend that never left starts at full weight
    backend.record_probe(False, "down")
    backend.record_probe(True, "up")
    assert backend.weight == pytest.approx(1.0)  # the floor, 10%
    clock.now += 5
    assert backend.weight == pytest.approx(5.0)
    clock.now += 5
    assert backend.weight == 10


# --- end to end -------------------------------------------------------------------------------


def test_killing_a_backend_under_load_causes_no_client_errors(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks)
    statuses = Counter()
    lock = threading.Lock()
    sent = [0]
    killed = threading.Event()

    def client():
        with requests.Session() as session:
            for _ in range(60):
                try:
                    status = session.get(lb.url + "/", timeout=10).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1
                    sent[0] += 1
                    if sent[0] == 120:
                        killed.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert killed.wait(30)
    mocks[1].crash()
    for thread in threads:
        thread.join(60)
    assert statuses == {200: 480}
    snap = lb.backends[1].status()
    assert snap["failures"] >= 1 or snap["ejected"]  # the crash was noticed, and absorbed


def test_get_is_retried_on_another_backend_after_a_reset(scripted, balancer):

    bad = scripted(read_then_reset)
    good = scripted(serve_forever_ok)
    lb = balancer([bad, good], algorithm="round-robin", eject_after=0, backend_header="X-Upstream")
    for _ in range(4):
        response = requests.get(lb.url + "/", timeout=5)
        assert response.status_code == 200 and response.headers["X-Upstream"] == good.address
    assert lb.backends[1].status()["retries"] == 2  # counted where the retries went


def test_small_put_body_is_replayed_but_a_large_one_is_not(scripted, balancer):

    bad = scripted(read_then_reset)
    good = scripted(serve_forever_ok)
    lb = balancer([bad, good], eject_after=0, retry_body_limit_bytes=1024)
    # Round robin starts with the bad backend for the first request.
    assert requests.put(lb.url + "/small", data=b"s" * 1000, timeout=5).status_code == 200
    assert good.received[-1].body == b"s" * 1000
    requests.get(lb.url, timeout=5)  # the good one's turn
    response = requests.put(lb.url + "/large", data=b"L" * 5000, timeout=5)
    assert response.status_code == 502
    assert not any(r.target == "/large" for r in good.received)


def test_post_that_reached_a_backend_is_never_retried(scripted, balancer):

    backends = [scripted(read_then_reset) for _ in range(3)]
    lb = balancer(backends, retries=2)
    assert requests.post(lb.url + "/pay", data=b"once", timeout=5).status_code == 502
    assert sum(len(b.received) for b in backends) == 1


def test_backend_closing_idle_connections_causes_no_errors(scripted, balancer):
    def short_keepalive(conn):
        # Keeps a connection only 3 ms after each answer, as a server with a
        # tiny idle timeout does; no Connection: close, so the pool keeps it.
        # (The first request gets the normal timeout: the idle limit is for
        # the time between requests.)
        try:
            while conn.read_request() is not None:
                conn.respond()
                conn.sock.settimeout(0.003)
        except TimeoutError:
            pass
        conn.sock.close()

    backend = scripted(short_keepalive)
    lb = balancer([backend])
    statuses = Counter()
    with requests.Session() as session:
        for i in range(300):
            statuses[session.get(lb.url + f"/{i}", timeout=5).status_code] += 1
            time.sleep(0.003 if i % 2 else 0.0)  # the traffic pattern: spaced around the idle timeout
    assert statuses == {200: 300}
    assert backend.connections > 10  # connections really were closed under the balancer


def test_5xx_backend_is_ejected_and_comes_back_after_the_backoff(mock_servers, balancer):
    good, flaky = mock_servers(2)
    requests.post(flaky.url + "/_mock/error-rate?p=1", timeout=5)
    lb = balancer([good, flaky], eject_on_5xx=True, eject_after=3, eject_time_s=0.3)
    with requests.Session() as session:
        wait_for(lambda: session.get(lb.url, timeout=5) is not None and lb.backends[1].ejected, what="ejection")
        served_while_ejected = {session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(10)}
        assert served_while_ejected == {good.name}
        wait_for(lambda: lb.backends[1].available(), what="return after the backoff")
        requests.post(flaky.url + "/_mock/error-rate?p=0", timeout=5)
        served = {session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(10)}
    assert served == {good.name, flaky.name}
    assert lb.backends[1].status()["ejections"] == 1


def test_retry_budget_stops_a_retry_storm(scripted, balancer):
    attempts = Counter()

    def always_reset(conn):
        while conn.read_request() is not None:
            attempts["n"] += 1
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.sock.close()
            return

    backends = [scripted(always_reset) for _ in range(3)]
    lb = balancer(backends, retries=2, retry_budget=0.2, eject_after=0)
    n = 300
    with requests.Session() as session:
        statuses = Counter(session.get(lb.url, timeout=5).status_code for _ in range(n))
    assert statuses == {502: n}
    # Without a budget: 3 attempts each (900). With it: n plus 20% of n, plus the floor of 30.
    assert n <= attempts["n"] <= n + 0.2 * n + 30 + 2


def test_max_conns_and_the_queue_hold_under_a_burst(scripted, balancer):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(conn):
        while conn.read_request() is not None:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)  # the backend's service time
            with lock:
                state["now"] -= 1
            conn.respond()

    backend = scripted(slow)
    lb = balancer([backend], max_conns=2, queue_timeout_s=20)
    statuses = Counter()

    def client():
        status = requests.get(lb.url, timeout=30).status_code
        with lock:
            statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == {200: 12}
    assert state["peak"] <= 2


def test_queue_timeout_and_full_queue_give_503(scripted, balancer):
    release = threading.Event()
    backend = scripted(holding(release))
    lb = balancer([backend], max_conns=1, queue_timeout_s=0.2, max_queue=1)
    first = threading.Thread(target=lambda: requests.get(lb.url, timeout=30))
    first.start()
    wait_for(lambda: lb.backends[0].in_flight == 1, what="the slot to be taken")
    waited = requests.get(lb.url, timeout=10)
    assert waited.status_code == 503 and "waited 0.2s" in waited.text
    assert waited.headers["Retry-After"].isdigit()
    release.set()
    first.join(10)


def test_backup_serves_only_when_every_primary_is_down(mock_servers, balancer):
    primary_a, primary_b, backup = mock_servers(3)
    lb = balancer([primary_a, primary_b], backups=backup.address, health_interval_s=0.25, fall=1, rise=1)
    served = {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(6)}
    assert served == {primary_a.name, primary_b.name}
    for mock in (primary_a, primary_b):
        requests.post(mock.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 0) == state(lb, 1) == "down", what="primaries down")
    assert {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(4)} == {backup.name}
    requests.post(primary_a.url + "/_mock/health", data="up", timeout=5)
    wait_for(lambda: state(lb, 0) == "up", what="a primary back")
    assert {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(4)} == {primary_a.name}


def test_a_session_pinned_to_a_backup_goes_back_to_the_primaries(mock_servers, balancer):
    primary, backup = mock_servers(2)
    lb = balancer([primary], backups=backup.address, sticky_cookie="S", health_interval_s=0.25, fall=1, rise=1)
    requests.post(primary.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 0) == "down", what="the primary down")
    session = requests.Session()
    assert session.get(lb.url, timeout=5).headers["X-Backend"] == backup.name
    assert session.cookies.get("S")  # pinned to the backup
    requests.post(primary.url + "/_mock/health", data="up", timeout=5)
    wait_for(lambda: state(lb, 0) == "up", what="the primary back")
    assert {session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(4)} == {primary.name}


def test_slow_start_gives_a_returning_backend_a_small_share_first(mock_servers, balancer):
    steady, returning = mock_servers(2)
    lb = balancer([steady, returning], slow_start_s=30, health_interval_s=0.25, fall=1, rise=1)
    requests.post(returning.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 1) == "down", what="down")
    requests.post(returning.url + "/_mock/health", data="up", timeout=5)
    wait_for(lambda: state(lb, 1) == "up", what="back up")
    served = Counter(requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(40))
    assert 0 < served[returning.name] <= 8  # about 10% at first, not half
    assert lb.control.status()["backends"][1]["effective_weight"] < 1


def test_connect_failures_are_retried_for_any_method(balancer, scripted):
    good = scripted(serve_forever_ok)
    lb = balancer([f"127.0.0.1:{free_port()}", good.address])
    for _ in range(4):
        assert requests.post(lb.url, data=b"x", timeout=5).status_code == 200
    assert len(good.received) == 4
    assert math.isclose(lb.backends[1].status()["failures"], 0)
