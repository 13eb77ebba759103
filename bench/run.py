"""The side-by-side benchmark: simplelb against direct access, HAProxy and nginx, interleaved.

    python bench/run.py [--rounds 3] [--duration 3] [--concurrency 1,10,50,200] [--json bench/results/latest.json]

Backends are two nginx servers answering ``ok`` (the project's mock servers
if nginx is not installed). Targets, each measured in every round, one after
the other, so drift on a shared machine hits them all alike:

* ``direct``      -- the first backend itself, the ceiling;
* ``simplelb``    -- one worker process;
* ``simplelb-w2`` -- ``--workers 2``;
* ``haproxy`` and ``nginx`` as proxies to the same backends, when installed.

Load comes from ``wrk`` (Debian package) when installed, else from the
project's own client (far slower: then the numbers say more about it). For each
target and concurrency: requests/s, p50, p99, socket errors, non-2xx, the
proxy's CPU time per request and its peak RSS (all its processes), as the
median of the rounds. Then: how long a *new* connection waits for its first
response while 200 busy connections are served, and 10 MiB / 300 MiB
downloads and uploads through simplelb (MB/s, RSS growth). Install the peers
with ``apt-get install wrk nginx haproxy``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: {what} is not listening on port {port}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (simplelb workers, nginx workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def memory_kib(pids: list[int], field: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="simplelb-bench-"))
        self.tmp.chmod(0o755)  # nginx workers run as another user and must read the files
        self.procs: list[subprocess.Popen] = []
        self.targets: dict[str, tuple[int, int | None]] = {}  # name -> (port, pid whose tree is the proxy)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def spawn(self, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.tmp / f"{len(self.procs)}.log", "w")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self, show_logs: bool = False) -> None:
        if show_logs:
            for log in sorted(self.tmp.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-2000:]}", file=sys.stderr)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- setup -------------------------------------------------------------------

    def start_backends(self) -> list[int]:
        ports = [free_port(), free_port()]
        if shutil.which("nginx"):
            www = self.tmp / "www"
            www.mkdir(mode=0o755)
            for name, size in (("10m", 10 << 20), ("300m", 300 << 20)):
                with open(www / name, "wb") as out:
                    out.truncate(size)
            servers = "".join(
                f"server {{ listen 127.0.0.1:{p}; root {www}; location = / {{ return 200 'ok'; }} "
                f"location = /health {{ return 200 'ok'; }} location = /sink {{ return 200 'ok'; }} }}\n"
                for p in ports
            )
            conf = self.tmp / "backends.conf"
            conf.write_text(
                f"worker_processes 1; daemon off; pid {self.tmp}/backends.pid; error_log {self.tmp}/backends.err;\n"
                "events { worker_connections 8192; }\n"
                "http { access_log off; sendfile on; client_max_body_size 0; keepalive_requests 10000000;\n"
                + servers + "}\n"
            )
            self.spawn(["nginx", "-c", str(conf)])
            self.backend_kind = "nginx"
        else:
            out = subprocess.Popen(
                [sys.executable, "-m", "mockserv", "2", "--base-port", "0", "--log-level", "error"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
            )
            self.procs.append(out)
            line = ""
            while "backends:" not in line:
                line = out.stdout.readline()
            ports = [int(a.rsplit(":", 1)[1]) for a in line.split()[1].split(",")]
            self.backend_kind = "mockserv"
        for port in ports:
            wait_port(port, "a backend")
        return ports

    def start_targets(self, backends: list[int]) -> None:
        listed = ",".join(f"127.0.0.1:{p}" for p in backends)
        self.targets["direct"] = (backends[0], None)
        for name, workers in (("simplelb", 1), ("simplelb-w2", 2)):
            port = free_port()
            proc = self.spawn([sys.executable, "-m", "simplelb", "--backends", listed, "--port", str(port),
                               "--workers", str(workers), "--log-level", "warning"])
            self.targets[name] = (port, proc.pid)
        if shutil.which("haproxy"):
            port = free_port()
            conf = self.tmp / "haproxy.cfg"
            conf.write_text(
                "global\n  maxconn 4096\n  nbthread 2\n"
                "defaults\n  mode http\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n"
                "  option http-keep-alive\n"
                f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
                "backend b\n  balance roundrobin\n  http-reuse always\n"
                + "".join(f"  server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends))
            )
            proc = self.spawn(["haproxy", "-f", str(conf)])
            self.targets["haproxy"] = (port, proc.pid)
        if shutil.which("nginx"):
            port = free_port()
            conf = self.tmp / "proxy.conf"
            conf.write_text(
                f"worker_processes 2; daemon off; pid {self.tmp}/proxy.pid; error_log {self.tmp}/proxy.err;\n"
                "events { worker_connections 8192; }\n"
                "http { access_log off; upstream b { "
                + "".join(f"server 127.0.0.1:{p}; " for p in backends)
                + "keepalive 64; }\n"
                f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; proxy_http_version 1.1; "
                "proxy_set_header Connection ''; } } }\n"
            )
            proc = self.spawn(["nginx", "-c", str(conf)])
            self.targets["nginx"] = (port, proc.pid)
        for name, (port, _) in self.targets.items():
            wait_port(port, name)
        time.sleep(1.0)  # first health-check round

    # --- measuring ---------------------------------------------------------------

    def load(self, port: int, concurrency: int, duration_s: float) -> dict:
        if shutil.which("wrk"):
            out = subprocess.run(
                ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{duration_s}s", "--latency",
                 f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, timeout=duration_s + 30,
            ).stdout
            return parse_wrk(out)
        from traffic.report import summarize
        from traffic.runner import Target, run_load

        n = max(200, int(500 * duration_s))
        results, elapsed = run_load(Target("127.0.0.1", port, "/"), n, concurrency=concurrency, timeout_s=5)
        summary = summarize(results, elapsed)
        return {
            "rps": summary["throughput_rps"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "requests": len(results),
            "socket_errors": sum(summary["errors"].values()),
            "non_2xx": sum(c for s, c in summary["status_codes"].items() if not s.startswith("2")),
        }

    def measure(self, name: str, concurrency: int) -> dict:
        port, pid = self.targets[name]
        pids = process_tree(pid) if pid else []
        cpu_before = cpu_seconds(pids)
        result = self.load(port, concurrency, self.args.duration)
        cpu = cpu_seconds(pids) - cpu_before
        result["cpu_us_per_request"] = round(cpu / max(1, result["requests"]) * 1e6, 1) if pid else None
        result["peak_rss_mib"] = round(memory_kib(pids, "VmHWM") / 1024, 1) if pid else None
        return result

    def new_connection_wait(self, name: str, busy: int = 200, probes: int = 40) -> dict:
        """Time to first response of fresh connections while ``busy`` connections keep the target busy."""
        port, _ = self.targets[name]
        loader = threading.Thread(target=self.load, args=(port, busy, int(probes * 0.05) + 3))
        loader.start()
        time.sleep(1.0)
        waits = []
        for _ in range(probes):
            start = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    sock.recv(64)
                waits.append((time.perf_counter() - start) * 1000)
            except OSError:
                waits.append(float("inf"))
            time.sleep(0.05)
        loader.join()
        waits.sort()
        return {"p50_ms": round(waits[len(waits) // 2], 2), "p99_ms": round(waits[int(len(waits) * 0.99)], 2),
                "max_ms": round(waits[-1], 2)}

    def bodies(self) -> list[dict]:
        """Big downloads and uploads through simplelb, one connection: MB/s and RSS growth."""
        if self.backend_kind != "nginx" or not shutil.which("curl"):
            return []
        port, pid = self.targets["simplelb"]
        pids = process_tree(pid)
        rows = []
        for label, size_name in (("10 MiB", "10m"), ("300 MiB", "300m")):
            path = self.tmp / "www" / size_name
            for direction in ("download", "upload"):
                speeds, growth = [], []
                for _ in range(self.args.rounds):
                    rss_before = memory_kib(pids, "VmRSS")
                    if direction == "download":
                        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}",
                               f"http://127.0.0.1:{port}/{size_name}"]
                    else:
                        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload}", "-T", str(path),
                               f"http://127.0.0.1:{port}/sink"]
                    status, _, speed = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.partition(" ")
                    if status != "200":
                        raise SystemExit(f"bench: {label} {direction} through simplelb answered {status}")
                    speeds.append(float(speed) / 1e6)
                    growth.append((memory_kib(pids, "VmHWM") - rss_before) / 1024)
                rows.append({"body": label, "direction": direction, "mb_per_s": round(statistics.median(speeds)),
                             "rss_growth_mib": round(max(growth), 1)})
        return rows


def parse_wrk(out: str) -> dict:
    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "requests": int(requests.group(1)) if requests else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def median_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None]
    row = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    for k in ("socket_errors", "non_2xx"):
        row[k] = max(r[k] for r in runs)  # the worst round, not the median: errors must be zero
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    bench = Bench(args)
    try:
        backends = bench.start_backends()
        bench.start_targets(backends)
        runs: dict[tuple[str, int], list[dict]] = {}
        for round_no in range(args.rounds):
            for concurrency in levels:
                for name in bench.targets:
                    runs.setdefault((name, concurrency), []).append(bench.measure(name, concurrency))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        table = {f"{name}@{c}": median_row(r) for (name, c), r in runs.items()}
        waits = {name: bench.new_connection_wait(name) for name in bench.targets if name != "direct"}
        bodies = bench.bodies()
    except SystemExit:
        bench.close(show_logs=True)
        raise
    finally:
        bench.close()

    load_tool = "wrk" if shutil.which("wrk") else "traffic (the project's client)"
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, backends: {bench.backend_kind}, load: {load_tool}, "
          f"median of {args.rounds} rounds x {args.duration:g}s")
    print(f"{'target':<12}{'conc':>5}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>9}{'sock err':>9}{'non2xx':>7}"
          f"{'cpu us/req':>11}{'rss MiB':>8}")
    for concurrency in levels:
        for name in bench.targets:
            m = table[f"{name}@{concurrency}"]
            cpu = f"{m['cpu_us_per_request']:.0f}" if "cpu_us_per_request" in m else "-"
            rss = f"{m['peak_rss_mib']:.0f}" if "peak_rss_mib" in m else "-"
            print(f"{name:<12}{concurrency:>5}{m['rps']:>9.0f}{m['p50_ms']:>8.2f}{m['p99_ms']:>9.2f}"
                  f"{m['socket_errors']:>9}{m['non_2xx']:>7}{cpu:>11}{rss:>8}")
        lb, direct = table[f"simplelb@{concurrency}"], table[f"direct@{concurrency}"]
        ratios = [f"simplelb/direct {lb['rps'] / direct['rps']:.2f}x",
                  f"added p50 {lb['p50_ms'] - direct['p50_ms']:.2f} ms"]
        if f"haproxy@{concurrency}" in table:
            ratios.append(f"simplelb/haproxy {lb['rps'] / table[f'haproxy@{concurrency}']['rps']:.2f}x")
            ratios.append(f"w2/haproxy {table[f'simplelb-w2@{concurrency}']['rps'] / table[f'haproxy@{concurrency}']['rps']:.2f}x")
        print("    " + ", ".join(ratios))
    print("\nnew connection, time to first response while 200 connections are busy (40 probes):")
    for name, wait in waits.items():
        print(f"  {name:<12} p50 {wait['p50_ms']:.1f} ms  p99 {wait['p99_ms']:.1f} ms  max {wait['max_ms']:.1f} ms")
    if bodies:
        print("\nlarge bodies through simplelb (1 worker, one connection, curl):")
        for row in bodies:
            print(f"  {row['body']:>8} {row['direction']:<8} {row['mb_per_s']:>6} MB/s  RSS growth {row['rss_growth_mib']:.1f} MiB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(
        {"rounds": args.rounds, "duration_s": args.duration, "backends": bench.backend_kind, "load": load_tool,
         "results": table, "new_connection_wait": waits, "bodies": bodies}, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
