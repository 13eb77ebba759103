import http.client
import json
import signal
import threading

import pytest
import requests

from mockserv import MockServer, parse_error_rate, parse_latency
from mockserv.server import BehaviourError

from .conftest import run_cli


def test_each_server_says_who_it_is(mock_servers):
    a, b = mock_servers(2)
    for server in (a, b):
        response = requests.put(server.url + "/some/path?x=1", data=b"12345", timeout=5)
        assert response.headers["X-Backend"] == server.name
        assert response.json() == {
            "name": server.name, "port": server.port, "method": "PUT", "path": "/some/path?x=1", "body_bytes": 5
        }


def test_servers_do_not_share_handler_classes_or_routes(mock_servers):
    a, b = mock_servers(2)
    assert a.handler_class is not b.handler_class
    assert a.handler_class.routes is not b.handler_class.routes
    a.handler_class.routes[("GET", "/only-on-a")] = "health"
    assert requests.get(a.url + "/only-on-a", timeout=5).json()["status"] == "up"
    assert requests.get(b.url + "/only-on-a", timeout=5).json()["path"] == "/only-on-a"  # plain echo on b


def test_health_control_affects_only_that_server(mock_servers):
    a, b = mock_servers(2)
    assert requests.post(a.url + "/_mock/health", data="down", timeout=5).json()["healthy"] is False
    assert requests.get(a.url + "/health", timeout=5).status_code == 503
    assert requests.get(b.url + "/health", timeout=5).status_code == 200
    requests.post(a.url + "/_mock/health?state=up", timeout=5)
    assert requests.get(a.url + "/health", timeout=5).status_code == 200


def test_bad_control_values_are_400(mock_servers):
    (server,) = mock_servers(1)
    assert requests.post(server.url + "/_mock/health", data="sideways", timeout=5).status_code == 400
    assert requests.post(server.url + "/_mock/latency?ms=fast", timeout=5).status_code == 400
    assert requests.post(server.url + "/_mock/error-rate?p=2", timeout=5).status_code == 400


def test_latency_and_error_rate_controls(mock_servers):
    (server,) = mock_servers(1)
    requests.post(server.url + "/_mock/latency?ms=20-30", timeout=5)
    response = requests.get(server.url + "/", timeout=5)
    assert response.elapsed.total_seconds() >= 0.02
    requests.post(server.url + "/_mock/error-rate?p=1", timeout=5)
    assert requests.get(server.url + "/", timeout=5).status_code == 500
    assert requests.get(server.url + "/health", timeout=5).status_code == 200  # health is not affected
    state = requests.get(server.url + "/_mock/state", timeout=5).json()
    assert state["latency_ms"] == [20, 30] and state["error_rate"] == 1


def test_crash_stops_the_listener(mock_servers):
    (server,) = mock_servers(1)
    assert requests.post(server.url + "/_mock/crash", timeout=5).json()["status"] == "crashing"
    deadline_hit = False
    for _ in range(200):
        try:
            requests.get(server.url + "/", timeout=1)
        except requests.ConnectionError:
            break
    else:
        deadline_hit = True
    assert not deadline_hit, "server still answering after crash"


def test_a_crash_answers_only_once_the_port_is_dead(mock_servers):
    # It answered first and stopped from another thread: a request sent a moment later, on a new
    # connection or on one kept alive from before, was answered 200 about one time in four.
    for _ in range(10):
        (server,) = mock_servers(1)
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        kept.connect()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("POST", "/_mock/crash")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "crashing"
        conn.close()
        for again in (http.client.HTTPConnection("127.0.0.1", server.port, timeout=5), kept):
            with pytest.raises(ConnectionError):
                again.request("GET", "/")
                again.getresponse()
            again.close()
        assert not server.running


def test_a_request_cut_off_by_a_crash_is_not_counted_as_served(mock_servers):
    (server,) = mock_servers(1, latency_ms=(400, 400))
    drawn = threading.Event()
    handlers = []
    draw = server.behaviour.draw

    def drawing():  # the request is in: its handler waits out its latency next
        handlers.append(threading.current_thread())
        drawn.set()
        return draw()

    server.behaviour.draw = drawing
    outcome = []

    def client() -> None:
        try:
            requests.get(server.url + "/", timeout=10)
            outcome.append("answered")
        except requests.ConnectionError:
            outcome.append("cut off")

    sender = threading.Thread(target=client)
    sender.start()
    assert drawn.wait(10)
    server.crash()
    sender.join(10)
    assert outcome == ["cut off"]
    # The handler wakes after its latency and finds its connection cut. It counted the request anyway.
    handlers[0].join(10)
    assert not handlers[0].is_alive()
    server.start()
    assert server.state()["requests"] == 0
    server.behaviour.draw = draw
    server.set_latency("0")
    assert requests.get(server.url + "/", timeout=5).status_code == 200
    assert server.state()["requests"] == 1


def test_parsers():
    assert parse_latency("50") == (50, 50)
    assert parse_latency("20-80") == (20, 80)
    assert parse_error_rate("0.25") == 0.25
    for bad in ("80-20", "-5", "x"):
        with pytest.raises(BehaviourError):
            parse_latency(bad)
    with pytest.raises(BehaviourError):
        parse_error_rate("1.5")


def test_seeded_servers_are_repeatable():
    draws = []
    for _ in range(2):
        server = MockServer("m", latency_ms=(0, 100), error_rate=0.5, seed=7)
        draws.append([server.behaviour.draw() for _ in range(5)])
        server.stop()
    assert draws[0] == draws[1]


def test_cli_runs_servers_and_stops_on_sigint(process):
    # --base-port 0: any free ports (two consecutive free ports cannot be reserved race-free).
    proc = process("-m", "mockserv", "2", "--base-port", "0")
    line = proc.wait_for_output("backends:")
    first_address, second_address = line.split()[1].split(",")
    assert requests.get(f"http://{first_address}/", timeout=5).json()["name"] == "mock-1"
    assert requests.get(f"http://{second_address}/", timeout=5).json()["name"] == "mock-2"
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [(["0"], "N must be"), (["two"], "N must be"), (["2", "--latency", "abc"], "latency"), (["2", "--error-rate", "3"], "error rate")],
)
def test_cli_bad_input_is_one_line(args, fragment):
    result = run_cli("-m", "mockserv", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_cli_port_in_use_is_one_line(mock_servers):
    (server,) = mock_servers(1)
    result = run_cli("-m", "mockserv", "1", "--base-port", str(server.port))
    assert result.returncode == 2
    assert result.stderr.strip() == f"mockserv: error: cannot listen on 127.0.0.1:{server.port}: Address already in use"


def test_json_is_valid_for_head_requests_too(mock_servers):
    (server,) = mock_servers(1)
    response = requests.head(server.url + "/x", timeout=5)
    assert response.status_code == 200 and response.content == b""
    assert json.loads(requests.get(server.url + "/x", timeout=5).text)["method"] == "GET"


def test_cli_version():
    import simplelb

    result = run_cli("-m", "mockserv", "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mockserv {simplelb.__version__}"


def test_cli_log_level_is_case_insensitive(process):
    proc = process("-m", "mockserv", "1", "--base-port", "0", "--log-level", "DEBUG")
    address = proc.wait_for_output("backends:").split()[1]
    requests.get(f"http://{address}/seen-in-the-debug-log", timeout=5)
    proc.wait_for_output("GET /seen-in-the-debug-log")  # logged only at debug level
    result = run_cli("-m", "mockserv", "1", "--log-level", "loud")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--log-level" in result.stderr


@pytest.mark.parametrize("size", [b"-5", b"0x5", b"ffffffffffffffffffff"])
def test_a_bad_chunk_size_is_400_without_a_traceback(mock_servers, raw_client, caplog, size):
    (mock,) = mock_servers(1)
    client = raw_client(mock.port)
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n")
    response = client.read_response()
    assert response.status == 400 and b"bad chunked body" in response.body
    assert "Traceback" not in caplog.text


def test_a_content_length_of_more_digits_than_int_reads_is_400_without_a_traceback(mock_servers, raw_client,
                                                                                   caplog):
    (mock,) = mock_servers(1)
    client = raw_client(mock.port)
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\nhello" % (b"9" * 5000))
    response = client.read_response()
    assert response.status == 400 and b"bad Content-Length" in response.body
    assert "Traceback" not in caplog.text


def test_a_chunked_body_is_counted_in_pieces(mock_servers, raw_client):
    (mock,) = mock_servers(1)
    client = raw_client(mock.port)
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n")
    response = client.read_response()
    assert response.status == 200 and json.loads(response.body)["body_bytes"] == 13
