"""The processes a benchmark measures: nginx backends, simplelb, HAProxy and nginx as proxies; wrk.

``Bench`` starts each as its own process (logs in a temporary directory,
removed by ``close()``) and remembers, per target name, the port to load and
the pid whose process tree is the proxy (for its CPU time and RSS). ``load``
runs ``wrk`` against a port, falling back to the project's own client when
wrk is not installed. The process-counter helpers read ``/proc``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# HAProxy's and nginx's connection limits in the bench; simplelb gets the same
# (--max-clients), so 1,500 idle connections stay open on every proxy.
MAX_CONNECTIONS = 4096


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
    children: dict[int, list[int]] = {}
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
    """User plus system CPU time of ``pids`` (each process's own counters, all its threads)."""
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
    """The processes of one benchmark run; ``targets`` maps a name to (port, pid of the proxy or None)."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="simplelb-bench-"))
        self.tmp.chmod(0o755)  # nginx workers run as another user and must read the files
        self.procs: list[subprocess.Popen] = []
        self.targets: dict[str, tuple[int, int | None]] = {}
        self.admin_ports: dict[str, int] = {}  # target -> its admin listener, where it has one
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.backend_kind = "none"
        self.backends: list[int] = []
        self.cert: tuple[Path, Path] | None = None

    def spawn(self, args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        log = open(self.tmp / f"{len(self.procs)}.log", "w")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, **kwargs)
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

    # --- backends ----------------------------------------------------------------

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
        self.backends = ports
        return ports

    # --- proxies -----------------------------------------------------------------

    def start_simplelb(self, name: str, workers: int = 1, *, extra: tuple[str, ...] = (), root: Path = ROOT,
                       admin: bool = False, tls: bool = False) -> None:
        """simplelb from the source tree ``root`` (another checkout measures an earlier version)."""
        port = free_port()
        args = [sys.executable, "-m", "simplelb", "--backends", ",".join(f"127.0.0.1:{p}" for p in self.backends),
                "--port", str(port), "--workers", str(workers), "--log-level", "warning",
                "--max-clients", str(MAX_CONNECTIONS), *extra]
        if admin:
            self.admin_ports[name] = free_port()
            args += ["--admin", f"127.0.0.1:{self.admin_ports[name]}"]
        if tls:
            cert, key = self.certificate()
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        proc = self.spawn(args, env={**os.environ, "PYTHONPATH": str(root)}, cwd=str(root))
        self.targets[name] = (port, proc.pid)

    def start_haproxy(self, name: str = "haproxy", *, tls: bool = False) -> None:
        if not shutil.which("haproxy"):
            return
        port = free_port()
        conf = self.tmp / f"{name}.cfg"
        bind = f"127.0.0.1:{port}"
        if tls:
            cert, key = self.certificate()
            combined = self.tmp / "haproxy.pem"  # HAProxy wants the chain and the key in one file
            combined.write_bytes(cert.read_bytes() + key.read_bytes())
            bind += f" ssl crt {combined} alpn http/1.1"
        conf.write_text(
            f"global\n  maxconn {MAX_CONNECTIONS}\n  nbthread 2\n"
            "defaults\n  mode http\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n"
            "  option http-keep-alive\n"
            f"frontend f\n  bind {bind}\n  default_backend b\n"
            "backend b\n  balance roundrobin\n  http-reuse always\n"
            + "".join(f"  server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(self.backends))
        )
        proc = self.spawn(["haproxy", "-f", str(conf)])
        self.targets[name] = (port, proc.pid)

    def start_nginx(self, name: str = "nginx") -> None:
        if not shutil.which("nginx"):
            return
        port = free_port()
        conf = self.tmp / f"{name}.conf"
        conf.write_text(
            f"worker_processes 2; daemon off; pid {self.tmp}/{name}.pid; error_log {self.tmp}/{name}.err;\n"
            "events { worker_connections 8192; }\n"
            "http { access_log off; upstream b { "
            + "".join(f"server 127.0.0.1:{p}; " for p in self.backends)
            + "keepalive 64; }\n"
            f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; proxy_http_version 1.1; "
            "proxy_set_header Connection ''; } } }\n"
        )
        proc = self.spawn(["nginx", "-c", str(conf)])
        self.targets[name] = (port, proc.pid)

    def start_floor(self, name: str = "floor") -> None:
        """``bench/floor.py``: the least a thread-per-connection CPython proxy costs (round three)."""
        port = free_port()
        proc = self.spawn([sys.executable, str(ROOT / "bench" / "floor.py"), str(port),
                           ",".join(str(p) for p in self.backends)])
        self.targets[name] = (port, proc.pid)

    def certificate(self) -> tuple[Path, Path]:
        """One certificate for 127.0.0.1 and localhost (EC P-256), shared by simplelb and HAProxy."""
        if self.cert is None:
            sys.path.insert(0, str(ROOT))
            from mockserv.tls import CertificateAuthority

            cert_pem, key_pem = CertificateAuthority("simplelb bench CA").issue(["localhost", "127.0.0.1"])
            cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
            cert.write_bytes(cert_pem)
            key.write_bytes(key_pem)
            self.cert = (cert, key)
        return self.cert

    def wait_targets(self) -> None:
        for name, (port, _) in self.targets.items():
            wait_port(port, name)
        time.sleep(1.0)  # the first health-check round

    # --- load --------------------------------------------------------------------

    def load(self, port: int, concurrency: int, duration_s: float, *, scheme: str = "http",
             close: bool = False) -> dict:
        """``wrk`` at ``concurrency`` connections; ``close``: a new connection for every request."""
        if shutil.which("wrk"):
            cmd = ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{duration_s}s", "--latency"]
            if close:
                cmd += ["-H", "Connection: close"]
            out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True,
                                 timeout=duration_s + 30).stdout
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

    def measure(self, name: str, concurrency: int, **load_options) -> dict:
        """One load run against target ``name``, with the proxy's CPU time per request and peak RSS."""
        port, pid = self.targets[name]
        pids = process_tree(pid) if pid else []
        cpu_before = cpu_seconds(pids)
        result = self.load(port, concurrency, self.args.duration, **load_options)
        cpu = cpu_seconds(pids) - cpu_before
        result["cpu_us_per_request"] = round(cpu / max(1, result["requests"]) * 1e6, 1) if pid else None
        result["peak_rss_mib"] = round(memory_kib(pids, "VmHWM") / 1024, 1) if pid else None
        return result


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
