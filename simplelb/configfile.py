"""``--config FILE``: the TOML file, merged with the command line into one ``Config``.

Every flag is a top-level key spelled as the flag without its dashes, with
the same values (``algorithm = "least-connections"``, ``health-interval =
0.5``, ``max-body = "10M"``). Backends are either ``backends = "a,b"`` or
``[[backend]]`` tables (``address``, ``weight``, ``backup``, ``name``,
``state``), not both. Flags given on the command line override the file.

A ``ConfigSource`` remembers the file and the flags, so a reload reads the
file again and lays the same flags over it: ``load()`` is the whole
configuration as it stands now, or a ``ConfigError`` listing every problem,
each naming the file, the line where it can be found, and the key.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .config import Config, build
from .errors import ConfigError
from .files import read_regular
from .options import OPTION_BY_FIELD, OPTIONS
from .specs import Entry, entry_from_table

_OPTION_BY_KEY = {option.key: option for option in OPTIONS}


def _line_of(text: str, key: str) -> int | None:
    """The line where ``key`` is assigned (or the table named), for messages; None if not found."""
    pattern = re.compile(rf"^[ \t]*(\[\[[ \t]*{re.escape(key)}[ \t]*\]\]|\"?{re.escape(key)}\"?[ \t]*=)", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``; a ``ValueError`` of one line saying why not.

    Besides ``TOMLDecodeError`` (a ``ValueError``), tomllib lets out the bare ``ValueError`` of
    ``int()``, which refuses an integer of more than 4300 digits ("Exceeds the limit ...").
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except ValueError as exc:
        reason = str(exc).split(";")[0]  # (without its advice to call sys.set_int_max_str_digits())
        long_number = re.search(rf"[0-9_]{{{sys.get_int_max_str_digits() + 1},}}", text)
        where = f" (at line {text.count(chr(10), 0, long_number.start()) + 1})" if long_number else ""
        raise ValueError(f"{reason}{where}") from None


def _read(path: str) -> tuple[dict, str]:
    try:
        raw = read_regular(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return parse_toml(text), text
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _backend_tables(path: str, text: str, tables: Any, errors: list[str]) -> tuple[Entry, ...]:
    if not isinstance(tables, list):
        errors.append(f"{path}: 'backend' must be [[backend]] tables")
        return ()
    specs = []
    for number, table in enumerate(tables, 1):
        try:
            specs.append(entry_from_table(table, f"{path}: [[backend]] #{number}"))
        except ConfigError as exc:
            errors.append(str(exc))
    return tuple(specs)


def _tls_tables(path: str, tables: Any, errors: list[str]) -> tuple[tuple[str, str], ...]:
    """``[[tls]]`` tables: ``cert`` and ``key`` files, relative to the config file's folder."""
    if not isinstance(tables, list):
        errors.append(f"{path}: 'tls' must be [[tls]] tables")
        return ()
    base = os.path.dirname(os.path.abspath(path))
    pairs = []
    for number, table in enumerate(tables, 1):
        where = f"{path}: [[tls]] #{number}"
        if not isinstance(table, dict) or set(table) != {"cert", "key"} or not all(
                isinstance(v, str) for v in table.values()):
            errors.append(f"{where}: needs exactly 'cert' and 'key', each a file name")
            continue
        pairs.append((os.path.join(base, table["cert"]), os.path.join(base, table["key"])))
    return tuple(pairs)


def read_file(path: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The file's settings by field name, where each was found (``file:line: key``), and what is wrong."""
    data, text = _read(path)
    settings: dict[str, Any] = {}
    places: dict[str, str] = {}
    errors: list[str] = []
    for key, value in data.items():
        line = _line_of(text, key)
        place = f"{path}:{line}: {key}" if line else f"{path}: {key}"
        if key == "backend":
            settings["backends"] = _backend_tables(path, text, value, errors)
            places["backends"] = place
            continue
        if key == "tls":
            settings["tls"] = _tls_tables(path, value, errors)
            places["tls"] = place
            continue
        option = _OPTION_BY_KEY.get(key)
        if option is None:
            close = difflib.get_close_matches(key, [*_OPTION_BY_KEY, "backend", "tls"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{place}: unknown key{hint}")
            continue
        if isinstance(value, (dict, list)):
            errors.append(f"{place}: must be a single value, not a {'table' if isinstance(value, dict) else 'list'}")
            continue
        if option.field == "backends" and "backend" in data:
            errors.append(f"{place}: give [[backend]] tables or 'backends', not both")
            continue
        settings[option.field] = value
        places[option.field] = place
    return settings, places, errors


@dataclass
class ConfigSource:
    """Where the configuration comes from: an optional file, and flags that override it."""

    path: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # field name -> value; None: not given

    def load(self) -> Config:
        settings: dict[str, Any] = {}
        places: dict[str, str] = {}
        errors: list[str] = []
        if self.path is not None:
            settings, places, errors = read_file(self.path)
        given = {name: value for name, value in self.flags.items() if value is not None}
        settings.update(given)

        def where(name: str) -> str:
            if name in given or name not in places:
                option = OPTION_BY_FIELD.get(name)
                return option.flag if option else name
            return places[name]

        return build(settings, where, errors)


class FixedSource:
    """A configuration given as a value (the Python API): a reload gives it back unchanged."""

    path = None

    def __init__(self, config: Config):
        self._config = config

    def load(self) -> Config:
        return self._config
