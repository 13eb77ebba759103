"""Errors that know which HTTP status they should become.

Every failure on the request path is raised as one of these and turned into a
response in exactly one place (``handler.error_response``; the admin listener
has its JSON twin, ``admin.json_error``). A handler never builds an error
response by hand: it raises, and the funnel answers.
"""

from __future__ import annotations


class HTTPError(Exception):
    """A failure that ends a request with ``status`` and a plain-text reason.

    ``close`` asks the funnel to close the client connection after answering,
    for errors that leave the connection's framing in an unknown state.
    ``message`` is what the client is told. A backend's failure also names
    the ``backend`` and may carry a ``detail``: both are for the log only,
    since the client is not told internal addresses.
    """

    status = 500
    close = False
    reason = "protocol"  # for a backend's failure: connect, timeout, reset, protocol (the metrics' label)

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        close: bool | None = None,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        backend: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.detail = detail
        self.headers = headers or []  # fields the answer must carry (Allow, WWW-Authenticate, ...)
        if status is not None:
            self.status = status
        if close is not None:
            self.close = close
        if reason is not None:
            self.reason = reason

    def for_log(self) -> str:
        """The message with what the client is not told: which backend, and the detail."""
        where = f"backend {self.backend}" if self.backend else ""
        extra = ": ".join(part for part in (where, self.detail) if part)
        return f"{self.message} ({extra})" if extra else self.message


class BadRequest(HTTPError):
    """The client sent something we refuse to forward (400 and its kin)."""

    status = 400
    close = True  # after a malformed request we cannot trust where the next one starts


class NoHealthyBackend(HTTPError):
    """No backend is available to take the request."""

    status = 503


class QueueFull(HTTPError):
    """Every available backend is at ``--max-conns`` and the wait ran out (or the queue is full)."""

    status = 503


class TooManyClients(HTTPError):
    """Every client connection is busy forwarding; a new one is refused."""

    status = 503
    close = True


class NotFound(HTTPError):
    """An admin request names a backend or a path that does not exist."""

    status = 404


class Conflict(HTTPError):
    """An admin request would create a backend whose name or address is taken."""

    status = 409


class BadGateway(HTTPError):
    """The backend failed or answered with something that is not HTTP."""

    status = 502


class GatewayTimeout(HTTPError):
    """The backend did not answer within the read timeout."""

    status = 504
    reason = "timeout"


class ConfigError(ValueError):
    """A setting has a value we cannot run with; the message says which and why, in one line.

    ``messages`` holds every problem found when a whole configuration was
    checked at once (``--check`` prints them all); ``str()`` is the first.
    ``field``: the setting at fault, when the check that found it could not say
    where the value came from (the file's line, or the flag) and the caller can.
    """

    def __init__(self, message: str, messages: list[str] | None = None, *, field: str | None = None):
        super().__init__(message)
        self.messages = messages or [message]
        self.field = field


class ListenError(OSError):
    """Something the process serves on could not be opened; ``where`` says what (``cannot listen on 127.0.0.1:8080``)."""

    def __init__(self, where: str, exc: OSError):
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.where = where


class ConnectFailed(Exception):
    """Opening a connection to a backend failed: nothing was sent, so any request may go elsewhere."""


class ResponseAborted(Exception):
    """The response started but cannot be completed: the only honest move is to close the client connection.

    ``reason`` says how the backend failed (timeout, reset, protocol).
    ``unframed``: the client learns the body's end only from the close (an
    HTTP/1.0 client, a body of unknown length), so a plain close would make
    the cut body look whole.
    """

    def __init__(self, message: str, reason: str = "protocol"):
        super().__init__(message)
        self.reason = reason
        self.unframed = False


class ClientSideError(Exception):
    """Something the client did (left, sent a broken body): never held against a backend."""


class ClientDisconnected(ClientSideError):
    """The client went away; there is nobody left to answer."""


class ClientBodyError(ClientSideError):
    """The client's request body was malformed after forwarding began; answered with ``status``."""

    status = 400


class BodyTimeout(ClientBodyError):
    """The client stopped sending its request body for ``--client-body-timeout``: it is still there."""

    status = 408


class BodyTooLarge(ClientBodyError):
    """A chunked request body grew past ``--max-body`` while it was being forwarded."""

    status = 413


# --- signals from a backend to the proxy (never answered as such) ------------


class BackendFull(Exception):
    """The chosen backend is at its connection limit; nothing was sent."""


class BackendGone(Exception):
    """The backend left rotation (removed, maintenance) after it was chosen; nothing was sent."""
