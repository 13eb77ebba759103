"""``python -m traffic``: the flags, which mode each goes with, their limits, and the dispatch.

Modes: a run against ``--url`` (the default), ``--replay LOG`` against
``--url``, ``--scenario FILE``, ``--demo``, and ``--compare`` (steady, with
``--scenario`` or with ``--replay``). ``APPLIES`` says which flags each mode
takes; a flag given to a mode it does not apply to is a one-line error (exit
2), never silently ignored. So that "given" can be told from "left at its
default", every flag defaults to None here and ``DEFAULTS`` fills in after
the check.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from simplelb.specs import digits

from .rig import algorithm_names

MAX_CONCURRENCY = 10_000
MAX_RATE = 100_000.0
MAX_PROCESSES = 64
MIN_SPEED, MAX_SPEED = 0.001, 1000.0  # --speed; and a replay may take a day at most (replay.MAX_SPAN_S)
MAX_LATENCY_MS = 600_000.0  # --slow-backend: the most a mock server takes (mockserv.behaviour.parse_latency)

RUN, REPLAY, SCENARIO, DEMO = "run", "replay", "scenario", "demo"
COMPARE, COMPARE_SCENARIO, COMPARE_REPLAY = "compare", "compare-scenario", "compare-replay"
MODE_NAMES = {RUN: "a run against --url", REPLAY: "--replay", SCENARIO: "--scenario", DEMO: "--demo",
              COMPARE: "--compare", COMPARE_SCENARIO: "--compare with --scenario",
              COMPARE_REPLAY: "--compare with --replay"}
SENDS = {RUN, REPLAY}  # modes that send to a URL of the user's
ALL_COMPARE = {COMPARE, COMPARE_SCENARIO, COMPARE_REPLAY}

# Which modes each flag (by its dest) goes with. Flags not listed go with every mode.
APPLIES = {
    "url": SENDS, "header": SENDS, "cacert": SENDS, "insecure": SENDS, "processes": SENDS, "metrics": SENDS,
    "path": {RUN}, "method": {RUN}, "data": {RUN}, "targets": {RUN}, "duration": {RUN, DEMO}, "rate": {RUN, DEMO},
    "n": {RUN, DEMO, COMPARE},
    "concurrency": {RUN, REPLAY, DEMO, COMPARE, COMPARE_REPLAY},
    "timeout": SENDS | {SCENARIO} | ALL_COMPARE,
    "speed": {REPLAY, COMPARE_REPLAY},
    "slow_backend": {COMPARE, COMPARE_REPLAY},
    "threshold": SENDS | {SCENARIO}, "max_error_rate": SENDS | {SCENARIO},
    "csv": SENDS | {SCENARIO, DEMO},
}
DEFAULTS = {"url": "http://127.0.0.1:8080", "timeout": 10.0, "processes": 1, "speed": 1.0, "method": None,
            "header": [], "threshold": []}


def _whole(low: int, high: int):
    def convert(text: str) -> int:
        if not digits(text) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low:,} to {high:,}, not {text!r}")
        return int(text)
    return convert


def _number(high: float = float("inf"), low: float = 0.0):
    """A number above zero and at most ``high``; with ``low``, from ``low`` to ``high``."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        if low and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:,g}, not {text!r}")
        if not 0 < value <= high:
            limit = f" and at most {high:,g}" if high != float("inf") else ""
            raise argparse.ArgumentTypeError(f"must be greater than zero{limit}, not {text!r}")
        return value
    return convert


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, not {text!r}")
    return value


def _algorithms(text: str) -> list[str]:
    known = algorithm_names()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown algorithm {', '.join(unknown) or text!r}; choose from: {', '.join(known)}")
    if len(set(names)) < len(names):  # the report has one row per algorithm
        raise argparse.ArgumentTypeError(f"each algorithm once, not {text!r}")
    return names


def _threshold(text: str):
    from .thresholds import parse_threshold

    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traffic", description="Load-test an HTTP service, gate CI on the result, and see how a load "
        "balancer spreads requests: compare its algorithms on a scenario or on your own recorded traffic.")
    what = parser.add_argument_group("what to send (a run against --url, or --replay)")
    what.add_argument("--url", help="where to send (http:// or https://; default http://127.0.0.1:8080)")
    what.add_argument("--path", help="request path (default: the URL's path, or /)")
    what.add_argument("--method", help="HTTP method (default GET, or POST with -d)")
    what.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'", help="a request header (repeatable)")
    what.add_argument("-d", "--data", metavar="DATA|@FILE", help="request body: the text, or @FILE for a file's bytes")
    what.add_argument("--targets", metavar="FILE", help="a mix of requests: lines 'METHOD URL [weight]', picked by weight")
    what.add_argument("--timeout", type=_number(3600), metavar="S", help="seconds to wait for each response (default 10)")
    what.add_argument("--cacert", metavar="FILE", help="trust the CA certificates in FILE for https:// URLs")
    what.add_argument("--insecure", action="store_true", default=None, help="https:// without checking the certificate")
    load = parser.add_argument_group("how much")
    load.add_argument("--n", type=_whole(1, 10**9), help="number of requests (default 1000)")
    load.add_argument("--duration", type=_number(86400), metavar="S", help="send for S seconds instead of --n requests")
    load.add_argument("--rate", type=_number(MAX_RATE), metavar="R",
                      help="open loop: R requests/s on schedule, answered or not (else closed loop)")
    load.add_argument("--concurrency", type=_whole(1, MAX_CONCURRENCY), metavar="C",
                      help="closed loop: requests in flight at once (default 10); open loop and --replay: the most "
                      "in flight (default 512)")
    load.add_argument("--processes", type=_whole(1, MAX_PROCESSES), metavar="N",
                      help="send from N processes, for more than one Python process can send (default 1)")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--replay", metavar="ACCESS_LOG", help="replay a simplelb JSON access log against --url")
    modes.add_argument("--speed", type=_number(MAX_SPEED, MIN_SPEED), metavar="X",
                       help="with --replay: X times as fast, from 0.001 to 1000 (default 1)")
    modes.add_argument("--scenario", metavar="FILE", help="run a TOML scenario against its own mock servers and "
                       "balancer (or a bundled one: rolling-restart, slow-backend, flapping, burst)")
    modes.add_argument("--demo", action="store_true", default=None,
                       help="start 3 mock backends and a balancer here, take one down and back, and report")
    modes.add_argument("--compare", type=_algorithms, metavar="ALG1,ALG2,...",
                       help="the same traffic against a balancer with each algorithm: steady, --scenario or --replay")
    modes.add_argument("--slow-backend", type=_number(MAX_LATENCY_MS), metavar="MS",
                       help="with --compare: one of the mock backends answers in MS milliseconds")
    out = parser.add_argument_group("reports")
    out.add_argument("--json", action="store_true", default=None, help="print the report as JSON")
    out.add_argument("--json-file", metavar="FILE", help="also write the JSON report to FILE")
    out.add_argument("--csv", metavar="FILE", help="also write one row per request to FILE")
    out.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    out.add_argument("--metrics", metavar="URL", help="scrape the balancer's Prometheus /metrics every second")
    out.add_argument("--threshold", type=_threshold, action="append", metavar="EXPR",
                     help="pass/fail, e.g. 'p99<200ms', 'errors<1%%', 'rps>500' (repeatable); exit 3 if any fails")
    out.add_argument("--max-error-rate", type=_fraction, metavar="F",
                     help="exit with status 3 when more than this fraction of requests failed")
    from .rig import version

    parser.add_argument("--version", action="version", version=f"traffic {version()}")
    # One line, not argparse's usage block: the error is what the user needs to see.
    parser.error = lambda message: parser.exit(2, f"traffic: error: {message} (see --help)\n")
    return parser


def mode_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    chosen = [flag for flag, on in (("--demo", args.demo), ("--compare", args.compare), ("--scenario", args.scenario),
                                    ("--replay", args.replay)) if on]
    if args.compare:
        if args.scenario and args.replay:
            parser.error("--compare takes --scenario or --replay, not both")
        return COMPARE_SCENARIO if args.scenario else COMPARE_REPLAY if args.replay else COMPARE
    if len(chosen) > 1:
        parser.error(f"{chosen[0]} and {chosen[1]} do not go together")
    return {"--demo": DEMO, "--scenario": SCENARIO, "--replay": REPLAY}.get(chosen[0] if chosen else "", RUN)


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, mode: str) -> None:
    """Every given flag applies to the mode; the combinations make sense; output paths can be written."""
    from .export import check_writable

    # argparse keeps its actions in a private list; it is the one place that knows each flag's spelling.
    flags = {action.dest: "/".join(action.option_strings) for action in parser._actions if action.option_strings}
    for dest, modes in APPLIES.items():
        if getattr(args, dest) is not None and mode not in modes:
            fits = ", ".join(MODE_NAMES[m] for m in MODE_NAMES if m in modes)
            parser.error(f"{flags[dest]} does not apply to {MODE_NAMES[mode]} (only to {fits})")
    if args.n is not None and args.duration is not None:
        parser.error("give --n or --duration, not both")
    for dest in ("path", "method"):
        if args.targets and getattr(args, dest) is not None:
            parser.error(f"--{dest} does not go with --targets (each line of the file gives it)")
    if args.cacert and args.insecure:
        parser.error("give --cacert or --insecure, not both")
    if mode == DEMO and args.n is not None and args.n < 3:
        parser.error("--n with --demo must be at least 3 (one request for each of its three phases)")
    # Each process needs a worker (closed loop) or room for a request in flight (open loop, given a cap).
    closed_loop = mode == RUN and not args.rate
    if (args.processes or 1) > (args.concurrency or 10) and (closed_loop or args.concurrency is not None):
        parser.error(f"--processes {args.processes} needs --concurrency of at least {args.processes}")
    written: dict[str, str] = {}
    for dest in ("html", "json_file", "csv"):
        path = getattr(args, dest)
        problem = "needs a file name" if path == "" else path and check_writable(path)
        if problem:
            parser.error(f"{flags[dest]}: {problem}")
        if path:
            same = written.setdefault(os.path.realpath(path), flags[dest])
            if same != flags[dest]:
                parser.error(f"{same} and {flags[dest]} name the same file: {path}")


def main(argv: list[str] | None = None) -> int:
    from .modes import run_mode
    from .terminal import Console, stop_on_signals

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = mode_of(args, parser)
    check_flags(args, parser, mode)
    for dest, value in DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    console = Console(notes_to_stderr=bool(args.json))
    stop = threading.Event()
    try:
        with stop_on_signals(stop, console):
            return run_mode(mode, args, argv, console, stop, parser)
    except KeyboardInterrupt:
        console.err("traffic: interrupted")  # the second Ctrl-C: no report, no traceback
        return 130
