"""What each mode of ``python -m traffic`` does, from checked flags to the exit status.

Each mode produces a ``Run`` (what was sent and what came back) and hands it
to ``finish``, which makes every report of it the same way: text or JSON on
stdout, and the ``--json-file``, ``--csv`` and ``--html`` files, with the
thresholds checked last (exit status 3 when one failed). ``--compare`` makes
its own table of runs.

Input mistakes (a targets file, access log or scenario that cannot be used)
are one-line errors with exit status 2; a target or ``--metrics`` URL that
cannot be reached is one with exit status 1, before anything is sent.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import cli
from .export import write_csv, write_json
from .metrics import Scraper, check, format_samples_summary, summarize_samples
from .outcome import Result
from .replay import AccessLog, ReplayError, check_span, load_access_log, schedule
from .report import format_report, latency_histogram, summarize
from .request import Mix, TargetError, parse_header, parse_target, parse_targets_file, read_body
from .rig import version
from .runner import MAX_IN_FLIGHT, Job
from .scenario import ScenarioError, find_scenario, load_scenario, run_scenario
from .sender import Tls, check_reachable
from .thresholds import FAILED_EXIT_STATUS, evaluate, format_results, max_error_rate
from .timeline import attach_balancer, build_timeline, format_balancer, format_timeline


class Unreachable(Exception):
    """The target or the metrics URL does not answer; the message is one line."""


@dataclass
class Run:
    title: str
    results: list[Result]
    elapsed_s: float
    url: str
    backends: list[str] | None = None  # None: those that answered, in name order
    concurrency: int = 0
    rate: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    balancer: list[dict] = field(default_factory=list)  # --metrics samples
    extra: dict = field(default_factory=dict)  # more for the JSON report (the demo's phases)


def run_mode(mode: str, args, argv: list[str], console, stop, parser) -> int:
    meta = {"command": shlex.join(["traffic", *argv]), "version": version(),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        if mode in cli.ALL_COMPARE:
            return compare(mode, args, console, stop, meta)
        if mode in cli.SENDS:
            run = send(mode, args, console, stop)
        elif mode == cli.SCENARIO:
            run = scenario(args, console, stop)
        else:
            run = demo(args, console, stop)
    except (TargetError, ReplayError, ScenarioError) as exc:
        parser.exit(2, f"traffic: error: {exc}\n")
    except (Unreachable, TimeoutError, OSError) as exc:
        parser.exit(1, f"traffic: error: {exc}\n")
    meta["target"] = run.url
    return finish(args, run, console, meta)


def _job(mode: str, args) -> tuple[Job, str, AccessLog | None]:
    """The run to send, where it goes (for the report), and with --replay the access log it came from."""
    tls = Tls(args.cacert, bool(args.insecure))
    try:
        if args.cacert:
            tls.context()  # a CA file that cannot be read is a one-line error now, not a failure per request
    except (OSError, ValueError) as exc:
        raise TargetError(f"--cacert {args.cacert}: {getattr(exc, 'strerror', None) or exc}") from None
    headers = [parse_header(text) for text in args.header]
    if mode == cli.REPLAY:
        log = load_access_log(args.replay)
        base = parse_target(args.url, headers=headers)
        return Job(schedule=schedule(log.entries, base, args.speed), concurrency=args.concurrency or MAX_IN_FLIGHT,
                   timeout_s=args.timeout, tls=tls), base.base_url, log
    body = read_body(args.data) if args.data is not None else None
    if args.targets:
        mix = parse_targets_file(args.targets, headers=headers, body=body)
        where = f"the targets in {args.targets}"
    else:
        method = args.method if args.method is not None else ("POST" if body is not None else "GET")
        mix = Mix([parse_target(args.url, args.path, method=method, headers=headers, body=body)])
        where = mix.first.url
    n = args.n if args.n is not None or args.duration is not None else 1000
    concurrency = args.concurrency or (MAX_IN_FLIGHT if args.rate else 10)
    return Job(mix, n, args.duration, args.rate, concurrency, args.timeout, tls), where, None


def send(mode: str, args, console, stop) -> Run:
    from .processes import run_in_processes
    from .terminal import Progress

    job, where, log = _job(mode, args)
    if log is not None and log.note:
        console.say(log.note)
    targets = job.mix.targets if job.mix else [job.schedule[0][1]] if job.schedule else []
    context = job.tls.context() if any(t.scheme == "https" for t in targets) else None
    for origin in {t.origin: t for t in targets}.values():
        problem = check_reachable(origin, args.timeout, context)
        if problem:
            raise Unreachable(problem)
    if args.metrics and (problem := check(args.metrics)):
        raise Unreachable(problem)
    progress = Progress(job.planned)
    scrapers = []

    def started(start_at: float, counters=None) -> None:
        if args.metrics:
            scrapers.append(Scraper(args.metrics, start_at).start())
        if counters is not None:
            progress.watch(counters)

    try:
        if args.processes > 1:
            results, elapsed = run_in_processes(job, args.processes, stop, on_start=started)
        else:
            start_at = time.perf_counter()
            started(start_at)
            results, elapsed = job.run(stop=stop, on_result=progress.update, start_at=start_at)
    finally:
        progress.finish()
        samples = scrapers[0].stop() if scrapers else []
    title = f"replay of {args.replay} to {where}" if mode == cli.REPLAY else f"traffic to {where}"
    closed = not job.rate and job.schedule is None
    return Run(title, results, elapsed, where, concurrency=job.concurrency if closed else 0, rate=job.rate,
               balancer=samples, extra={"replay_skipped": log.skipped} if log is not None else {})


def scenario(args, console, stop) -> Run:
    loaded = load_scenario(find_scenario(args.scenario))
    logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
    console.say(f"scenario {loaded.name}: {loaded.description}")
    run = run_scenario(loaded, say=console.say, timeout_s=args.timeout, stop=stop)
    return Run(f"scenario {loaded.name}", run["results"], run["elapsed_s"], run["url"], run["backends"],
               events=run["events"])


def demo(args, console, stop) -> Run:
    from .demo import run_demo  # imports the balancer and mock servers only when needed

    # The balancer's health changes are part of the story the demo tells.
    logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
    concurrency = args.concurrency or 10
    try:
        result = run_demo(args.n or 900, concurrency, say=console.say, stop=stop, duration_s=args.duration,
                          rate=args.rate)
    except TimeoutError as exc:
        raise TimeoutError(f"demo failed: {exc}") from None
    except OSError as exc:
        raise OSError(f"demo could not start: {exc}") from None
    console.say("\nOverall")
    return Run("simplelb demo", result["results"], result["elapsed_s"], result["url"], result["backends"],
               concurrency=concurrency, rate=args.rate, events=result["events"], extra={"phases": result["phases"]})


def compare(mode: str, args, console, stop, meta: dict) -> int:
    from .compare import Source, format_comparison, run_compare

    logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
    log = load_access_log(args.replay) if mode == cli.COMPARE_REPLAY else None
    if log is not None:
        check_span(log.entries, args.speed)  # before any balancer is started
        if log.note:
            console.say(log.note)
    source = Source(
        n=args.n or 1000, concurrency=args.concurrency or (MAX_IN_FLIGHT if mode == cli.COMPARE_REPLAY else 10),
        slow_backend_ms=args.slow_backend, timeout_s=args.timeout, speed=args.speed,
        scenario=load_scenario(find_scenario(args.scenario)) if mode == cli.COMPARE_SCENARIO else None,
        replay=log.entries if log is not None else None,
    )
    comparison = run_compare(args.compare, source, say=console.say, stop=stop)
    if args.json_file:
        write_json(args.json_file, comparison)
    if args.html:
        from .html import write_comparison

        write_comparison(args.html, comparison, {**meta, "target": "mock backends behind a balancer per algorithm"})
    console.out(json.dumps(comparison, indent=2) if args.json else "\n" + format_comparison(comparison))
    if args.html:
        console.err(f"HTML report: {args.html}")
    return 0


def finish(args, run: Run, console, meta: dict) -> int:
    """Every report of one run, made the same way; the exit status (3 when a threshold failed)."""
    summary = summarize(run.results, run.elapsed_s, url=run.url, concurrency=run.concurrency, rate=run.rate)
    backends = run.backends if run.backends is not None else sorted(summary["backends"])
    timeline = build_timeline(run.results, span_s=run.elapsed_s)
    attach_balancer(timeline, run.balancer)
    thresholds = list(args.threshold) + ([max_error_rate(args.max_error_rate)] if args.max_error_rate is not None else [])
    checks = evaluate(thresholds, summary, latency_histogram(run.results))
    report = {**summary, **run.extra, "timeline": timeline, "events": run.events, "thresholds": checks}
    if run.balancer:
        report["balancer"] = {"samples": run.balancer, "summary": summarize_samples(run.balancer)}
    meta = {**meta, "duration_s": round(run.elapsed_s, 3)}
    if args.csv:
        write_csv(args.csv, run.results)
    if args.json_file:
        write_json(args.json_file, report)
    if args.html:
        from .html import write_report

        write_report(args.html, run.title, meta, report, backends, latency_histogram(run.results))
    if args.json:
        console.out(json.dumps(report, indent=2))
    else:
        console.out(_text(report, backends, run))
    for path in (args.csv, args.json_file, args.html):
        if path:
            console.err(f"wrote {path}")
    failed = [row for row in checks if not row["passed"]]
    for row in failed:
        console.err(f"traffic: threshold failed: {row['threshold']} (measured {row['shown']})")
    return FAILED_EXIT_STATUS if failed else 0


def _text(report: dict, backends: list[str], run: Run) -> str:
    parts = []
    if len(report["timeline"]) > 1:
        width = report["timeline"][0]["width_s"]
        parts += [f"\nTimeline (every {width:g}s; fail = transport + 5xx; shares of the answered requests)",
                  format_timeline(report["timeline"], backends, run.events), ""]
    if run.balancer:
        names = sorted({name for sample in run.balancer for name in sample["backends"]})
        parts += ["What the balancer saw (--metrics, per scrape)", format_balancer(run.balancer, names), "",
                  *format_samples_summary(report["balancer"]["summary"]), ""]
    parts.append(format_report(report))
    if report["thresholds"]:
        parts += ["Thresholds", *format_results(report["thresholds"])]
    return "\n".join(parts)
