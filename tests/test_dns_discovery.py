"""dns:// and dns+srv:// backends, resolved from a real (small, authoritative) DNS server whose records change."""

import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mockserv import MockServer
from simplelb import LoadBalancer
from simplelb.dnsdiscovery import lookup, make_resolver
from simplelb.specs import SourceSpec

from .conftest import JSON, SteadyTraffic, needs_ipv6, wait_for
from .dns_support import DnsServer

SRV = "_http._tcp.svc.test."


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


@pytest.fixture
def lb_on(balancer, dns_server):
    """A balancer resolving with the test's DNS server."""

    def make(backends: str, **kwargs) -> LoadBalancer:
        return balancer(backends, admin="127.0.0.1:0", dns_server=dns_server.address, log_level="warning", **kwargs)

    return make


def states(lb) -> dict[str, str]:
    return {b["name"]: b["state"] for b in lb.control.status()["backends"]}


def srv_records(dns_server, mocks, priorities=None, weights=None) -> None:
    priorities, weights = priorities or {}, weights or {}
    dns_server.set(SRV, "SRV", [f"{priorities.get(m.name, 10)} {weights.get(m.name, 1)} {m.port} t.svc.test."
                                for m in mocks], ttl=1)
    dns_server.set("t.svc.test.", "A", ["127.0.0.1"])


def test_a_lookup_gives_every_address_and_srv_gives_ports_weights_and_tiers(dns_server):
    dns_server.set("web.test.", "A", ["127.0.0.1", "127.0.0.2"], ttl=30)
    dns_server.set("web.test.", "AAAA", ["::1"], ttl=7)
    dns_server.set(SRV, "SRV", ["10 60 8001 a.svc.test.", "10 0 8002 a.svc.test.", "20 5 8003 b.svc.test."], ttl=50)
    dns_server.set("a.svc.test.", "A", ["127.0.0.1"], ttl=40)
    dns_server.set("b.svc.test.", "AAAA", ["::1"], ttl=40)
    resolver = make_resolver(("127.0.0.1", dns_server.port))
    specs, ttl = lookup(resolver, SourceSpec("dns://web.test:8080", weight=3))
    assert [(s.name, s.weight) for s in specs] == [("127.0.0.1:8080", 3), ("127.0.0.2:8080", 3), ("[::1]:8080", 3)]
    assert ttl == 7  # the smallest
    specs, ttl = lookup(resolver, SourceSpec("dns+srv://_http._tcp.svc.test"))
    assert [(s.address, s.weight, s.backup) for s in specs] == [
        ("127.0.0.1:8001", 60, False), ("127.0.0.1:8002", 1, False), ("[::1]:8003", 5, True)]
    assert ttl == 40


@needs_ipv6
def test_addresses_added_and_removed_in_dns_are_added_and_removed_here(dns_server, lb_on):
    v4 = MockServer("v4").start()
    v6 = MockServer("v6", host="::1", port=v4.port).start()
    try:
        dns_server.set("web.test.", "A", ["127.0.0.1"], ttl=1)
        lb = lb_on(f"dns://web.test:{v4.port}", dns_refresh_s=0.2)
        v4_name, v6_name = f"127.0.0.1:{v4.port}", f"[::1]:{v4.port}"
        wait_for(lambda: states(lb) == {v4_name: "up"}, 5, "the A record's backend up")
        dns_server.set("web.test.", "AAAA", ["::1"], ttl=1)
        wait_for(lambda: states(lb) == {v4_name: "up", v6_name: "up"}, 5, "the AAAA record's backend added")
        seen = {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(4)}
        assert seen == {"v4", "v6"}
        dns_server.set("web.test.", "A", [])
        wait_for(lambda: states(lb) == {v6_name: "up"}, 5, "the A record's backend removed")
        assert {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(3)} == {"v6"}
    finally:
        v4.stop()
        v6.stop()


def test_the_ttl_says_when_to_look_again(dns_server, lb_on, mock_servers):
    first, second = mock_servers(2)
    srv_records(dns_server, [first])
    dns_server.set(SRV, "SRV", [f"10 1 {first.port} t.svc.test."], ttl=0)  # 0: looked up again after 1 s
    lb = lb_on("dns+srv://_http._tcp.svc.test")
    wait_for(lambda: states(lb) == {first.address: "up"}, 5, "first up")
    start = dns_server.count(SRV, "SRV")
    dns_server.set(SRV, "SRV", [f"10 1 {second.port} t.svc.test."], ttl=0)
    wait_for(lambda: states(lb) == {second.address: "up"}, 5, "the change seen when the TTL ran out")
    queries = dns_server.count(SRV, "SRV") - start
    assert 1 <= queries <= 4, f"{queries} lookups: the TTL (raised to 1 s) was not respected"


def test_servfail_keeps_the_set_and_says_stale_until_answers_return(dns_server, lb_on, mock_servers):
    mocks = mock_servers(2)
    srv_records(dns_server, mocks)
    lb = lb_on("dns+srv://_http._tcp.svc.test", dns_refresh_s=0.2)
    wait_for(lambda: set(states(lb).values()) == {"up"} and len(states(lb)) == 2, 5, "both up")
    dns_server.fail(SRV, "SERVFAIL")
    wait_for(lambda: not lb.control.status()["discovery"][0]["up"], 5, "the source to turn stale")
    source = lb.control.status()["discovery"][0]
    assert source["stale_since"] and "SERVFAIL" in source["last_error"] and source["backends"] == 2
    queries = dns_server.count(SRV, "SRV")
    wait_for(lambda: dns_server.count(SRV, "SRV") >= queries + 2, 5, "two more failed lookups")
    assert len(states(lb)) == 2
    assert {requests.get(lb.url, timeout=5).status_code for _ in range(4)} == {200}
    metrics = requests.get(lb.admin.url + "/metrics", timeout=5).text
    assert _sample(metrics, "simplelb_discovery_up", source="dns+srv://_http._tcp.svc.test") == 0
    dns_server.fail(SRV, None)
    wait_for(lambda: lb.control.status()["discovery"][0]["up"], 5, "the source up again")
    assert lb.control.status()["discovery"][0]["stale_since"] is None
    metrics = requests.get(lb.admin.url + "/metrics", timeout=5).text
    assert _sample(metrics, "simplelb_discovery_up", source="dns+srv://_http._tcp.svc.test") == 1
    assert _sample(metrics, "simplelb_discovery_backends", source="dns+srv://_http._tcp.svc.test") == 2


def _sample(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no {name} {labels}")


def test_nxdomain_empties_the_set_only_when_seen_twice_in_a_row(dns_server, lb_on, mock_servers):
    mocks = mock_servers(2)
    srv_records(dns_server, mocks)
    lb = lb_on("dns+srv://_http._tcp.svc.test", dns_refresh_s=0.2)
    wait_for(lambda: len(states(lb)) == 2, 5, "both backends")
    generation = lb.control.status()["generation"]
    queries = dns_server.count(SRV, "SRV")
    dns_server.fail(SRV, "NXDOMAIN", times=1)  # once, between good answers
    wait_for(lambda: dns_server.count(SRV, "SRV") >= queries + 3, 5, "the NXDOMAIN and two good answers after it")
    assert lb.control.status()["generation"] == generation and len(states(lb)) == 2
    dns_server.fail(SRV, "NXDOMAIN")  # for good
    wait_for(lambda: all(s == "removing" for s in states(lb).values()), 5, "the set emptied")
    source = lb.control.status()["discovery"][0]
    assert source["up"] and source["backends"] == 0
    assert requests.get(lb.url, timeout=5).status_code == 503
    dns_server.fail(SRV, None)
    wait_for(lambda: set(states(lb).values()) == {"up"} and len(states(lb)) == 2, 5, "the backends back")


def test_srv_weights_share_the_traffic_and_a_higher_priority_is_a_backup(dns_server, lb_on, mock_servers):
    heavy, light, spare = mock_servers(3)
    srv_records(dns_server, [heavy, light, spare], priorities={spare.name: 20},
                weights={heavy.name: 30, light.name: 10})
    lb = lb_on("dns+srv://_http._tcp.svc.test")
    wait_for(lambda: len(states(lb)) == 3 and set(states(lb).values()) == {"up"}, 5, "all up")
    rows = {b["name"]: (b["weight"], b["backup"]) for b in lb.control.status()["backends"]}
    assert rows == {heavy.address: (30, False), light.address: (10, False), spare.address: (1, True)}
    served = [requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(40)]
    assert (served.count(heavy.name), served.count(light.name), served.count(spare.name)) == (30, 10, 0)


def test_an_operator_drain_of_a_discovered_backend_outlives_lookups_until_a_reload(dns_server, lb_on, mock_servers):
    mocks = mock_servers(2)
    srv_records(dns_server, mocks)
    lb = lb_on("dns+srv://_http._tcp.svc.test", dns_refresh_s=0.2)
    wait_for(lambda: len(states(lb)) == 2 and set(states(lb).values()) == {"up"}, 5, "both up")
    url = f"{lb.admin.url}/backends/{mocks[0].address}"
    answer = requests.patch(url, json={"state": "drain", "weight": 4}, headers=JSON, timeout=5)
    assert answer.status_code == 200 and answer.json()["state"] == "draining"
    srv_records(dns_server, [*mocks, *mock_servers(1)])  # the set changes: an update goes through
    wait_for(lambda: len(states(lb)) == 3, 5, "the third backend")
    row = requests.get(url, timeout=5).json()
    assert (row["state"], row["weight"]) == ("draining", 4)
    assert requests.delete(url, headers=JSON, timeout=5).status_code == 409  # it is the source's to remove
    assert requests.post(lb.admin.url + "/reload", headers=JSON, timeout=5).status_code == 200
    row = requests.get(url, timeout=5).json()
    assert (row["state"], row["weight"]) == ("up", 1)


def test_no_client_error_while_dns_adds_and_removes_backends_under_traffic(dns_server, lb_on, mock_servers):
    mocks = mock_servers(4)
    srv_records(dns_server, mocks[:2])
    lb = lb_on("dns+srv://_http._tcp.svc.test", dns_refresh_s=0.1)
    wait_for(lambda: len(states(lb)) == 2 and set(states(lb).values()) == {"up"}, 5, "both up")
    traffic = SteadyTraffic(lb.url, rate=150, clients=4, max_s=20).start()
    try:
        for current in ([mocks[0], mocks[1], mocks[2]], [mocks[1], mocks[2]], [mocks[2], mocks[3]],
                        [mocks[0], mocks[3]]):
            srv_records(dns_server, current)
            names = {m.address for m in current}
            wait_for(lambda names=names: {n for n, s in states(lb).items() if s == "up"} == names, 5,
                     f"{sorted(names)} up")
            served = traffic.snapshot()[1]
            wait_for(lambda served=served, current=current: all(traffic.snapshot()[1][m.name] > served[m.name] + 20
                                                                for m in current),
                     5, "traffic to the new set")
    finally:
        traffic.stop()
    outcomes, _ = traffic.snapshot()
    assert set(outcomes) == {200} and outcomes[200] > 100, (outcomes, traffic.errors[:5])


def test_a_reload_keeps_restarts_or_stops_sources_as_the_file_says(dns_server, mock_servers, tmp_path):
    from simplelb.configfile import ConfigSource

    mocks = mock_servers(2)
    srv_records(dns_server, mocks)
    path = tmp_path / "lb.toml"
    static = mock_servers(1)[0]
    text = (f'dns-server = "{dns_server.address}"\nhealth-interval = 60\n\n[[backend]]\naddress = "{static.address}"\n'
            '\n[[backend]]\naddress = "dns+srv://_http._tcp.svc.test"\n')
    path.write_text(text)
    source = ConfigSource(str(path), {"port": "0", "log_level": "warning"})
    lb = LoadBalancer(source.load(), source=source).start()
    try:
        wait_for(lambda: len(states(lb)) == 3 and set(states(lb).values()) == {"up"}, 5, "all up")
        kept = lb.cluster.view.find(mocks[0].address)
        path.write_text(text.replace("health-interval = 60", "health-interval = 60\ndns-refresh = 0.5"))
        lb.control.reload()  # the source restarts with a new refresh, its backends stay as they are
        assert lb.cluster.view.find(mocks[0].address) is kept and states(lb)[mocks[0].address] == "up"
        assert lb.control.status()["discovery"][0]["source"] == "dns+srv://_http._tcp.svc.test"
        path.write_text(text.split("\n[[backend]]\naddress = \"dns+srv")[0])
        lb.control.reload()
        wait_for(lambda: states(lb) == {static.address: "up"}, 5, "the source's backends gone with it")
        assert lb.control.status()["discovery"] == []
    finally:
        lb.stop(grace_s=1)


def test_a_reload_does_not_wait_for_a_lookup_in_flight_of_a_source_it_stops(dns_server, mock_servers, tmp_path):
    from simplelb.configfile import ConfigSource

    mocks = mock_servers(2)
    srv_records(dns_server, mocks)
    path = tmp_path / "lb.toml"
    text = (f'dns-server = "{dns_server.address}"\ndns-refresh = 0.1\nhealth-interval = 60\n\n'
            f'[[backend]]\naddress = "{mocks[0].address}"\n\n[[backend]]\naddress = "dns+srv://_http._tcp.svc.test"\n')
    path.write_text(text)
    source = ConfigSource(str(path), {"port": "0", "log_level": "warning"})
    lb = LoadBalancer(source.load(), source=source).start()
    try:
        wait_for(lambda: len(states(lb)) == 2, 5, "the static and the discovered backend")
        dns_server.hold()  # the next lookup waits out its whole lifetime (2 s)
        asked = dns_server.received
        wait_for(lambda: dns_server.received > asked, 5, "a lookup in flight")
        path.write_text(text.split("\n[[backend]]\naddress = \"dns+srv")[0])
        started = time.monotonic()
        lb.control.reload()  # holds the control's lock: it must not wait for that lookup
        assert time.monotonic() - started < 1.0
        assert states(lb) == {mocks[0].address: "up"}
        dns_server.release()  # the stopped source ends once answered, and its late answer changes nothing
        wait_for(lambda: not any(t.name.startswith("discovery dns+srv") for t in threading.enumerate()), 5,
                 "the stopped source's thread to end")
        assert states(lb) == {mocks[0].address: "up"} and lb.control.status()["discovery"] == []
    finally:
        lb.stop(grace_s=1)


def test_one_srv_target_without_addresses_does_not_take_the_others_away(dns_server):
    from simplelb.dnsdiscovery import NoRecords

    dns_server.set(SRV, "SRV", ["10 1 8001 a.svc.test.", "10 1 8002 gone.svc.test."], ttl=30)
    dns_server.set("a.svc.test.", "A", ["127.0.0.1"], ttl=30)  # gone.svc.test. does not exist
    resolver = make_resolver(("127.0.0.1", dns_server.port))
    specs, _ = lookup(resolver, SourceSpec("dns+srv://_http._tcp.svc.test"))
    assert [s.address for s in specs] == ["127.0.0.1:8001"]
    dns_server.set(SRV, "SRV", ["10 1 8002 gone.svc.test."], ttl=30)
    with pytest.raises(NoRecords):  # none has an address: a failed lookup, and the last set stays
        lookup(resolver, SourceSpec("dns+srv://_http._tcp.svc.test"))


def test_an_srv_record_of_port_0_or_target_dot_is_skipped(dns_server):
    # Port 0 is nowhere to connect (and with --workers such a backend crashed every worker that was
    # sent it); target "." says the service is not offered (RFC 2782).
    dns_server.set(SRV, "SRV", ["10 1 0 a.svc.test.", "10 1 8001 a.svc.test.", "10 1 8002 ."], ttl=30)
    dns_server.set("a.svc.test.", "A", ["127.0.0.1"], ttl=30)
    resolver = make_resolver(("127.0.0.1", dns_server.port))
    specs, _ = lookup(resolver, SourceSpec("dns+srv://_http._tcp.svc.test"))
    assert [s.address for s in specs] == ["127.0.0.1:8001"]
