"""``python -m simplelb``: parse flags into a ``Config``, run the balancer until a signal.

Every flag comes from ``config.OPTIONS``. Bad input ends in a one-line error
and exit status 2; SIGINT and SIGTERM drain the server and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import fields

from .config import OPTIONS, Config, ConfigError

log = logging.getLogger("simplelb")

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    defaults = {f.name: f.default for f in fields(Config)}
    parser = argparse.ArgumentParser(
        prog="simplelb",
        description="An HTTP/1.1 load balancer: forwards each request to one of several backends.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for option in OPTIONS:
        if option.switch:
            parser.add_argument(option.flag, dest=option.field, action="store_true", help=option.help)
            continue
        default = None if option.field == "backends" else defaults[option.field]
        parser.add_argument(
            option.flag,
            dest=option.field,
            required=option.field == "backends",
            default=default,
            metavar=option.metavar,
            help=option.help,
        )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="how much to log")
    # One line, not argparse's usage block: the error is what the user needs to see.
    parser.error = lambda message: parser.exit(2, f"simplelb: error: {message} (see --help)\n")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # urllib3 warns when its pool discards a surplus connection; under a burst that is expected.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = Config.from_flags(vars(args))
    except ConfigError as exc:
        parser.exit(2, f"simplelb: error: {exc}\n")
    setup_logging(args.log_level)

    if config.workers > 1:
        from .workers import Supervisor

        try:
            return Supervisor(config).run()
        except OSError as exc:
            parser.exit(2, f"simplelb: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}\n")
    try:
        return serve(config, banner=True)
    except OSError as exc:
        parser.exit(2, f"simplelb: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}\n")


def describe_backends(config: Config) -> str:
    return ", ".join(f"{b.address} (weight {b.weight})" if b.weight != 1 else b.address for b in config.backends)


def serve(config: Config, *, banner: bool, on_ready=None) -> int:
    """Run one balancer in this process until SIGINT or SIGTERM, then drain it.

    ``on_ready`` is called once the balancer is listening and serving.
    """
    from .server import LoadBalancer  # after logging is set up

    balancer = LoadBalancer(config)
    stop_requested = threading.Event()

    def request_stop(signum, frame) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    balancer.start()
    if on_ready is not None:
        on_ready()
    if banner:
        # The banner goes to stdout whatever the log level: scripts read the port from it.
        print(f"simplelb: listening on {balancer.url}, {config.algorithm} over {describe_backends(config)}", flush=True)
    # Event.wait with a timeout keeps the main thread responsive to signals.
    while not stop_requested.wait(0.5):
        pass
    log.info("shutting down: draining in-flight requests (up to %gs)", config.grace_period_s)
    balancer.stop()
    log.info("stopped")
    return 0
