"""traffic as a load tester: what it sends (exactly), https, mixes, stale connections, --processes, files."""

import csv
import json
from itertools import pairwise

import pytest
import trustme

from traffic.histogram import LogHistogram
from traffic.outcome import Result
from traffic.request import Mix, TargetError, parse_header, parse_target, parse_targets_file, smooth_order
from traffic.runner import Shard, run_load, run_open_loop

from .conftest import read_then_reset, run_cli
from .traffic_support import closes_when_idle, recorder  # noqa: F401 - a fixture

TRAFFIC = ("-m", "traffic")


def test_headers_body_and_method_reach_the_server_exactly(recorder, tmp_path):  # noqa: F811
    server = recorder()
    body = tmp_path / "body.bin"
    body.write_bytes(b"\x00\x01binary\xff")
    result = run_cli(*TRAFFIC, "--url", server.url + "/items?x=1", "--n", "7", "--concurrency", "2",
                     "-H", "X-Token: abc", "-H", "User-Agent: mine/1", "-d", f"@{body}", "--method", "put", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 7
    assert len(server.received) == 7
    for got in server.received:
        assert (got["method"], got["target"], got["body"]) == ("PUT", "/items?x=1", body.read_bytes())
        assert got["headers"]["X-Token"] == "abc" and got["headers"]["User-Agent"] == "mine/1"


def test_data_without_method_is_a_post(recorder):  # noqa: F811
    server = recorder()
    assert run_cli(*TRAFFIC, "--url", server.url, "--n", "3", "-d", "name=x").returncode == 0
    assert [(r["method"], r["body"]) for r in server.received] == [("POST", b"name=x")] * 3


def test_timeout_is_a_transport_failure(recorder):  # noqa: F811
    server = recorder(delay_s=1.0)
    result = run_cli(*TRAFFIC, "--url", server.url, "--n", "2", "--concurrency", "2", "--timeout", "0.2", "--json")
    report = json.loads(result.stdout)
    assert report["failures"]["transport_by_kind"] == {"timeout": 2}
    assert report["failures"]["failed"] == 2 and report["failures"]["http_5xx"] == 0


def test_https_with_cacert_insecure_and_a_certificate_it_cannot_check(recorder, tmp_path):  # noqa: F811
    ca = trustme.CA()
    context = ssl_server_context(ca)
    server = recorder(tls=context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trusted = run_cli(*TRAFFIC, "--url", server.url, "--n", "5", "--cacert", str(ca_file), "--json")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["status_codes"] == {"200": 5}
    insecure = run_cli(*TRAFFIC, "--url", server.url, "--n", "5", "--insecure", "--json")
    assert json.loads(insecure.stdout)["status_codes"] == {"200": 5}
    refused = run_cli(*TRAFFIC, "--url", server.url, "--n", "5")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "certificate verify failed" in refused.stderr and "--cacert" in refused.stderr
    assert len(server.received) == 10  # the refused run sent nothing


def ssl_server_context(ca):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def test_smooth_order_spreads_weights_exactly():
    order = smooth_order([3, 1])
    assert sorted(order) == [0, 0, 0, 1] and order != [0, 0, 0, 1][::-1]
    mix = Mix([parse_target("http://h:1/a"), parse_target("http://h:1/b")], [5, 2])
    picks = [mix.pick(i).path for i in range(70)]
    assert picks.count("/a") == 50 and picks.count("/b") == 20


def test_targets_file_mix_is_exact_through_two_processes(recorder, tmp_path):  # noqa: F811
    one, two = recorder("one"), recorder("two")
    targets = tmp_path / "targets.txt"
    targets.write_text(f"# a mix\nGET {one.url}/read 3\n\nPOST {two.url}/write 1  # rarely\n")
    result = run_cli(*TRAFFIC, "--targets", str(targets), "--n", "400", "--concurrency", "4", "--processes", "2",
                     "-d", "x", "--json", timeout_s=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {name: (row["requests"], row["share"]) for name, row in report["backends"].items()} == {
        "one": (300, 0.75), "two": (100, 0.25)}
    assert [(r["method"], r["target"]) for r in one.received] == [("GET", "/read")] * 300
    assert [(r["method"], r["target"], r["body"]) for r in two.received] == [("POST", "/write", b"x")] * 100


@pytest.mark.parametrize("loop", ["closed", "open"])
def test_each_process_sends_the_mix_in_order_and_together_exactly_one_run(recorder, loop):  # noqa: F811
    one, two = recorder("one"), recorder("two")
    mix = Mix([parse_target(one.url + "/a"), parse_target(two.url + "/b")])  # weights 1 and 1: a cycle of 2
    shards, sent = 2, []
    for k in range(shards):
        if loop == "closed":
            results, _ = run_load(mix, 12, concurrency=shards, shard=Shard(k, shards))
        else:
            results, _ = run_open_loop(mix, 500, n=12, shard=Shard(k, shards))
        paths = [r.target.path for r in sorted(results, key=lambda r: r.started_s)]
        # Each process alternates, as one process would. (Picking by the request number, each of two
        # processes sent to one target only.)
        assert all(a != b for a, b in pairwise(paths)), (k, paths)
        sent += paths
    assert (sent.count("/a"), sent.count("/b")) == (6, 6)
    assert len(one.received) == len(two.received) == 6


@pytest.mark.parametrize("text, message", [
    ("GET", "expected 'METHOD URL [weight]'"),
    ("GET http://h:1/ 0", "the weight must be a whole number from 1"),
    ("G(T http://h:1/", "not an HTTP method"),
    ("GET ftp://h/", "a URL must look like"),
])
def test_targets_file_mistakes_name_the_line(tmp_path, text, message):
    path = tmp_path / "t.txt"
    path.write_text("GET http://h:1/\n" + text + "\n")
    with pytest.raises(TargetError) as info:
        parse_targets_file(str(path))
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_headers_parse_like_curl():
    assert parse_header("X-A:  b c ") == ("X-A", "b c")
    for bad in ("nocolon", "Bad Name: x", ": x"):
        with pytest.raises(TargetError):
            parse_header(bad)


def test_stale_keep_alive_connection_is_resent_once_and_counted_as_a_reconnect(scripted):
    backend = scripted(closes_when_idle(0.03))
    target = parse_target(f"http://127.0.0.1:{backend.port}/")
    # 10 requests a second, one worker: each finds its kept-alive connection closed 70 ms before.
    results, _ = run_open_loop(target, 10, n=12)
    assert [r.error for r in results] == [None] * 12
    assert len(backend.received) == 12  # each sent once to the server: no duplicates
    assert sum(r.reconnected for r in results) >= 10
    assert not results[0].reconnected  # a first request on a fresh connection is never "stale"


def test_cli_reports_reconnects_not_failures(scripted):
    backend = scripted(closes_when_idle(0.03))
    result = run_cli(*TRAFFIC, "--url", f"http://127.0.0.1:{backend.port}", "--rate", "10", "--n", "8", "--json")
    report = json.loads(result.stdout)
    assert report["failures"]["failed"] == 0 and report["reconnects"] >= 6
    assert len(backend.received) == 8


def test_a_fresh_connection_closed_without_an_answer_is_a_failure_not_resent(scripted):
    backend = scripted(read_then_reset)
    results, _ = run_load(parse_target(f"http://127.0.0.1:{backend.port}/"), 5, concurrency=1)
    assert {r.error for r in results} == {"connection closed"}
    assert len(backend.received) == 5 and not any(r.reconnected for r in results)


def test_shards_send_exactly_the_whole_run():
    assert [Shard(k, 3).share(10) for k in range(3)] == [4, 3, 3]
    tickets = sorted(Shard(k, 3).ticket(i) for k in range(3) for i in range(Shard(k, 3).share(10)))
    assert tickets == list(range(10))


def test_processes_merge_histograms_exactly(recorder, tmp_path):  # noqa: F811
    server = recorder()
    rows = tmp_path / "rows.csv"
    result = run_cli(*TRAFFIC, "--url", server.url, "--n", "600", "--concurrency", "4", "--processes", "2",
                     "--csv", str(rows), "--json", timeout_s=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 600 and len(server.received) == 600
    # The same results in one process, into one histogram: the same percentiles, to the bucket. (The
    # CSV gives each latency to the microsecond: that rounding can move a value near a bucket's edge
    # into the next, 1% away; the merge itself is exact, as test_merged_histogram_equals... shows.)
    with open(rows) as f:
        latencies = [float(row["latency_ms"]) / 1000 for row in csv.DictReader(f)]
    assert len(latencies) == 600
    one = LogHistogram()
    for value in latencies:
        one.record(value)
    for p in (50, 90, 99):
        assert report["latency_ms"][f"p{p}"] == pytest.approx(one.percentile_ms(p), rel=0.011)
    assert report["latency_ms"]["max"] == pytest.approx(max(latencies) * 1000, abs=0.002)


def test_merged_histogram_equals_recording_everything_in_one():
    values = [Result(0, (i % 97 + 1) / 1e4, 200, "a", None) for i in range(1000)]
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i, r in enumerate(values):
        (a if i % 2 else b).record(r.latency_s)
        both.record(r.latency_s)
    a.merge(b)
    assert a._counts == both._counts and (a.count, a.min_us, a.max_us) == (both.count, both.min_us, both.max_us)


def test_csv_has_a_row_per_request(recorder, tmp_path):  # noqa: F811
    server = recorder()
    rows, report = tmp_path / "r.csv", tmp_path / "r.json"
    result = run_cli(*TRAFFIC, "--url", server.url + "/x", "--n", "9", "--csv", str(rows), "--json-file", str(report))
    assert result.returncode == 0, result.stderr
    with open(rows) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9
    assert {(r["status"], r["backend"], r["method"], r["url"], r["failure"]) for r in table} == {
        ("200", "rec", "GET", server.url + "/x", "")}
    assert all(float(r["start_s"]) >= float(r["scheduled_s"]) for r in table)
    assert json.loads(report.read_text())["requests"] == 9


def test_an_unreadable_cacert_is_one_line(tmp_path):
    result = run_cli(*TRAFFIC, "--url", "https://127.0.0.1:1", "--cacert", str(tmp_path / "none.pem"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--cacert" in result.stderr
