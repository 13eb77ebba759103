"""``python -m simplelb``: flags and an optional config file -> ``Config`` -> a running balancer.

Every flag comes from ``options.OPTIONS``; ``--config FILE`` reads the same
settings from TOML, and flags given on the command line override it. Bad
input ends in a one-line error and exit status 2; ``--check`` prints every
problem found (or one summary line) and starts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import Config, defaults
from .configfile import ConfigSource
from .errors import ConfigError, ListenError
from .fleet import Supervisor, WorkerFailed
from .options import OPTIONS
from .specs import describe


def shown_default(option, value) -> str | None:
    """A default as ``--help`` and the README show it; None where the help text explains it."""
    if option.field in ("backends", "health_timeout_s"):
        return None
    if value is None or value is False:
        return "off"
    if isinstance(value, tuple):
        return "none"
    if option.metavar == "SIZE" and value:
        for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % size == 0:
                return f"{value // size}{unit}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    values = defaults()
    parser = argparse.ArgumentParser(
        prog="simplelb",
        description="An HTTP/1.1 load balancer: forwards each request to one of several backends.",
    )
    parser.add_argument("--config", metavar="FILE", help="read settings from this TOML file (flags override it)")
    parser.add_argument("--check", action="store_true", help="check the configuration, print a summary and exit")
    parser.add_argument("--version", action="version", version=f"simplelb {__version__}")
    for option in OPTIONS:
        shown = shown_default(option, values[option.field])
        default = "" if shown is None else f" (default: {shown})"
        if option.switch:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=True, default=None,
                                help=option.help)
            continue
        parser.add_argument(option.flag, dest=option.field, default=None, metavar=option.metavar,
                            help=option.help + default)
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


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'s' * (number != 1)}"


def summary(config: Config) -> str:
    cluster = config.cluster
    backups = sum(spec.backup for spec in cluster.backends)
    parts = [_count(len(cluster.backends) - backups, "backend")] if len(cluster.backends) > backups else []
    if backups:
        parts.append(_count(backups, "backup"))
    if cluster.source_urls:
        parts.append(_count(len(cluster.source_urls), "discovery source"))
    return f"{' and '.join(parts)} ({describe(cluster.backends, cluster.source_urls)}), algorithm {cluster.algorithm}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    path, check = args.pop("config"), args.pop("check")
    source = ConfigSource(path, args)
    try:
        config = source.load()
    except ConfigError as exc:
        if check:
            parser.exit(2, "".join(f"simplelb: error: {message}\n" for message in exc.messages))
        more = len(exc.messages) - 1
        parser.exit(2, f"simplelb: error: {exc}" + (f" (and {more} more: see --check)" if more else "") + "\n")
    if check:
        print(f"simplelb: configuration OK: {summary(config)}")
        return 0
    setup_logging(config.listener.log_level)
    listener = config.listener
    try:
        if listener.workers > 1:

            return Supervisor(config, source).run()
        from .service import serve

        return serve(config, source)
    except ListenError as exc:
        parser.exit(2, f"simplelb: error: {exc.where}: {exc.strerror}\n")
    except WorkerFailed as exc:
        parser.exit(2, f"simplelb: error: {exc}\n")
