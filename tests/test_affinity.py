import pytest

from simplelb.affinity import StickyCookies, cookie_value, key_function, validate_key_spec
from simplelb.backend import Backend
from simplelb.specs import BackendSpec


def test_key_functions():
    headers = [("Host", "h"), ("X-User", "alice"), ("Cookie", "a=1; session=s-9; b=2")]
    assert key_function("ip")(headers, "/x", "10.0.0.7") == "10.0.0.7"
    assert key_function("path")(headers, "/cart?item=1", "ip") == "/cart"
    assert key_function("header:x-user")(headers, "/", "ip") == "alice"
    assert key_function("header:X-Missing")(headers, "/", "ip") is None
    assert key_function("cookie:session")(headers, "/", "ip") == "s-9"
    assert key_function("cookie:nope")(headers, "/", "ip") is None


@pytest.mark.parametrize("spec", ["", "ip:x", "header:", "cookie:a b", "url", "header"])
def test_bad_key_specs(spec):
    with pytest.raises(ValueError, match="must be ip, path, header:NAME or cookie:NAME"):
        validate_key_spec(spec)


def test_cookie_value_reads_every_cookie_field():
    assert cookie_value([("Cookie", "a=1"), ("cookie", 'b="2"')], "b") == "2"
    assert cookie_value([("Cookie", "ab=1")], "a") is None


def test_sticky_ids_are_opaque_and_only_name_configured_backends():
    pool = [Backend(BackendSpec("10.1.1.1", 8081)), Backend(BackendSpec("10.1.1.2", 8081))]
    sticky = StickyCookies("lb", pool, secret=b"k" * 32)
    name, value = sticky.set_cookie(pool[1])
    assert name == "Set-Cookie" and value.startswith("lb=")
    token = value.split(";")[0].split("=", 1)[1]
    assert "10.1.1" not in value and "8081" not in value
    assert sticky.lookup([("Cookie", f"lb={token}")]) is pool[1]
    assert sticky.lookup([("Cookie", "lb=10.1.1.1:8081")]) is None  # not forgeable into an address
    assert sticky.lookup([("Cookie", "lb=0000")]) is None
    # Another secret, other ids: a cookie from one balancer means nothing to another.
    assert StickyCookies("lb", pool, secret=b"z" * 32).lookup([("Cookie", f"lb={token}")]) is None
