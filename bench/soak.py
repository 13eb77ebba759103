"""The soak: 1 MiB request and response bodies through the balancer for minutes; is memory flat?

    python bench/soak.py [--minutes 10] [--workers 1] [--clients 8] [--json bench/results/soak.json]

A backend process (its own interpreter, so it does not share the
balancer's) reads each 1 MiB upload and answers with 1 MiB. ``--clients``
threads upload and download through the balancer without pause. Every ten
seconds it samples the balancer's RSS, open file descriptors and threads
(all its processes summed, with ``--workers``). It reports, and checks:

* RSS growth after a one-minute warm-up: under 10% of the RSS at one minute;
* file descriptors and threads back to their idle level once the load stops
  (the idle level is measured after five seconds of the same load, so the
  connection pool to the backend is warm in both; two more pooled
  connections to the backend are allowed per worker).

Exit status 0 when both hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

BACKEND = r'''
import socketserver, sys
BODY = b"d" * (1 << 20)
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while length:
                length -= len(self.rfile.read(min(length, 1 << 16)))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    def handle_error(self, request, client_address):
        pass  # the balancer closing pooled connections at the end is not news
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def sample(pid: int) -> dict:
    rss = fds = threads = 0
    for each in process_tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
            rss += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            threads += int(re.search(r"Threads:\s+(\d+)", status).group(1))
            fds += len(os.listdir(f"/proc/{each}/fd"))
        except (OSError, AttributeError):
            pass
    return {"rss_mib": round(rss / 1024, 1), "fds": fds, "threads": threads}


def client(port: int, stop: threading.Event, counts: list, errors: list) -> None:
    body = b"u" * MIB
    head = b"POST /soak HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % MIB
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                reader = sock.makefile("rb")
                for _ in range(50):  # keep-alive, then a new connection
                    if stop.is_set():
                        return
                    sock.sendall(head + body)
                    status = reader.readline()
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if not status.startswith(b"HTTP/1.1 200") or len(reader.read(length)) != length:
                        errors.append(status.decode(errors="replace").strip())
                        break
                    counts[0] += 1
        except OSError as exc:
            if not stop.is_set():
                errors.append(str(exc))


def run_load(port: int, clients: int, seconds: float) -> None:
    stop, counts, errors = threading.Event(), [0], []
    threads = [threading.Thread(target=client, args=(port, stop, counts, errors), daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    backend = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
    backend_port = int(backend.stdout.readline())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    balancer = subprocess.Popen(
        [sys.executable, "-m", "simplelb", "--backends", f"127.0.0.1:{backend_port}", "--port", "0",
         "--workers", str(args.workers), "--log-level", "warning", "--health-interval", "5"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    port = int(re.search(r":(\d+),", balancer.stdout.readline()).group(1))
    try:
        # The idle level: after a few seconds of the same load, once it stops (the pool stays warm).
        run_load(port, args.clients, 5.0)
        time.sleep(2)
        idle = sample(balancer.pid)
        stop, counts, errors = threading.Event(), [0], []
        threads = [threading.Thread(target=client, args=(port, stop, counts, errors), daemon=True)
                   for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        samples, started = [], time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(10)
            samples.append({"t_s": round(time.monotonic() - started), "requests": counts[0], **sample(balancer.pid)})
            print(json.dumps(samples[-1]), flush=True)
        stop.set()
        for thread in threads:
            thread.join(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (after := sample(balancer.pid))["threads"] > idle["threads"]:
            time.sleep(1)
        after = sample(balancer.pid)
    finally:
        balancer.terminate()
        balancer.wait(30)
        backend.terminate()
        backend.wait(10)
    warm = next((s for s in samples if s["t_s"] >= 60), samples[0])
    later = [s["rss_mib"] for s in samples if s["t_s"] > warm["t_s"]] or [warm["rss_mib"]]
    growth = (max(later) - warm["rss_mib"]) / warm["rss_mib"]
    result = {
        "workers": args.workers, "minutes": args.minutes, "requests": counts[0], "errors": len(errors),
        "idle": idle, "after": after, "rss_at_1_min_mib": warm["rss_mib"], "rss_max_after_mib": max(later),
        "rss_growth_after_warmup": round(growth, 4), "samples": samples,
    }
    # A pooled connection to the backend may outlive the load (a pool keeps what it had): allow two a worker.
    slack = 2 * args.workers
    ok = growth < 0.10 and after["fds"] <= idle["fds"] + slack and after["threads"] <= idle["threads"] and not errors
    print(f"soak workers={args.workers}: {counts[0]} requests, {len(errors)} errors; RSS {warm['rss_mib']} MiB at 1 min,"
          f" max {max(later)} MiB after ({growth:+.1%}); fds {idle['fds']} idle -> {after['fds']} after;"
          f" threads {idle['threads']} -> {after['threads']}: {'OK' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
