"""The live status page (``GET /`` on the admin listener) in headless Chromium.

Most tests run a real balancer with an admin listener over real mock
servers, open the page in a blank tab (each balancer is an origin of its own,
so no sessionStorage carries over) and read what a person would see from
the DOM. Changes are made the way an operator makes them -- a mock marked down, a
button clicked, a token typed -- and the page must follow without a reload.
One Chromium serves the whole module (``tests/browser.py``).

The others put ``StandInAdmin`` in the balancer's place: the real page, and at
``status`` exactly the answer the test wrote (counters from real ``Backend``
objects), or no answer at all -- as a stopped balancer, or one whose admin
slots are all held, gives none.

Screenshots (1280 and 400 px wide, light and dark) go to the test's
``tmp_path``; ``pytest -s`` prints where.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from simplelb.admin import STATUS_PAGE
from simplelb.backend import Backend
from simplelb.errors import BadGateway
from simplelb.specs import BackendSpec
from simplelb.stats import BOUNDS_S

from .browser import CHROMIUM, Browser
from .conftest import JSON, SteadyTraffic

# Probes every 0.1 s, so a backend marked down is down before the page's next poll. It takes two failed
# probes in a row, not one: on a busy machine a single probe can outlast its 0.1 s timeout.
HEALTH = {"health_interval_s": 0.1, "fall": 2}

# What a person sees, row by row: the backend's name, its state, and each cell's text by its label.
ROWS_JS = """[...document.querySelectorAll('#backends tbody tr')].map(row => ({
  name: row.dataset.backend,
  title: row.querySelector('.title').textContent,
  state: row.querySelector('.badge').textContent,
  colour: getComputedStyle(row.querySelector('.badge')).backgroundColor,
  backup: !row.querySelector('.tag').hidden,
  cells: Object.fromEntries([...row.cells].map(td => [td.dataset.label, td.textContent])),
  enabled: [...row.querySelectorAll('button')].filter(b => !b.disabled).map(b => b.dataset.action),
}))"""


def wait_for(condition, timeout_s: float, what: str) -> None:
    """``conftest.wait_for``, asking 20 times a second: each question is a round trip through Chromium."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def rows(page) -> dict[str, dict]:
    return {row["name"]: row for row in page.evaluate(ROWS_JS)}


def button(name: str, action: str) -> str:
    """A JavaScript expression for the ``action`` button of backend ``name``'s row."""
    return (f"[...document.querySelectorAll('#backends tbody tr')].find(r => r.dataset.backend === {json.dumps(name)})"
            f".querySelector('button[data-action={action}]')")


def milliseconds(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"ms": 1, "s": 1000}[unit]


def status_of(admin: str, name: str) -> dict | None:
    return next((b for b in requests.get(admin + "/status", timeout=5).json()["backends"]
                 if b["name"] == name), None)


def unexpected(problems: list[str], *expected: str) -> list[str]:
    """The problems left once the browser's own network log lines containing one of ``expected`` are set aside.

    Chromium logs every failed fetch and every 4xx answer to one ("Failed to load
    resource: ... status of 401"); a test that provokes one on purpose expects
    exactly that line, and nothing else.
    """
    return [p for p in problems if not (p.startswith("log (network)") and any(e in p for e in expected))]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the status page is tested in it")
    pytest.importorskip("websockets", reason="the status page tests talk to Chromium with the websockets package")
    with Browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def tab(browser):
    opened = browser.page()
    yield opened
    opened.close()


@pytest.fixture
def page(tab):
    """The module's tab, blank, at the default screen size and colour scheme, with no events from before."""
    tab.reset()
    return tab


@pytest.fixture
def admin_lb(mock_servers, balancer):
    mocks = mock_servers(2)
    lb = balancer(mocks, admin="127.0.0.1:0", **HEALTH)
    return lb, lb.admin.url, mocks


def open_page(page, admin: str, count: int) -> None:
    page.goto(admin + "/")
    wait_for(lambda: len(rows(page)) == count, 5, f"{count} backends on the page")


# --- the page itself ---------------------------------------------------------------------


def test_the_page_is_self_contained():
    html = STATUS_PAGE.read_text()
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) == {"http://www.w3.org/2000/svg"}  # a namespace, not fetched
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handlers break under the admin CSP"
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html


def test_the_page_renders_with_no_console_errors(admin_lb, page):
    lb, admin, mocks = admin_lb
    served = requests.get(admin + "/", timeout=5)
    assert "script-src 'unsafe-inline'" in served.headers["Content-Security-Policy"]  # the page runs under it
    for _ in range(6):
        requests.get(lb.url, timeout=5)
    open_page(page, admin, 2)
    status = requests.get(admin + "/status", timeout=5).json()
    assert list(rows(page)) == [m.address for m in mocks]
    wait_for(lambda: [row["state"] for row in rows(page).values()] == ["up", "up"], 3, "both backends up")
    assert page.evaluate("document.getElementById('version').textContent") == status["version"]
    summary = page.evaluate("document.getElementById('summary').textContent")
    assert "round-robin" in summary and "Generation" in summary and "Uptime" in summary
    assert page.evaluate("document.getElementById('ready').textContent") == "ready"
    # A second answer draws a line per backend, in the colour of its legend entry.
    page.wait_for("document.querySelectorAll('#chart path').length === 2", 3, "a line per backend")
    lines = page.evaluate("[...document.querySelectorAll('#chart path')].map(p => getComputedStyle(p).stroke)")
    legend = page.evaluate("[...document.querySelectorAll('#legend li')].map(li => "
                           "[li.dataset.backend, getComputedStyle(li.querySelector('.swatch')).borderTopColor])")
    assert [name for name, _ in legend] == [m.address for m in mocks]
    assert [colour for _, colour in legend] == lines and len(set(lines)) == 2
    # The traffic came before the page: since it opened, a rate of zero and nothing else to measure.
    for row in rows(page).values():
        assert {k: row["cells"][k] for k in ("Req/s", "Errors", "p50", "p99", "Share")} == {
            "Req/s": "0", "Errors": "\u2013", "p50": "\u2013", "p99": "\u2013", "Share": "\u2013"}
    # Nothing but status was fetched, and relative to the page.
    fetched = page.evaluate("[...new Set(performance.getEntriesByType('resource').map(e => e.name))]")
    assert fetched == [admin + "/status"]
    assert page.problems() == []


def test_a_backend_marked_down_shows_as_down_within_three_seconds(admin_lb, page):
    lb, admin, mocks = admin_lb
    open_page(page, admin, 2)
    page.evaluate("window.notReloaded = true")
    wait_for(lambda: [row["state"] for row in rows(page).values()] == ["up", "up"], 3, "both backends up")
    up_colour = rows(page)[mocks[1].address]["colour"]
    requests.post(mocks[1].url + "/_mock/health", data="down", timeout=5)
    marked = time.monotonic()
    wait_for(lambda: rows(page)[mocks[1].address]["state"] == "down", 3, "the backend shown as down")
    print(f"\nshown as down {time.monotonic() - marked:.2f}s after it was marked down")
    assert rows(page)[mocks[1].address]["colour"] != up_colour  # in colour as well as in words
    wait_for(lambda: rows(page)[mocks[0].address]["state"] == "up", 3, "the other backend up")
    assert page.evaluate("window.notReloaded === true")
    assert page.problems() == []


def test_when_the_balancer_cannot_be_reached_the_page_says_so_and_recovers(admin_lb, page):
    lb, admin, mocks = admin_lb
    open_page(page, admin, 2)
    page.call("Network.enable")
    offline = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    page.call("Network.emulateNetworkConditions", offline=True, **offline)
    live = "document.getElementById('live').textContent"
    stale = page.wait_for(f"{live}.startsWith('stale') && {live}", 3, "the page to say it is stale")
    assert "cannot reach the balancer" in stale
    assert list(rows(page)) == [m.address for m in mocks]  # what it last heard stays, dimmed
    page.call("Network.emulateNetworkConditions", offline=False, **offline)
    page.wait_for(f"{live} === 'live'", 3, "the page live again")
    page.call("Network.disable")
    assert unexpected(page.problems(), "ERR_INTERNET_DISCONNECTED") == []


def test_drain_and_return_buttons(admin_lb, mock_servers, page):
    lb, admin, mocks = admin_lb
    (third,) = mock_servers(1)
    name = "web+1@[x]:~"  # a name encodeURIComponent must escape in the URL path
    added = requests.post(admin + "/backends", json={"address": third.address, "name": name}, timeout=5)
    assert added.status_code == 201
    wait_for(lambda: status_of(admin, name)["state"] == "up", 3, "the new backend up")
    open_page(page, admin, 3)
    assert rows(page)[name]["title"] == name
    assert rows(page)[name]["enabled"] == ["drain", "maint"]

    page.evaluate(button(name, "drain") + ".click()")
    wait_for(lambda: status_of(admin, name)["state"] == "draining", 3, "the backend draining")
    wait_for(lambda: rows(page)[name]["enabled"] == ["ready", "maint"], 3, "the page to show it draining")
    assert rows(page)[name]["state"] == "draining"

    page.evaluate(button(name, "ready") + ".click()")
    wait_for(lambda: status_of(admin, name)["state"] == "up", 3, "the backend back up")
    wait_for(lambda: rows(page)[name]["state"] == "up", 3, "the page to show it up")

    page.evaluate(button(name, "maint") + ".click()")
    wait_for(lambda: status_of(admin, name)["state"] == "maint", 3, "the backend in maintenance")
    wait_for(lambda: rows(page)[name]["state"] == "maint", 3, "the page to show it in maintenance")
    assert page.evaluate("document.getElementById('notice').hidden")
    assert page.problems() == []


def test_backends_come_and_go_and_a_refused_change_is_shown(admin_lb, mock_servers, page):
    lb, admin, mocks = admin_lb
    (third,) = mock_servers(1)
    open_page(page, admin, 2)
    gone = mocks[1].address
    page.evaluate(f"window.held = {button(gone, 'maint')}")  # the button of a row about to disappear
    requests.post(admin + "/backends", json={"address": third.address, "name": "third", "backup": True}, timeout=5)
    requests.delete(admin + f"/backends/{gone}", headers=JSON, timeout=5)
    wait_for(lambda: list(rows(page)) == [mocks[0].address, "third"], 3, "the added backend in, the removed one out")
    assert rows(page)["third"]["backup"] and not rows(page)[mocks[0].address]["backup"]
    legend = page.evaluate("[...document.querySelectorAll('#legend li')].map(li => li.dataset.backend)")
    assert legend == [mocks[0].address, "third"]

    page.evaluate("window.held.click()")
    notice = page.wait_for("!document.getElementById('notice').hidden && "
                           "document.getElementById('notice-text').textContent", 3, "the error shown")
    assert notice == f"Maintenance {gone}: no backend named {gone!r}"
    assert unexpected(page.problems(), "status of 404 ") == []


def test_with_a_token_the_page_asks_for_it(mock_servers, balancer, page, tmp_path):
    token = "correct-horse-battery-staple"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    (mock,) = mock_servers(1)
    lb = balancer([mock], admin="127.0.0.1:0", admin_token_file=str(token_file), **HEALTH)
    page.goto(lb.admin.url + "/")
    page.wait_for("!document.getElementById('login').hidden", 3, "the token field")
    assert page.evaluate("document.getElementById('main').hidden") and rows(page) == {}

    def enter(value: str) -> None:
        page.evaluate(f"document.getElementById('token').value = {json.dumps(value)}; "
                      "document.getElementById('login').requestSubmit()")

    enter("not-the-right-token-at-all")
    message = page.wait_for("!document.getElementById('login').hidden && "
                            "document.getElementById('login-message').textContent.includes('refused') && "
                            "document.getElementById('login-message').textContent", 3, "the token refused")
    print("\nwrong token:", message)
    enter(token)
    wait_for(lambda: list(rows(page)) == [mock.address], 3, "the backends once the token is given")
    assert page.evaluate("document.getElementById('login').hidden")
    assert page.evaluate("sessionStorage.getItem('simplelb-admin-token')") == token

    page.reload()  # the token stays for the session: no question asked again
    wait_for(lambda: list(rows(page)) == [mock.address], 3, "the backends after a reload")
    assert page.evaluate("document.getElementById('login').hidden")
    assert unexpected(page.problems(), "status of 401 ") == []


def test_screenshots_while_traffic_flows(mock_servers, balancer, page, tmp_path):
    mocks = mock_servers(5)
    drained, slow, failing, down, backup = mocks
    requests.post(slow.url + "/_mock/latency?ms=10-40", timeout=5)
    requests.post(failing.url + "/_mock/error-rate?p=0.3", timeout=5)
    lb = balancer(mocks[:4], backups=backup.address, admin="127.0.0.1:0", **HEALTH)
    admin = lb.admin.url
    traffic = SteadyTraffic(lb.url, rate=60, clients=3, max_s=30).start()
    try:
        open_page(page, admin, 5)
        requests.patch(admin + f"/backends/{drained.address}", json={"state": "drain"}, timeout=5)
        requests.patch(admin + f"/backends/{backup.address}", json={"state": "maint"}, timeout=5)
        requests.post(down.url + "/_mock/health", data="down", timeout=5)
        expected = {drained.address: "draining", slow.address: "up", failing.address: "up", down.address: "down",
                    backup.address: "maint"}
        wait_for(lambda: {name: row["state"] for name, row in rows(page).items()} == expected, 3, f"{expected}")
        page.wait_for("(document.querySelector('#chart path')?.getAttribute('d') || '').includes('L')", 3,
                      "a line on the chart")
        wait_for(lambda: rows(page)[slow.address]["cells"]["p99"] != "\u2013"
                 and rows(page)[failing.address]["cells"]["Errors"] not in ("\u2013", "0%"), 3, "latencies and errors")
        shown = rows(page)
        assert shown[backup.address]["backup"] and shown[backup.address]["cells"]["Share"] == "0%"
        p50, p99 = (milliseconds(shown[slow.address]["cells"][key]) for key in ("p50", "p99"))
        assert 10 <= p50 <= p99  # it answers in 10 to 40 ms, never faster
        paths = []
        for width in (1280, 400):
            for dark in (False, True):
                path = page.screenshot(tmp_path / f"statuspage-{width}-{'dark' if dark else 'light'}.png", width, dark)
                overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
                assert overflow <= 0, f"at {width} px the page is {overflow} px too wide"
                paths.append(path)
    finally:
        traffic.stop()
    print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in paths))
    assert all(path.stat().st_size > 10_000 for path in paths)
    assert page.problems() == []


# --- against a stand-in for the admin listener ---------------------------------------------


class StandInAdmin:
    """The real page at ``/``; at ``/status``, ``answer`` as JSON -- or, while ``hanging``, nothing until ``close()``."""

    def __init__(self):
        self.answer: dict = {}
        self.hanging = False
        self.held = 0  # questions to /status left unanswered so far
        self.lock = threading.Lock()  # guards held
        self.closing = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/status" and stand_in.hanging:
                    with stand_in.lock:
                        stand_in.held += 1
                    stand_in.closing.wait(30)  # the question stays open: no answer, no error, no close
                    self.close_connection = True
                    return
                if self.path == "/":
                    body, kind = STATUS_PAGE.read_bytes(), "text/html; charset=utf-8"
                elif self.path == "/status":
                    body, kind = json.dumps(stand_in.answer).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="stand-in-admin",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stand_in():
    admin = StandInAdmin()
    yield admin
    admin.close()


def answer(uptime_s: float, backends: list[dict]) -> dict:
    """A ``/status`` answer as the balancer gives it, with these backends (``Backend.status()``)."""
    return {"version": "stand-in", "uptime_s": uptime_s, "ready": True, "algorithm": "round-robin", "generation": 1,
            "histogram_bounds_s": list(BOUNDS_S), "responses": {"2xx": 0, "5xx": 0}, "backends": backends}


LIVE = "document.getElementById('live').textContent"
STALE = "document.body.classList.contains('stale')"


def test_a_balancer_that_stops_answering_is_shown_stale_and_the_page_asks_again(stand_in, page):
    stand_in.answer = answer(10, [Backend(BackendSpec("127.0.0.1", 9, name="web")).status()])
    open_page(page, stand_in.url, 1)
    page.wait_for(f"{LIVE} === 'live' && !{STALE}", 3, "the page live")
    stand_in.hanging = True  # as after kill -STOP: questions are taken, never answered
    started = time.monotonic()
    shown = page.wait_for(f"{STALE} && {LIVE}.startsWith('stale: ') && {LIVE}", 6, "the page to say it is stale")
    print(f"\nstale {time.monotonic() - started:.1f}s after the balancer stopped answering: {shown!r}")
    assert list(rows(page)) == ["web"]  # what it last heard stays, dimmed
    # A question is given up on, and asked again: the page does not wait for ever on one.
    wait_for(lambda: stand_in.held >= 2, 5, "a second question once the first was given up")
    assert "no answer" in page.evaluate(LIVE)
    stand_in.hanging = False  # (the questions already open stay unanswered)
    page.wait_for(f"{LIVE} === 'live' && !{STALE}", 5, "the page live again")
    assert unexpected(page.problems(), "ERR_ABORTED") == []


def test_a_question_that_never_ends_still_turns_the_page_stale(stand_in, page):
    stand_in.answer = answer(10, [Backend(BackendSpec("127.0.0.1", 9, name="web")).status()])
    open_page(page, stand_in.url, 1)
    page.wait_for(f"{LIVE} === 'live'", 3, "the page live")
    # Whatever a request does -- here one that ignores being given up -- silence is shown after three polls.
    page.evaluate("window.fetch = () => new Promise(() => {}); true")
    shown = page.wait_for(f"{STALE} && {LIVE}.startsWith('stale: no answer') && {LIVE}", 6,
                          "the page to say it is stale")
    assert "last answer" in shown
    assert page.problems() == []


def test_a_5xx_counted_as_a_failure_too_counts_once_in_the_error_rate(stand_in, page):
    # With --eject-on-5xx, a 5xx answer is a response (responses 5xx) and a failure (reason 5xx).
    backend = Backend(BackendSpec("127.0.0.1", 9, name="mock-1"), count_5xx_as_failure=True)
    before = backend.status()
    for outcome in [200] * 40 + [500] * 20 + ["connect"] * 40:
        with contextlib.suppress(BadGateway), backend.track() as attempt:
            if outcome == "connect":
                raise BadGateway("connection refused", reason="connect")
            attempt.responded(outcome)
    after = backend.status()
    assert (after["requests"], after["responses"]["5xx"], after["failures"]) == (60, 20, 60)
    assert {k: n for k, n in after["failure_reasons"].items() if n} == {"connect": 40, "5xx": 20}
    stand_in.answer = answer(10, [before])
    open_page(page, stand_in.url, 1)
    stand_in.answer = answer(11, [after])  # one second later, by the balancer's clock
    wait_for(lambda: rows(page)["mock-1"]["cells"]["Req/s"] != "\u2013", 3, "the second answer measured")
    cells = rows(page)["mock-1"]["cells"]
    # 100 attempts: 40 answered 2xx, 20 answered 5xx, 40 failed to connect; 60 of them errors.
    assert (cells["Req/s"], cells["Errors"]) == ("60", "60%")  # not (40 + 20 + 20) / (60 + 60) = 67%
    assert page.problems() == []


def test_a_response_cut_off_after_its_head_is_one_error_not_two(stand_in, page):
    # A 200 head, then the backend resets mid-body: a response (2xx) and a failure (reset), one attempt.
    backend = Backend(BackendSpec("127.0.0.1", 9, name="mock-1"))
    before = backend.status()
    for cut in [False] * 6 + [True] * 4:
        with contextlib.suppress(BadGateway), backend.track() as attempt:
            attempt.responded(200)
            if cut:
                raise BadGateway("connection reset mid-body", reason="reset")
    after = backend.status()
    assert (after["requests"], after["failures"]) == (10, 4)
    stand_in.answer = answer(10, [before])
    open_page(page, stand_in.url, 1)
    stand_in.answer = answer(11, [after])
    wait_for(lambda: rows(page)["mock-1"]["cells"]["Req/s"] != "\u2013", 3, "the second answer measured")
    assert rows(page)["mock-1"]["cells"]["Errors"] == "40%"  # not 4 / (10 + 4) = 29%
    assert page.problems() == []
