"""The HTML report, rendered in headless Chromium at 1280 and 400 px: measured from inside, and screenshotted.

Screenshots are kept in ``$TMPDIR/traffic-screenshots/`` (the paths are
printed; ``pytest -s`` shows them) for a person to look at.
"""

import re

import pytest

from .conftest import run_cli
from .traffic_support import page_facts, png_size, recorder, screenshot  # noqa: F401 - a fixture

SCENARIO = """
description = "mock-2 goes down and comes back"
servers = 3
latency_ms = "1-3"
health_interval = 0.1
[[phase]]
duration = 2
rate = 150
[[event]]
at = 0.5
server = "mock-2"
action = "down"
[[event]]
at = 1.1
server = "mock-2"
action = "up"
[[event]]
at = 1.2
server = "mock-3"
action = "latency"
value = "8"
"""


@pytest.fixture(scope="module")
def scenario_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html-report")
    scenario = folder / "down-and-up.toml"
    scenario.write_text(SCENARIO)
    page = folder / "report.html"
    result = run_cli("-m", "traffic", "--scenario", str(scenario), "--html", str(page), "--threshold", "p99<1s",
                     "--threshold", "errors<0.1%", timeout_s=60)
    assert result.returncode in (0, 3), result.stderr
    return page


def test_the_page_says_what_was_run_and_holds_no_raw_json(scenario_page):
    page = scenario_page.read_text()
    for fact in ("<dt>command</dt>", "traffic --scenario", "<dt>target</dt>", "<dt>started</dt>", "<dt>duration</dt>",
                 "<dt>version</dt>"):
        assert fact in page
    assert "<script" not in page and '{"' not in page and "&quot;" not in page.split("<body>")[1].split("<svg")[0]
    assert re.findall(r"https?://[^\s<\"]+", page) == re.findall(r"http://127\.0\.0\.1:\d+/", page)  # nothing fetched
    # A table per backend, each with the swatch of the colour its share is drawn in.
    for index, name in enumerate(["mock-1", "mock-2", "mock-3"]):
        colour = ["#1f77b4", "#ff7f0e", "#2ca02c"][index]
        assert f'<span class="swatch" style="background:{colour}"></span>{name}</td>' in page
        assert f'fill="{colour}"' in page
    assert page.count("<figure>") == 4 and "Thresholds" in page and "p99&lt;1s" in page
    assert page.count('class="event"') >= 3 * 3 * 2  # three events on three time charts, wide and narrow


@pytest.mark.parametrize("width", [1280, 400])
def test_the_report_reads_at_1280_and_400_px(scenario_page, width):
    facts = page_facts(scenario_page, width)
    assert facts["scrollWidth"] <= facts["innerWidth"], facts  # nothing sticks out sideways
    assert facts["overlaps"] == [], facts["overlaps"]  # no label drawn over another
    shown = "wide" if width > 640 else "narrow"
    assert facts[shown] == 4 and facts["narrow" if shown == "wide" else "wide"] == 0
    shot = screenshot(scenario_page, scenario_page.with_name(f"report-{width}.png"), width)
    assert png_size(shot)[0] == width


def test_a_short_run_draws_no_empty_chart(recorder, tmp_path):  # noqa: F811
    server = recorder()
    page = tmp_path / "short.html"
    result = run_cli("-m", "traffic", "--url", server.url, "--rate", "200", "--duration", "0.4", "--html", str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert "every 0.02 s" in text  # 20 buckets for 0.4 s
    (latency,) = [figure for figure in text.split("<figure>") if "Latency over time" in figure]
    assert latency.count("<circle") >= 2 * 2 * 10  # p50 and p99, wide and narrow, a point per bucket
    assert "Requests per second" in text and text.count("<rect") > 20


def test_the_comparison_page_has_a_chart_per_measure_and_a_line_per_algorithm(tmp_path):
    page = tmp_path / "compare.html"
    result = run_cli("-m", "traffic", "--compare", "round-robin,least-connections,peak-ewma", "--slow-backend", "20",
                     "--n", "150", "--concurrency", "3", "--html", str(page), timeout_s=120)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    figures = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert [title.split(" (")[0] for title in figures] == [
        "p50 latency", "p99 latency", "Requests per second", "Failed requests per second",
        "Share of mock-3, the slow backend"]
    for figure in text.split("<figure>")[1:]:
        assert figure.count("<li>") == 3  # a legend entry, and a line, per algorithm
    assert '{"' not in text
    for width in (1280, 400):
        facts = page_facts(page, width)
        assert facts["scrollWidth"] <= facts["innerWidth"] and facts["overlaps"] == [], facts
        screenshot(page, tmp_path / f"compare-{width}.png", width)
