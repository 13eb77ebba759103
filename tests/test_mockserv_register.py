"""mockserv --register: servers put themselves in a real etcd under a lease, and leave with it."""

import json
import signal
import time

import pytest

from mockserv.fleet import MockFleet
from mockserv.register import Registration, backend_entries
from simplelb.etcd import EtcdClient

from .conftest import SteadyTraffic, free_port, run_cli, wait_for
from .etcd_support import running_etcd


def registered(client: EtcdClient, prefix: str) -> dict:
    kvs, _ = client.get_prefix(prefix + "/backends/")
    return {kv.key.rsplit("/", 1)[1]: json.loads(kv.value) for kv in kvs}


def states(lb) -> dict[str, str]:
    return {b["name"]: b["state"] for b in lb.control.status()["backends"]}


def test_registration_puts_one_key_per_server_and_revoke_removes_them(etcd, client):
    prefix = etcd.prefix()
    with MockFleet(2) as fleet:
        registration = Registration(client, backend_entries(fleet, prefix), ttl_s=30).start()
        try:
            assert registered(client, prefix) == {
                s.name: {"address": s.address, "weight": 1} for s in fleet
            }
            leases = {kv.lease for kv in client.get_prefix(prefix)[0]}
            assert leases == {registration.lease_id}
        finally:
            registration.stop()
        assert registered(client, prefix) == {}  # revoked, not left to expire
        assert client.time_to_live(next(iter(leases))) == -1


def test_keepalive_outlives_the_ttl_and_recovers_a_lost_lease(etcd, client):
    prefix = etcd.prefix()
    with MockFleet(1) as fleet:
        registration = Registration(client, backend_entries(fleet, prefix), ttl_s=2).start()
        try:
            first_lease = registration.lease_id
            end = time.monotonic() + 3 * registration.ttl_s  # three TTLs: only renewals keep the key
            while time.monotonic() < end:
                assert "mock-1" in registered(client, prefix), "the key expired although the process runs"
                time.sleep(0.2)
            client.revoke(first_lease)  # the lease is lost behind the registration's back
            assert registered(client, prefix) == {}
            wait_for(lambda: "mock-1" in registered(client, prefix), 10, "the registration to be renewed")
            assert registration.lease_id != first_lease
        finally:
            registration.stop()


def test_tls_servers_register_with_their_scheme(etcd, client):
    from mockserv.tls import MockTls

    tls = MockTls()
    prefix = etcd.prefix()
    try:
        with MockFleet(1, ssl_context=tls.context) as fleet:
            entries = backend_entries(fleet, prefix)
            assert json.loads(entries[f"{prefix}/backends/mock-1"])["address"] == fleet["mock-1"].url
            assert fleet["mock-1"].url.startswith("https://")
    finally:
        tls.close()


def test_cli_registration_expires_after_sigkill(etcd, client, process):
    prefix = etcd.prefix()
    proc = process("-m", "mockserv", "3", "--base-port", "0", "--register", etcd.url(prefix), "--register-ttl", "2")
    assert "registered:" in proc.wait_for_output("registered:")
    addresses = proc.wait_for_output("backends:").split()[1].split(",")
    assert registered(client, prefix) == {
        f"mock-{i}": {"address": address, "weight": 1} for i, address in enumerate(addresses, 1)
    }
    lease = client.get(f"{prefix}/backends/mock-1").lease
    assert 0 < client.time_to_live(lease) <= 2
    proc.proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: registered(client, prefix) == {}, 15, "the keys to expire with the lease")


def test_cli_clean_exit_revokes_at_once(etcd, client, process):
    prefix = etcd.prefix()
    proc = process("-m", "mockserv", "2", "--base-port", "0", "--register", etcd.url(prefix), "--register-ttl", "60")
    proc.wait_for_output("backends:")
    assert len(registered(client, prefix)) == 2
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert registered(client, prefix) == {}  # with a 60 s TTL, only the revoke explains this
    assert "Traceback" not in proc.stderr


def test_cli_ctrl_c_under_load_fails_no_request(etcd, client, process, balancer, mock_servers):
    """Ctrl-C revokes the lease, then serves on while the balancer drains: no request meets a closed port."""
    (stays,) = mock_servers(1)  # where the balancer sends everything once the others have gone
    prefix = etcd.prefix()
    client.put(f"{prefix}/backends/stays", json.dumps({"address": stays.address, "weight": 1}))
    # 200 ms a request: at a small rate, requests are always in flight there when the servers stop.
    leaving = process("-m", "mockserv", "2", "--base-port", "0", "--latency", "200", "--name-prefix", "leaving-",
                      "--register", etcd.url(prefix))
    leaving.wait_for_output("backends:")
    # No retries: one would send a refused request again to the backend that stays, and hide it.
    lb = balancer("", discovery=etcd.url(prefix), retries=0, log_level="warning")
    wait_for(lambda: states(lb) == {"stays": "up", "leaving-1": "up", "leaving-2": "up"}, 5, "three backends up")
    traffic = SteadyTraffic(lb.url, rate=60, clients=6, max_s=20).start()
    try:
        wait_for(lambda: min(traffic.snapshot()[1][f"leaving-{i}"] for i in (1, 2)) >= 3, 10,
                 "requests served by both leaving servers")
        leaving.proc.send_signal(signal.SIGINT)
        assert leaving.wait() == 0
        # Until the balancer has taken them out, requests go on to the leaving servers' (now closed) ports.
        wait_for(lambda: set(states(lb)) == {"stays"}, 5, "the leaving servers to be taken out")
    finally:
        traffic.stop()
    outcomes, _ = traffic.snapshot()
    assert set(outcomes) == {200}, (outcomes, traffic.errors[:3])
    assert "Traceback" not in leaving.stderr


def test_cli_ctrl_c_with_etcd_frozen_stops_within_seconds(process):
    with running_etcd() as etcd:
        # A TTL of 6 s renews every 2 s, each renewal waiting up to 2 s: longer than stop() waits for it.
        proc = process("-m", "mockserv", "1", "--base-port", "0", "--register", etcd.url(etcd.prefix()),
                       "--register-ttl", "6")
        proc.wait_for_output("backends:")
        try:
            etcd.freeze()
            # Ctrl-C in the middle of a renewal: the worst case, a renewal and the revoke both to wait out.
            wait_for(lambda: etcd.unread_requests() > 0, 5, "a renewal waiting on the frozen etcd")
            started = time.monotonic()
            proc.proc.send_signal(signal.SIGINT)
            assert proc.wait() == 0
            took = time.monotonic() - started
        finally:
            etcd.thaw()
    assert took < 5.0, f"Ctrl-C took {took:.1f}s with etcd frozen"
    assert "cannot revoke" in proc.stderr and "expires" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unreachable_etcd_is_one_line():
    result = run_cli("-m", "mockserv", "2", "--base-port", "0", "--register", f"etcd://127.0.0.1:{free_port()}/x")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot register in etcd" in result.stderr
    assert "Connection refused" in result.stderr


@pytest.mark.parametrize("args", [["--register", "http://h/x"], ["--register", "etcd://h:1/"],
                                  ["--register", "etcd://h:1/x", "--register-ttl", "0"]])
def test_cli_bad_register_flags_are_one_line(args):
    result = run_cli("-m", "mockserv", "1", *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
