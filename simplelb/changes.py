"""Changes an operator makes through the admin API, as pure edits of a ``ClusterConfig``.

Each function takes the running cluster configuration and a request body
and returns the whole new configuration, validated, or raises an
``HTTPError`` with the status the admin API answers (400 with the reason,
404 for an unknown backend, 409 for a name or address already taken).
Nothing is applied here: the caller hands the result to ``update()``, so a
change is checked whole before anything moves.
"""

from __future__ import annotations

from typing import Any

from .config import ClusterConfig
from .errors import BadRequest, ConfigError, Conflict, NotFound
from .specs import ADMIN_STATES, BackendSpec, backend_from_table, check_weight


def _bad(message: str) -> BadRequest:
    return BadRequest(message, close=False)


def _require(config: ClusterConfig, name: str):
    spec = config.spec(name)
    if spec is None:
        raise NotFound(f"no backend named {name!r}")
    return spec


def new_backend(body: Any) -> BackendSpec:
    """The backend a ``POST /backends`` body describes."""
    try:
        return backend_from_table(body, "backend")
    except ConfigError as exc:
        raise _bad(str(exc)) from None


def add_backend(config: ClusterConfig, spec: BackendSpec) -> ClusterConfig:
    if config.spec(spec.name) is not None:
        raise Conflict(f"a backend named {spec.name!r} exists already")
    taken = next((s for s in config.backends if s.address == spec.address), None)
    if taken is not None:
        raise Conflict(f"backend {taken.name!r} has the address {spec.address} already")
    return _validated(config, (*config.backends, spec))


def patch_backend(config: ClusterConfig, name: str, body: Any) -> ClusterConfig:
    spec = _require(config, name)
    if not isinstance(body, dict) or not body:
        raise _bad('send a JSON object with "weight" and/or "state"')
    unknown = sorted(set(body) - {"weight", "state"})
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r} (known: weight, state)")
    changes = {}
    if "weight" in body:
        try:
            changes["weight"] = check_weight(body["weight"], f"backend {name}")
        except ConfigError as exc:
            raise _bad(str(exc)) from None
    if "state" in body:
        if body["state"] not in ADMIN_STATES:
            raise _bad(f"state must be one of {', '.join(ADMIN_STATES)}, not {body['state']!r}")
        changes["state"] = body["state"]
    new = spec.but(**changes)
    return _validated(config, tuple(new if s.name == name else s for s in config.backends))


def remove_backend(config: ClusterConfig, name: str) -> ClusterConfig:
    _require(config, name)
    remaining = tuple(s for s in config.backends if s.name != name)
    if not any(not s.backup for s in remaining):
        raise Conflict(f"{name!r} is the last primary backend; add another first, or put it in maintenance")
    return _validated(config, remaining)


def _validated(config: ClusterConfig, specs) -> ClusterConfig:
    try:
        return config.with_backends(specs)
    except ConfigError as exc:
        raise _bad(str(exc)) from None
