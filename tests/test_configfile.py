"""``--config FILE`` and ``--check``: keys, tables, flags over the file, errors that say where."""

import os
import re

import pytest

from simplelb.config import defaults
from simplelb.configfile import ConfigSource
from simplelb.errors import ConfigError
from simplelb.options import OPTIONS

from .conftest import ROOT, run_cli


def load(path, **flags):
    return ConfigSource(str(path), flags).load()


def test_keys_are_the_flags_without_dashes(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('backends = "a:1,b:2=3"\nalgorithm = "least-connections"\nhealth-interval = 0.5\n'
                    'max-body = "10M"\neject-on-5xx = true\nport = 0\n')
    config = load(path)
    assert [(b.address, b.weight) for b in config.cluster.backends] == [("a:1", 1), ("b:2", 3)]
    assert config.cluster.algorithm == "least-connections" and config.cluster.health_interval_s == 0.5
    assert config.listener.max_body_bytes == 10 * 1024 * 1024 and config.cluster.eject_on_5xx is True


def test_backend_tables(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('[[backend]]\naddress = "a:1"\n\n[[backend]]\naddress = "http://b:2"\nweight = 2\nname = "bee"\n\n'
                    '[[backend]]\naddress = "c:3"\nbackup = true\nstate = "drain"\n')
    specs = load(path).cluster.backends
    assert [(s.name, s.address, s.weight, s.backup, s.state) for s in specs] == [
        ("a:1", "a:1", 1, False, "ready"), ("bee", "b:2", 2, False, "ready"), ("c:3", "c:3", 1, True, "drain")]


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('backends = "a:1"\nalgorithm = "random"\nport = 9000\n')
    config = load(path, algorithm="hash", port=None)
    assert config.cluster.algorithm == "hash" and config.listener.port == 9000
    assert [b.address for b in load(path, backends="z:9").cluster.backends] == ["z:9"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('backends = "a:1"\nalgoritm = "random"\n', "lb.toml:2: algoritm: unknown key (did you mean 'algorithm'?)"),
        ('backends = "a:1"\n\nhealth-interval = "soon"\n', "lb.toml:3: health-interval: must be a number of seconds, not 'soon'"),
        ('backends = "a:1"\nrise = 2.5\n', "lb.toml:2: rise: must be a whole number, not 2.5"),
        ('backends = "a:1"\neject-on-5xx = "yes"\n', "lb.toml:2: eject-on-5xx: must be true or false, not 'yes'"),
        ('backends = "a:1"\nport = [1, 2]\n', "lb.toml:2: port: must be a single value, not a list"),
        ('backends = "a:1"\n[[backend]]\naddress = "b:2"\n', "lb.toml:1: backends: give [[backend]] tables or 'backends', not both"),
        ('[[backend]]\nadress = "b:2"\n', "lb.toml: [[backend]] #1: unknown field 'adress'"),
        ('backends = "a:1"\nport = \n', "lb.toml: not valid TOML: Invalid value (at line 2, column 8)"),
        ('port = 1\n', "no backends given"),
    ],
)
def test_a_mistake_names_the_file_the_line_and_the_key(tmp_path, text, message):
    path = tmp_path / "lb.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_a_file_that_is_not_utf8_or_not_there_is_one_line(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_bytes(b'backends = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize("text, message", [
    (f'backends = "a:1"\nport = {"9" * 5000}\n', "lb.toml: not valid TOML: Exceeds the limit (4300 digits) for "
                                                  "integer string conversion: value has 5000 digits (at line 2)"),
    (f'backends = "a:1"\nhealth-interval = {"9" * 400}\n', "lb.toml:2: health-interval: must be greater than 0 up to"),
    (f'backends = "a:1"\nmax-body = {"9" * 400}\n', "lb.toml:2: max-body: must be at most 9223372036854775807 bytes"),
])
def test_a_number_too_long_to_read_is_a_one_line_error(tmp_path, text, message):
    # tomllib lets int()'s ValueError out past 4300 digits, and float() overflows past 1e308
    path = tmp_path / "lb.toml"
    path.write_text(text)
    result = run_cli("-m", "simplelb", "--config", str(path), "--check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.replace(str(tmp_path) + "/", "").startswith(f"simplelb: error: {message}")


def test_check_prints_one_summary_line_for_a_good_file():
    result = run_cli("-m", "simplelb", "--config", str(ROOT / "examples" / "simplelb.toml"), "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("simplelb: configuration OK: 2 backends and 1 backup (web-1=127.0.0.1:8081")
    assert result.stdout.rstrip().endswith("algorithm least-connections")


def test_check_prints_every_error_and_starts_nothing(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('port = 80000\nalgorithm = "fastest"\n\n[[backend]]\naddress = "a"\n')
    result = run_cli("-m", "simplelb", "--config", str(path), "--check", "--retries", "eleven")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("simplelb: error: ") for line in lines)
    assert any(f"{path}:1: port:" in line for line in lines) and any(f"{path}:2: algorithm:" in line for line in lines)
    assert any("[[backend]] #1" in line for line in lines) and any("--retries:" in line for line in lines)


@pytest.mark.parametrize("key", ["access-log", "admin-token-file", "backend-ca"])
def test_a_file_name_with_a_nul_in_it_is_a_one_line_error(tmp_path, key):
    path = tmp_path / "lb.toml"
    path.write_text(f'backends = "a:1"\nadmin = "127.0.0.1:0"\n{key} = "lb\\u0000.log"\n')
    result = run_cli("-m", "simplelb", "--check", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{path}:3: {key}: 'lb\\x00.log' is not a file name" in result.stderr


@pytest.mark.parametrize("flag", ["--config", "--admin-token-file", "--sticky-secret-file", "--backend-ca",
                                  "--tls-cert", "--tls-key", "[[tls]] cert", "[[tls]] key"])
def test_a_fifo_named_as_a_file_is_a_one_line_error_at_once(tmp_path, flag, tls_files):
    # open() on a FIFO waits for a writer: --check used to hang, and so did a reload (see test_reload)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    server_pem, _ = tls_files
    if flag == "--config":
        args = ["--config", str(fifo)]
    elif flag.startswith("[[tls]]"):
        cert, key = (fifo, server_pem) if flag.endswith("cert") else (server_pem, fifo)
        path = tmp_path / "lb.toml"
        path.write_text(f'backends = "a:1"\n[[tls]]\ncert = "{cert}"\nkey = "{key}"\n')
        args = ["--config", str(path)]
    else:
        pair = {"--tls-cert": ["--tls-key", str(server_pem)], "--tls-key": ["--tls-cert", str(server_pem)]}
        args = ["--backends", "a:1", flag, str(fifo), *pair.get(flag, [])]
    result = run_cli("-m", "simplelb", *args, "--check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{fifo}: not a regular file (a FIFO)" in result.stderr or (
        f"{fifo}: cannot read: not a regular file (a FIFO)" in result.stderr), result.stderr


@pytest.mark.parametrize("first, second, named", [
    ("127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9"),
    ("localhost:8081", "LOCALHOST:8081", "localhost:8081"),  # one host, whatever its case
])
def test_a_backend_listed_twice_in_a_file_is_an_error_naming_the_file_and_line(tmp_path, first, second, named):
    path = tmp_path / "lb.toml"
    path.write_text(f'port = 0\n[[backend]]\naddress = "{first}"\n[[backend]]\naddress = "{second}"\n')
    result = run_cli("-m", "simplelb", "--check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == f"simplelb: error: {path}:2: backend: backend {named} is listed twice\n"


def test_without_check_a_bad_file_is_one_line_with_a_count(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('port = 80000\nalgorithm = "fastest"\nbackends = "a:1"\n')
    result = run_cli("-m", "simplelb", "--config", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"simplelb: error: {path}:1: port:") and "(and 1 more: see --check)" in result.stderr


# --- one table, four places: OPTIONS, --help, the README, the config file ---------------------------

SAMPLES = {
    "backends": '"a:1"', "backups": '"b:2"', "admin": '"127.0.0.1:0"', "hash_balance_factor": "1.5",
    "sticky_cookie": '"lb"', "health_timeout_s": "1", "eject_on_5xx": "true", "access_log": '"-"',
    "request_id_header": '"X-Request-Id"', "backend_header": '"X-Upstream"', "redirect_http": "0",
    "discovery": '"etcd://127.0.0.1:2379/app"', "dns_server": '"127.0.0.1:53"', "dns_refresh_s": "5",
}


def _readme_flags() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## `simplelb`", 1)[1].split("\n## ", 1)[0]
    flags: dict[str, str] = {}
    for match in re.finditer(r"^\| `(--[a-z0-9-]+)` \| (.*?) \|", section, re.MULTILINE):
        flags.setdefault(match.group(1), match.group(2))  # the flag table comes first
    return flags


def test_every_option_is_in_help_and_in_the_readme_with_the_same_default():
    from simplelb.cli import shown_default

    help_text = run_cli("-m", "simplelb", "--help").stdout
    readme = _readme_flags()
    values = defaults()
    for option in OPTIONS:
        assert option.flag in help_text, option.flag
        assert option.flag in readme, f"{option.flag} is not in the README's table"
        expected = shown_default(option, values[option.field])
        if expected is not None:
            assert f"(default: {expected})" in " ".join(help_text.split()), option.flag
            assert readme[option.flag] == f"`{expected}`", f"{option.flag}: README says {readme[option.flag]}"
    assert {"--config", "--check", "--version"} <= set(readme)


@pytest.fixture
def tls_files(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path / "server.pem", tmp_path / "ca.pem"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.key)
def test_every_option_is_accepted_in_the_config_file(tmp_path, option, tls_files):
    token = tmp_path / "token"
    token.write_text("a-token-of-some-length\n")
    server_pem, ca_pem = tls_files
    with_tls = f'tls-cert = "{server_pem}"\ntls-key = "{server_pem}"\n'
    files = {"admin_token_file": f'"{token}"', "backend_ca": f'"{ca_pem}"', "tls_cert": f'"{server_pem}"',
             "tls_key": f'"{server_pem}"', "sticky_secret_file": f'"{token}"'}
    values = defaults()
    sample = files.get(option.field) or SAMPLES.get(option.field)
    if sample is None:
        default = values[option.field]
        sample = str(default).lower() if isinstance(default, bool) else repr(default).replace("'", '"')
    path = tmp_path / "lb.toml"
    base = "" if option.field == "backends" else 'backends = "z:9"\n'
    if option.field in ("tls_cert", "tls_key", "redirect_http"):  # these go with a certificate and its key
        base += with_tls
        if option.field != "redirect_http":
            sample = None
    path.write_text(base + (f"{option.key} = {sample}\n" if sample else ""))
    load(path)


def test_the_example_file_shows_every_key():
    text = (ROOT / "examples" / "simplelb.toml").read_text()
    missing = [o.key for o in OPTIONS if not re.search(rf"^(# ?)?{re.escape(o.key)} *=", text, re.MULTILINE)]
    assert missing == []
    assert "[[backend]]" in text and "[[tls]]" in text
