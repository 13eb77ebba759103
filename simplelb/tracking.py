"""One request at a backend, as the backend sees it: the ``Attempt`` handle and ``BackendEvents``.

``Backend.track()`` counts an attempt in flight and hands back an ``Attempt``;
leaving its block ends the attempt, and the backend (``Backend._finish``)
counts it: a response, a failure (the exception the block raised, unless it
was the client's doing), its latency. The backend then tells its owner
through ``BackendEvents``: a slot was released, an attempt failed. Neither
class holds per-backend state: that stays with ``Backend``, behind its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ClientSideError

if TYPE_CHECKING:
    from .backend import Backend


class Attempt:
    """One request attempt against a backend: the context manager ``Backend.track`` returns.

    A plain class rather than a generator-based context manager: it is entered
    and left once per request, and a generator costs a frame and a few calls more.
    """

    __slots__ = ("_backend", "_clock", "started_at", "responded_at", "status")

    def __init__(self, backend: Backend, clock: Callable[[], float]):
        self._backend = backend
        self._clock = clock
        self.started_at = clock()
        self.responded_at: float | None = None
        self.status = 0

    def responded(self, status: int) -> None:
        """The response head arrived: the latency sample ends here."""
        self.responded_at = self._clock()
        self.status = status

    def __enter__(self) -> Attempt:
        return self  # (counted in flight already, by ``Backend.track``)

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc is None:
            self._backend._finish(self, "", "")
        elif isinstance(exc, ClientSideError):  # the client's doing counts for nothing
            # Before the answer it says nothing of the backend either way: a client that gave up on a
            # hung one must not wipe its streak of failures, nor make it look as fast as its leaving.
            self._backend._finish(self, "", "", judged=self.responded_at is not None)
        else:
            self._backend._finish(self, str(exc) or exc_type.__name__, getattr(exc, "reason", "protocol"))
        return False


class BackendEvents:
    """What a backend reports to its owner. The defaults do nothing (a backend on its own)."""

    def released(self, backend: Backend) -> None:
        """An in-flight slot was freed."""

    def failed(self, backend: Backend, streak: int, reason: str) -> None:
        """An attempt failed; ``streak`` failures in a row so far."""
