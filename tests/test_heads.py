"""The two ways a head is parsed agree: the fast path accepts only what the strict one accepts, identically.

``parse_request_head`` and ``parse_response_head`` try a fast path (bytes and
string methods over the whole head) and fall back to the strict per-line
parser, which alone explains what is wrong. If the fast path ever accepted a
head the strict parser refuses, or read one differently, a request could be
forwarded that the rules forbid: hypothesis mutates real heads to look for one.
"""

import pytest
from hypothesis import given, settings

from simplelb.errors import HTTPError
from simplelb.http1 import (
    _fast_request,
    _fast_response,
    _strict_request,
    _strict_response,
    header_values,
    parse_request_head,
    parse_response_head,
)

from .mutations import mutated

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: h",
    b"GET /a?b=c HTTP/1.0",
    b"POST /p HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 5\r\nContent-Type: text/plain",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nX-Odd_Name: v",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nAccept: */*",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 05 May 2026 14:53:00 GMT\r\nContent-Length: 2",
    b"HTTP/1.0 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade",
    b"HTTP/1.1 204\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d",
]
# Bytes that matter to a head's grammar: line ends, separators, controls, obs-text, tchar.
ALPHABET = b"\r\n\x00\x01\x0b \t:;,-_!~=+0123456789aZ/.?#%\x7f\x80\xe9\xffHTP"


def mutated_heads(seeds: list[bytes]):
    """Heads as read_head returns them (up to their empty line), a few bytes edited."""
    return mutated(seeds, ALPHABET, max_edits=5, max_copy=30).map(lambda head: head + b"\r\n\r\n")


def _agree(fast, strict, head: bytes) -> None:
    parsed = fast(head, 100)
    if parsed is None:
        return  # the strict path decides, and explains
    try:
        expected = strict(head, 100)
    except HTTPError as exc:
        pytest.fail(f"the fast path accepted {head!r}, which the strict parser refuses: {exc}")
    assert parsed == expected
    for name, _ in parsed.headers:
        assert list(parsed.values(name.lower())) == header_values(parsed.headers, name)


@settings(max_examples=600, deadline=None)
@given(mutated_heads(REQUESTS))
def test_request_heads(head):
    _agree(_fast_request, _strict_request, head)


@settings(max_examples=600, deadline=None)
@given(mutated_heads(RESPONSES))
def test_response_heads(head):
    _agree(_fast_response, _strict_response, head)


@pytest.mark.parametrize("head", [r + b"\r\n\r\n" for r in REQUESTS[:3]])
def test_common_requests_take_the_fast_path(head):
    assert _fast_request(head, 100) == parse_request_head(head)


def test_common_responses_take_the_fast_path():
    head = RESPONSES[0] + b"\r\n\r\n"
    parsed = _fast_response(head, 100)
    assert parsed == parse_response_head(head)
    assert parsed.values("content-length") == ["2"] and parsed.values("transfer-encoding") == ()
