from simplelb.headers import encode_head, remove_hop_by_hop, request_headers_for_backend, response_headers_for_client


def test_hop_by_hop_and_connection_named_fields_are_removed():
    headers = [
        ("Host", "h"),
        ("Connection", "keep-alive, X-Private"),
        ("Keep-Alive", "timeout=5"),
        ("X-Private", "secret"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X"),
        ("X-Kept", "1"),
    ]
    assert remove_hop_by_hop(headers) == [("Host", "h"), ("X-Kept", "1")]


def test_request_headers_keep_order_and_duplicates_and_add_forwarding():
    headers = [("Host", "example.com"), ("B", "1"), ("A", "x"), ("b", "2"), ("Cookie", "a=1"), ("Cookie", "b=2")]
    assert request_headers_for_backend(headers, "10.1.2.3") == [
        *headers,
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "example.com"),
    ]


def test_x_forwarded_for_is_appended_to_earlier_hops():
    headers = [("Host", "h"), ("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 3.3.3.3")]
    out = request_headers_for_backend(headers, "4.4.4.4")
    assert [v for k, v in out if k.lower() == "x-forwarded-for"] == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4"]


def test_client_cannot_spoof_proto_or_host():
    headers = [("Host", "real"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil")]
    out = dict(request_headers_for_backend(headers, "1.2.3.4"))
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "real"


def test_response_headers_name_the_upstream_and_keep_duplicates():
    headers = [("Set-Cookie", "a=1"), ("Connection", "close"), ("Set-Cookie", "b=2"), ("Content-Length", "3")]
    assert response_headers_for_client(headers, "127.0.0.1:9") == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "3"),
        ("X-Upstream", "127.0.0.1:9"),
    ]


def test_encode_head_round_trips_latin1():
    assert encode_head("HTTP/1.1 200 OK", [("X", "caf\xe9")]) == b"HTTP/1.1 200 OK\r\nX: caf\xe9\r\n\r\n"


def test_a_request_without_host_gets_the_default_one_first():
    out = request_headers_for_backend([("Accept", "*/*")], "1.2.3.4", default_host="10.0.0.1:8081")
    assert out[0] == ("Host", "10.0.0.1:8081")
    assert not any(k == "X-Forwarded-Host" for k, _ in out)
    assert request_headers_for_backend([("Host", "h")], "1.2.3.4", default_host="x")[0] == ("Host", "h")
