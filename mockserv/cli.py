"""``python -m mockserv N``: run N mock backends in this process until Ctrl-C.

Everything started here is entered into one ``ExitStack`` as it starts, so
whatever fails half-way (a port in use, an unwritable CA file, etcd out of
reach) undoes exactly what was done, in reverse, and ends in a one-line
error with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import time

from simplelb import __version__
from simplelb.etcd import EtcdClient, EtcdError, parse_etcd_url
from simplelb.service import Signals
from simplelb.specs import digits

from .behaviour import BehaviourError, parse_error_rate, parse_latency
from .control import ControlListener
from .fleet import FleetError, MockFleet
from .register import Registration, backend_entries
from .server import address_family
from .tls import MockTls, certificate_names

LOG_LEVELS = ("debug", "info", "warning", "error")

# After Ctrl-C revokes the etcd lease, a balancer takes these servers out only when its watch hears
# of it and its 50 ms settle is over; a request it sends meanwhile must find them still answering,
# and one in flight must be let finish. A second is ample on one host and short for a user to wait.
DRAIN_GRACE_S = 1.0

log = logging.getLogger(__name__)


class StartError(Exception):
    """Something could not be set up; the message is the one line the user sees."""


def _count(text: str) -> int:
    if not digits(text) or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"N must be a whole number from 1 to 100, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not digits(text) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _behaviour(parse):
    def convert(text: str):
        try:
            return parse(text)
        except BehaviourError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _etcd_url(text: str) -> tuple[str, str]:
    try:
        return parse_etcd_url(text)
    except EtcdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name_prefix(text: str) -> str:
    from simplelb.specs import NAME_RE

    if not NAME_RE.fullmatch(text + "1"):
        raise argparse.ArgumentTypeError(f"a name prefix is letters, digits or ._~:@+-, not {text!r}")
    return text


def _ttl(text: str) -> int:
    if not digits(text) or not 1 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(f"the TTL must be whole seconds from 1 to 3600, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mockserv",
        description="Run N mock HTTP backends in one process, on consecutive ports.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("n", type=_count, metavar="N", help="how many servers to run")
    parser.add_argument("--base-port", type=_port, default=8081,
                        help="port of the first server; the others follow (0: any free ports)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (IPv6 too: ::1)")
    parser.add_argument("--name-prefix", type=_name_prefix, default="mock-", metavar="TEXT",
                        help="servers are named TEXT1, TEXT2...: processes registering on one etcd prefix need their own")
    parser.add_argument("--latency", type=_behaviour(parse_latency), default=(0.0, 0.0), metavar="MS",
                        help="delay per request in ms: fixed (50) or a range (20-80)")
    parser.add_argument("--error-rate", type=_behaviour(parse_error_rate), default=0.0, metavar="P",
                        help="fraction of requests answered with 500")
    parser.add_argument("--seed", type=int, default=None, help="seed for latency and error draws")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS (and wss) with a certificate from a CA generated at start")
    parser.add_argument("--tls-ca-file", metavar="PATH", default=None,
                        help="with --tls: write the CA certificate here (default: a file in a temporary directory)")
    parser.add_argument("--control-port", type=_port, default=0,
                        help="port of the process's control endpoints (0: a free port; printed at start)")
    parser.add_argument("--control-host", default=None,
                        help="address of the control endpoints (default: 127.0.0.1, or ::1 if --host is IPv6)")
    parser.add_argument("--register", type=_etcd_url, default=None, metavar="etcd://HOST:PORT/PREFIX",
                        help="put each server in etcd as PREFIX/backends/NAME, under a lease kept alive while running")
    parser.add_argument("--register-ttl", type=_ttl, default=10, metavar="S",
                        help="seconds the etcd keys outlive this process if it is killed")
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                        help="debug, info, warning or error (any case)")
    parser.add_argument("--version", action="version", version=f"mockserv {__version__}")
    # One line, not argparse's usage block: the error is what the user needs to see.
    parser.error = lambda message: parser.exit(2, f"mockserv: error: {message} (see --help)\n")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.base_port + args.n - 1 > 65535:
        raise StartError("the ports would run past 65535")
    if args.tls_ca_file and not args.tls:
        raise StartError("--tls-ca-file needs --tls")
    try:
        family = address_family(args.host)
    except OSError as exc:
        raise StartError(f"cannot listen on {args.host}: {exc.strerror or exc}") from None
    if args.control_host is None:
        args.control_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"


def start(args: argparse.Namespace, stack: contextlib.ExitStack, say) -> MockFleet:
    """Start everything ``args`` asks for, telling ``say`` where; each piece is undone by ``stack``."""
    tls = None
    if args.tls:
        try:
            tls = MockTls(certificate_names(args.host), args.tls_ca_file)
        except OSError as exc:
            raise StartError(f"cannot write the CA certificate to {args.tls_ca_file}: {exc.strerror or exc}") from None
        stack.callback(tls.close)
    try:
        fleet = MockFleet(args.n, args.host, args.base_port, latency_ms=args.latency, error_rate=args.error_rate,
                          seed=args.seed, ssl_context=tls and tls.context, prefix=args.name_prefix)
    except FleetError as exc:
        raise StartError(str(exc)) from None
    stack.callback(fleet.stop)
    try:
        control = ControlListener(fleet, args.control_host, args.control_port)
    except OSError as exc:
        raise StartError(f"cannot listen on {args.control_host}:{args.control_port} for control: "
                         f"{exc.strerror or exc}") from None
    stack.callback(control.stop)
    fleet.start()
    control.start()
    for server in fleet:
        say(f"{server.name} listening on {server.url}")
    say(f"control: {control.url}/servers  (POST /servers/NAME/start|crash|health|latency|error-rate)")
    if tls:
        say(f"tls: CA certificate in {tls.ca_file}  (curl --cacert {tls.ca_file} ...)")
    if args.register:
        say(_register(args, fleet, stack))
    return fleet


def _register(args: argparse.Namespace, fleet: MockFleet, stack: contextlib.ExitStack) -> str:
    endpoint, prefix = args.register
    client = EtcdClient(endpoint)
    stack.callback(client.close)
    registration = Registration(client, backend_entries(fleet, prefix), args.register_ttl)
    try:
        registration.start()
    except EtcdError as exc:
        raise StartError(f"cannot register in etcd: {exc}") from None
    stack.callback(_leave, registration)
    return (f"registered: {prefix}/backends/{{{','.join(s.name for s in fleet)}}} in etcd at {endpoint}"
            f" (lease {registration.lease_id:x}, ttl {args.register_ttl}s)")


def _leave(registration: Registration) -> None:
    """Leave etcd, then serve ``DRAIN_GRACE_S`` more while balancers drain (the stack closes the ports next)."""
    if registration.stop():
        log.info("left etcd; serving %gs more while balancers drain", DRAIN_GRACE_S)
        time.sleep(DRAIN_GRACE_S)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    # Handlers that take no lock (simplelb's Signals says why: an Event.set here could hang a second Ctrl-C).
    signals = Signals()
    signals.install({signal.SIGINT: "stop", signal.SIGTERM: "stop"}, ignored=())
    with contextlib.ExitStack() as stack:
        lines: list[str] = []  # printed once everything is up, so a failed start prints only its error
        try:
            _check(args)
            fleet = start(args, stack, lines.append)
        except StartError as exc:
            stack.close()
            parser.exit(2, f"mockserv: error: {exc}\n")
        lines.append(f"backends: {','.join(fleet.addresses)}  (Ctrl-C stops)")
        print("\n".join(lines), flush=True)
        while not signals.stop.is_set():
            signals.wait()
    print("mockserv: stopped", file=sys.stderr)
    return 0
