"""``python -m traffic``: send traffic through a balancer and report where it went."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from .report import format_report, summarize
from .runner import Result, TargetError, check_reachable, parse_target, run_load, run_open_loop


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than zero, not {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, not {text!r}")
    return value


def _method(text: str) -> str:
    if not text.isalpha() or not text.isascii():
        raise argparse.ArgumentTypeError(f"not an HTTP method: {text!r}")
    return text.upper()


def _algorithms(text: str) -> list[str]:
    from simplelb.algorithms import ALGORITHMS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown algorithm {', '.join(unknown) or text!r}; choose from: {', '.join(ALGORITHMS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traffic",
        description="Send HTTP traffic through a load balancer and report how it was distributed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=_positive_int, default=None, help="number of requests (default 1000)")
    parser.add_argument("--duration", type=_positive_float, default=None, metavar="S",
                        help="send for S seconds instead of a number of requests")
    parser.add_argument("--rate", type=_positive_float, default=None, metavar="R",
                        help="open loop: R requests per second on schedule, answered or not (else closed loop)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the balancer's address")
    parser.add_argument("--concurrency", type=_positive_int, default=10, help="requests in flight at once")
    parser.add_argument("--method", type=_method, default="GET", help="HTTP method")
    parser.add_argument("--path", default=None, help="request path (default: the URL's path, or /)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds to wait for each response")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    parser.add_argument("--scenario", metavar="FILE",
                        help="run a TOML scenario (or a bundled one: rolling-restart, slow-backend, flapping, burst)")
    parser.add_argument("--max-error-rate", type=_fraction, default=None, metavar="F",
                        help="exit with status 3 when more than this fraction of requests failed")
    parser.add_argument("--demo", action="store_true",
                        help="start 3 mock backends and a balancer here, take one down and back, and report")
    parser.add_argument("--compare", type=_algorithms, metavar="ALG1,ALG2,...",
                        help="run the same traffic against a balancer with each algorithm and compare them")
    parser.add_argument("--slow-backend", type=_positive_float, metavar="MS",
                        help="with --compare: make one of the mock backends answer in MS milliseconds")
    # One line, not argparse's usage block: the error is what the user needs to see.
    parser.error = lambda message: parser.exit(2, f"traffic: error: {message} (see --help)\n")
    return parser


class Progress:
    """A progress line on a terminal (stderr), redrawn in place; silent when not a TTY."""

    def __init__(self, total: int | None, stream=sys.stderr):
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0
        self.errors = 0
        self._lock = threading.Lock()  # guards done and errors

    def update(self, result: Result) -> None:
        with self._lock:
            self.done += 1
            self.errors += result.error is not None or (result.status or 0) >= 500
            done, errors = self.done, self.errors
        if self.enabled and (done % 25 == 0 or done == self.total):
            if self.total:
                filled = min(30, round(30 * done / self.total))
                self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}  errors {errors}")
            else:
                self.stream.write(f"\rsent {done}  errors {errors}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def _error_rate(summary: dict) -> float:
    failed = sum(summary["errors"].values()) + sum(
        count for code, count in summary["status_codes"].items() if code.startswith("5")
    )
    return failed / summary["requests"] if summary["requests"] else 0.0


def _write_html(path: str, title: str, summary: dict, results, timeline, backends, events) -> None:
    from .html import write_html
    from .report import latency_histogram

    write_html(path, title, summary, timeline, backends, events, latency_histogram(results))


def _finish(args, summary: dict, results, events, backends, title: str, say) -> int:
    """Timeline, HTML, the report itself, and the exit status that gates CI."""
    from .timeline import build_timeline, format_timeline

    timeline = build_timeline(results)
    if args.html:
        _write_html(args.html, title, summary, results, timeline, backends, events)
    if args.json:
        print(json.dumps({**summary, "timeline": timeline, "events": events}, indent=2))
    else:
        if len(timeline) > 1:
            say("\nTimeline (per second; backend shares of the answered requests)")
            say(format_timeline(timeline, backends, events))
            say("")
        print(format_report(summary))
    if args.html:
        print(f"HTML report: {args.html}", file=sys.stderr)
    if args.max_error_rate is not None and _error_rate(summary) > args.max_error_rate:
        print(f"traffic: error rate {_error_rate(summary):.2%} is above --max-error-rate {args.max_error_rate:.2%}",
              file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.slow_backend is not None and not args.compare:
        parser.error("--slow-backend goes with --compare")
    if args.n is not None and args.duration is not None:
        parser.error("give --n or --duration, not both")
    modes = [flag for flag, on in (("--demo", args.demo), ("--compare", args.compare), ("--scenario", args.scenario)) if on]
    if len(modes) > 1:
        parser.error(f"{modes[0]} and {modes[1]} do not go together")
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if args.compare:
        from .compare import format_comparison, run_compare

        comparison = run_compare(args.compare, args.n or 1000, args.concurrency, slow_backend_ms=args.slow_backend, say=say)
        print(json.dumps(comparison, indent=2) if args.json else "\n" + format_comparison(comparison))
        return 0
    if args.demo:
        from .demo import run_demo  # imports the balancer and mock servers only when needed

        # The balancer's health changes are part of the story the demo tells.
        logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
        try:
            result = run_demo(args.n or 900, args.concurrency, say=say)
        except TimeoutError as exc:
            parser.exit(1, f"traffic: error: demo failed: {exc}\n")
        except OSError as exc:
            parser.exit(1, f"traffic: error: demo could not start: {exc}\n")
        if args.json:
            print(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=2))
        if args.html:
            from .timeline import build_timeline

            _write_html(args.html, "simplelb demo", result["overall"], result["results"],
                        build_timeline(result["results"]), result["backends"], result["events"])
            print(f"HTML report: {args.html}", file=sys.stderr)
        return 0
    if args.scenario:
        from .scenario import ScenarioError, bundled, load_scenario, run_scenario

        path = args.scenario
        if not path.endswith(".toml") and bundled(path).exists():
            path = str(bundled(path))
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            parser.exit(2, f"traffic: error: {exc}\n")
        logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
        say(f"scenario {scenario.name}: {scenario.description}")
        run = run_scenario(scenario, say=say, timeout_s=args.timeout)
        summary = summarize(run["results"], run["elapsed_s"], url=run["url"], concurrency=0)
        return _finish(args, summary, run["results"], run["events"], run["backends"], f"scenario {scenario.name}", say)
    try:
        target = parse_target(args.url, args.path)
        check_reachable(target, args.timeout)
    except TargetError as exc:
        parser.exit(1, f"traffic: error: {exc}\n")
    n = args.n if args.n is not None or args.duration is not None else 1000
    progress = Progress(n if n else (int(args.rate * args.duration) if args.rate else None))
    if args.rate:
        results, elapsed = run_open_loop(
            target, args.rate, n=n, duration_s=args.duration, method=args.method, timeout_s=args.timeout,
            on_result=progress.update,
        )
    else:
        results, elapsed = run_load(
            target, n, concurrency=args.concurrency, method=args.method, timeout_s=args.timeout,
            duration_s=args.duration, on_result=progress.update,
        )
    progress.finish()
    summary = summarize(results, elapsed, url=target.url, concurrency=0 if args.rate else args.concurrency,
                        rate=args.rate)
    backends = sorted(summary["backends"])
    return _finish(args, summary, results, [], backends, f"traffic to {target.url}", say)
