"""--discovery etcd://: backends listed and watched in a real etcd, leases, drain, etcd lost and back."""

import json
import logging
import signal
import time

import pytest
import requests

from simplelb import LoadBalancer
from simplelb.etcd import EtcdClient

from .conftest import wait_for
from .etcd_support import running_etcd


@pytest.fixture
def lb_on(balancer):
    """A balancer whose backends come from ``url`` alone."""

    def make(url: str, **kwargs) -> LoadBalancer:
        return balancer("", discovery=url, log_level="warning", **kwargs)

    return make


def rows(lb) -> dict[str, dict]:
    return {b["name"]: b for b in lb.control.status()["backends"]}


def states(lb) -> dict[str, str]:
    return {name: row["state"] for name, row in rows(lb).items()}


def put(client, prefix: str, name: str, address: str, **fields) -> None:
    client.put(f"{prefix}/backends/{name}", json.dumps({"address": address, **fields}))


def within(seconds: float, condition, what: str) -> float:
    """Wait for ``condition``; fail unless it came within ``seconds``. Returns how long it took."""
    start = time.monotonic()
    wait_for(condition, max(5.0, seconds * 3), what)
    took = time.monotonic() - start
    assert took < seconds, f"{what} took {took:.2f}s"
    return took


def test_listed_at_start_then_added_reweighted_and_deleted_within_a_second(etcd, client, lb_on, mock_servers):
    one, two, three = mock_servers(3)
    prefix = etcd.prefix()
    put(client, prefix, "one", one.address)
    put(client, prefix, "two", two.address, weight=2)
    lb = lb_on(etcd.url(prefix))
    assert set(rows(lb)) == {"one", "two"}  # start() waited for the first list
    wait_for(lambda: set(states(lb).values()) == {"up"}, 5, "both up")
    put(client, prefix, "three", three.address)
    within(1.0, lambda: "three" in rows(lb), "an added key to arrive")
    put(client, prefix, "two", two.address, weight=5)
    within(1.0, lambda: rows(lb)["two"]["weight"] == 5, "a new weight to arrive")
    client.delete(f"{prefix}/backends/one")
    within(1.0, lambda: states(lb).get("one") in (None, "removing"), "a deleted key to remove its backend")
    wait_for(lambda: states(lb) == {"two": "up", "three": "up"}, 5, "the set of two")
    assert {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(12)} == {two.name, three.name}
    source = lb.control.status()["discovery"][0]
    assert source == {"source": etcd.url(prefix), "up": True, "stale_since": None, "stale_for_s": None, "backends": 2, "last_error": None}


def test_drain_and_maintenance_written_in_etcd(etcd, client, lb_on, mock_servers):
    one, two = mock_servers(2)
    prefix = etcd.prefix()
    put(client, prefix, "one", one.address)
    put(client, prefix, "two", two.address)
    lb = lb_on(etcd.url(prefix))
    wait_for(lambda: set(states(lb).values()) == {"up"}, 5, "both up")
    put(client, prefix, "one", one.address, state="drain")
    within(1.0, lambda: states(lb)["one"] == "draining", "the drain to arrive")
    assert {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(6)} == {two.name}
    put(client, prefix, "two", two.address, state="maint")
    within(1.0, lambda: states(lb)["two"] == "maint", "maintenance to arrive")
    put(client, prefix, "one", one.address)
    put(client, prefix, "two", two.address)
    wait_for(lambda: set(states(lb).values()) == {"up"}, 5, "both back")


def test_a_malformed_value_is_logged_and_skipped(etcd, client, lb_on, mock_servers, caplog):
    one, two = mock_servers(2)
    prefix = etcd.prefix()
    put(client, prefix, "one", one.address)
    client.put(f"{prefix}/backends/broken", "{not json")
    client.put(f"{prefix}/backends/deep", "[" * 100_000)  # deeper than the JSON parser goes
    with caplog.at_level(logging.WARNING, logger="simplelb.etcddiscovery"):
        lb = lb_on(etcd.url(prefix))
        assert set(rows(lb)) == {"one"}
        client.put(f"{prefix}/backends/deeper", "{" * 100_000)
        client.put(f"{prefix}/backends/one", json.dumps({"address": one.address, "weight": "heavy"}))
        put(client, prefix, "two", two.address)  # a good change after the bad one still arrives
        within(1.0, lambda: "two" in rows(lb), "the next good key")
    assert rows(lb)["one"]["weight"] == 1 and rows(lb)["one"]["address"] == one.address
    messages = [r.getMessage() for r in caplog.records]
    assert any("broken" in m and "not JSON" in m and "skipped" in m for m in messages)
    assert any("backends/one" in m and "weight must be" in m and "keeping its last good value" in m for m in messages)
    assert lb.control.status()["discovery"][0]["up"]


def test_a_killed_registering_process_leaves_when_its_lease_expires(etcd, lb_on, process):
    prefix = etcd.prefix()
    lb = lb_on(etcd.url(prefix))
    mocks = process("-m", "mockserv", "2", "--base-port", "0", "--name-prefix", "reg-", "--register",
                    etcd.url(prefix), "--register-ttl", "2")
    mocks.wait_for_output("registered:", 10)
    wait_for(lambda: states(lb) == {"reg-1": "up", "reg-2": "up"}, 5, "the registered servers up")
    assert requests.get(lb.url, timeout=5).status_code == 200
    mocks.proc.send_signal(signal.SIGKILL)
    mocks.proc.wait(5)
    # The lease lasts 2 s; etcd revokes it on its own schedule, which a loaded CI machine once
    # stretched to 9 s. The point is that the keys go with the process, not how soon etcd gets to it.
    took = within(15.0, lambda: all(s in (None, "removing") for s in (states(lb).get("reg-1"), states(lb).get("reg-2"))),
                  "the expired keys to remove the backends")
    logging.getLogger(__name__).info("lease expiry seen after %.2fs", took)
    assert requests.get(lb.url, timeout=5).status_code == 503  # nothing left: said at once, not a hang


def test_etcd_lost_keeps_the_set_says_stale_and_catches_up_when_back(mock_servers, lb_on):
    one, two = mock_servers(2)
    with running_etcd() as etcd:  # its own: this test kills it
        prefix = etcd.prefix()
        client = EtcdClient(etcd.endpoint)
        put(client, prefix, "one", one.address)
        lb = lb_on(etcd.url(prefix))
        wait_for(lambda: states(lb) == {"one": "up"}, 5, "one up")
        etcd.kill()
        wait_for(lambda: not lb.control.status()["discovery"][0]["up"], 5, "the source to turn stale")
        source = lb.control.status()["discovery"][0]
        assert source["stale_since"] and source["last_error"] and source["backends"] == 1
        assert states(lb) == {"one": "up"}
        assert {requests.get(lb.url, timeout=5).status_code for _ in range(5)} == {200}
        etcd.start()
        put(client, prefix, "two", two.address)
        wait_for(lambda: states(lb) == {"one": "up", "two": "up"}, 8, "the change made while it was away")
        source = lb.control.status()["discovery"][0]
        assert source["up"] and source["stale_since"] is None and source["last_error"] is None
        client.close()


@pytest.mark.parametrize("stored", ["", "short"])
def test_an_empty_or_short_secret_in_etcd_is_refused_and_said(etcd, client, caplog, stored):
    from simplelb.etcddiscovery import etcd_secret

    prefix = etcd.prefix()
    client.put(f"{prefix}/secret", stored)
    with caplog.at_level(logging.INFO, logger="simplelb.etcddiscovery"):
        assert etcd_secret(etcd.url(prefix)) is None  # each balancer then keeps a secret of its own
    assert "fewer than 16: not used" in caplog.text and "read from" not in caplog.text


def test_balancers_on_one_prefix_share_one_sticky_secret(etcd, client, lb_on, mock_servers):
    prefix = etcd.prefix()
    put(client, prefix, "one", mock_servers(1)[0].address)
    first, second = lb_on(etcd.url(prefix)), lb_on(etcd.url(prefix))
    stored = client.get(f"{prefix}/secret")
    assert stored is not None and len(stored.value) == 64
    assert first.cluster._secret == second.cluster._secret == stored.value
