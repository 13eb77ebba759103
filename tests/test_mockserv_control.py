"""MockFleet and the process's control listener: a crashed server is started again, in-process and over HTTP."""

import signal
import socket

import pytest
import requests

from mockserv import FleetError, MockFleet, UnknownServer
from mockserv.control import ControlListener, allowed_hosts, request_allowed

from .conftest import wait_for


def refused(url: str) -> bool:
    try:
        requests.get(url + "/", timeout=2)
    except requests.ConnectionError:
        return True
    return False


@pytest.fixture
def fleet():
    with MockFleet(3) as started:
        yield started


@pytest.fixture
def control(fleet):
    listener = ControlListener(fleet).start()
    yield listener
    listener.stop()


def test_fleet_names_starts_and_restarts_servers(fleet):
    assert [s.name for s in fleet] == ["mock-1", "mock-2", "mock-3"]
    assert len(set(fleet.addresses)) == 3
    victim = fleet["mock-2"]
    port = victim.port
    assert fleet.crash("mock-2")["running"] is False
    assert refused(victim.url)
    for other in ("mock-1", "mock-3"):
        assert requests.get(fleet[other].url + "/", timeout=5).json()["name"] == other
    assert fleet.restart("mock-2")["running"] is True
    assert victim.port == port
    assert requests.get(victim.url + "/", timeout=5).json()["name"] == "mock-2"
    with pytest.raises(UnknownServer, match="mock-9"):
        fleet["mock-9"]


def test_a_crash_through_the_servers_own_route_can_be_undone_by_the_fleet(fleet):
    server = fleet["mock-1"]
    requests.post(server.url + "/_mock/crash", timeout=5)
    wait_for(lambda: not server.running, 5, "the crash")
    fleet.restart("mock-1")
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


def test_fleet_seeds_each_server_apart_and_repeatably():
    draws = []
    for _ in range(2):
        fleet = MockFleet(2, latency_ms=(0, 100), error_rate=0.5, seed=7)
        draws.append([[s.behaviour.draw() for _ in range(5)] for s in fleet])
        fleet.stop()
    assert draws[0] == draws[1]
    assert draws[0][0] != draws[0][1]


def test_fleet_that_cannot_listen_says_where():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(FleetError, match=f"cannot listen on 127.0.0.1:{port}"):
            MockFleet(2, base_port=port)


def test_control_lists_crashes_and_starts_servers(fleet, control):
    servers = requests.get(control.url + "/servers", timeout=5).json()["servers"]
    assert [(s["name"], s["running"], s["port"]) for s in servers] == [(s.name, True, s.port) for s in fleet]
    crashed = requests.post(control.url + "/servers/mock-3/crash", timeout=5)
    assert crashed.status_code == 200 and crashed.json()["running"] is False
    assert refused(fleet["mock-3"].url)
    assert requests.get(control.url + "/servers/mock-3", timeout=5).json()["running"] is False
    started = requests.post(control.url + "/servers/mock-3/start", timeout=5)
    assert started.status_code == 200 and started.json()["running"] is True
    assert requests.get(fleet["mock-3"].url + "/", timeout=5).json()["name"] == "mock-3"
    # Starting a running server is a no-op, not an error.
    assert requests.post(control.url + "/servers/mock-3/start", timeout=5).status_code == 200


def test_control_changes_behaviour_of_one_server(fleet, control):
    assert requests.post(control.url + "/servers/mock-1/health", data="down", timeout=5).json()["healthy"] is False
    assert requests.get(fleet["mock-1"].url + "/health", timeout=5).status_code == 503
    assert requests.get(fleet["mock-2"].url + "/health", timeout=5).status_code == 200
    assert requests.post(control.url + "/servers/mock-1/health?state=UP", timeout=5).json()["healthy"] is True
    state = requests.post(control.url + "/servers/mock-2/latency?ms=5-10", timeout=5).json()
    assert state["latency_ms"] == [5, 10]
    assert requests.post(control.url + "/servers/mock-2/error-rate", data="1", timeout=5).json()["error_rate"] == 1
    assert requests.get(fleet["mock-2"].url + "/", timeout=5).status_code == 500


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/servers/mock-9", 404),
        ("POST", "/servers/mock-9/crash", 404),
        ("POST", "/servers/mock-1/explode", 404),
        ("GET", "/nothing", 404),
        ("POST", "/servers", 405),
        ("GET", "/servers/mock-1/crash", 405),
        ("DELETE", "/servers/mock-1", 405),  # (http.server said 501, in HTML, to methods without a handler)
        ("PUT", "/servers/mock-1/latency?ms=5", 405),
        ("POST", "/servers/mock-1/latency?ms=fast", 400),
        ("POST", "/servers/mock-1/health?state=sideways", 400),
    ],
)
def test_control_errors(fleet, control, method, path, status):
    response = requests.request(method, control.url + path, timeout=5)
    assert response.status_code == status
    assert response.json()["error"]
    assert all(s.running for s in fleet)


def test_control_restart_on_a_taken_port_is_409(fleet, control):
    requests.post(control.url + "/servers/mock-1/crash", timeout=5)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", fleet["mock-1"].port))
        squatter.listen()
        response = requests.post(control.url + "/servers/mock-1/start", timeout=5)
        assert response.status_code == 409 and str(fleet["mock-1"].port) in response.json()["error"]
    assert requests.post(control.url + "/servers/mock-1/start", timeout=5).json()["running"] is True


def test_control_refuses_web_pages(control):
    assert requests.get(control.url + "/servers", headers={"Host": "evil.example"}, timeout=5).status_code == 403
    attack = requests.post(control.url + "/servers/mock-1/crash", headers={"Origin": "http://evil.example"}, timeout=5)
    assert attack.status_code == 403
    local = {"Host": f"localhost:{control.port}", "Origin": f"http://localhost:{control.port}"}
    assert requests.get(control.url + "/servers", headers=local, timeout=5).status_code == 200


def test_request_allowed_rules():
    allowed = allowed_hosts("127.0.0.1", 9000)
    assert request_allowed("127.0.0.1:9000", None, allowed)
    assert request_allowed("[::1]:9000", None, allowed)
    assert not request_allowed("127.0.0.1:9001", None, allowed)
    assert not request_allowed(None, None, allowed)
    assert not request_allowed("localhost:9000", "https://example.com", allowed)


def test_cli_control_restarts_a_crashed_server(process):
    proc = process("-m", "mockserv", "2", "--base-port", "0")
    control_url = proc.wait_for_output("control:").split()[1].removesuffix("/servers")
    first, second = proc.wait_for_output("backends:").split()[1].split(",")
    requests.post(f"http://{second}/_mock/crash", timeout=5)
    wait_for(lambda: refused(f"http://{second}"), 5, "mock-2 to go down")
    assert requests.post(control_url + "/servers/mock-2/start", timeout=5).json()["running"] is True
    assert requests.get(f"http://{second}/", timeout=5).json()["name"] == "mock-2"
    assert requests.get(f"http://{first}/", timeout=5).json()["name"] == "mock-1"
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


def test_control_refuses_bad_lengths_without_a_traceback(control, raw_client, capfd):
    client = raw_client(control.port)
    response = client.request(f"POST /servers/mock-1/health HTTP/1.1\r\nHost: 127.0.0.1:{control.port}\r\n"
                              "Content-Length: lots\r\n\r\n".encode())
    assert response.status == 400 and client.is_closed()
    assert "Traceback" not in capfd.readouterr().err
