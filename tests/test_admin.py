"""The admin listener: the backend API end to end, every refusal, the token, liveness and readiness."""

import json
import shutil
import subprocess

import pytest
import requests

from .conftest import JSON, NoWorkers, dripped_until_closed, free_port, run_cli, wait_for


@pytest.fixture
def admin_lb(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, admin="127.0.0.1:0")
    return lb, lb.admin.url, mocks


def test_status_describes_the_balancer_and_every_backend(admin_lb):
    lb, admin, mocks = admin_lb
    for _ in range(4):
        requests.get(lb.url, timeout=5)

    def counted() -> dict:  # a request is counted just after its answer went out
        return requests.get(admin + "/status", timeout=5).json()

    wait_for(lambda: sum(b["requests"] for b in counted()["backends"]) == 4, what="all four requests counted")
    status = counted()
    assert {"version", "uptime_s", "algorithm", "generation", "workers", "backends"} <= set(status)
    assert status["algorithm"] == "round-robin" and status["generation"] == 1
    assert [w["generation"] for w in status["workers"]] == [1]
    first = status["backends"][0]
    assert {"name", "address", "weight", "backup", "state", "in_flight", "requests", "failures", "ejections",
            "latency_ms"} <= set(first)
    assert [(b["name"], b["state"], b["requests"]) for b in status["backends"]] == [
        (mocks[0].address, "up", 2), (mocks[1].address, "up", 2)]
    assert first["latency_ms"] > 0
    listed = requests.get(admin + "/backends", timeout=5).json()
    assert [(b["name"], b["requests"]) for b in listed] == [(b["name"], b["requests"]) for b in status["backends"]]


def test_add_patch_and_delete_a_backend(admin_lb, mock_servers):
    lb, admin, mocks = admin_lb
    (third,) = mock_servers(1)
    added = requests.post(admin + "/backends", json={"address": third.address, "name": "third", "weight": 2}, timeout=5)
    assert added.status_code == 201 and added.headers["Location"] == "/backends/third"
    assert added.json()["generation"] == 2 and added.json()["weight"] == 2
    wait_for(lambda: requests.get(admin + "/backends/third", timeout=5).json()["state"] == "up", what="third up")
    with requests.Session() as session:
        served = [session.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(8)]
    assert served.count(third.name) == 4  # weight 2 of 4

    patched = requests.patch(admin + "/backends/third", json={"state": "drain", "weight": 5}, timeout=5)
    assert patched.status_code == 200 and patched.json()["state"] == "draining" and patched.json()["weight"] == 5
    assert third.name not in {requests.get(lb.url, timeout=5).headers["X-Backend"] for _ in range(6)}

    deleted = requests.delete(admin + "/backends/third", headers=JSON, timeout=5)
    assert deleted.status_code == 202 and deleted.json() == {"name": "third", "state": "removing", "generation": 4}
    wait_for(lambda: requests.get(admin + "/backends/third", timeout=5).status_code == 404, what="third gone")
    assert [b["name"] for b in requests.get(admin + "/backends", timeout=5).json()] == [m.address for m in mocks]


@pytest.mark.parametrize(
    "method, path, headers, body, status, fragment",
    [
        ("GET", "/nope", {}, None, 404, "no such admin path"),
        ("PUT", "/status", {}, None, 405, "not allowed"),
        ("OPTIONS", "/status", {}, None, 405, "not allowed"),
        ("POST", "/backends", {"Content-Type": "application/x-www-form-urlencoded"}, b"address=x", 415, "application/json"),
        ("POST", "/backends", {}, b'{"address": "127.0.0.1:1"}', 415, "application/json"),
        ("POST", "/backends", JSON, b"{not json", 400, "malformed JSON"),
        ("POST", "/backends", JSON, b"[1, 2]", 400, "must be a table"),
        ("POST", "/backends", JSON, b'{"address": "nohost"}', 400, "expected host:port"),
        ("POST", "/backends", JSON, b'{"address": "127.0.0.1:1", "colour": "red"}', 400, "unknown field 'colour'"),
        ("POST", "/backends", JSON, b'{"address": "127.0.0.1:1", "weight": 0}', 400, "weight must be"),
        ("POST", "/backends", JSON, '{"address": "127.0.0.1:\u00b2"}'.encode(), 400, "is not a port number"),
        # more digits than int() reads (4300): it used to be a 500 and a traceback in the log
        ("POST", "/backends", JSON, b'{"address": "127.0.0.1:%s"}' % (b"9" * 5000), 400, "is not a port number"),
        ("POST", "/backends", JSON, b'{"address": "127.0.0.1:1", "weight": %s}' % (b"9" * 5000), 400, "malformed JSON"),
        ("PATCH", "/backends/nobody", JSON, b'{"weight": 2}', 404, "no backend named 'nobody'"),
        ("GET", "/backends/nobody", {}, None, 404, "no backend named 'nobody'"),
        ("DELETE", "/backends/nobody", JSON, None, 404, "no backend named 'nobody'"),
        ("PATCH", "/backends/{first}", JSON, b'{"weight": 2, "speed": 9}', 400, "unknown field 'speed'"),
        ("PATCH", "/backends/{first}", JSON, b'{"state": "off"}', 400, "state must be one of ready, drain, maint"),
        ("PATCH", "/backends/{first}", JSON, b'{}', 400, "weight"),
        ("POST", "/backends", JSON, b"x" * (70 * 1024), 413, "larger than"),
        ("GET", "/status", {"Host": "evil.example"}, None, 403, "not a loopback name"),
        ("POST", "/reload", {**JSON, "Origin": "http://evil.example"}, None, 403, "not allowed"),
    ],
)
def test_admin_refusals_have_the_right_status_and_a_json_error(admin_lb, method, path, headers, body, status, fragment):
    lb, admin, mocks = admin_lb
    response = requests.request(method, admin + path.format(first=mocks[0].address), headers=headers, data=body,
                                timeout=5)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"]
    assert requests.get(admin + "/status", timeout=5).json()["generation"] == 1  # nothing changed


def test_conflicts_are_409(admin_lb):
    lb, admin, mocks = admin_lb
    by_name = requests.post(admin + "/backends", json={"address": "127.0.0.1:1", "name": mocks[0].address}, timeout=5)
    assert by_name.status_code == 409 and "exists already" in by_name.json()["error"]
    by_address = requests.post(admin + "/backends", json={"address": mocks[1].address, "name": "alias"}, timeout=5)
    assert by_address.status_code == 409 and "has the address" in by_address.json()["error"]
    requests.delete(admin + f"/backends/{mocks[0].address}", headers=JSON, timeout=5)
    last = requests.delete(admin + f"/backends/{mocks[1].address}", headers=JSON, timeout=5)
    assert last.status_code == 409 and "last primary" in last.json()["error"]


def test_a_host_name_in_another_case_is_the_same_backend(admin_lb):
    lb, admin, mocks = admin_lb
    port = mocks[0].port
    first = requests.post(admin + "/backends", json={"address": f"localhost:{port}"}, timeout=5)
    assert first.status_code == 201 and first.json()["name"] == f"localhost:{port}"
    again = requests.post(admin + "/backends", json={"address": f"LOCALHOST:{port}"}, timeout=5)
    assert again.status_code == 409 and "exists already" in again.json()["error"]
    assert requests.get(admin + f"/backends/localhost:{port}", timeout=5).status_code == 200
    # and the admin listener on 127.0.0.1 takes the name localhost in any case in Host
    assert requests.get(admin + "/status", headers={"Host": f"LOCALHOST:{port}"}, timeout=5).status_code == 200


def test_the_location_of_a_backend_named_by_an_https_address_leads_to_it(admin_lb):
    lb, admin, mocks = admin_lb
    added = requests.post(admin + "/backends", json={"address": "https://127.0.0.1:1"}, timeout=5)
    assert added.status_code == 201 and added.json()["name"] == "https://127.0.0.1:1"
    found = requests.get(admin + added.headers["Location"], timeout=5)  # its slashes escaped: one path segment
    assert found.status_code == 200 and found.json()["name"] == "https://127.0.0.1:1"


def test_a_405_says_what_is_allowed(admin_lb):
    response = requests.put(admin_lb[1] + "/backends", timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"


def test_a_malformed_request_line_is_a_json_400(admin_lb):
    import socket

    port = int(admin_lb[1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # it closes after a malformed request
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b'"error"' in answer


def test_a_content_length_of_more_digits_than_int_reads_is_a_400(admin_lb):
    import socket

    port = int(admin_lb[1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %s\r\n\r\n" % (b"9" * 5000))
        answer = b""
        while chunk := sock.recv(4096):  # it closes: the body stays unread
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid Content-Length" in answer


def test_the_token_is_required_except_for_liveness_and_readiness(mock_servers, balancer, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("correct-horse-battery-staple\n")
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0", admin_token_file=str(token_file))
    admin = lb.admin.url
    assert requests.get(admin + "/livez", timeout=5).status_code == 200
    assert requests.get(admin + "/readyz", timeout=5).status_code == 200
    missing = requests.get(admin + "/status", timeout=5)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(admin + "/status", headers={"Authorization": "Bearer correct-horse-battery-stapler"}, timeout=5)
    assert wrong.status_code == 401
    mutation = requests.post(admin + "/reload", headers=JSON, timeout=5)
    assert mutation.status_code == 401
    good = {"Authorization": "Bearer correct-horse-battery-staple"}
    assert requests.get(admin + "/status", headers=good, timeout=5).status_code == 200
    assert requests.post(admin + "/reload", headers={**good, **JSON}, timeout=5).status_code == 200


def test_readyz_is_503_when_no_backend_is_available(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0", health_interval_s=0.05, fall=1)
    admin = lb.admin.url
    assert requests.get(admin + "/readyz", timeout=5).json() == {"ready": True}
    requests.post(mock.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: requests.get(admin + "/readyz", timeout=5).status_code == 503, what="readyz 503")
    assert requests.get(admin + "/livez", timeout=5).status_code == 200


def test_readyz_and_up_say_no_when_the_only_backend_drains(mock_servers, balancer):
    # Draining, it takes no new requests: every one gets a 503, so readiness (and the metric that
    # says whether a backend is picked) must say so too, or what sits in front keeps sending.
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0")
    admin = lb.admin.url
    up = f'simplelb_backend_up{{backend="{mock.address}"}}'
    assert f"{up} 1.0" in requests.get(admin + "/metrics", timeout=5).text
    drained = requests.patch(f"{admin}/backends/{mock.address}", json={"state": "drain"}, timeout=5)
    assert drained.status_code == 200
    assert requests.get(lb.url, timeout=5).status_code == 503
    assert requests.get(admin + "/readyz", timeout=5).status_code == 503
    assert f"{up} 0.0" in requests.get(admin + "/metrics", timeout=5).text
    requests.patch(f"{admin}/backends/{mock.address}", json={"state": "ready"}, timeout=5)
    assert requests.get(admin + "/readyz", timeout=5).status_code == 200


def test_a_slow_admin_client_does_not_stall_traffic_or_other_admin_calls(admin_lb):
    import socket

    lb, admin, _ = admin_lb
    port = int(admin.rsplit(":", 1)[1])
    hogs = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]  # more than the cap
    try:
        for hog in hogs[:5]:
            hog.sendall(b"POST /backends HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{")  # and never the rest
        assert all(requests.get(lb.url, timeout=2).status_code == 200 for _ in range(20))
    finally:
        for hog in hogs:
            hog.close()
    wait_for(lambda: _answers(admin), what="the admin listener to answer again")


def _answers(admin: str) -> bool:
    try:
        return requests.get(admin + "/livez", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_admin_off_loopback_without_a_token_is_refused_at_start():
    result = run_cli("-m", "simplelb", "--backends", "127.0.0.1:9", "--admin", "0.0.0.0:0")
    assert result.returncode == 2
    assert result.stderr.strip() == "simplelb: error: --admin 0.0.0.0: an admin listener off loopback needs --admin-token-file"


def test_admin_port_in_use_is_a_one_line_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("-m", "simplelb", "--backends", "127.0.0.1:9", "--port", "0", "--admin", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"simplelb: error: cannot listen on admin 127.0.0.1:{port}: Address already in use"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_commands_work(admin_lb):
    lb, admin, mocks = admin_lb

    def curl(*args: str) -> tuple[int, dict]:
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=10)
        body, _, code = out.stdout.rpartition("\n")
        return int(code), json.loads(body)

    name = mocks[0].address
    code, body = curl("-X", "PATCH", "-H", "Content-Type: application/json", "-d", '{"state": "drain"}',
                      f"{admin}/backends/{name}")
    assert code == 200 and body["state"] == "draining"
    code, body = curl("-X", "PATCH", "-H", "Content-Type: application/json", "-d", '{"state": "ready"}',
                      f"{admin}/backends/{name}")
    assert code == 200 and body["state"] == "up"
    code, body = curl("-X", "POST", "-H", "Content-Type: application/json", f"{admin}/reload")
    assert code == 200 and body["generation"] == 4
    code, body = curl(f"{admin}/backends/{name}")
    assert code == 200 and body["name"] == name


def test_no_admin_listener_unless_asked(mock_servers, balancer):
    (mock,) = mock_servers(1)
    assert balancer([mock]).admin is None
    assert free_port()  # (nothing else to check: there is no listener to reach)


def test_stopping_closes_open_admin_connections(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0")
    with requests.Session() as session:  # a status page polling on one keep-alive connection
        assert session.get(lb.admin.url + "/livez", timeout=5).status_code == 200
        lb.admin.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(lb.admin.url + "/livez", timeout=5)


def test_a_refused_request_never_smuggles_its_body_in_as_the_next_request(admin_lb):
    import socket

    lb, admin, mocks = admin_lb
    victim = mocks[0].address
    patch = json.dumps({"state": "maint"}).encode()
    inner = (f"PATCH /backends/{victim} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(patch)}\r\n\r\n").encode() + patch
    outer = (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"
             b"Content-Length: %d\r\n\r\n" % len(inner)) + inner  # what a no-cors fetch from any site can send
    port = int(admin.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(outer)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and answer.count(b"HTTP/1.1 ") == 1  # and then closed
    assert requests.get(admin + f"/backends/{victim}", timeout=5).json()["state"] == "up"


def test_deeply_nested_json_is_a_400(admin_lb):
    body = b"[" * 100_000 + b"]" * 100_000
    response = requests.post(admin_lb[1] + "/backends", data=body[:60_000], headers=JSON, timeout=5)
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]


@pytest.mark.parametrize("first, drip", [
    (b"GET /status HTTP/1.1\r\n", b"X-Drip: 1\r\n"),  # a header line at a time: the head never ends
    (b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 1000\r\n\r\n", b" "),  # a byte of body at a time: it used to hold the slot for ever
], ids=["head", "body"])
def test_a_request_dripped_slowly_is_cut_off_at_the_deadline(admin_lb, monkeypatch, first, drip):
    from simplelb import admin as admin_module

    monkeypatch.setattr(admin_module, "HEAD_DEADLINE_S", 0.5)
    assert dripped_until_closed(int(admin_lb[1].rsplit(":", 1)[1]), first, drip) < 3


def test_a_change_the_fleet_refuses_is_a_400_saying_why(monkeypatch):
    # The parent of --workers checks a change's result as every worker will read it; what it
    # refuses is the caller's to fix, answered as such (it was a 500 and a traceback).
    from simplelb import Config, fleetcontrol
    from simplelb.admin import AdminServer
    from simplelb.errors import ConfigError

    def refused(values):
        raise ConfigError("backend: 'name' must be 1-128 letters")

    control = fleetcontrol.FleetControl(NoWorkers(), None, Config.of(backends="127.0.0.1:9", workers=2))
    admin = AdminServer(("127.0.0.1", 0), control).start()
    try:
        monkeypatch.setattr(fleetcontrol, "cluster_from_dict", refused)
        answer = requests.patch(admin.url + "/backends/127.0.0.1:9", json={"weight": 2}, timeout=5)
        assert answer.status_code == 400 and "must be 1-128 letters" in answer.json()["error"]
        assert control.current()[0] == 1
    finally:
        admin.stop()
