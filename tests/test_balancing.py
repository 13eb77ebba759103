"""Algorithms and sticky sessions end to end, through real servers."""

from collections import Counter

import pytest
import requests

from simplelb.algorithms import ALGORITHMS

from .conftest import state, wait_for


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_serves_through_real_backends(algorithm, mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks, algorithm=algorithm)
    with requests.Session() as session:
        # The hash algorithm hashes the client address by default: one client, one backend.
        served = Counter(session.get(lb.url + "/", timeout=5).headers["X-Backend"] for _ in range(30))
    assert sum(served.values()) == 30
    expected_spread = {"hash": 1, "round-robin": 3, "least-connections": 3}
    if algorithm in expected_spread:
        assert len(served) == expected_spread[algorithm]
    else:  # random choices: (2/3)**30 odds of a single backend
        assert len(served) >= 2


def test_weights_shape_the_distribution(mock_servers, balancer):
    heavy, light = mock_servers(2)
    lb = balancer(f"{heavy.address}=3,{light.address}")
    with requests.Session() as session:
        served = Counter(session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(40))
    assert served == {heavy.name: 30, light.name: 10}


def test_peak_ewma_avoids_a_slow_backend(mock_servers, balancer):
    fast = mock_servers(2)
    (slow,) = mock_servers(1, latency_ms=(40, 40))
    lb = balancer([*fast, slow], algorithm="peak-ewma")
    with requests.Session() as session:
        served = Counter(session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(100))
    assert served[slow.name] <= 10


def test_hash_on_a_header_keeps_each_user_on_one_backend(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks, algorithm="hash", hash_key="header:X-User")
    placement = {}
    with requests.Session() as session:
        for _ in range(3):
            for user in range(12):
                backend = session.get(lb.url, headers={"X-User": f"u{user}"}, timeout=5).headers["X-Backend"]
                assert placement.setdefault(user, backend) == backend
    assert len(set(placement.values())) > 1


def test_hash_keys_of_surviving_backends_stay_put_when_one_goes_down(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks, algorithm="hash", hash_key="path", health_interval_s=0.25, fall=1)
    paths = [f"/item/{i}" for i in range(30)]
    before = {p: requests.get(lb.url + p, timeout=5).headers["X-Backend"] for p in paths}
    requests.post(mocks[0].url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 0) == "down", what="mock-1 down")
    after = {p: requests.get(lb.url + p, timeout=5).headers["X-Backend"] for p in paths}
    for path in paths:
        if before[path] != mocks[0].name:
            assert after[path] == before[path]
        else:
            assert after[path] != mocks[0].name


def test_sticky_cookie_pins_a_client_until_its_backend_goes_down(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks, sticky_cookie="SLB", health_interval_s=0.25, fall=1)
    session = requests.Session()
    first = session.get(lb.url, timeout=5)
    cookie = session.cookies.get("SLB")
    assert cookie and "127.0.0.1" not in cookie and str(mocks[0].port) not in cookie
    pinned = first.headers["X-Backend"]
    for _ in range(10):
        response = session.get(lb.url, timeout=5)
        assert response.headers["X-Backend"] == pinned
        assert "Set-Cookie" not in response.headers  # already pinned: nothing new to say
    victim = next(m for m in mocks if m.name == pinned)
    requests.post(victim.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, mocks.index(victim)) == "down", what="pinned backend down")
    moved = session.get(lb.url, timeout=5)
    assert moved.headers["X-Backend"] != pinned
    assert session.cookies.get("SLB") != cookie  # a new cookie for the new backend
    assert {session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(5)} == {moved.headers["X-Backend"]}


def test_unknown_sticky_value_is_ignored(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, sticky_cookie="SLB")
    response = requests.get(lb.url, cookies={"SLB": mocks[0].address}, timeout=5)
    assert response.status_code == 200
    assert "SLB=" in response.headers["Set-Cookie"]
