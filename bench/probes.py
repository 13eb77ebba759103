"""Measurements beyond requests/s: system calls, new clients under idle and busy load, bodies, a scraper.

Each function takes the running ``peers.Bench`` and a target name:

* ``syscalls_per_request`` -- ``strace -c -f`` attached to the proxy's
  processes while a fixed number of keep-alive requests go through;
* ``idle_first_response`` -- 1,500 keep-alive connections that made one
  request each and stay open, idle; then how long a *new* client waits for
  its first response (50 tries);
* ``busy_new_connection_wait`` -- the same while 200 connections keep the
  proxy busy with wrk;
* ``bodies`` -- 10 MiB and 300 MiB through simplelb with curl (MB/s, RSS growth);
* ``Scraper`` -- reads ``/metrics`` every second, as Prometheus would.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time

from peers import memory_kib, process_tree

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def _read_response(sock: socket.socket) -> None:
    """Read one small response (``Content-Length`` framed) to its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        if not more:
            raise OSError("closed before the response head")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        more = sock.recv(4096)
        if not more:
            raise OSError("closed in the body")
        body += more


def keepalive_client(port: int, requests: int) -> None:
    """``requests`` keep-alive GETs on one connection, each answer read to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            sock.sendall(REQUEST)
            _read_response(sock)


def _fixed_load(port: int, total: int, concurrency: int) -> None:
    threads = [threading.Thread(target=keepalive_client, args=(port, total // concurrency))
               for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def syscalls_per_request(bench, name: str, concurrency: int, total: int = 2000) -> dict | None:
    """System calls of the proxy's processes per request, counted by ``strace -c -f`` (all threads)."""
    if not shutil.which("strace"):
        return None
    port, pid = bench.targets[name]
    _fixed_load(port, 200, concurrency)  # warm: pools, threads, caches
    out = bench.tmp / f"strace-{name}-{concurrency}.txt"
    args = ["strace", "-c", "-f", "-o", str(out)]
    for each in process_tree(pid):
        args += ["-p", str(each)]
    tracer = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    _fixed_load(port, total, concurrency)
    tracer.send_signal(signal.SIGINT)  # detach and write the summary
    tracer.wait(30)
    calls, top = 0, {}
    for line in out.read_text().splitlines():
        fields = line.split()  # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and fields[0][0].isdigit():
            if fields[-1] == "total":
                calls = int(fields[3])
            else:
                top[fields[-1]] = int(fields[3])
    per = {k: round(v / total, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:6]}
    return {"requests": total, "concurrency": concurrency, "per_request": round(calls / total, 2), "top": per}


def _percentiles(waits: list[float]) -> dict:
    waits = sorted(waits)
    return {"p50_ms": round(waits[len(waits) // 2], 2), "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 2),
            "max_ms": round(waits[-1], 2)}


def _probe(port: int) -> float:
    """Milliseconds from connecting to the first byte of the response, on a new connection."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            if not sock.recv(64):
                return float("inf")
        return (time.perf_counter() - start) * 1000
    except OSError:
        return float("inf")


def idle_first_response(bench, name: str, idle: int = 1500, probes: int = 50) -> dict:
    """A new client's first response while ``idle`` keep-alive connections stay open and silent."""
    port, _ = bench.targets[name]
    opened: list[socket.socket] = []
    failed = 0
    try:
        for _ in range(idle):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                opened.append(sock)
                sock.sendall(REQUEST)
                _read_response(sock)  # it made a request: now an idle keep-alive connection
            except OSError:
                failed += 1
        time.sleep(0.5)
        waits = []
        for _ in range(probes):
            waits.append(_probe(port))
            time.sleep(0.02)
        still_open = sum(1 for sock in opened if _is_open(sock))
    finally:
        for sock in opened:
            sock.close()
    time.sleep(0.5)  # let the proxy close its side before the next measurement
    return {**_percentiles(waits), "idle": idle, "open_after": still_open, "failed_to_open": failed}


def _is_open(sock: socket.socket) -> bool:
    """Whether the proxy kept the connection (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def busy_new_connection_wait(bench, name: str, busy: int = 200, probes: int = 40) -> dict:
    """Time to first response of fresh connections while ``busy`` connections keep the target busy."""
    port, _ = bench.targets[name]
    loader = threading.Thread(target=bench.load, args=(port, busy, int(probes * 0.05) + 3))
    loader.start()
    time.sleep(1.0)
    waits = []
    for _ in range(probes):
        waits.append(_probe(port))
        time.sleep(0.05)
    loader.join()
    return _percentiles(waits)


def bodies(bench, name: str = "simplelb") -> list[dict]:
    """Big downloads and uploads through ``name``, one connection: MB/s and RSS growth."""
    if bench.backend_kind != "nginx" or not shutil.which("curl"):
        return []
    port, pid = bench.targets[name]
    pids = process_tree(pid) if pid else []  # direct: the backend, whose memory is not ours to watch
    rows = []
    for label, size_name in (("10 MiB", "10m"), ("300 MiB", "300m")):
        path = bench.tmp / "www" / size_name
        for direction in ("download", "upload"):
            speeds, growth = [], []
            for _ in range(bench.args.rounds):
                rss_before = memory_kib(pids, "VmRSS")
                peak = _PeakRss(pids)
                if direction == "download":
                    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}",
                           f"http://127.0.0.1:{port}/{size_name}"]
                else:
                    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload}", "-T", str(path),
                           f"http://127.0.0.1:{port}/sink"]
                with peak:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
                status, _, speed = out.partition(" ")
                if status != "200":
                    raise SystemExit(f"bench: {label} {direction} through {name} answered {status}")
                speeds.append(float(speed) / 1e6)
                growth.append((peak.kib - rss_before) / 1024)
            rows.append({"target": name, "body": label, "direction": direction, "mb_per_s": round(statistics.median(speeds)),
                         "rss_growth_mib": round(max(growth), 1)})
    return rows


class _PeakRss:
    """The highest RSS of ``pids`` while the block runs, sampled every 10 ms.

    (Not VmHWM: that keeps the peak of everything measured before, such as
    1,500 idle connections' threads.)
    """

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.kib = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRss:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.kib = max(self.kib, memory_kib(self.pids, "VmRSS"))
            if self._stop.wait(0.01):
                return


class Scraper:
    """Reads ``/metrics`` every second while a measurement runs, as a Prometheus server would."""

    def __init__(self, port: int, interval_s: float = 1.0):
        self.port = port
        self.interval_s = interval_s
        self.scrapes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                if not data.startswith(b"HTTP/1.1 200") or b"simplelb_requests_total" not in data:
                    raise OSError("bad answer")
                self.scrapes += 1
            except OSError:
                self.failures += 1
            self._stop.wait(self.interval_s)
