"""The status page's discovery items, in headless Chromium, over a balancer whose backends come from DNS.

A small DNS server of our own (``tests/dns_support.py``) answers for the mock
servers; the balancer asks it with ``--dns-server``. The summary must show one
item per source, "Discovery <source>": ``up · N backends`` while lookups work,
and ``stale since <when> · N backends (<error>)`` once they fail -- the last
set kept -- and back to ``up`` when answers return, all without a reload.
The browser, tab and page fixtures and the helpers are ``test_statuspage.py``'s.
"""

from __future__ import annotations

import re

import pytest
import requests

from . import test_statuspage as statuspage
from .dns_support import DnsServer
from .test_statuspage import open_page, rows, wait_for

# test_statuspage.py's fixtures, found here by name: one Chromium for this module too, one tab, blanked per test.
browser, tab, page = statuspage.browser, statuspage.tab, statuspage.page

SRV = "_http._tcp.svc.test."
SRV_SOURCE = "dns+srv://_http._tcp.svc.test"
DASH = "\u00b7"  # the separator between an item's parts

# Looked up every 0.2 s: a failure is seen, and an answer after one, before the page's next poll (1 s).
# Probes every 0.1 s, two failures in a row to be down (as test_statuspage.py).
OPTIONS = {"dns_refresh_s": 0.2, "health_interval_s": 0.1, "fall": 2, "log_level": "error"}

# The summary as a person reads it: each item's label and text, in order.
SUMMARY_JS = """[...document.querySelectorAll('#summary > div')].map(d =>
  [d.querySelector('dt').textContent, d.querySelector('dd').textContent])"""


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


# Each discovery label as shown (CSS applied: innerText), and the part of it that is the source.
LABEL_JS = """[...document.querySelectorAll('#summary dt')].filter(dt => dt.querySelector('.verbatim'))
  .flatMap(dt => [dt.innerText, dt.querySelector('.verbatim').innerText])"""


def shows_status(page, admin: str, source: str, backends: str) -> bool:
    """The page's item for a stale ``source`` says what ``/status`` says (both count seconds: retried)."""
    status = source_status(admin, source)
    since = status["stale_since"].replace("T", " ").replace("+00:00", " UTC")  # 2026-12-01 03:21:05 UTC
    return shown(page, source) == f"stale for {status['stale_for_s']}s (since {since}) {DASH} {backends} ({status['last_error']})"


def summary(page) -> dict[str, str]:
    return dict(page.evaluate(SUMMARY_JS))


def discovery_items(page) -> list[tuple[str, str]]:
    return [(label, text) for label, text in page.evaluate(SUMMARY_JS) if label.startswith("Discovery ")]


def shown(page, source: str) -> str | None:
    return summary(page).get("Discovery " + source)


def source_status(admin: str, source: str) -> dict:
    return next(s for s in requests.get(admin + "/status", timeout=5).json()["discovery"] if s["source"] == source)


def srv_records(dns_server, mocks) -> None:
    dns_server.set(SRV, "SRV", [f"10 1 {m.port} t.svc.test." for m in mocks], ttl=1)
    dns_server.set("t.svc.test.", "A", ["127.0.0.1"], ttl=1)


def test_a_dns_source_is_shown_up_with_its_count_then_stale_with_its_error_then_up_again(
        dns_server, mock_servers, balancer, page):
    mocks = mock_servers(3)
    srv_records(dns_server, mocks[:2])
    lb = balancer(SRV_SOURCE, admin="127.0.0.1:0", dns_server=dns_server.address, **OPTIONS)
    admin = lb.admin.url
    wait_for(lambda: source_status(admin, SRV_SOURCE)["up"], 5, "the source's first answer")
    open_page(page, admin, 2)
    page.evaluate("window.notReloaded = true")
    wait_for(lambda: shown(page, SRV_SOURCE) == f"up {DASH} 2 backends", 3, "the source up with 2 backends")
    assert discovery_items(page) == [("Discovery " + SRV_SOURCE, f"up {DASH} 2 backends")]  # one item per source

    # A record more: the count follows, as do the rows.
    srv_records(dns_server, mocks)
    wait_for(lambda: shown(page, SRV_SOURCE) == f"up {DASH} 3 backends", 3, "the source up with 3 backends")
    wait_for(lambda: sorted(rows(page)) == sorted(m.address for m in mocks), 3, "3 rows")

    # The server fails: stale since the first failure, the last set kept, the error said.
    dns_server.fail(SRV, "SERVFAIL")
    wait_for(lambda: (shown(page, SRV_SOURCE) or "").startswith("stale"), 3, "the source shown stale")
    status = source_status(admin, SRV_SOURCE)
    assert not status["up"] and status["stale_since"] and "SERVFAIL" in status["last_error"], status
    wait_for(lambda: shows_status(page, admin, SRV_SOURCE, "3 backends"), 3, "the page to show what /status says")
    text = shown(page, SRV_SOURCE)
    assert "SERVFAIL" in text and re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", text)
    # How long, counting as the page refreshes; the label is the source as configured, not upper-cased.
    counted = source_status(admin, SRV_SOURCE)["stale_for_s"]
    wait_for(lambda: (shown(page, SRV_SOURCE) or "").startswith(f"stale for {counted + 1}s"), 4,
             "the time stale to count up")
    assert page.evaluate(LABEL_JS) == ["DISCOVERY " + SRV_SOURCE, SRV_SOURCE]
    assert sorted(rows(page)) == sorted(m.address for m in mocks)  # the backends stay
    assert page.evaluate("document.getElementById('live').textContent") == "live"  # the page is not stale: the source is

    # Answers again: up, with no error left behind.
    dns_server.fail(SRV, None)
    wait_for(lambda: shown(page, SRV_SOURCE) == f"up {DASH} 3 backends", 3, "the source up again")
    assert page.evaluate("window.notReloaded === true")
    assert page.problems() == []


def test_each_source_has_its_own_item_and_a_silent_server_is_shown_as_no_answer(
        dns_server, mock_servers, balancer, page):
    static, by_a, *by_srv = mock_servers(3)
    a_source = f"dns://web.test:{by_a.port}"
    dns_server.set("web.test.", "A", ["127.0.0.1"], ttl=1)
    srv_records(dns_server, by_srv)
    backends = f"{static.address},{a_source},{SRV_SOURCE}"
    lb = balancer(backends, admin="127.0.0.1:0", dns_server=dns_server.address, **OPTIONS)
    admin = lb.admin.url
    wait_for(lambda: all(s["up"] for s in requests.get(admin + "/status", timeout=5).json()["discovery"]), 5,
             "both sources' first answers")
    open_page(page, admin, 3)
    up = [("Discovery " + a_source, f"up {DASH} 1 backend"), ("Discovery " + SRV_SOURCE, f"up {DASH} 1 backend")]
    wait_for(lambda: discovery_items(page) == up, 3, f"{up}")
    assert "Discovery " + static.address not in summary(page)  # a static backend is no source

    # One name fails: only its item turns stale.
    dns_server.fail("web.test.", "SERVFAIL")
    wait_for(lambda: (shown(page, a_source) or "").startswith("stale"), 3, "the A source shown stale")
    assert shown(page, SRV_SOURCE) == f"up {DASH} 1 backend"
    dns_server.fail("web.test.", None)
    wait_for(lambda: discovery_items(page) == up, 3, "both sources up again")

    # The server goes silent: every lookup times out, both items say so, the backends stay.
    dns_server.stop()
    wait_for(lambda: all(text.startswith("stale for ") for _, text in discovery_items(page)), 6,
             "both sources shown stale")
    for source in (a_source, SRV_SOURCE):
        wait_for(lambda: shows_status(page, admin, source, "1 backend"), 3, "the page to show what /status says")  # noqa: B023
        assert "no answer within" in source_status(admin, source)["last_error"]
    assert sorted(rows(page)) == sorted([static.address, by_a.address, *(m.address for m in by_srv)])
    assert page.problems() == []
