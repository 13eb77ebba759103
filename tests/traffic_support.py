"""Servers and helpers for the traffic tests: real servers on port 0 that record what they got.

* ``Recorder``: an HTTP/1.1 server (``http.server``) that records each
  request (arrival time, method, target, headers, body) and answers 200 with
  ``X-Backend``; optionally over TLS (``trustme``), optionally slow.
* ``closes_when_idle``: a scripted backend that closes a kept-alive
  connection once it has been idle a while, as servers with a keep-alive
  timeout do.
* ``MetricsServer``: ``/metrics`` whose body ``prometheus_client`` writes, from
  a registry with the balancer's metric names that changes with every scrape.
* ``write_access_log``: a simplelb JSON access log, as issue 12 specifies it.
* ``chromium`` / ``page_facts``: render a page in headless Chromium, take a
  screenshot, and measure the page from inside (width, overlapping labels).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

# --- a server that records what it got ------------------------------------------


class Recorder:
    def __init__(self, name: str = "rec", *, tls: ssl.SSLContext | None = None, delay_s: float = 0.0):
        self.name = name
        self.delay_s = delay_s
        self.received: list[dict] = []
        self.lock = threading.Lock()  # guards received
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Head and body are two writes: with Nagle on, the body waits for the client's delayed
            # ACK, 40 ms a request, which made a 600-request test take 8 s.
            disable_nagle_algorithm = True

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                with recorder.lock:
                    recorder.received.append({"t": time.perf_counter(), "method": self.command, "target": self.path,
                                              "headers": dict(self.headers), "body": body})
                if recorder.delay_s:
                    time.sleep(recorder.delay_s)
                self.send_response(200)
                self.send_header("X-Backend", recorder.name)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 128  # the default 5 drops SYNs in a burst: a 1 s retransmit, not a test failure

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    started: list[Recorder] = []

    def make(*args, **kwargs) -> Recorder:
        server = Recorder(*args, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def closes_when_idle(idle_s: float):
    """A script for conftest's ``scripted``: answer, then close the connection after ``idle_s`` without a request."""
    def script(conn) -> None:
        while True:
            conn.sock.settimeout(idle_s if conn.requests else 10)
            try:
                if conn.read_request() is None:
                    return
            except TimeoutError:
                return  # idle too long: the handler closes the connection, as a keep-alive timeout does
            conn.respond()
    return script


# --- /metrics written by prometheus_client ----------------------------------------


class MetricsServer:
    """``/metrics`` with the balancer's names; ``change(scrape_number)`` moves the values before each scrape."""

    def __init__(self, change):
        self.registry = CollectorRegistry()
        self.state = Gauge("simplelb_backend_state", "state", ["backend", "state"], registry=self.registry)
        self.in_flight = Gauge("simplelb_backend_in_flight", "in flight", ["backend"], registry=self.registry)
        self.retries = Counter("simplelb_backend_retries", "retries", ["backend"], registry=self.registry)
        self.scrapes = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.scrapes += 1
                change(server, server.scrapes)
                body = generate_latest(server.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def set_state(self, backend: str, current: str) -> None:
        for state in ("up", "down", "draining"):
            self.state.labels(backend=backend, state=state).set(1 if state == current else 0)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- access logs --------------------------------------------------------------------


def write_access_log(path: Path, requests: list[tuple[float, str, str]], start: datetime | None = None) -> None:
    """simplelb's JSON access log (issue 12): one object a line, ``time`` RFC 3339 UTC with milliseconds."""
    start = start or datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    lines = []
    for offset_s, method, target in requests:
        stamp = (start + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        lines.append(json.dumps({
            "time": stamp, "client": "127.0.0.1", "method": method, "target": target, "protocol": "HTTP/1.1",
            "status": 200, "bytes_sent": 2, "bytes_received": 0, "duration_ms": 1.2, "backend": "127.0.0.1:8081",
            "backend_status": 200, "backend_duration_ms": 1.0, "attempts": 1, "user_agent": "curl/8",
            "referer": None, "request_id": None,
        }))
    path.write_text("\n".join(lines) + "\n")


# --- headless Chromium ----------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Measures the page from inside: how wide it is, which charts show, and text boxes that overlap in a chart.
MEASURE = """<script>
const facts = {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
               wide: 0, narrow: 0, overlaps: []};
for (const svg of document.querySelectorAll("svg.chart")) {
  if (svg.getBoundingClientRect().width === 0) continue;
  facts[svg.classList.contains("wide") ? "wide" : "narrow"]++;
  const boxes = [...svg.querySelectorAll("text")].map(t => [t.textContent, t.getBoundingClientRect()]);
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, p] = boxes[i], [b, q] = boxes[j];
    if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
      facts.overlaps.push(a + " / " + b);
  }
}
document.title = "FACTS" + JSON.stringify(facts);
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the HTML report is not rendered")
    return path


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


# Screenshots are copied here too: pytest keeps only its last few temporary directories.
SHOTS = Path(tempfile.gettempdir()) / "traffic-screenshots"


def screenshot(page: Path, out: Path, width: int, height: int = 2400) -> Path:
    """A PNG of ``page`` at ``width`` px, also kept in ``SHOTS``; the path is printed for a person to look at."""
    _run_chromium([f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()], out.parent / f"profile-{width}")
    assert out.exists(), f"chromium wrote no screenshot of {page}"
    SHOTS.mkdir(exist_ok=True)
    kept = SHOTS / out.name
    shutil.copyfile(out, kept)
    print(f"screenshot: {kept}")
    return out


def page_facts(page: Path, width: int) -> dict:
    """Load a copy of ``page`` with ``MEASURE`` added, at ``width`` px; what it measured."""
    probe = page.with_name(page.stem + f"-probe-{width}.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    result = _run_chromium([f"--window-size={width},900", "--dump-dom", probe.as_uri()], page.parent / f"probe-{width}")
    match = re.search(r"<title>FACTS(.*?)</title>", result.stdout, re.S)
    assert match, f"chromium did not run the page: {result.stderr[-500:]}"
    return json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def env_with_root() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
