"""Two balancers, one etcd, self-registering mock servers: watch both follow every change.

    python examples/two-balancers/demo.py          (needs etcd: apt-get install etcd-server)

Everything runs on 127.0.0.1, on free ports, and is stopped at the end:

1. etcd, in a temporary directory;
2. mock servers a-1 and a-2 in one process, b-1 in another, each registered
   as PREFIX/backends/NAME under a lease of 3 s (``mockserv --register``);
3. two balancers, ``--discovery etcd://.../demo --sticky-cookie lb``, and a
   client sending to each all along (without keeping cookies), counting
   answers by backend and every error. A cookie set by one balancer is sent
   to the other first: they share the secret through etcd.

Then: kill -9 the process of b-1 (both balancers drop it when its lease
expires); start c-1 (both use it); drain a-1 with one write to etcd (both
drain it); kill etcd (traffic goes on, /status says stale). Each step prints
what both balancers did and how many client errors there were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.cookiejar import DefaultCookiePolicy

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from simplelb.etcd import EtcdClient  # noqa: E402

TTL_S = 3
ENV = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(condition, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"demo: gave up after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Etcd:
    def __init__(self, directory: str):
        self.binary = os.environ.get("ETCD_BINARY") or shutil.which("etcd") or "/usr/bin/etcd"
        self.directory, self.port, self.peer = directory, free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> Etcd:
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            [self.binary, "--name", "demo", "--data-dir", self.directory, "--listen-client-urls", self.endpoint,
             "--advertise-client-urls", self.endpoint, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"demo={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(self._healthy, 20, "etcd")
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(self.endpoint + "/health", timeout=1).json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run(*args: str, expect: str) -> tuple[subprocess.Popen, str]:
    """Start ``python ARGS``; return it and its output up to the first line containing ``expect``."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if expect in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc, "".join(lines)
    raise SystemExit(f"demo: {args[1]} exited without saying {expect!r}:\n{''.join(lines)}")


class Client:
    """Sends GETs to one balancer, about 100 a second, all along; counts answers by backend and errors."""

    def __init__(self, url: str):
        self.url = url
        self.served: Counter = Counter()
        self.errors: list[str] = []
        self.last_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # not pinned: see every backend
            while not self._stop.wait(0.01):
                try:
                    answer = session.get(self.url, timeout=5)
                except requests.RequestException as exc:
                    self.errors.append(type(exc).__name__)
                    continue
                if answer.status_code != 200:
                    self.errors.append(str(answer.status_code))
                    continue
                backend = answer.headers["X-Backend"]
                self.served[backend] += 1
                self.last_seen[backend] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def backends(admin: str) -> dict[str, str]:
    return {b["name"]: b["state"] for b in requests.get(admin + "/status", timeout=5).json()["backends"]}


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="two-balancers-") as tmp:
        etcd = Etcd(os.path.join(tmp, "etcd")).start()
        try:
            return scenario(etcd, processes)
        finally:
            for proc in processes:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(15)
            etcd.kill()


class Demo:
    """The processes of the demo, and the steps it takes with them."""

    def __init__(self, etcd: Etcd, processes: list):
        self.etcd, self.processes = etcd, processes
        self.url = f"etcd://127.0.0.1:{etcd.port}/demo"
        self.lbs: list[dict] = []
        self.clients: list[Client] = []

    def mocks(self, n: int, prefix: str) -> subprocess.Popen:
        proc, _ = run("-m", "mockserv", str(n), "--base-port", "0", "--name-prefix", prefix, "--register", self.url,
                      "--register-ttl", str(TTL_S), expect="registered:")
        self.processes.append(proc)
        return proc

    def balancers(self) -> None:
        for number in (1, 2):
            proc, text = run("-m", "simplelb", "--port", "0", "--discovery", self.url, "--admin", "127.0.0.1:0",
                             "--sticky-cookie", "lb", "--log-level", "warning", expect="admin on")
            self.processes.append(proc)
            self.lbs.append({"number": number, "url": re.search(r"listening on (http://[^,\s]+),", text).group(1),
                             "admin": re.search(r"admin on (http://\S+)", text).group(1)})
        print(f"etcd at {self.etcd.endpoint}; balancers at {self.lbs[0]['url']} and {self.lbs[1]['url']}, "
              f"both --discovery {self.url}")

    def each(self):
        return zip(self.lbs, self.clients, strict=True)

    def errors(self) -> int:
        return sum(len(c.errors) for c in self.clients)

    def start_traffic(self) -> None:
        wanted = {"a-1": "up", "a-2": "up", "b-1": "up"}
        wait(lambda: all(backends(lb["admin"]) == wanted for lb in self.lbs), 10, "all up")
        first = requests.get(self.lbs[0]["url"], timeout=5)
        pinned = {requests.get(self.lbs[1]["url"], cookies={"lb": first.cookies["lb"]}, timeout=5).headers["X-Backend"]
                  for _ in range(6)}
        print(f"a sticky cookie from balancer 1 (for {first.headers['X-Backend']}) sent 6 times to balancer 2: "
              f"answered by {sorted(pinned)}")
        self.clients = [Client(lb["url"]) for lb in self.lbs]
        time.sleep(1.5)
        for lb, client in self.each():
            print(f"balancer {lb['number']}: {dict(sorted(client.served.items()))}")

    def kill_b(self, b_proc: subprocess.Popen) -> None:
        step(f"kill -9 the process of b-1 (its lease: {TTL_S} s)")
        errors_before, killed = self.errors(), time.monotonic()
        b_proc.send_signal(signal.SIGKILL)
        for lb in self.lbs:
            took = wait(lambda lb=lb: "b-1" not in backends(lb["admin"]), 10, "b-1 removed")
            print(f"balancer {lb['number']}: b-1 gone from /status {time.monotonic() - killed:.1f}s after the kill"
                  f" (waited {took:.1f}s)")
        print(f"client errors meanwhile: {self.errors() - errors_before}"
              " (a request that found b-1 dead was retried on another backend)")

    def add_c(self) -> None:
        step("start c-1 in a new process")
        started = time.monotonic()
        self.mocks(1, "c-")
        for lb, client in self.each():
            wait(lambda client=client: "c-1" in client.served, 10, "traffic to c-1")
            print(f"balancer {lb['number']}: first answer from c-1 {client.last_seen['c-1'] - started:.1f}s "
                  "after its start")

    def drain_a(self) -> None:
        step("drain a-1 with one write to etcd")
        etcd = EtcdClient(self.etcd.endpoint)
        kv = etcd.get("demo/backends/a-1")
        drained = time.monotonic()
        etcd.put("demo/backends/a-1", json.dumps({**json.loads(kv.value), "state": "drain"}), lease=kv.lease)
        etcd.close()
        for lb in self.lbs:
            took = wait(lambda lb=lb: backends(lb["admin"]).get("a-1") == "draining", 5, "a-1 draining")
            print(f"balancer {lb['number']}: a-1 draining after {took:.2f}s")
        time.sleep(1.0)
        for lb, client in self.each():
            print(f"balancer {lb['number']}: last answer from a-1 {client.last_seen['a-1'] - drained:+.2f}s "
                  "from the write")

    def kill_etcd(self) -> None:
        step("kill etcd")
        before, errors_before = [sum(c.served.values()) for c in self.clients], self.errors()
        self.etcd.kill()
        time.sleep(3)
        for (lb, client), count in zip(self.each(), before, strict=True):
            source = requests.get(lb["admin"] + "/status", timeout=5).json()["discovery"][0]
            print(f"balancer {lb['number']}: {sum(client.served.values()) - count} answers in 3 s without etcd; "
                  f"discovery up={source['up']} stale_since={source['stale_since']}; "
                  f"backends {backends(lb['admin'])}")
        print(f"client errors meanwhile: {self.errors() - errors_before}")

    def totals(self) -> int:
        for client in self.clients:
            client.stop()
        step("totals")
        for lb, client in self.each():
            print(f"balancer {lb['number']}: {dict(sorted(client.served.items()))}, errors {Counter(client.errors)}")
        return 0 if not self.errors() else 1


def scenario(etcd: Etcd, processes: list) -> int:
    demo = Demo(etcd, processes)
    demo.mocks(2, "a-")
    b_proc = demo.mocks(1, "b-")
    demo.balancers()
    demo.start_traffic()
    demo.kill_b(b_proc)
    demo.add_c()
    demo.drain_a()
    demo.kill_etcd()
    return demo.totals()


if __name__ == "__main__":
    sys.exit(main())
