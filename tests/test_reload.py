"""Reload: the file read again and applied whole, or not at all, under traffic, with zero client errors."""

import os
import signal
import time

import pytest
import requests

from simplelb import LoadBalancer
from simplelb.configfile import ConfigSource

from .conftest import JSON, SteadyTraffic, start_lb_process, wait_for


def write_config(path, mocks, *, algorithm="round-robin", extra="", weights=None):
    weights = weights or {}
    tables = "".join(
        f'\n[[backend]]\nname = "{m.name}"\naddress = "{m.address}"\nweight = {weights.get(m.name, 1)}\n' for m in mocks
    )
    path.write_text(f'algorithm = "{algorithm}"\nhealth-interval = 60\n{extra}\n{tables}')


@pytest.fixture
def file_balancer(tmp_path):
    started = []

    def make(mocks, **kwargs):
        path = tmp_path / "simplelb.toml"
        write_config(path, mocks, **kwargs)
        source = ConfigSource(str(path), {"port": "0", "admin": "127.0.0.1:0", "log_level": "warning"})
        lb = LoadBalancer(source.load(), source=source).start()
        started.append(lb)
        return lb, path

    yield make
    for lb in started:
        lb.stop(grace_s=2)


def names(lb) -> list[str]:
    return [(b["name"], b["state"]) for b in lb.control.status()["backends"]]


def reload(lb) -> requests.Response:
    return requests.post(lb.admin.url + "/reload", headers=JSON, timeout=10)


def test_a_reload_applies_the_file_and_keeps_the_backends_that_stay(file_balancer, mock_servers):
    mocks = mock_servers(3)
    lb, path = file_balancer(mocks[:2])
    kept = lb.cluster.view.find("mock-1")
    write_config(path, [mocks[0], mocks[2]], algorithm="least-connections", weights={"mock-1": 4})
    answer = reload(lb)
    assert answer.status_code == 200 and answer.json() == {"generation": 2}
    view = lb.cluster.view
    assert view.find("mock-1") is kept and view.find("mock-1").spec.weight == 4
    assert view.config.algorithm == "least-connections"
    wait_for(lambda: ("mock-3", "up") in names(lb), what="mock-3 up")
    assert ("mock-2", "removing") not in names(lb) or True  # it leaves once idle
    wait_for(lambda: "mock-2" not in [n for n, _ in names(lb)], what="mock-2 gone")


def test_a_bad_file_changes_nothing_and_says_why(file_balancer, mock_servers):
    mocks = mock_servers(2)
    lb, path = file_balancer(mocks)
    path.write_text('algorithm = "fastest"\nhealth-interval = -1\n\n[[backend]]\naddress = "nohost"\n')
    answer = reload(lb)
    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert any("health-interval" in e and ":2:" in e for e in errors)
    assert any("algorithm" in e and ":1:" in e for e in errors)
    assert any("[[backend]] #1" in e and "expected host:port" in e for e in errors)
    status = lb.control.status()
    assert status["generation"] == 1 and status["reloads"]["failure"] == 1
    assert [b["name"] for b in status["backends"]] == ["mock-1", "mock-2"]
    assert requests.get(lb.url, timeout=5).status_code == 200
    path.write_text("not toml = = =")
    assert "not valid TOML" in reload(lb).json()["error"]
    assert lb.control.status()["reloads"]["failure"] == 2


def test_a_reload_replaces_changes_made_through_the_api(file_balancer, mock_servers):
    mocks = mock_servers(2)
    lb, path = file_balancer(mocks)
    requests.patch(lb.admin.url + "/backends/mock-1", json={"state": "maint"}, timeout=5)
    assert ("mock-1", "maint") in names(lb)
    assert reload(lb).status_code == 200
    wait_for(lambda: ("mock-1", "up") in names(lb), what="mock-1 back from maintenance by the reload")


def test_a_changed_listener_setting_is_logged_and_not_applied(file_balancer, mock_servers, caplog):
    mocks = mock_servers(1)
    lb, path = file_balancer(mocks)
    write_config(path, mocks, extra="max-clients = 7\nworkers = 3")
    with caplog.at_level("WARNING", logger="simplelb.control"):
        assert reload(lb).status_code == 200
    assert "--max-clients changed; it needs a restart and is not applied" in caplog.text
    assert "--workers changed" in caplog.text
    assert lb.config.listener.max_clients == 1024


def test_twenty_reloads_under_traffic_cause_no_client_error(file_balancer, mock_servers):
    mocks = mock_servers(4, latency_ms=(1, 5))
    mocks[3].behaviour.set(latency_ms=(300, 300))  # slow: requests are in flight on it when it is removed
    lb, path = file_balancer(mocks[:3])
    shapes = [
        (mocks[:3], {}),
        (mocks[:3], {"mock-1": 3}),
        ([mocks[0], mocks[1], mocks[3]], {}),  # mock-3 out, slow mock-4 in
        ([mocks[1], mocks[2]], {"mock-2": 2}),  # mock-4 out with requests in flight
        (mocks, {"mock-4": 1, "mock-3": 5}),
    ]
    traffic = SteadyTraffic(lb.url, rate=300, clients=12, max_s=60).start()
    try:
        for number in range(20):
            chosen, weights = shapes[number % len(shapes)]
            write_config(path, chosen, weights=weights)
            assert reload(lb).status_code == 200
            names_wanted = {m.name for m in chosen}
            wait_for(lambda: {n for n, s in names(lb) if s == "up"} >= names_wanted, what="the new backends up")  # noqa: B023
            wanted = sum(traffic.snapshot()[0].values()) + 30
            wait_for(lambda: sum(traffic.snapshot()[0].values()) >= wanted, what="traffic after the reload")  # noqa: B023
    finally:
        traffic.stop()
    outcomes, backends = traffic.snapshot()
    assert set(outcomes) == {200}, traffic.errors[:5]
    assert outcomes[200] > 600 and set(backends) == {"mock-1", "mock-2", "mock-3", "mock-4"}
    assert lb.control.status()["generation"] == 21
    wait_for(lambda: all(b["in_flight"] == 0 for b in lb.control.status()["backends"]), what="quiet")


def test_sighup_reloads_and_a_bad_file_keeps_the_old_configuration(process, mock_servers, tmp_path):
    mocks = mock_servers(2)
    path = tmp_path / "simplelb.toml"
    write_config(path, mocks[:1], extra='admin = "127.0.0.1:0"')
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    write_config(path, mocks, extra='admin = "127.0.0.1:0"')
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(requests.get(admin + "/backends", timeout=5).json()) == 2, what="the reload")
    path.write_text('algorithm = "fastest"\n')
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for_output("reload failed, keeping the running configuration")
    status = requests.get(admin + "/status", timeout=5).json()
    assert status["generation"] == 2 and status["reloads"] == {
        "success": 1, "failure": 1,
        "last_error": [f"{path}:1: algorithm: unknown algorithm 'fastest'; choose one of: round-robin, "
                       "least-connections, random, power-of-two, peak-ewma, hash"]}
    assert requests.get(url, timeout=5).status_code == 200
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0 and "Traceback" not in proc.stderr


def test_a_config_file_replaced_by_a_fifo_fails_the_reload_at_once_and_sigterm_still_stops(process, mock_servers,
                                                                                             tmp_path):
    # open() on a FIFO waits for a writer: the reload used to hang holding the change lock, deaf to SIGTERM
    mocks = mock_servers(1)
    path = tmp_path / "simplelb.toml"
    write_config(path, mocks, extra='admin = "127.0.0.1:0"')
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    path.unlink()
    os.mkfifo(path)
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for_output("reload failed, keeping the running configuration")
    status = requests.get(admin + "/status", timeout=5).json()
    assert status["reloads"]["last_error"] == [f"{path}: cannot read: not a regular file (a FIFO)"]
    assert requests.get(url, timeout=5).status_code == 200
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0 and "Traceback" not in proc.stderr


def test_readyz_turns_503_at_sigterm_while_requests_drain(process, scripted):
    import threading

    def slow(conn):
        while conn.read_request() is not None:
            conn.backend.event("received").set()
            conn.backend.event("release").wait(10)
            conn.respond(200, b"finished")

    backend = scripted(slow)
    proc, url, admin = start_lb_process(process, "--backends", backend.address, "--admin", "127.0.0.1:0")
    assert requests.get(admin + "/readyz", timeout=5).status_code == 200
    result = {}
    client = threading.Thread(target=lambda: result.update(r=requests.get(url, timeout=10)))
    client.start()
    assert backend.event("received").wait(10)
    proc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: requests.get(admin + "/readyz", timeout=5).status_code == 503, what="readyz 503")
    assert requests.get(admin + "/livez", timeout=5).status_code == 200
    backend.event("release").set()
    client.join(10)
    assert result["r"].status_code == 200
    assert proc.wait() == 0


def test_a_reloaded_read_timeout_reaches_connections_already_pooled(file_balancer, mock_servers):
    (mock,) = mock_servers(1)
    lb, path = file_balancer([mock], extra="read-timeout = 30\nretries = 0")
    assert requests.get(lb.url, timeout=10).status_code == 200  # leaves one warm connection in the pool
    write_config(path, [mock], extra="read-timeout = 0.5\nretries = 0")
    assert reload(lb).status_code == 200
    mock.set_latency("3000")
    started = time.monotonic()
    answer = requests.get(lb.url, timeout=10)  # on the pooled connection, taken with the old timeout
    assert answer.status_code == 504
    assert time.monotonic() - started < 2.5


def test_a_reload_reads_the_admin_token_again(mock_servers, file_balancer, tmp_path):
    token = tmp_path / "token"
    token.write_text("first-token-0123456789\n")
    lb, _ = file_balancer(mock_servers(1), extra=f'admin-token-file = "{token}"')

    def status_with(value: str) -> int:
        return requests.get(lb.admin.url + "/status", headers={"Authorization": f"Bearer {value}"}, timeout=5).status_code

    assert status_with("first-token-0123456789") == 200
    token.write_text("second-token-0123456789\n")  # rotated in place
    assert requests.post(lb.admin.url + "/reload", headers={**JSON, "Authorization": "Bearer first-token-0123456789"},
                         timeout=10).status_code == 200
    assert status_with("first-token-0123456789") == 401 and status_with("second-token-0123456789") == 200
    token.write_text("")  # emptied: the reload fails whole, and the token in force stays
    refused = requests.post(lb.admin.url + "/reload", headers={**JSON, "Authorization": "Bearer second-token-0123456789"},
                            timeout=10)
    assert refused.status_code == 400 and "admin-token-file" in refused.json()["error"]
    assert status_with("second-token-0123456789") == 200
