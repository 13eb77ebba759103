"""Several balancer processes on one etcd prefix: the same backends, cookies and hash picks; no error while they change."""

import json

import pytest
import requests

from .conftest import SteadyTraffic, start_lb_process, wait_for


def register(client, prefix: str, mock) -> None:
    client.put(f"{prefix}/backends/{mock.name}", json.dumps({"address": mock.address}))


def up_names(admin_url: str) -> set[str]:
    status = requests.get(admin_url + "/status", timeout=5).json()
    return {b["name"] for b in status["backends"] if b["state"] == "up"}


def test_two_processes_honour_each_others_cookies_and_agree_on_hash_picks(etcd, client, process, mock_servers):
    mocks = mock_servers(3)
    prefix = etcd.prefix()
    for mock in mocks:
        register(client, prefix, mock)
    flags = ("--discovery", etcd.url(prefix), "--algorithm", "hash", "--hash-key", "header:X-User",
             "--sticky-cookie", "lb", "--admin", "127.0.0.1:0", "--health-interval", "30", "--log-level", "warning")
    (_, first, first_admin), (_, second, second_admin) = (start_lb_process(process, *flags) for _ in range(2))
    everyone = {m.name for m in mocks}
    wait_for(lambda: up_names(first_admin) == everyone == up_names(second_admin), 8, "both see every backend up")
    picks = {}
    for user in (f"user-{n}" for n in range(24)):
        one = requests.get(first, headers={"X-User": user}, timeout=5)
        other = requests.get(second, headers={"X-User": user}, timeout=5)
        assert one.headers["X-Backend"] == other.headers["X-Backend"], user
        picks[user] = one
    assert len({r.headers["X-Backend"] for r in picks.values()}) == 3, "24 keys should reach every backend"
    # A cookie set by the first balancer pins the client on the second, whatever its hash key says.
    pinned = picks["user-0"]
    other_user = next(u for u, r in picks.items() if r.headers["X-Backend"] != pinned.headers["X-Backend"])
    answer = requests.get(second, headers={"X-User": other_user}, cookies={"lb": pinned.cookies["lb"]}, timeout=5)
    assert answer.headers["X-Backend"] == pinned.headers["X-Backend"]
    assert pinned.cookies["lb"] == requests.get(second, headers={"X-User": "user-0"}, timeout=5).cookies["lb"]


@pytest.mark.parametrize("workers", [1, 2])
def test_no_client_error_while_backends_come_and_go_in_etcd(etcd, client, process, mock_servers, workers):
    mocks = mock_servers(4)
    prefix = etcd.prefix()
    for mock in mocks[:2]:
        register(client, prefix, mock)
    _, url, admin = start_lb_process(process, "--discovery", etcd.url(prefix), "--workers", str(workers),
                                     "--admin", "127.0.0.1:0", "--health-interval", "30", "--log-level", "warning")
    wait_for(lambda: up_names(admin) == {"mock-1", "mock-2"}, 8, "the first two up")
    traffic = SteadyTraffic(url, rate=150, clients=4, max_s=25).start()
    try:
        for add, remove in ((mocks[2], mocks[0]), (mocks[3], mocks[1]), (mocks[0], mocks[2])):
            register(client, prefix, add)
            client.delete(f"{prefix}/backends/{remove.name}")
            wanted = (up_names(admin) | {add.name}) - {remove.name}
            wait_for(lambda wanted=wanted: up_names(admin) == wanted, 8, f"{sorted(wanted)} up")
            served = traffic.snapshot()[1]
            wait_for(lambda add=add, served=served: traffic.snapshot()[1][add.name] > served[add.name] + 30, 8,
                     f"traffic to {add.name}")
        status = requests.get(admin + "/status", timeout=5).json()
        assert status["applied"] and len(status["workers"]) == workers
        assert {w["generation"] for w in status["workers"]} == {status["generation"]}
    finally:
        traffic.stop()
    outcomes, _ = traffic.snapshot()
    assert set(outcomes) == {200} and outcomes[200] > 100, (outcomes, traffic.errors[:5])
