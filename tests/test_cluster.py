"""The cluster changing under a running balancer: what stays, what starts, what drains."""

import threading
from collections import Counter

import requests

from simplelb.specs import BackendSpec

from .conftest import serve_forever_ok, wait_for


def spec_of(server, **fields) -> BackendSpec:
    host, port = server.address.rsplit(":", 1)
    return BackendSpec(host, int(port), **fields)


def update(lb, *specs, **settings):
    config = lb.cluster.view.config
    if settings:
        from dataclasses import fields, replace

        known = {f.name for f in fields(config)}
        config = replace(config, **{k: v for k, v in settings.items() if k in known})
    return lb.cluster.update(config.with_backends(specs))


def status_of(lb, name):
    return next((b for b in lb.cluster.status() if b["name"] == name), None)


def served_by(lb, count: int) -> Counter:
    with requests.Session() as session:
        return Counter(session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(count))


def test_a_backend_that_stays_keeps_its_counters_and_connections(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks)
    served_by(lb, 10)
    kept = lb.cluster.view.find(mocks[0].address)
    before = status_of(lb, mocks[0].address)
    view = update(lb, spec_of(mocks[0], weight=3), spec_of(mocks[1]))
    assert view.generation == 2 and view.find(mocks[0].address) is kept
    after = status_of(lb, mocks[0].address)
    assert after["requests"] == before["requests"] == 5 and after["weight"] == 3 and after["state"] == "up"
    # The new weight takes effect on the next picks: 3 of every 4.
    assert served_by(lb, 40) == {"mock-1": 30, "mock-2": 10}


def test_a_new_backend_is_probed_at_once_and_only_then_gets_traffic(mock_servers, balancer, scripted):
    mocks = mock_servers(2)
    lb = balancer(mocks[:1])  # health checks every 60 s: only the probe at once can bring it up
    update(lb, spec_of(mocks[0]), spec_of(mocks[1], name="second"))
    wait_for(lambda: status_of(lb, "second")["state"] == "up", what="the new backend to pass its first probe")
    assert set(served_by(lb, 10)) == {"mock-1", "mock-2"}


def test_a_new_backend_that_fails_its_probe_never_sees_a_request(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock])
    update(lb, spec_of(mock), BackendSpec("127.0.0.1", 1, name="typo"))
    # (Refused at once, as a rule; on a machine loaded enough the probe's thread can miss its deadline first.)
    wait_for(lambda: status_of(lb, "typo")["last_probe"] != "not probed yet", what="the first probe")
    assert status_of(lb, "typo")["last_probe"].startswith(("connection failed", "no answer within"))
    assert served_by(lb, 20) == {"mock-1": 20}
    assert status_of(lb, "typo")["state"] == "down" and status_of(lb, "typo")["failures"] == 0


def test_a_removed_backend_finishes_its_in_flight_request_then_leaves(mock_servers, balancer, scripted):
    def slow(conn):
        while (request := conn.read_request()) is not None:
            if request.target == "/slow":
                conn.backend.event("received").set()
                conn.backend.event("release").wait(10)
            conn.respond(200, b"slow done" if request.target == "/slow" else b"ok", [("X-Backend", "slow")])

    slow_backend = scripted(slow)
    (mock,) = mock_servers(1)
    lb = balancer([slow_backend], algorithm="round-robin")
    result = {}
    client = threading.Thread(target=lambda: result.update(r=requests.get(lb.url + "/slow", timeout=10)))
    client.start()
    assert slow_backend.event("received").wait(10)
    update(lb, spec_of(mock))
    assert status_of(lb, slow_backend.address)["state"] == "removing"
    wait_for(lambda: status_of(lb, mock.address)["state"] == "up", what="the new backend up")
    assert served_by(lb, 10) == {"mock-1": 10}  # nothing new for the backend on its way out
    slow_backend.event("release").set()
    client.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "slow done"
    wait_for(lambda: status_of(lb, slow_backend.address) is None, what="the removed backend to leave")


def test_a_name_that_moves_to_another_address_is_a_new_backend(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer([mocks[0]])
    update(lb, spec_of(mocks[0], name="web"))  # renamed: a new backend, the old one retires
    wait_for(lambda: status_of(lb, "web")["state"] == "up", what="web up")
    old = lb.cluster.view.find("web")
    update(lb, spec_of(mocks[1], name="web"))
    assert lb.cluster.view.find("web") is not old
    wait_for(lambda: status_of(lb, "web")["state"] == "up", what="web up at its new address")
    assert served_by(lb, 5) == {"mock-2": 5}


def test_drain_sends_only_pinned_requests(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, sticky_cookie="lb")
    with requests.Session() as pinned:
        first = pinned.get(lb.url, timeout=5).headers["X-Backend"]
        victim = mocks[0] if first == "mock-1" else mocks[1]
        update(lb, *(spec_of(m, state="drain" if m is victim else "ready") for m in mocks))
        assert status_of(lb, victim.address)["state"] == "draining"
        assert {pinned.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(5)} == {victim.name}
    assert victim.name not in served_by(lb, 10)  # new clients go elsewhere


def test_drain_keeps_hash_keys_on_their_backend(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks, algorithm="hash", hash_key="path")
    owners = {path: requests.get(lb.url + path, timeout=5).headers["X-Backend"] for path in ("/a", "/b", "/c", "/d")}
    update(lb, spec_of(mocks[0], state="drain"), spec_of(mocks[1]), spec_of(mocks[2]))
    assert {path: requests.get(lb.url + path, timeout=5).headers["X-Backend"] for path in owners} == owners


def test_maintenance_stops_traffic_and_probes_and_ready_brings_it_back_through_a_probe(balancer, scripted):
    probes = []

    def counting(conn):
        raw = conn.reader.read_head(65536)
        if raw and raw.startswith(b"GET /health "):
            probes.append(1)
        conn.respond(200, b"ok", [("Connection", "close"), ("X-Backend", "counted")])

    counted = scripted(counting)
    other = scripted(serve_forever_ok)
    lb = balancer([counted, other], health_interval_s=0.05)
    wait_for(lambda: len(probes) >= 2, what="probes")
    update(lb, spec_of(counted, state="maint"), spec_of(other))
    seen = len(probes)
    assert all(requests.get(lb.url, timeout=5).headers.get("X-Backend") != "counted" for _ in range(6))
    other.event("nothing").wait(0.3)  # probes would have run six times in this while
    assert len(probes) <= seen + 1  # at most the one already under way
    assert status_of(lb, counted.address)["state"] == "maint"
    update(lb, spec_of(counted), spec_of(other))
    wait_for(lambda: status_of(lb, counted.address)["state"] == "up", what="back through a probe")
    assert len(probes) > seen


def test_changing_the_algorithm_applies_to_the_next_request(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks)
    assert len(served_by(lb, 6)) == 3
    update(lb, *(spec_of(m) for m in mocks), algorithm="hash", hash_key="ip")
    assert len(served_by(lb, 6)) == 1  # one client address, one backend
