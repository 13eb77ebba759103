"""``python -m mockserv N``: run N mock backends in this process until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .server import BehaviourError, MockServer, parse_error_rate, parse_latency
from .tls import MockTls, certificate_names


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"N must be a whole number from 1 to 100, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _behaviour(parse):
    def convert(text: str):
        try:
            return parse(text)
        except BehaviourError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mockserv",
        description="Run N mock HTTP backends in one process, on consecutive ports.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("n", type=_count, metavar="N", help="how many servers to run")
    parser.add_argument("--base-port", type=_port, default=8081,
                        help="port of the first server; the others follow (0: any free ports)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--latency", type=_behaviour(parse_latency), default=(0.0, 0.0), metavar="MS",
                        help="delay per request in ms: fixed (50) or a range (20-80)")
    parser.add_argument("--error-rate", type=_behaviour(parse_error_rate), default=0.0, metavar="P",
                        help="fraction of requests answered with 500")
    parser.add_argument("--seed", type=int, default=None, help="seed for latency and error draws")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS (and wss) with a certificate from a CA generated at start")
    parser.add_argument("--tls-ca-file", metavar="PATH", default=None,
                        help="with --tls: write the CA certificate here (default: a file in a temporary directory)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    # One line, not argparse's usage block: the error is what the user needs to see.
    parser.error = lambda message: parser.exit(2, f"mockserv: error: {message} (see --help)\n")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.base_port + args.n - 1 > 65535:
        parser.exit(2, "mockserv: error: the ports would run past 65535\n")
    if args.tls_ca_file and not args.tls:
        parser.exit(2, "mockserv: error: --tls-ca-file needs --tls\n")
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s")
    tls = None
    if args.tls:
        try:
            tls = MockTls(certificate_names(args.host), args.tls_ca_file)
        except OSError as exc:
            parser.exit(2, f"mockserv: error: cannot write the CA certificate to {args.tls_ca_file}: "
                           f"{exc.strerror or exc}\n")
    servers: list[MockServer] = []
    try:
        for i in range(args.n):
            seed = None if args.seed is None else args.seed + i
            port = args.base_port + i if args.base_port else 0
            servers.append(
                MockServer(f"mock-{i + 1}", args.host, port,
                           latency_ms=args.latency, error_rate=args.error_rate, seed=seed,
                           ssl_context=tls and tls.context)
            )
    except OSError as exc:
        for server in servers:
            server.stop()
        parser.exit(2, f"mockserv: error: cannot listen on {args.host}:{args.base_port + len(servers)}: {exc.strerror or exc}\n")

    stop_requested = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    for server in servers:
        server.start()
        print(f"{server.name} listening on {server.url}", flush=True)
    if tls:
        print(f"tls: CA certificate in {tls.ca_file}  (curl --cacert {tls.ca_file} ...)", flush=True)
    print(f"backends: {','.join(s.address for s in servers)}  (Ctrl-C stops)", flush=True)
    while not stop_requested.wait(0.5):
        pass
    for server in servers:
        server.stop()
    if tls:
        tls.close()
    print("mockserv: stopped", file=sys.stderr)
    return 0
