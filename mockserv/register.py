"""Registration of a process's mock servers in etcd, under one lease that a thread keeps alive.

``python -m mockserv 3 --register etcd://HOST:PORT/PREFIX`` puts one key per
server, ``PREFIX/backends/NAME``, holding ``{"address": "host:port",
"weight": 1}`` (``"https://host:port"`` with ``--tls``, as ``--backends``
would name it), the way issue 15's discovery reads them. All keys share one
lease of ``--register-ttl`` seconds:

* a named daemon thread renews the lease every third of its TTL, so one
  missed renewal does not lose it;
* a clean exit revokes the lease, so the keys go at once; ``stop()`` says
  whether they went, and the caller keeps its servers answering for a moment
  (``cli.DRAIN_GRACE_S``) while every balancer drains them, so that the
  ports close only after that;
* ``stop()`` never waits long on an etcd that does not answer (a frozen
  process, a partition): it gives a renewal still in progress and then the
  revoke ``STOP_WAIT_S`` each, and if the revoke fails the keys expire by the
  lease's TTL, as after a kill;
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

# Ctrl-C must end promptly even with etcd frozen: stop() waits this long for a renewal in progress,
# then as long again for the revoke. A lease it could not revoke expires by its TTL.
STOP_WAIT_S = 1.0


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
        # Written by start() and the keepalive thread, which stops re-registering once _stopping is set:
        # stop() reads it after the join, or after giving up on a renewal still waiting on etcd.
        self.lease_id = 0
        self._stopping = threading.Event()
        # Guards lease_id's hand-over: stop() may give up on a renewal thread that is just then granted
        # a new lease; that lease must be revoked, not used to put the keys back after "left etcd".
        self._lease_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Registration:
        """Grant the lease and put the keys; ``EtcdError`` if etcd cannot be reached now."""
        self._register()
        self._thread = threading.Thread(target=self._keep_alive, name="mockserv etcd keepalive", daemon=True)
        self._thread.start()
        return self

    def _register(self) -> None:
        lease = self._client.grant(self.ttl_s)
        with self._lease_lock:
            if self._stopping.is_set():
                try:
                    self._client.revoke(lease.id, STOP_WAIT_S)
                except EtcdError:
                    pass  # it expires by its TTL, with no key under it
                return
            self.lease_id = lease.id
        for key, value in self.entries.items():
            self._client.put(key, value, lease=lease.id)
        log.info("registered %d backends in etcd at %s (lease %x, ttl %ds)",
                 len(self.entries), self._client.endpoint, lease.id, lease.ttl_s)

    def _keep_alive(self) -> None:
        interval_s = max(0.5, self.ttl_s / 3)
        # A renewal waiting longer than the interval could outlast the lease (3 intervals) it renews.
        timeout_s = min(self._client.timeout_s, interval_s)
        while not self._stopping.wait(interval_s):
            try:
                if self._client.keepalive(self.lease_id, timeout_s) <= 0:
                    if self._stopping.is_set():
                        break  # revoked by stop() while this renewal waited: not to be put back
                    log.warning("etcd lease %x has expired; registering again", self.lease_id)
                    self._register()
            except EtcdError as exc:
                if self._stopping.is_set():
                    break  # no retry to announce: stop() says what became of the lease
                log.warning("cannot renew the etcd registration (will retry in %.1fs): %s", interval_s, exc)

    def stop(self) -> bool:
        """Stop renewing and revoke the lease; whether the keys are gone now.

        Never raises, and returns within about ``2 * STOP_WAIT_S``: etcd may be gone or frozen.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)  # a daemon: one still waiting on etcd ends with the process
            self._thread = None
        with self._lease_lock:
            lease_id, self.lease_id = self.lease_id, 0
        if not lease_id:
            return False
        try:
            self._client.revoke(lease_id, STOP_WAIT_S)  # False if it had expired: its keys are gone too
            return True
        except EtcdError as exc:
            log.warning("cannot revoke etcd lease %x: its keys stay until it expires (ttl %ds): %s",
                        lease_id, self.ttl_s, exc)
            return False
