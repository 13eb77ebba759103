"""A small etcd v3 client over etcd's JSON gateway, with ``requests``.

etcd serves its gRPC API as JSON over HTTP too (the grpc-gateway, ``/v3/...``
in etcd 3.4 and later), so no gRPC stack is needed. Every method here follows
the gateway's rules; they, the values (``KeyValue``, ``WatchEvent``,
``Lease``), ``EtcdError`` and the encoding of requests and answers are in
``etcdwire.py``, and this module re-exports what its callers use.

Every failure (no connection, no answer in time, an error answer, a watch
that breaks or is compacted) raises ``EtcdError`` with a message naming the
endpoint and the operation. ``watch`` streams ``/v3/watch``: it yields events
in revision order, can start at any revision still in etcd's history (so a
watcher that lost its stream resumes without missing a change), and
``Watch.stop()`` ends it from another thread.

This module imports nothing else from simplelb but ``etcdwire``: the
balancer's discovery and mockserv's registration both use it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from urllib.parse import SplitResult, urlsplit

import requests
import requests.adapters
from urllib3.connection import HTTPConnection

from .etcdwire import (
    NOT_FOUND,
    EtcdError,
    KeyValue,
    Lease,
    WatchEvent,
    answer_of,
    b64,
    error_of,
    key_value,
    prefix_range_end,
    reason_of,
)

__all__ = ["EtcdClient", "EtcdError", "KeyValue", "Lease", "Watch", "WatchEvent", "parse_etcd_url",
           "prefix_range_end"]

DEFAULT_PORT = 2379

_USER_INFO = re.compile(r"(?<=//)[^/?#]*@")  # "user:password@" in scheme://user:password@host/...


def parse_etcd_url(url: str) -> tuple[str, str]:
    """``etcd://HOST[:PORT]/PREFIX`` -> (``http://HOST:PORT``, ``PREFIX``).

    The prefix is the path without the slash that separates it from the
    address (``etcd://h/app`` is ``app``; ``etcd://h//app`` is ``/app``),
    without a trailing slash. Raises ``EtcdError`` if the URL is not of that
    form, in one line that says what is wrong: nothing in it is ignored or
    guessed (port 0 is not the default port), and a password is not repeated.
    """
    form = "expected etcd://HOST[:PORT]/PREFIX"
    shown = _USER_INFO.sub("***@", url, count=1)  # what a user typed before the @ may be a password
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ (IPv6)
        raise EtcdError(f"{form}, not {shown!r}") from None
    prefix = parts.path[1:].rstrip("/")
    if parts.scheme != "etcd" or not parts.hostname or not prefix:
        raise EtcdError(f"{form}, not {shown!r}")
    problem = _etcd_url_problem(url, parts)
    if problem:
        raise EtcdError(f"{form}, not {shown!r}: {problem}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{parts.port or DEFAULT_PORT}", prefix


def _etcd_url_problem(url: str, parts: SplitResult) -> str | None:
    """What an ``etcd://`` URL holds that would otherwise be dropped or turned into something else."""
    if "@" in parts.netloc:
        return "no user name or password (etcd authentication is not supported)"
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    # An empty port ("h:") and port 0 are both None or 0 here, and would quietly become 2379.
    if port == 0 or parts.netloc.endswith(":"):
        return "the port must be a number from 1 to 65535"
    if "?" in url:  # an empty one too: urlsplit cannot tell "app?" from "app"
        return "no query ('?...') after the prefix"
    if "#" in url:
        return "no fragment ('#...') after the prefix"
    return None



# A watch waits without a read timeout (a quiet prefix sends nothing), so an etcd that vanished
# without a word -- a crashed host, a partition -- would never be noticed. TCP keepalive notices:
# about 10 s of silence, then three probes 5 s apart, and the read fails.
_KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] + [
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
]


class _KeepAliveAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["socket_options"] = list(HTTPConnection.default_socket_options) + _KEEPALIVE
        super().init_poolmanager(*args, **kwargs)


class EtcdClient:
    """etcd v3 at ``endpoint`` (``http://host:port``); every call waits at most ``timeout_s``."""

    def __init__(self, endpoint: str = f"http://127.0.0.1:{DEFAULT_PORT}", timeout_s: float = 5.0):
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # etcd is reached directly, never through a proxy from the environment

    def close(self) -> None:
        self._session.close()

    # --- keys ---------------------------------------------------------------

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Set ``key``; the revision it was written at. With ``lease``, it goes when the lease does."""
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._call("put", "/v3/kv/put", body)["header"]["revision"])

    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("get", "/v3/kv/range", {"key": b64(key)}).get("kvs", [])
        return key_value(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, in key order, and the revision they were read at."""
        raw = prefix.encode("utf-8")
        answer = self._call("get", "/v3/kv/range", {"key": b64(raw), "range_end": b64(prefix_range_end(raw))})
        return [key_value(kv) for kv in answer.get("kvs", [])], int(answer["header"]["revision"])

    def delete(self, key: str) -> int:
        """Delete ``key``; how many keys were deleted (0 or 1)."""
        return int(self._call("delete", "/v3/kv/deleterange", {"key": b64(key)}).get("deleted", 0))

    def delete_prefix(self, prefix: str) -> int:
        raw = prefix.encode("utf-8")
        body = {"key": b64(raw), "range_end": b64(prefix_range_end(raw))}
        return int(self._call("delete", "/v3/kv/deleterange", body).get("deleted", 0))

    def create_if_absent(self, key: str, value: str | bytes, lease: int = 0) -> tuple[bool, KeyValue]:
        """Write ``key`` only if it does not exist, atomically (a transaction on its create revision).

        Returns (whether this call created it, the value now stored): of many
        callers racing, exactly one creates it and all get the same value.
        """
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": b64(key)}}],
        }
        answer = self._call("create", "/v3/kv/txn", body)
        if answer.get("succeeded"):
            revision = int(answer["header"]["revision"])
            return True, KeyValue(key, value.encode() if isinstance(value, str) else value,
                                  revision, revision, 1, lease)
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        if not kvs:  # deleted between the compare and now: cannot happen inside one transaction
            raise EtcdError(f"etcd at {self.endpoint}: create of {key!r} found neither the key nor room for it")
        return False, key_value(kvs[0])

    # --- leases ---------------------------------------------------------------

    def grant(self, ttl_s: int) -> Lease:
        """A new lease of ``ttl_s`` seconds (etcd may raise a short TTL to its minimum)."""
        answer = self._call("grant a lease", "/v3/lease/grant", {"TTL": str(int(ttl_s)), "ID": "0"})
        return Lease(int(answer["ID"]), int(answer["TTL"]))

    def keepalive(self, lease_id: int, timeout_s: float | None = None) -> int:
        """Renew a lease; its TTL in seconds from now, or 0 if it has expired or been revoked.

        ``timeout_s`` (default: the client's) lets a renewal give up before the lease it renews runs out.
        """
        answer = self._call("keep a lease alive", "/v3/lease/keepalive", {"ID": str(lease_id)}, timeout_s)
        return int(answer.get("result", {}).get("TTL", 0))

    def time_to_live(self, lease_id: int) -> int:
        """Seconds a lease has left, or -1 if it is gone."""
        return int(self._call("read a lease", "/v3/lease/timetolive", {"ID": str(lease_id)}).get("TTL", -1))

    def revoke(self, lease_id: int, timeout_s: float | None = None) -> bool:
        """End a lease now, deleting its keys; False if it was already gone. ``timeout_s``: as ``keepalive``."""
        try:
            self._call("revoke a lease", "/v3/lease/revoke", {"ID": str(lease_id)}, timeout_s)
        except EtcdError as exc:
            if exc.grpc_code == NOT_FOUND:
                return False
            raise
        return True

    # --- watch -----------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Changes to keys starting with ``prefix``, from ``start_revision`` (default: from now on)."""
        return Watch(self, prefix, start_revision)

    # --- the one way to call the gateway ------------------------------------------

    def _call(self, what: str, path: str, body: dict, timeout_s: float | None = None) -> dict:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            response = self._session.post(self.endpoint + path, json=body, timeout=timeout_s)
        except requests.Timeout:
            raise EtcdError(f"etcd at {self.endpoint}: no answer within {timeout_s:g}s to {what}") from None
        except requests.RequestException as exc:
            raise EtcdError(f"etcd at {self.endpoint}: cannot {what}: {reason_of(exc)}") from None
        return answer_of(response, f"etcd at {self.endpoint}: cannot {what}")



class Watch:
    """An open watch on a prefix: iterate (once) for ``WatchEvent``s; ``stop()`` ends it from any thread.

    Iteration raises ``EtcdError`` if the stream breaks (etcd stopped, the
    connection was lost) or etcd cancels it (the start revision has been
    compacted away). To resume, watch again from ``next_revision``: nothing
    is missed, and at most the events of one revision are delivered twice.
    """

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int | None):
        self._client = client
        raw = prefix.encode("utf-8")
        self._request = {"key": b64(raw), "range_end": b64(prefix_range_end(raw))}
        if start_revision:
            self._request["start_revision"] = str(start_revision)
        self.next_revision = start_revision
        self._stopped = threading.Event()
        self._session = requests.Session()  # its own connection: the stream holds it for as long as it runs
        self._session.trust_env = False
        self._session.mount("http://", _KeepAliveAdapter())
        self._lock = threading.Lock()  # guards _response: the iterating thread opens it, stop() cuts it
        self._response: requests.Response | None = None

    def __iter__(self) -> Iterator[WatchEvent]:
        failure = f"etcd at {self._client.endpoint}: watch"
        try:
            for message in self._messages():
                result = message.get("result", {})
                if result.get("canceled"):
                    compacted = int(result.get("compact_revision", 0))
                    raise EtcdError(f"{failure} canceled: history compacted up to revision {compacted}" if compacted
                                    else f"{failure} canceled: {result.get('cancel_reason') or 'no reason given'}")
                if result.get("created") and self.next_revision is None:
                    self.next_revision = int(result["header"]["revision"]) + 1
                events = result.get("events", [])
                for raw in events:
                    event = WatchEvent(raw.get("type", "PUT"), key_value(raw["kv"]))
                    self.next_revision = event.revision  # this revision may not be fully delivered yet
                    yield event
                if events:
                    self.next_revision += 1
        except requests.RequestException as exc:
            if not self._stopped.is_set():
                raise EtcdError(f"{failure} lost: {reason_of(exc)}") from None
        except ValueError:
            raise EtcdError(f"{failure}: etcd sent a message that is not JSON") from None
        finally:
            self._close()
        if not self._stopped.is_set():
            raise EtcdError(f"{failure} ended: etcd closed the stream")

    def _messages(self) -> Iterator[dict]:
        failure = f"etcd at {self._client.endpoint}: cannot watch"
        if self._stopped.is_set():
            return
        try:
            # Sent without the lock, and with a read timeout until the answer's head: a server that
            # accepts and never answers must hold up neither stop() nor this thread for ever.
            response = self._session.post(self._client.endpoint + "/v3/watch", json={"create_request": self._request},
                                          timeout=(self._client.timeout_s, self._client.timeout_s), stream=True)
        except requests.RequestException as exc:
            raise EtcdError(f"{failure}: {reason_of(exc)}") from None
        with self._lock:
            self._response = response
        if self._stopped.is_set():  # stop() came while it was sent, and found no response to cut
            return
        if (sock := _socket_of(response)) is not None:
            sock.settimeout(None)  # no read timeout from here: a quiet prefix sends nothing while it stays quiet
        if response.status_code != 200:
            answer_of(response, failure)
        for line in response.iter_lines():
            if self._stopped.is_set():
                return
            if line:
                message = json.loads(line)
                if "error" in message:
                    raise error_of(f"etcd at {self._client.endpoint}: watch failed", message,
                                   self._response.status_code)
                yield message

    def stop(self) -> None:
        """End the watch; an iteration blocked waiting for events returns. Safe from any thread, twice."""
        self._stopped.set()
        with self._lock:
            response = self._response
        sock = _socket_of(response) if response is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader now; close() alone would not
            except OSError:
                pass

    def _close(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()
        self._session.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The socket a streamed response is read from: urllib3's connection's, where the reader waits."""
    return getattr(response.raw.connection, "sock", None)
