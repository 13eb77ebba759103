"""The life of one proxied request: choose a backend, attempt, retry, relay.

``Forwarder.forward`` takes an admitted client request and either relays a
complete response, raises an ``HTTPError`` before any byte of a response was
sent (the server's funnel answers it), or raises ``ResponseAborted`` once the
response has started and cannot be finished honestly.

It reads the cluster's view once per request, so the whole request -- every
retry included -- sees one generation of the configuration.

Choosing
--------
* A request pinned by a sticky cookie goes to its backend while that one is
  available (draining included) and has room.
* Otherwise the algorithm picks among the available backends of the first
  tier that has any: primaries, else backups. Draining backends are left out,
  except for requests with a hash key: leaving them in keeps every key on its
  backend, which is what "pinned by hash key" means.
* When every candidate is at ``--max-conns``, the request waits in the
  cluster's queue (``--queue-timeout``, ``--max-queue``), then gets 503.

Failover
--------
Each attempt that fails before any response byte reached the client raises
``AttemptFailed``; the view's ``RetryPolicy`` decides whether another
backend (one not tried yet) gets the request: always when nothing was sent,
otherwise only for idempotent requests whose body, if any, was small enough
to keep -- within ``--retries`` and the retry budget. A POST that reached a
backend is never sent again. Otherwise a failure is a 502 (504 for a read
timeout). Once the response has started, nothing is retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .attempt import AttemptFailed, send_request
from .backend import Backend
from .client import ClientConnection
from .cluster import Cluster, ClusterView
from .errors import BackendFull, BackendGone, NoHealthyBackend
from .gate import NO_TURN, Turn
from .relay import relay
from .request import ClientRequest, ForwardOptions
from .retry import IDEMPOTENT_METHODS
from .tunnel import OpenTunnels, switch_protocols

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What happened, for the access log and the connection's fate."""

    status: int
    backend: str  # the name of the backend that answered
    keep_alive: bool


class Forwarder:
    """Forwards requests to the backends of a cluster."""

    def __init__(self, cluster: Cluster, options: ForwardOptions | None = None, tunnels: OpenTunnels | None = None):
        self.cluster = cluster
        self.options = options or ForwardOptions()
        self.tunnels = tunnels or OpenTunnels()  # upgraded connections open now

    def forward(
        self, request: ClientRequest, client: ClientConnection, *, closing: bool = False, turn: Turn = NO_TURN
    ) -> Outcome:
        """Forward ``request``. ``turn`` is held for CPU work and paused around every blocking wait."""
        view = self.cluster.view
        self.cluster.budget.record_request()
        if _should_keep_body(request, view.config.retry_body_limit_bytes):
            with turn.paused():
                client.answer_expectation(request)
                request.body = b"".join(bytes(piece) for piece in client.body(request.framing))
        key = view.key_function(request.headers, request.target, request.client_ip) if view.key_function else None
        pinned = view.sticky.lookup(request.headers) if view.sticky is not None else None
        tried: set[Backend] = set()
        retries = 0
        last_failure: AttemptFailed | None = None
        queue_deadline = None
        while True:
            backend, queue_deadline = self._choose(view, key, pinned, tried, queue_deadline, turn)
            if backend is None:
                if last_failure is not None:
                    raise last_failure.error
                raise NoHealthyBackend("no healthy backend is available")
            extra_headers = []
            if view.sticky is not None and backend is not pinned:
                extra_headers.append(view.sticky.set_cookie(backend))
            try:
                return self._attempt(backend, request, client, closing, extra_headers, turn, retry=retries > 0)
            except BackendFull:
                continue  # another request took its last slot first; choose again
            except BackendGone:
                tried.add(backend)  # removed or put in maintenance since this request began
                continue
            except AttemptFailed as failure:
                tried.add(backend)
                last_failure = failure
                if not _candidates(view, tried, keyed=key is not None):
                    raise failure.error from None  # nowhere else to try: no retry, and none taken from the budget
                if request.interim_sent or (failure.sent and request.upgrade) or not view.retry.may_retry(
                    method=request.method, sent=failure.sent, replayable=request.replayable, retries_so_far=retries
                ):
                    # (A 1xx already went to the client; an upgrade that reached a backend is never sent twice.)
                    log.debug("not retrying %s %s (sent: %s, replayable: %s, retries: %d): %s", request.method,
                              request.target, failure.sent, request.replayable, retries, failure)
                    raise failure.error from None
                retries += 1
                log.info("retrying %s %s on another backend: %s", request.method, request.target, failure)
                turn.enter()  # the retry gets back in line: its first attempt left the gate once sent

    def _choose(
        self,
        view: ClusterView,
        key: str | None,
        pinned: Backend | None,
        tried: set[Backend],
        queue_deadline: float | None,
        turn: Turn,
    ) -> tuple[Backend | None, float | None]:
        """The backend for the next attempt (None: none left), waiting in the queue if all are full."""
        config = view.config
        while True:
            if pinned is not None and pinned not in tried and pinned.available() and pinned.has_capacity():
                # A session pinned to a backup while the primaries were out goes back to them once
                # one returns: backups serve only when no primary takes requests.
                if not (pinned.backup and any(b not in tried and b.takes_new() for b in view.primaries)):
                    log.debug("sticky cookie pins %s", pinned.name)
                    return pinned, queue_deadline
            candidates = _candidates(view, tried, keyed=key is not None)
            if not candidates:
                return None, queue_deadline
            free = [b for b in candidates if b.has_capacity()]
            if free:
                chosen = view.algorithm.pick(free, key)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s picked %s among %s%s", config.algorithm, chosen.name, [b.name for b in free],
                              f" for key {key!r}" if key is not None else "")
                return chosen, queue_deadline
            with turn.paused():  # (only under --max-conns)
                queue_deadline = self.cluster.queue.wait(queue_deadline, config.queue_timeout_s, config.max_queue)

    def _attempt(
        self,
        backend: Backend,
        request: ClientRequest,
        client: ClientConnection,
        closing: bool,
        extra_headers: list[tuple[str, str]],
        turn: Turn,
        *,
        retry: bool,
    ) -> Outcome:
        with backend.track() as attempt:  # the whole exchange, body and tunnel included, is in flight
            if retry:
                backend.count_retry()
            request.attempts += 1
            request.backend, request.backend_status, request.backend_duration_s = backend.name, None, None
            conn, head = send_request(backend, request, client, turn, self.options)
            attempt.responded(head.status)
            request.backend_status = head.status
            request.backend_duration_s = attempt.responded_at - attempt.started_at
            named = (self.options.backend_header, backend.name) if self.options.backend_header else None
            if head.status == 101:
                return self._tunnel(conn, backend, request, head, client, named, turn)
            reusable = False
            try:
                # (The turn was released once the request was sent: relaying only waits on sockets.)
                keep_alive, reusable = relay(conn, backend, request, head, client, closing=closing,
                                             extra_headers=extra_headers, backend_header=named)
            finally:
                backend.pool.release(conn, reusable)
            return Outcome(head.status, backend.name, keep_alive)

    def _tunnel(self, conn, backend, request, head, client, named, turn: Turn) -> Outcome:
        """The backend switched protocols: join the two connections until both are done."""
        turn.release()  # a tunnel only waits on sockets
        try:
            with self.tunnels.opened(client.sock, conn.sock):
                switch_protocols(conn, backend, request, head, client, backend_header=named,
                                 idle_timeout_s=self.options.tunnel_timeout_s)
        finally:
            backend.pool.release(conn, reusable=False)
        return Outcome(101, backend.name, keep_alive=False)


def _candidates(view: ClusterView, tried: set[Backend], *, keyed: bool) -> list[Backend]:
    """The available backends of the first tier that has any (primaries, then backups)."""
    for tier in (view.primaries, view.backups):
        usable = [b for b in tier if b not in tried and b.available() and (keyed or not b.draining)]
        if usable:
            return usable
    return []


def _should_keep_body(request: ClientRequest, limit: int) -> bool:
    """Whether to read the body up front so the request can be retried: small, and idempotent."""
    framing = request.framing
    return framing.kind == "length" and framing.length <= limit and request.head.method in IDEMPOTENT_METHODS
