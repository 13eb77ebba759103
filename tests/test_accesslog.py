"""The access log (combined, json), request ids, reopening on SIGUSR1, and a log that cannot stall traffic."""

import json
import os
import re
import select
import signal
import socket
import stat
import threading
import time

import pytest
import requests

from simplelb.accesslog import FORMATS, PIPE_BUF, RequestRecord, encode_line

from .conftest import RawClient, free_port, holding, read_then_reset, serve_forever_ok, start_lb_process, wait_for

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Apache's combined format, as log analysers parse it, then our three fields.
COMBINED = re.compile(
    r'(?P<client>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)" '
    r'"(?P<backend>[^"]*)" (?P<duration>\d+\.\d{3}) (?P<backend_time>\d+\.\d{3}|-)$'
)


def lines_of(path, count, timeout_s=10.0) -> list[str]:
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= count, timeout_s, f"{count} log lines")
    return path.read_text().splitlines()


def test_json_lines_have_every_field(scripted, balancer, tmp_path):
    backend = scripted(serve_forever_ok)
    log = tmp_path / "access.json"
    lb = balancer([backend], access_log=str(log), access_log_format="json", request_id_header="X-Request-Id")
    client = RawClient(lb.port)
    sent = (b"POST /form?a=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: probe/1.0\r\nReferer: http://r.example/\r\n"
            b"X-Request-Id: abc-123\r\nContent-Length: 5\r\n\r\nhello")
    response = client.request(sent, "POST")
    client.close()
    (line,) = lines_of(log, 1)
    record = json.loads(line)
    assert set(record) == {"time", "client", "method", "target", "protocol", "status", "bytes_sent", "body_bytes_sent",
                           "bytes_received", "duration_ms", "backend", "backend_status", "backend_duration_ms", "attempts", "user_agent",
                           "referer", "request_id"}
    assert RFC3339_MS_UTC.fullmatch(record["time"])
    assert (record["client"], record["method"], record["target"], record["protocol"]) == (
        "127.0.0.1", "POST", "/form?a=1", "HTTP/1.1")
    assert (record["status"], record["backend"], record["backend_status"], record["attempts"]) == (
        200, backend.address, 200, 1)
    assert record["bytes_received"] == len(sent)
    head_size = len("\r\n".join(f"{k}: {v}" for k, v in response.headers)) + len("HTTP/1.1 200 X\r\n\r\n\r\n")
    assert (record["bytes_sent"], record["body_bytes_sent"]) == (head_size + len(response.body), len(response.body))
    assert 0 < record["backend_duration_ms"] <= record["duration_ms"]
    assert (record["user_agent"], record["referer"], record["request_id"]) == (
        "probe/1.0", "http://r.example/", "abc-123")


def test_combined_lines_parse_as_apache_combined(scripted, balancer, tmp_path):
    good = scripted(serve_forever_ok)
    log = tmp_path / "access.log"
    lb = balancer([good], access_log=str(log))
    requests.get(lb.url + "/a?b=c", headers={"User-Agent": 'quote"agent', "Referer": "http://x/"}, timeout=5)
    with socket.create_connection(("127.0.0.1", lb.port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")  # refused by the balancer
        raw.recv(100)
    first, second = (COMBINED.match(line) for line in lines_of(log, 2))
    assert first and second, log.read_text()
    assert (first["request"], first["status"], first["referer"], first["agent"], first["backend"]) == (
        "GET /a?b=c HTTP/1.1", "200", "http://x/", 'quote\\"agent', good.address)
    assert first["bytes"] == "2" and first["backend_time"] != "-"  # the body, "ok"
    assert (second["status"], second["backend"], second["backend_time"]) == ("400", "-", "-")


# A TAB, NEL (U+0085: a line break to str.splitlines), CSI (U+009B: a terminal escape), 0xFF and UTF-8 "é".
ODD_AGENT = b"tab\there\x85nel\x9b31mcsi\xff\xc3\xa9"


def odd_request(lb) -> None:
    """One request whose target, user agent and referer hold every kind of byte a log must escape
    (of the controls, a field value may only hold TAB: the others are refused with a 400)."""
    client = RawClient(lb.port)
    assert client.request(b'GET /q"\\x HTTP/1.1\r\nHost: h\r\nUser-Agent: ' + ODD_AGENT
                          + b"\r\nReferer: http://r/\t\x80\x9b2J\r\n\r\n").status == 200
    client.close()


def test_combined_escapes_controls_and_bytes_past_ascii_as_nginx_does(scripted, balancer, tmp_path):
    log = tmp_path / "access.log"
    odd_request(balancer([scripted(serve_forever_ok)], access_log=str(log)))
    (line,) = lines_of(log, 1)
    assert log.read_bytes().isascii() and log.read_text().count("\n") == 1
    fields = COMBINED.match(line)
    assert fields, line
    assert fields["request"] == 'GET /q\\"\\\\x HTTP/1.1'
    assert fields["agent"] == r"tab\x09here\x85nel\x9B31mcsi\xFF\xC3\xA9"
    assert fields["referer"] == r"http://r/\x09\x80\x9B2J"


def test_json_logs_the_bytes_as_latin_1_text_in_ascii(scripted, balancer, tmp_path):
    log = tmp_path / "access.json"
    odd_request(balancer([scripted(serve_forever_ok)], access_log=str(log), access_log_format="json"))
    (line,) = lines_of(log, 1)
    assert log.read_bytes().isascii() and log.read_text().count("\n") == 1
    record = json.loads(line)
    assert record["target"] == '/q"\\x'
    assert record["user_agent"].encode("latin-1") == ODD_AGENT
    assert record["referer"].encode("latin-1") == b"http://r/\t\x80\x9b2J"


def test_combined_bytes_are_the_body_alone(scripted, balancer, tmp_path):
    def answer(conn):
        while (request := conn.read_request()) is not None:
            if request.method == "HEAD":
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 68\r\n\r\n")
            else:
                conn.respond(200, b"x" * 68)

    log = tmp_path / "access.log"
    lb = balancer([scripted(answer)], access_log=str(log))
    client = RawClient(lb.port)
    assert client.request(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").body == b"x" * 68
    assert client.request(b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n", "HEAD").status == 200
    refused = client.request(b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n")  # the balancer's 400
    client.close()
    lines = [COMBINED.match(line) for line in lines_of(log, 3)]
    assert [(fields["status"], fields["bytes"]) for fields in lines] == [
        ("200", "68"), ("200", "-"), ("400", str(len(refused.body)))]


def test_json_counts_the_body_apart_from_the_heads_chunk_framing_in_the_body(scripted, balancer, tmp_path):
    def chunked(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    log = tmp_path / "access.json"
    lb = balancer([scripted(chunked)], access_log=str(log), access_log_format="json")
    client = RawClient(lb.port)
    response = client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    client.close()
    record = json.loads(lines_of(log, 1)[0])
    head_size = len("\r\n".join(f"{k}: {v}" for k, v in response.headers)) + len("HTTP/1.1 200 OK\r\n\r\n\r\n")
    assert response.body == b"hello"
    assert record["bytes_sent"] - record["body_bytes_sent"] == head_size
    assert record["body_bytes_sent"] >= len(b"5\r\nhello\r\n0\r\n\r\n")  # (the balancer chunks it again)


def test_a_retried_request_logs_its_attempts(scripted, balancer, tmp_path):
    bad, good = scripted(read_then_reset), scripted(serve_forever_ok)
    log = tmp_path / "access.json"
    lb = balancer([bad, good], access_log=str(log), access_log_format="json", algorithm="round-robin", eject_after=0)
    assert requests.get(lb.url, timeout=5).status_code == 200
    record = json.loads(lines_of(log, 1)[0])
    assert (record["attempts"], record["backend"], record["status"]) == (2, good.address, 200)


def test_request_ids_reach_the_backend_and_come_back(scripted, balancer):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend], request_id_header="X-Request-Id")
    fresh = requests.get(lb.url, timeout=5)
    given = fresh.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", given)
    assert dict(backend.received[-1].headers)["X-Request-Id"] == given
    kept = requests.get(lb.url, headers={"X-Request-Id": "client-chosen.42"}, timeout=5)
    assert kept.headers["X-Request-Id"] == "client-chosen.42"
    assert [v for k, v in backend.received[-1].headers if k == "X-Request-Id"] == ["client-chosen.42"]
    for odd in ("x" * 129, "has space", "quote\"d", "ünïcode"):
        replaced = requests.get(lb.url, headers={"X-Request-Id": odd.encode("utf-8")}, timeout=5)
        assert replaced.headers["X-Request-Id"] != odd and len(replaced.headers["X-Request-Id"]) == 36
        assert [v for k, v in backend.received[-1].headers if k == "X-Request-Id"] == [replaced.headers["X-Request-Id"]]


def test_an_error_of_the_balancer_carries_the_request_id(balancer):
    lb = balancer(f"127.0.0.1:{free_port()}", request_id_header="X-Request-Id", retries=0)
    response = requests.get(lb.url, headers={"X-Request-Id": "trace-me"}, timeout=5)
    assert response.status_code == 502 and response.headers["X-Request-Id"] == "trace-me"


def test_sigusr1_reopens_the_log_and_loses_no_line(process, mock_servers, tmp_path):
    (mock,) = mock_servers(1)
    log = tmp_path / "access.log"
    proc, url, _ = start_lb_process(process, "--backends", mock.address, "--access-log", str(log),
                                    "--health-interval", "60")
    with requests.Session() as session:
        for _ in range(30):
            session.get(url, timeout=5)
        lines_of(log, 30)
        os.rename(log, tmp_path / "access.log.1")  # what logrotate does
        for _ in range(10):
            session.get(url, timeout=5)  # still written to the renamed file, until the reopen
        proc.proc.send_signal(signal.SIGUSR1)
        wait_for(log.exists, what="the new file")
        for _ in range(20):
            session.get(url, timeout=5)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    old, new = (tmp_path / "access.log.1").read_text().splitlines(), log.read_text().splitlines()
    assert len(old) + len(new) == 60 and len(old) >= 40 and all(COMBINED.match(line) for line in old + new)


def test_a_client_refused_at_max_clients_is_logged(scripted, balancer, tmp_path):
    release = threading.Event()

    log = tmp_path / "access.json"
    lb = balancer([scripted(holding(release, "/slow"))], max_clients=2, access_log=str(log), access_log_format="json")
    busy = [RawClient(lb.port) for _ in range(2)]
    try:
        for client in busy:  # both connections forwarding: nothing to evict
            client.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: lb.snapshot()["connections"]["busy"] == 2, what="two busy connections")
        client = RawClient(lb.port)
        refused = client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        client.close()
        assert refused.status == 503
        (line,) = lines_of(log, 1)
    finally:
        release.set()
        for client in busy:
            client.close()
    record = json.loads(line)
    assert (record["client"], record["method"], record["target"], record["status"], record["backend"]) == (
        "127.0.0.1", "-", "-", 503, None)
    assert record["bytes_sent"] > record["body_bytes_sent"] == len(refused.body)


def test_a_full_disk_drops_and_counts_lines_but_never_stops_traffic(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], access_log="/dev/full", admin="127.0.0.1:0")  # every write fails with ENOSPC
    with requests.Session() as session:
        assert all(session.get(lb.url, timeout=5).status_code == 200 for _ in range(50))
    wait_for(lambda: lb.control.status()["access_log_dropped"] == 50, what="50 dropped lines")
    assert "simplelb_access_log_dropped_total 50.0" in requests.get(lb.admin.url + "/metrics", timeout=5).text


def test_a_pipe_nobody_reads_never_stalls_traffic(mock_servers, balancer, tmp_path):
    (mock,) = mock_servers(1)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR)  # keeps the pipe open for reading, and never reads it
    try:
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        lb = balancer([mock], access_log=str(fifo), access_log_format="json")
        with requests.Session() as session:  # far more than the pipe's 64 KiB buffer holds
            statuses = [session.get(lb.url + "/" + "x" * 500, timeout=5).status_code for _ in range(600)]
        assert statuses == [200] * 600
        wait_for(lambda: lb.access_log.dropped > 0, what="lines dropped once the pipe is full")
    finally:
        os.close(holder)


def parsed(line: str, fmt: str):
    """A line's fields (a match of COMBINED, or the JSON object); fails if it is not one whole record."""
    if fmt == "json":
        return json.loads(line)
    fields = COMBINED.match(line)
    assert fields, line
    return fields


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_a_line_is_cut_to_pipe_buf_bytes_as_written_escapes_included(fmt):
    # 1000 quotes and 1000 bytes 0xFF are each 1000 characters, but 2000 and 4000 (or 6000) bytes escaped.
    record = RequestRecord(0.0, 0.0, "127.0.0.1", method="GET", target="/" + '"' * 999, protocol="HTTP/1.1",
                           status=200, user_agent="\xff" * 1000, referer="\xff" * 1000, backend="web-1",
                           request_id="abc")
    data = encode_line(record, FORMATS[fmt])
    assert PIPE_BUF - 24 < len(data) <= PIPE_BUF and data.isascii() and data.endswith(b"\n")
    fields = parsed(data.decode()[:-1], fmt)
    if fmt == "json":
        assert fields["target"].startswith('/""') and fields["target"].endswith('"...')
        assert fields["user_agent"] == fields["referer"] and set(fields["user_agent"][:-3]) == {"\xff"}
        assert (fields["method"], fields["backend"], fields["request_id"]) == ("GET", "web-1", "abc")  # short: whole
    else:
        assert fields["request"].startswith('GET /\\"\\"') and fields["request"].endswith('\\"... HTTP/1.1')
        assert fields["agent"] == fields["referer"] and fields["agent"].endswith("\\xFF...")
        assert fields["backend"] == "web-1"


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_a_huge_method_is_cut_too(fmt):
    record = RequestRecord(0.0, 0.0, "127.0.0.1", method="M" * 8000, target="/a", protocol="HTTP/1.1", status=501)
    data = encode_line(record, FORMATS[fmt])
    assert len(data) <= PIPE_BUF and "M" * 3000 + "..." in data.decode()


def read_until_closed(fd: int, timeout_s: float = 10.0) -> bytes:
    """All a pipe holds until its writer closes it (reading as it comes, so a writer never waits)."""
    deadline, data = time.monotonic() + timeout_s, b""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            if not (chunk := os.read(fd, 65536)):
                return data
            data += chunk
    raise AssertionError(f"the pipe's writer did not close it within {timeout_s}s")


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_a_pipe_gets_whole_records_however_long_their_fields_escaped(fmt, mock_servers, balancer, tmp_path):
    (mock,) = mock_servers(1)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # read only at the end: the pipe fills and lines drop
    try:
        lb = balancer([mock], access_log=str(fifo), access_log_format=fmt)
        client = RawClient(lb.port)
        head = (b"GET /" + b'"' * 999 + b" HTTP/1.1\r\nHost: h\r\nUser-Agent: " + b"\xff" * 1000
                + b"\r\nReferer: " + b"\xff" * 1000 + b"\r\n\r\n")
        for _ in range(40):  # a line each of 6 KiB or more as the fields are escaped: more than the pipe holds
            assert client.request(head).status == 200
        client.close()
        # Once its connection is gone, every request was logged (queued); the stop writes what is queued.
        wait_for(lambda: sum(lb.connections.counts().values()) == 0, what="the connection to close")
        lb.access_log.stop()
        data = read_until_closed(reader)
    finally:
        os.close(reader)
    lines = data.split(b"\n")
    assert lines.pop() == b"", "the pipe ends with part of a record"
    assert lines, "every record dropped: cut fields keep a record"
    assert all(len(line) < PIPE_BUF for line in lines) and len(lines) + lb.access_log.dropped == 40
    for line in lines:
        parsed(line.decode("ascii"), fmt)


def test_two_workers_write_whole_lines_to_one_file(process, mock_servers, tmp_path):
    (mock,) = mock_servers(1)
    log = tmp_path / "access.json"
    proc, url, _ = start_lb_process(process, "--backends", mock.address, "--workers", "2", "--access-log", str(log),
                                    "--access-log-format", "json", "--health-interval", "60")
    for number in range(200):
        with requests.Session() as session:  # new connections: both workers serve
            session.get(f"{url}/{number}/{'y' * 300}", timeout=5)
    records = [json.loads(line) for line in lines_of(log, 200)]  # any interleaving would break a line
    assert sorted(int(r["target"].split("/")[1]) for r in records) == list(range(200))
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
