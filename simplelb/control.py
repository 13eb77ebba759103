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

import logging
import os
import threading
import time
from collections.abc import Callable

from .cluster import Cluster
from .config import ClusterConfig, Config, read_token
from .discovery import Discovery
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


def load_for_reload(source, running: Config, reloads: ReloadCounter) -> tuple[Config, Certificates | None]:
    """The new configuration from ``source`` and its certificates, loaded; or ``ConfigError`` (logged, counted).

    Certificates are read again at every reload, whoever named them; a
    balancer that started without TLS (or with) needs a restart to change that.
    """
    try:
        config = source.load()
        certificates = None
        if running.listener.tls and config.listener.tls:
            certificates = load_certificates(config.listener.tls)
    except ConfigError as exc:
        reloads.failure += 1
        reloads.last_error = exc.messages
        log.error("reload failed, keeping the running configuration: %s", "; ".join(exc.messages))
        raise
    except Exception as exc:  # a bug in a check: still a failed reload, counted and said, not a crash
        reloads.failure += 1
        reloads.last_error = [f"internal error while loading the configuration: {exc!r} (see the log)"]
        log.exception("reload failed unexpectedly, keeping the running configuration")
        raise ConfigError(reloads.last_error[0]) from exc
    for flag in running.changed_listener_settings(config):
        log.warning("reload: %s changed; it needs a restart and is not applied", flag)
    if bool(running.listener.tls) != bool(config.listener.tls):
        log.warning("reload: TLS was turned %s; that needs a restart and is not applied",
                    "on" if config.listener.tls else "off")
    return config, certificates


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
            if operator:
                after = self.discovery.edited(before, after)
            generation = self.cluster.update(after).generation
            if then is not None:
                then()
            return generation

    def reload(self) -> int:
        with self._changing:
            config, certificates = load_for_reload(self.source, self.running, self.reloads)
            generation = self.cluster.update(self.discovery.configure(config.cluster)).generation
            if certificates is not None and self.tls is not None:
                self.tls.install(certificates)
            self.admin_token = admin_token(config)
            self.reloads.success += 1
            self.reloads.last_error = None
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
