"""Changing a running balancer: one place that reloads, applies admin edits, and reports.

``LocalControl`` drives the cluster of this process; ``fleet.FleetControl``
drives the clusters of ``--workers`` processes. Both offer what the admin
listener and SIGHUP need:

* ``change(edit)`` -- ``edit`` maps the running ``ClusterConfig`` to a new
  one (raising an ``HTTPError`` when the request is wrong); the result is
  applied whole. Changes are serialised, so two admin calls never edit the
  same base. Discovery applies what its sources find through it too
  (``operator=False``); an operator's change of a discovered backend is
  kept over what its source says until the next reload (see ``discovery``).
* ``reload()`` -- read the configuration source again (file and flags). If
  anything is wrong nothing changes: the error is logged, counted and
  raised. Listener settings that changed are logged as needing a restart.
  A reload replaces changes made through the admin API, as HAProxy's does.
* ``status()`` / ``backend(name)`` / ``ready()`` -- what ``/status``,
  ``/backends`` and ``/readyz`` show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .cluster import Cluster
from .config import ClusterConfig, Config, read_token
from .discovery import Discovery, Prepared
from .errors import ConfigError
from .stats import BOUNDS_S
from .tls import Certificates, load_certificates

log = logging.getLogger(__name__)


def find_backend(backends: list[dict], name: str) -> dict | None:
    """The status of the backend called ``name`` (not one on its way out under that name)."""
    return next((b for b in backends if b["name"] == name and b["state"] != "removing"), None)


class ReloadCounter:
    """Reload outcomes, and the last error (for ``/status`` and the metrics)."""

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_error: list[str] | None = None

    def as_dict(self) -> dict:
        return {"success": self.success, "failure": self.failure, "last_error": self.last_error}

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """One reload, from reading the file to applying the result: a success if the block ends.

        Whatever fails in it, the loading or the applying (a fleet refusing the merged result), is a
        failed reload: counted, kept as the last error, logged and raised as a ``ConfigError``.
        """
        try:
            yield
        except ConfigError as exc:
            self._failed(exc.messages)
            log.error("reload failed, keeping the running configuration: %s", "; ".join(exc.messages))
            raise
        except Exception as exc:  # a bug in a check: still a failed reload, counted and said, not a crash
            self._failed([f"internal error while reloading: {exc!r} (see the log)"])
            log.exception("reload failed unexpectedly, keeping the running configuration")
            raise ConfigError(self.last_error[0]) from exc
        self.success += 1
        self.last_error = None

    def _failed(self, messages: list[str]) -> None:
        self.failure += 1
        self.last_error = messages


class Reloaded(NamedTuple):
    """A configuration read again, with what else a reload takes from it, all read before anything is applied."""

    config: Config
    certificates: Certificates | None  # None: no TLS front end to give them to
    admin_token: str | None


def load_for_reload(source, running: Config) -> Reloaded:
    """The new configuration from ``source``, its certificates and admin token, loaded; or ``ConfigError``.

    Certificates are read again at every reload, whoever named them; a
    balancer that started without TLS (or with) needs a restart to change that.
    Call it inside ``ReloadCounter.counted()``, which counts and logs a failure.
    """
    config = source.load()
    certificates = None
    if running.listener.tls and config.listener.tls:
        certificates = load_certificates(config.listener.tls)
    token = admin_token(config)
    for flag in running.changed_listener_settings(config):
        log.warning("reload: %s changed; it needs a restart and is not applied", flag)
    if bool(running.listener.tls) != bool(config.listener.tls):
        log.warning("reload: TLS was turned %s; that needs a restart and is not applied",
                    "on" if config.listener.tls else "off")
    return Reloaded(config, certificates, token)


def admin_token(config: Config) -> str | None:
    """The admin token ``config`` names (its file was checked when the configuration was loaded)."""
    path = config.listener.admin_token_file
    return read_token(path) if path else None


class LocalControl:
    """Reload, admin edits and status for the cluster in this process."""

    def __init__(self, cluster: Cluster, source, running: Config, snapshot: Callable[[], dict] | None = None,
                 tls=None, *, discover: bool = True):
        self.cluster = cluster
        self.tls = tls  # the TLS front end, whose certificates a reload reads again
        self._snapshot = snapshot or (lambda: {"backends": cluster.status()})
        self.source = source
        self.running = running
        self.admin_token = admin_token(running)  # in force: a reload reads the file again
        self.started = time.monotonic()
        self.shutting_down = False  # set at SIGTERM: /readyz turns 503 before anything stops
        self.reloads = ReloadCounter()
        self._changing = threading.Lock()  # one change at a time: read, edit, apply
        self.discovery = Discovery(self.change, enabled=discover)  # a worker's parent discovers for it
        self.discovery.configure(cluster.view.config)

    def start(self) -> None:
        """Start discovery (waiting briefly for its first answers)."""
        self.discovery.start()

    def stop(self) -> None:
        self.discovery.stop()

    def config(self) -> ClusterConfig:
        return self.cluster.view.config

    def change(self, edit: Callable[[ClusterConfig], ClusterConfig], *, operator: bool = True,
               then: Callable[[], None] | None = None) -> int:
        """Apply ``edit``; ``then`` runs once it is in force, before any later change (an answer's read)."""
        with self._changing:
            before = self.cluster.view.config
            after = edit(before)
            prepared = self.discovery.prepare_edit(before, after) if operator else Prepared(after)
            generation = self.cluster.update(prepared.merged).generation
            prepared.commit()  # only now: a change that failed leaves discovery as it was
            if then is not None:
                then()
            return generation

    def reload(self) -> int:
        with self._changing, self.reloads.counted():
            reloaded = load_for_reload(self.source, self.running)
            prepared = self.discovery.prepare(reloaded.config.cluster)
            generation = self.cluster.update(prepared.merged).generation
            prepared.commit()  # sources started and stopped only once the cluster runs what they lead to
            if reloaded.certificates is not None and self.tls is not None:
                self.tls.install(reloaded.certificates)
            self.admin_token = reloaded.admin_token
        log.info("reloaded: generation %d", generation)
        return generation

    def ready(self) -> bool:
        return not self.shutting_down and self.cluster.available()

    def backend(self, name: str) -> dict | None:
        return find_backend(self.cluster.status(), name)

    def status(self) -> dict:
        from . import __version__

        view = self.cluster.view
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "algorithm": view.config.algorithm,
            "generation": view.generation,
            "applied": True,
            "ready": self.ready(),
            "workers": [{"pid": os.getpid(), "generation": view.generation}],
            "reloads": self.reloads.as_dict(),
            "histogram_bounds_s": BOUNDS_S,
            "discovery": self.discovery.status(),
            **self._snapshot(),
        }
