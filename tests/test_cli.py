"""The balancer as a user runs it: ``python -m simplelb`` in a subprocess."""

import os
import re
import signal
import socket
import threading

import pytest
import requests

from .conftest import free_port, run_cli, serve_forever_ok, wait_for


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "--backends"),
        (["--backends", ""], "no backends"),
        (["--backends", "host:notaport"], "'notaport' is not a port"),
        (["--backends", "a:1", "--algorithm", "fastest"], "round-robin"),
        (["--backends", "a:1", "--health-interval", "-2"], "--health-interval"),
        (["--backends", "a:1", "--port", "http"], "--port"),
        (["--backends", "a:1", "--log-level", "loud"], "--log-level"),
        # str.isdigit() takes these; int() does not (it used to be a traceback and exit 1)
        (["--backends", "a:1=\u00b2"], "weight must be a whole number"),
        (["--backends", "a:\u00b2"], "is not a port number"),
        (["--backends", "a:1", "--admin", "127.0.0.1:\u00b2"], "--admin"),
        (["--backends", "dns://web.test:\u00b2"], "expected dns://NAME:PORT"),
        (["--backends", "a:1", "--dns-server", "127.0.0.1:\u00b2"], "--dns-server"),
        (["--backends", "a:1", "--discovery", "etcd://[::1/app"], "expected etcd://HOST[:PORT]/PREFIX"),
        (["--backends", "a:1", "--hash-key", "header:"], "error: --hash-key: must be ip, path, header:NAME"),
        (["--backends", "a:1", "--host", "256.1.1.1"], "--host: must be a host name or IP address"),
        # more digits than int() reads (4300): a ValueError traceback, exit 1
        (["--backends", "a:1=" + "9" * 5000], "weight must be a whole number"),
        (["--backends", "a:" + "9" * 5000], "is not a port number"),
        (["--backends", "dns://web.test:" + "9" * 5000], "expected dns://NAME:PORT"),
        (["--backends", "a:1", "--max-body", "9" * 5000], "--max-body: must be a size like"),
        (["--backends", "a:1", "--max-body", "9" * 18 + "G"], "--max-body: must be at most"),
        (["--backends", "a:1", "--admin", "127.0.0.1:" + "9" * 5000], "--admin"),
        (["--backends", "a:1", "--dns-server", "127.0.0.1:" + "9" * 5000], "--dns-server"),
    ],
)
def test_bad_input_is_a_one_line_error(args, fragment):
    result = run_cli("-m", "simplelb", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("simplelb: error:") and fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("-m", "simplelb", "--backends", "a:1", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == f"simplelb: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_help_lists_every_flag():
    result = run_cli("-m", "simplelb", "--help")
    for flag in ("--backends", "--host", "--port", "--algorithm", "--health-path", "--health-interval",
                 "--health-timeout", "--rise", "--fall", "--connect-timeout", "--read-timeout", "--log-level"):
        assert flag in result.stdout


def start_balancer(process, *backends: str, extra=()):
    proc = process("-m", "simplelb", "--backends", ",".join(backends), "--port", "0", "--health-interval", "30", *extra)
    line = proc.wait_for_output("listening on")
    return proc, re.search(r"listening on (http://[^,\s]+),", line).group(1)


def test_sigterm_lets_the_in_flight_request_finish_and_exits_0(process, scripted):
    def slow(conn):
        while conn.read_request() is not None:
            conn.backend.event("received").set()
            conn.backend.event("release").wait(10)
            conn.respond(200, b"finished")

    backend = scripted(slow)
    proc, url = start_balancer(process, backend.address)
    result = {}
    client = threading.Thread(target=lambda: result.update(r=requests.get(url + "/slow", timeout=10)))
    client.start()
    assert backend.event("received").wait(10)
    proc.proc.send_signal(signal.SIGTERM)
    proc.wait_for_output("shutting down")
    # Draining: new connections are no longer accepted...
    wait_for(lambda: _refused(url), what="the listener to close")
    # ...but the request in flight is answered.
    backend.event("release").set()
    client.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "finished"
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


def _refused(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.ConnectionError:
        return True
    return False


def test_sigint_exits_0_without_traceback(process, scripted):
    backend = scripted(serve_forever_ok)
    proc, url = start_balancer(process, backend.address)
    assert requests.get(url, timeout=5).status_code == 200
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


def test_access_log_and_health_changes_are_logged(process, scripted):
    backend = scripted(serve_forever_ok)
    dead = f"127.0.0.1:{free_port()}"
    proc, url = start_balancer(process, backend.address, dead, extra=("--health-interval", "0.1", "--health-timeout", "0.1", "--fall", "1"))
    proc.wait_for_output(f"backend {dead} is DOWN (connection failed")
    requests.get(url + "/logged?x=1", timeout=5)
    line = proc.wait_for_output("GET /logged?x=1")
    assert re.search(rf"GET /logged\?x=1 200 {re.escape(backend.address)} \d+\.\dms", line)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_client_disconnect_mid_response_leaves_no_traceback(process, scripted):
    def big(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (256 << 20))
        for _ in range(256):
            conn.send(b"x" * (1 << 20))

    backend = scripted(big)
    proc, url = start_balancer(process, backend.address)
    response = requests.get(url, stream=True, timeout=10)
    next(response.iter_content(65536))
    response.close()
    proc.wait_for_output("GET / 499")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_a_300_mib_download_streams_in_bounded_memory(process, scripted):
    size = 300 << 20

    def big(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"x" * (1 << 20)
        for _ in range(300):
            conn.send(piece)

    backend = scripted(big)
    proc, url = start_balancer(process, backend.address)
    requests.get(url + "/warm-up", timeout=5).close()
    before = _rss_kib(proc.proc.pid, "VmRSS")
    with requests.get(url, stream=True, timeout=30) as response:
        received = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    assert received == size
    peak = _rss_kib(proc.proc.pid, "VmHWM")
    assert peak - before < 48 * 1024, f"balancer grew by {(peak - before) // 1024} MiB"


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def test_workers_share_the_port_restart_when_killed_and_stop_together(process, scripted):
    backend = scripted(serve_forever_ok)
    proc, url = start_balancer(process, backend.address, extra=("--workers", "2"))
    parent = proc.proc.pid
    wait_for(lambda: len(_children(parent)) == 2, what="two workers")
    assert all(requests.get(url, timeout=5).status_code == 200 for _ in range(20))
    victim = min(_children(parent))
    os.kill(victim, signal.SIGKILL)
    proc.wait_for_output(f"(pid {victim}) died (killed by SIGKILL); starting a new one")
    wait_for(lambda: len(_children(parent)) == 2 and victim not in _children(parent), what="a replacement worker")
    assert all(requests.get(url, timeout=5).status_code == 200 for _ in range(20))
    workers = _children(parent)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: --workers auto is a single process")
def test_workers_auto_starts_one_worker_per_cpu_each_on_its_own(process, scripted):
    backend = scripted(serve_forever_ok)
    proc, url = start_balancer(process, backend.address, extra=("--workers", "auto"))
    cpus = sorted(os.sched_getaffinity(0))[:64]
    wait_for(lambda: len(_children(proc.proc.pid)) == len(cpus), what="one worker per CPU")
    assert sorted(min(os.sched_getaffinity(pid)) for pid in _children(proc.proc.pid)) == cpus
    assert requests.get(url, timeout=5).status_code == 200
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to keep to")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_cpu_affinity_any_leaves_the_processes_where_the_system_puts_them(process, scripted, workers):
    backend = scripted(serve_forever_ok)
    proc, url = start_balancer(process, backend.address, extra=("--workers", workers, "--cpu-affinity", "any"))
    assert requests.get(url, timeout=5).status_code == 200
    serving = _children(proc.proc.pid) if workers == "2" else [proc.proc.pid]
    assert len(serving) == int(workers)
    for pid in serving:
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_cpu_affinity_rejects_other_values():
    result = run_cli("-m", "simplelb", "--backends", "127.0.0.1:1", "--cpu-affinity", "all")
    assert result.returncode == 2
    assert "--cpu-affinity: must be one of one, any, not 'all'" in result.stderr
    assert "Traceback" not in result.stderr
