"""Registration of a process's mock servers in etcd, under one lease that a thread keeps alive.

``python -m mockserv 3 --register etcd://HOST:PORT/PREFIX`` puts one key per
server, ``PREFIX/backends/NAME``, holding ``{"address": "host:port",
"weight": 1}`` (``"https://host:port"`` with ``--tls``, as ``--backends``
would name it), the way issue 15's discovery reads them. All keys share one
lease of ``--register-ttl`` seconds:

* a named daemon thread renews the lease every third of its TTL, so one
  missed renewal does not lose it;
* a clean exit revokes the lease, so the keys go at once and every balancer
  drains those backends before the ports close;
* a process killed outright stops renewing, and the keys go when the lease
  expires: that is how a dead backend leaves.

While etcd cannot be reached the thread logs and keeps trying; if the lease
expired meanwhile, it takes a new one and puts the keys again. A server that
is crashed through the control endpoints stays registered (the process,
which holds the lease, is alive): health checks are what find it.
"""

from __future__ import annotations

import json
import logging
import threading

from simplelb.etcd import EtcdClient, EtcdError

from .fleet import MockFleet

log = logging.getLogger(__name__)


def backend_entries(fleet: MockFleet, prefix: str) -> dict[str, str]:
    """The key and JSON value of each server of ``fleet`` under ``prefix``."""
    entries = {}
    for server in fleet:
        entries[f"{prefix}/backends/{server.name}"] = json.dumps({"address": server.backend, "weight": 1})
    return entries


class Registration:
    """``entries`` (key -> value) in etcd under one lease of ``ttl_s``. ``start()``, then ``stop()``."""

    def __init__(self, client: EtcdClient, entries: dict[str, str], ttl_s: int = 10):
        self._client = client
        self.entries = dict(entries)
        self.ttl_s = ttl_s
        self.lease_id = 0  # written by start() and the keepalive thread, which stop() joins before reading
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Registration:
        """Grant the lease and put the keys; ``EtcdError`` if etcd cannot be reached now."""
        self._register()
        self._thread = threading.Thread(target=self._keep_alive, name="mockserv etcd keepalive", daemon=True)
        self._thread.start()
        return self

    def _register(self) -> None:
        lease = self._client.grant(self.ttl_s)
        self.lease_id = lease.id
        for key, value in self.entries.items():
            self._client.put(key, value, lease=lease.id)
        log.info("registered %d backends in etcd at %s (lease %x, ttl %ds)",
                 len(self.entries), self._client.endpoint, lease.id, lease.ttl_s)

    def _keep_alive(self) -> None:
        interval_s = max(0.5, self.ttl_s / 3)
        while not self._stopping.wait(interval_s):
            try:
                if self._client.keepalive(self.lease_id) <= 0:
                    log.warning("etcd lease %x has expired; registering again", self.lease_id)
                    self._register()
            except EtcdError as exc:
                log.warning("cannot renew the etcd registration (will retry in %.1fs): %s", interval_s, exc)

    def stop(self) -> None:
        """Stop renewing and revoke the lease, so the keys go now. Never raises: etcd may be gone."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lease_id:
            try:
                self._client.revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("cannot revoke the etcd registration (the keys expire in %ds): %s", self.ttl_s, exc)
            self.lease_id = 0
