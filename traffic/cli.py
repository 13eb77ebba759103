"""``python -m traffic``: send traffic through a balancer and report where it went."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from .report import format_report, summarize
from .runner import Result, TargetError, check_reachable, parse_target, run_load


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
    parser.add_argument("--n", type=_positive_int, default=1000, help="number of requests")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the balancer's address")
    parser.add_argument("--concurrency", type=_positive_int, default=10, help="requests in flight at once")
    parser.add_argument("--method", type=_method, default="GET", help="HTTP method")
    parser.add_argument("--path", default=None, help="request path (default: the URL's path, or /)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds to wait for each response")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
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

    def __init__(self, total: int, stream=sys.stderr):
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
            filled = round(30 * done / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}  errors {errors}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.slow_backend is not None and not args.compare:
        parser.error("--slow-backend goes with --compare")
    if args.compare:
        from .compare import format_comparison, run_compare

        say = (lambda text: print(text, file=sys.stderr)) if args.json else print
        comparison = run_compare(args.compare, args.n, args.concurrency, slow_backend_ms=args.slow_backend, say=say)
        print(json.dumps(comparison, indent=2) if args.json else "\n" + format_comparison(comparison))
        return 0
    if args.demo:
        from .demo import run_demo  # imports the balancer and mock servers only when needed

        # The balancer's health changes are part of the story the demo tells.
        logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
        say = (lambda text: print(text, file=sys.stderr)) if args.json else print
        try:
            result = run_demo(args.n, args.concurrency, say=say)
        except TimeoutError as exc:
            parser.exit(1, f"traffic: error: demo failed: {exc}\n")
        except OSError as exc:
            parser.exit(1, f"traffic: error: demo could not start: {exc}\n")
        if args.json:
            print(json.dumps(result, indent=2))
        return 0
    try:
        target = parse_target(args.url, args.path)
        check_reachable(target, args.timeout)
    except TargetError as exc:
        parser.exit(1, f"traffic: error: {exc}\n")
    progress = Progress(args.n)
    results, elapsed = run_load(
        target, args.n, concurrency=args.concurrency, method=args.method, timeout_s=args.timeout,
        on_result=progress.update,
    )
    progress.finish()
    summary = summarize(results, elapsed, url=target.url, concurrency=args.concurrency)
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    return 0
