import pytest

from simplelb.config import BackendSpec, Config, ConfigError, parse_backend, parse_backends


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost:8081", BackendSpec("localhost", 8081, 1)),
        ("http://localhost:8081", BackendSpec("localhost", 8081, 1)),
        ("http://localhost:8081/", BackendSpec("localhost", 8081, 1)),
        ("localhost:8081=3", BackendSpec("localhost", 8081, 3)),
        ("http://10.0.0.1:80=1000", BackendSpec("10.0.0.1", 80, 1000)),
        ("[::1]:8080", BackendSpec("::1", 8080, 1)),
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
        ("https://host:443", "only http://"),
        ("ho st:80", "not a valid host"),
    ],
)
def test_parse_backend_rejects_with_a_clear_message(text, fragment):
    with pytest.raises(ConfigError, match="backend") as info:
        parse_backend(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_ipv6_address_is_bracketed_again():
    assert parse_backend("[::1]:8080").address == "[::1]:8080"


def test_parse_backends_rejects_empty_and_duplicates():
    with pytest.raises(ConfigError, match="no backends"):
        parse_backends(" , ")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_backends("a:1,http://a:1=2")


def test_config_converts_text_like_the_command_line_does():
    config = Config(backends="a:1,b:2=2", port="0", health_interval_s="3", health_timeout_s="0.5")
    assert config.port == 0
    assert config.health_timeout_s == 0.5
    assert [b.weight for b in config.backends] == [1, 2]


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        Config(backends="a:1", algorithm="fastest")
    assert "'fastest'" in str(info.value) and "round-robin" in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("health_interval_s", 0),
        ("health_interval_s", "-1"),
        ("health_timeout_s", "soon"),
        ("connect_timeout_s", float("nan")),
        ("read_timeout_s", float("inf")),
        ("rise", 0),
        ("fall", "many"),
        ("port", 65536),
        ("health_path", "health"),
        ("health_path", "/he alth"),
        ("host", ""),
    ],
)
def test_bad_values_raise_config_error(field, value):
    with pytest.raises(ConfigError):
        Config(backends="a:1", **{field: value})


def test_health_timeout_may_not_exceed_interval():
    with pytest.raises(ConfigError, match="--health-timeout"):
        Config(backends="a:1", health_interval_s=1, health_timeout_s=2)


def test_config_is_frozen():
    config = Config(backends="a:1")
    with pytest.raises(AttributeError):
        config.port = 1
