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
    assert remove_hop_by_hop(headers) == [("Host", "h"), ("Proxy-Authorization", "Basic eA=="), ("X-Kept", "1")]


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


def test_response_headers_keep_duplicates_and_name_the_backend_only_when_asked():
    headers = [("Set-Cookie", "a=1"), ("Connection", "close"), ("Set-Cookie", "b=2"), ("Content-Length", "3")]
    kept = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "3")]
    assert response_headers_for_client(headers) == kept
    assert response_headers_for_client(headers, backend_header=("X-Served-By", "web-1")) == [
        *kept, ("X-Served-By", "web-1")]


def test_proxy_authorization_goes_end_to_end_unless_connection_names_it():
    """RFC 9110 §7.6.1 lists no Proxy-* field as hop-by-hop (RFC 2616 did)."""
    headers = [("Host", "h"), ("Proxy-Authorization", "Basic eDp5")]
    assert ("Proxy-Authorization", "Basic eDp5") in request_headers_for_backend(headers, "1.2.3.4")
    named = [*headers, ("Connection", "Proxy-Authorization")]
    assert not any(k == "Proxy-Authorization" for k, _ in request_headers_for_backend(named, "1.2.3.4"))
    assert response_headers_for_client([("Proxy-Authenticate", "Basic")]) == [("Proxy-Authenticate", "Basic")]


def test_underscored_names_are_dropped_unless_allowed():
    headers = [("Host", "h"), ("X_Forwarded_For", "6.6.6.6"), ("X_Custom", "1"), ("X-Custom", "2")]
    out = request_headers_for_backend(headers, "1.2.3.4")
    assert not any("_" in k for k, _ in out) and ("X-Custom", "2") in out
    assert ("X_Custom", "1") in request_headers_for_backend(headers, "1.2.3.4", allow_underscores=True)


def test_an_upgrade_offer_is_written_anew_and_h2c_is_never_offered():
    from simplelb.headers import upgrade_offer

    headers = [("Host", "h"), ("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket, h2c")]
    assert upgrade_offer(headers, ["keep-alive", "upgrade"]) == ["websocket"]
    assert upgrade_offer([("Upgrade", "h2c")], ["upgrade"]) is None
    assert upgrade_offer([("Upgrade", "websocket")], ["keep-alive"]) is None  # not named in Connection
    out = request_headers_for_backend(headers, "1.2.3.4", connection=["keep-alive", "upgrade"], upgrade=["websocket"])
    assert out[-2:] == [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    assert [k for k, _ in out].count("Upgrade") == 1


def test_encode_head_round_trips_latin1():
    assert encode_head("HTTP/1.1 200 OK", [("X", "caf\xe9")]) == b"HTTP/1.1 200 OK\r\nX: caf\xe9\r\n\r\n"


def test_a_request_without_host_gets_the_default_one_first():
    out = request_headers_for_backend([("Accept", "*/*")], "1.2.3.4", default_host="10.0.0.1:8081")
    assert out[0] == ("Host", "10.0.0.1:8081")
    assert not any(k == "X-Forwarded-Host" for k, _ in out)
    assert request_headers_for_backend([("Host", "h")], "1.2.3.4", default_host="x")[0] == ("Host", "h")
