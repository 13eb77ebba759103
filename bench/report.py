"""Printing ``bench/run.py``'s results, and checking them against the targets of issues 18 and 12."""

from __future__ import annotations

import math

ORDER = ("direct", "simplelb", "simplelb-w2", "before", "before-w2", "haproxy", "nginx", "floor", "simplelb-admin")


def _row(name: str, label: str, m: dict) -> str:
    cpu = f"{m['cpu_us_per_request']:.0f}" if m.get("cpu_us_per_request") is not None else "-"
    rss = f"{m['peak_rss_mib']:.0f}" if m.get("peak_rss_mib") is not None else "-"
    return (f"{name:<16}{label:>9}{m['rps']:>9.0f}{m['p50_ms']:>8.2f}{m['p99_ms']:>9.2f}"
            f"{m['socket_errors']:>9}{m['non_2xx']:>7}{cpu:>11}{rss:>8}")


def print_report(results: dict, levels: list[int]) -> None:
    table = results.get("table", {})
    print(f"\n{results['cores']} cores, Python {results['python']}, backends: {results['backends']}, "
          f"load: {results['load']}, median of {results['rounds']} rounds x {results['duration_s']:g}s, "
          f"load average {results['load_average_before']:.2f} before, {results['load_average_after']:.2f} after")
    print(f"{'target':<16}{'conc':>9}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>9}{'sock err':>9}{'non2xx':>7}"
          f"{'cpu us/req':>11}{'rss MiB':>8}")
    for concurrency in levels:
        for name in ORDER:
            if f"{name}@{concurrency}" in table:
                print(_row(name, str(concurrency), table[f"{name}@{concurrency}"]))
        ratios = _ratios(table, concurrency)
        if ratios:
            print("    " + ", ".join(ratios))
    tls = [key for key in table if "tls" in key]
    if tls:
        print("\nHTTPS (wrk, concurrency 10): keep-alive, and a new TLS connection for every request")
        for key in sorted(tls):
            name, mode = key.split("@")
            print(_row(name, mode, table[key]))
    for name, row in (results.get("syscalls") or {}).items():
        if row:
            print(f"\nsystem calls per request, {name} ({row['requests']} keep-alive requests, strace -c -f): "
                  f"{row['per_request']}  {row['top']}", end="")
    print()
    for title, key in (("a new client's first response while 1,500 idle keep-alive connections are open (50 tries)",
                        "idle_first_response"),
                       ("a new connection's first response while 200 connections are busy (40 tries)",
                        "busy_new_connection")):
        if results.get(key):
            print(f"\n{title}:")
            for name, wait in results[key].items():
                extra = f"  (open after: {wait['open_after']})" if "open_after" in wait else ""
                print(f"  {name:<14} p50 {wait['p50_ms']:.1f} ms  p99 {wait['p99_ms']:.1f} ms  "
                      f"max {wait['max_ms']:.1f} ms{extra}")
    if results.get("bodies"):
        print("\nlarge bodies (1 worker, one connection, curl):")
        for row in results["bodies"]:
            print(f"  {row.get('target', 'simplelb'):<10}{row['body']:>8} {row['direction']:<8} {row['mb_per_s']:>6} MB/s  "
                  f"RSS growth {row['rss_growth_mib']:.1f} MiB")
    print("\ntargets:")
    for line in check_targets(results):
        print("  " + line)


def _ratios(table: dict, concurrency: int) -> list[str]:
    def rps(name: str) -> float | None:
        row = table.get(f"{name}@{concurrency}")
        return row["rps"] if row else None

    out = []
    lb, direct, haproxy = rps("simplelb"), rps("direct"), rps("haproxy")
    if lb and direct:
        added = table[f"simplelb@{concurrency}"]["p50_ms"] - table[f"direct@{concurrency}"]["p50_ms"]
        out.append(f"simplelb/direct {lb / direct:.2f}x, added p50 {added:.2f} ms")
    if lb and haproxy:
        out.append(f"simplelb/haproxy {lb / haproxy:.2f}x")
        if rps("simplelb-w2"):
            out.append(f"w2/haproxy {rps('simplelb-w2') / haproxy:.2f}x")
    if lb and rps("before"):
        out.append(f"simplelb/before {lb / rps('before'):.2f}x")
    floor, ours = table.get(f"floor@{concurrency}"), table.get(f"simplelb@{concurrency}")
    if floor and ours and floor.get("cpu_us_per_request") and ours.get("cpu_us_per_request"):
        out.append(f"CPU/request simplelb/floor {ours['cpu_us_per_request'] / floor['cpu_us_per_request']:.1f}x")
    if lb and rps("simplelb-admin"):
        out.append(f"with --admin and scraping {rps('simplelb-admin') / lb - 1:+.1%}")
    return out


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def check_targets(results: dict) -> list[str]:
    """One line per target: what was measured, and whether it meets the target."""
    t = results.get("table", {})
    lines = []

    def get(key: str, field: str) -> float | None:
        return t[key][field] if key in t and t[key].get(field) is not None else None

    cpus = [get(f"simplelb@{c}", "cpu_us_per_request") for c in (10, 50)]
    if None not in cpus:
        lines.append(f"CPU per keep-alive request <= 150 us (1 worker, conc 10/50): {cpus[0]:.0f}/{cpus[1]:.0f} us: "
                     f"{_verdict(max(cpus) <= 150)}")
    syscalls = results.get("syscalls") or {}
    if one := syscalls.get("simplelb@1"):
        lines.append(f"system calls per request <= 6 (conc 1): {one['per_request']}: {_verdict(one['per_request'] <= 6)}")
    if ten := syscalls.get("simplelb@10"):
        # Not held to 6: at 10 most calls are the interpreter lock changing hands between threads, as
        # many as the bare thread-per-connection proxy makes (bench/README.md, round five).
        floor = syscalls.get("floor@10")
        lines.append(f"system calls per request at conc 10: {ten['per_request']}, futex {ten['top'].get('futex', 0)}"
                     + (f"; the bare proxy (floor): {floor['per_request']}, futex {floor['top'].get('futex', 0)}"
                        if floor else ""))
    for name, floor in (("simplelb", 6000), ("simplelb-w2", 12000)):
        rps = [get(f"{name}@{c}", "rps") for c in (10, 50)]
        if None not in rps:
            lines.append(f"{name} >= {floor:,} req/s at conc 10 and 50: {rps[0]:,.0f} and {rps[1]:,.0f}: "
                         f"{_verdict(min(rps) >= floor)}")
    ratios = [(get(f"simplelb-w2@{c}", "rps") or math.nan) / (get(f"haproxy@{c}", "rps") or math.nan) for c in (10, 50)]
    if not any(math.isnan(r) for r in ratios):
        lines.append(f"--workers 2 >= 0.25 of HAProxy at conc 10 and 50: {ratios[0]:.2f} and {ratios[1]:.2f}: "
                     f"{_verdict(min(ratios) >= 0.25)}")
    if "simplelb-w2@200" in t:
        row = t["simplelb-w2@200"]
        lines.append(f"--workers 2 at conc 200: 0 errors, p99 <= 50 ms: {row['socket_errors']} errors, "
                     f"p99 {row['p99_ms']:.1f} ms: {_verdict(row['socket_errors'] == 0 and row['p99_ms'] <= 50)}")
    for name, wait in (results.get("idle_first_response") or {}).items():
        if name.startswith("simplelb"):
            lines.append(f"{name}: first response with 1,500 idle connections open, p99 <= 20 ms: "
                         f"{wait['p99_ms']:.1f} ms: {_verdict(wait['p99_ms'] <= 20)}")
    if "simplelb@1" in t and "direct@1" in t:
        added = t["simplelb@1"]["p50_ms"] - t["direct@1"]["p50_ms"]
        lines.append(f"added p50 at conc 1 < 0.2 ms: {added:.2f} ms: {_verdict(added < 0.2)}")
    ours = [r for r in results.get("bodies") or () if r.get("target", "simplelb") == "simplelb"]
    if ours:
        slowest = min(r["mb_per_s"] for r in ours)
        growth = max(r["rss_growth_mib"] for r in ours)
        lines.append(f"large bodies > 800 MB/s, flat memory: slowest {slowest} MB/s, RSS growth {growth} MiB: "
                     f"{_verdict(slowest > 800 and growth <= 64)}")
    costs = [(c, get(f"simplelb-admin@{c}", "rps"), get(f"simplelb@{c}", "rps")) for c in (10, 50)]
    costs = [(c, 1 - a / b) for c, a, b in costs if a and b]
    if costs:
        lines.append("counting (--admin, /metrics scraped every second) costs <= 5% of throughput: "
                     + ", ".join(f"conc {c} {cost:+.1%}" for c, cost in costs)
                     + f": {_verdict(max(cost for _, cost in costs) <= 0.05)}")
    return lines
