"""etcd's JSON gateway on the wire: its values, its errors, and how requests and answers are encoded.

What ``etcd.EtcdClient`` and ``etcd.Watch`` send and read follows the
gateway's rules, all of which are kept here:

* keys and values are bytes, sent and received as base64 strings (``b64``,
  ``key_value``);
* 64-bit integers (revisions, lease ids, TTLs) are JSON strings;
* fields at their zero value are left out of answers (no ``kvs`` when nothing
  matched, no ``type`` on a PUT event, no ``TTL`` for a lease that is gone);
* a prefix is the range ``[prefix, prefix_range_end(prefix))``;
* a failed call answers a non-200 status with ``{"error", "message", "code"}``
  (``code`` is the gRPC status: 5 is NOT_FOUND); ``answer_of`` reads an
  answer or raises the ``EtcdError`` it stands for.

Like ``etcd.py``, this module imports nothing else from simplelb.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import requests

NOT_FOUND = 5  # gRPC status code


class EtcdError(Exception):
    """An etcd operation failed. ``grpc_code`` is etcd's status code when it answered one."""

    def __init__(self, message: str, grpc_code: int | None = None):
        super().__init__(message)
        self.grpc_code = grpc_code


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @property
    def text(self) -> str:
        return self.value.decode("utf-8")


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue  # for a DELETE: the key and the revision of the deletion, no value

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class Lease:
    id: int
    ttl_s: int


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode("ascii")


def key_value(raw: dict) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode("utf-8", "replace"),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def reason_of(exc: BaseException) -> str:
    """The innermost cause of a requests error: requests wraps urllib3's error, which wraps the socket's."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__ or next((a for a in exc.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        exc = inner
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def answer_of(response: requests.Response, failure: str) -> dict:
    try:
        answer = response.json()
    except ValueError:
        raise EtcdError(f"{failure}: HTTP {response.status_code} with a body that is not JSON") from None
    if response.status_code == 200 and "error" not in answer:
        return answer
    raise error_of(failure, answer, response.status_code)


def error_of(failure: str, answer: dict, status: int) -> EtcdError:
    error = answer.get("error")
    if isinstance(error, dict):  # the shape of an error inside a stream
        message, code = error.get("message"), error.get("grpc_code")
    else:
        message, code = answer.get("message") or error, answer.get("code")
    return EtcdError(f"{failure}: {message} (HTTP {status})", code)
