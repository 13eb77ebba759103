"""Settings: backend specs, the two halves of Config, and errors that name the flag."""

import pytest

from simplelb.config import ClusterConfig, Config, ListenerConfig
from simplelb.errors import ConfigError
from simplelb.specs import BackendSpec, backend_from_table, bracket, parse_backend


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost:8081", BackendSpec("localhost", 8081, 1)),
        ("http://localhost:8081", BackendSpec("localhost", 8081, 1)),
        ("HTTP://localhost:8081/", BackendSpec("localhost", 8081, 1)),
        ("localhost:8081=3", BackendSpec("localhost", 8081, 3)),
        ("http://10.0.0.1:80=1000", BackendSpec("10.0.0.1", 80, 1000)),
        ("[::1]:8080", BackendSpec("::1", 8080, 1)),
        ("https://secure.example:8443=2", BackendSpec("secure.example", 8443, 2, tls=True)),
        ("  backend-1.example:9000 ", BackendSpec("backend-1.example", 9000, 1)),
    ],
)
def test_parse_backend_accepts(text, expected):
    assert parse_backend(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("host:notaport", "'notaport' is not a port"),
        ("host", "expected host:port"),
        (":8080", "expected host:port"),
        ("host:0", "is not a port"),
        ("host:70000", "is not a port"),
        ("host:80=0", "weight"),
        ("host:80=abc", "weight"),
        ("host:80=1001", "weight"),
        ("ftp://host:21", "only http:// and https://"),
        ("ho st:80", "not a valid host"),
        ("host:" + "0" * 5 + "80", "is not a port"),  # at most 5 digits, so int() never sees 4300
        ("host:80=" + "0" * 4 + "1", "weight"),
    ],
)
def test_parse_backend_rejects_with_a_clear_message(text, fragment):
    with pytest.raises(ConfigError, match="backend") as info:
        parse_backend(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_ipv6_hosts_are_bracketed_in_one_place():
    assert parse_backend("[::1]:8080").address == "[::1]:8080"
    assert bracket("::1") == "[::1]" and bracket("[::1]") == "[::1]" and bracket("host") == "host"


def test_a_spec_is_named_by_its_address_unless_named():
    assert parse_backend("a:1").name == "a:1"
    assert backend_from_table({"address": "a:1", "name": "web-1", "weight": 2}, "t").name == "web-1"


def test_host_names_and_ipv6_literals_are_one_address_whatever_their_case():
    # RFC 4343: DNS names are case-insensitive; an IPv6 literal is hex. One address, one default name
    # (and so one sticky-cookie id and one place in the hash ring, both made of the address).
    upper, lower = parse_backend("LOCALHOST:8081"), parse_backend("localhost:8081")
    assert upper == lower and upper.address == upper.name == "localhost:8081"
    assert parse_backend("https://[::FFFF:7F00:1]:8443").location == "https://[::ffff:7f00:1]:8443"
    assert BackendSpec("Web.Example", 80).address == "web.example:80"
    assert backend_from_table({"address": "WEB:1", "name": "Web-1"}, "t").name == "Web-1"  # a name is as given
    assert parse_backend("DNS://Web.Test:80") == parse_backend("dns://web.test:80")
    assert parse_backend("dns+srv://_HTTP._tcp.Web.Test").url == "dns+srv://_http._tcp.web.test"
    with pytest.raises(ConfigError, match="backend localhost:8081 is listed twice"):
        Config.of(backends="localhost:8081,LOCALHOST:8081")
    with pytest.raises(ConfigError, match="backend \\[::ffff:1\\]:80 is both a primary and a backup"):
        Config.of(backends="[::ffff:1]:80", backups="[::FFFF:1]:80")
    with pytest.raises(ConfigError, match="a dns:// backend is listed twice"):
        Config.of(backends="dns://web.test:80,dns://WEB.test:80")


@pytest.mark.parametrize(
    "table, fragment",
    [
        ({"address": "a:1", "colour": "red"}, "unknown field 'colour'"),
        ({"weight": 1}, "'address' must be a string"),
        ({"address": "a:1", "weight": "3"}, "weight must be a whole number"),
        ({"address": "a:1", "weight": True}, "weight must be a whole number"),
        ({"address": "a:1", "backup": "yes"}, "'backup' must be true or false"),
        ({"address": "a:1", "name": "a b"}, "'name' must be"),
        ({"address": "a:1", "name": ""}, "'name' must be 1-128"),
        ({"address": "a:1", "state": "off"}, "'state' must be one of ready, drain, maint"),
    ],
)
def test_backend_tables_are_checked_field_by_field(table, fragment):
    with pytest.raises(ConfigError) as info:
        backend_from_table(table, "file.toml: [[backend]] #1")
    assert fragment in str(info.value) and str(info.value).startswith("file.toml: [[backend]] #1")


def test_duplicates_and_no_primaries_are_refused():
    with pytest.raises(ConfigError, match="listed twice"):
        Config.of(backends="a:1,http://a:1=2")
    with pytest.raises(ConfigError, match="both a primary and a backup"):
        Config.of(backends="a:1", backups="a:1")
    with pytest.raises(ConfigError, match="no backends"):
        Config.of(backends=" , ")
    with pytest.raises(ConfigError, match="used twice"):
        ClusterConfig(backends=(BackendSpec("a", 1, name="x"), BackendSpec("b", 1, name="x")))


def test_settings_are_split_into_listener_and_cluster():
    config = Config.of(backends="a:1,b:2=2", backups="c:3", port="0", health_interval_s="3",
                       health_timeout_s="0.5", max_clients=10, algorithm="Least-Connections")
    assert config.listener.port == 0 and config.listener.max_clients == 10
    assert config.cluster.health_timeout_s == 0.5 and config.cluster.algorithm == "least-connections"
    assert [(b.weight, b.backup) for b in config.cluster.backends] == [(1, False), (2, False), (1, True)]
    assert not hasattr(config.listener, "backends") and not hasattr(config.cluster, "port")


def test_every_error_is_collected_and_names_its_flag():
    with pytest.raises(ConfigError) as info:
        Config.of(backends="a:1", health_interval_s="soon", port=-1, algorithm="fastest")
    assert info.value.messages == [
        "--health-interval: must be a number of seconds, not 'soon'",
        "--port: must be from 0 up to 65535, not -1",
        "--algorithm: unknown algorithm 'fastest'; choose one of: round-robin, least-connections, random, "
        "power-of-two, peak-ewma, hash",
    ]


def test_unknown_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        Config.of(backends="a:1", colour="red")


@pytest.mark.parametrize(
    "field, value",
    [
        ("health_interval_s", 0),
        ("health_interval_s", "-1"),
        ("health_timeout_s", "soon"),
        ("connect_timeout_s", float("nan")),
        ("read_timeout_s", float("inf")),
        ("rise", 0),
        ("rise", 2.5),
        ("fall", "many"),
        ("port", 65536),
        ("port", True),
        ("health_path", "health"),
        ("health_path", "/he alth"),
        ("host", ""),
        ("active_requests", 0),  # would deadlock the gate
        ("pool_size", -1),
        ("max_header_count", 0),
        ("eject_return", "never"),
        ("log_level", "loud"),
    ],
)
def test_bad_values_raise_config_error(field, value):
    with pytest.raises(ConfigError):
        Config.of(backends="a:1", **{field: value})


def test_health_timeout_defaults_to_the_interval_when_that_is_shorter():
    assert Config.of(backends="a:1", health_interval_s=0.5).cluster.health_timeout_s == 0.5
    assert Config.of(backends="a:1", health_interval_s=5).cluster.health_timeout_s == 1.0
    with pytest.raises(ConfigError, match="--health-timeout"):
        Config.of(backends="a:1", health_interval_s=1, health_timeout_s=2)


def test_a_size_error_names_the_flag_that_was_given():
    with pytest.raises(ConfigError, match="^--max-header-bytes 1024 is smaller than --max-url 8192"):
        Config.of(backends="a:1", max_header_bytes="1K")
    with pytest.raises(ConfigError, match="^--max-url: must be at least 64 bytes"):
        Config.of(backends="a:1", max_url_bytes="10")
    assert Config.of(backends="a:1", max_body_bytes="10M").listener.max_body_bytes == 10 * 1024 * 1024


def test_enumerated_values_are_case_insensitive():
    config = Config.of(backends="a:1", log_level="WARNING", eject_return="Health", hash_key="Header:X-User")
    assert (config.listener.log_level, config.cluster.eject_return, config.cluster.hash_key) == (
        "warning", "health", "header:X-User")


def test_admin_off_loopback_needs_a_token(tmp_path):
    assert Config.of(backends="a:1", admin="127.0.0.1:0").listener.admin == ("127.0.0.1", 0)
    assert Config.of(backends="a:1", admin="[::1]:9000").listener.admin == ("::1", 9000)
    assert Config.of(backends="a:1", admin="LOCALHOST:0").listener.admin  # (a name is case-insensitive)
    with pytest.raises(ConfigError, match="needs --admin-token-file"):
        Config.of(backends="a:1", admin="0.0.0.0:9000")
    token = tmp_path / "token"
    token.write_text("s3cret-s3cret-s3cret\n")
    assert Config.of(backends="a:1", admin="0.0.0.0:9000", admin_token_file=str(token)).listener.admin
    token.write_text("short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Config.of(backends="a:1", admin="127.0.0.1:0", admin_token_file=str(token))


def test_configs_are_frozen_and_compare_by_value():
    config = Config.of(backends="a:1")
    with pytest.raises(AttributeError):
        config.listener.port = 1
    assert Config.of(backends="a:1") == config
    assert ListenerConfig() == config.listener


def test_cluster_config_round_trips_through_plain_values():
    from simplelb.config import cluster_from_dict

    config = Config.of(backends="a:1=3", backups="[::1]:2", algorithm="hash", hash_balance_factor=1.5).cluster
    assert cluster_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("backends", ["https://127.0.0.1:8443", "h" * 130 + ".example:80"])
def test_a_backend_named_by_an_address_no_name_could_be_round_trips(backends):
    # A worker of --workers reads its configuration back from these values: the default name
    # (https://..., or a host name longer than a name may be) must not be checked as a chosen one.
    from simplelb.config import cluster_from_dict

    config = Config.of(backends=backends).cluster
    assert cluster_from_dict(config.to_dict()) == config
    named = config.with_backends((config.backends[0].but(name="web-1"),))
    assert cluster_from_dict(named.to_dict()) == named


def test_workers_auto_is_one_per_cpu():
    import os

    assert Config.of(backends="a:1", workers="auto").listener.workers == min(64, len(os.sched_getaffinity(0)))
    assert Config.of(backends="a:1", workers="AUTO").listener.workers >= 1
    assert Config.of(backends="a:1", workers="3").listener.workers == 3
    with pytest.raises(ConfigError, match="--workers: must be a whole number from 1 up to 64, or auto"):
        Config.of(backends="a:1", workers="many")
    with pytest.raises(ConfigError, match="or auto"):
        Config.of(backends="a:1", workers=0)
