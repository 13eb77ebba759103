"""Discovery without a network: sources in the configuration, the merge, operator overrides, etcd values."""

import json
import queue

import pytest

from simplelb import Config, changes
from simplelb.config import cluster_from_dict
from simplelb.configfile import ConfigSource
from simplelb.discovery import Discovery
from simplelb.errors import ConfigError, Conflict
from simplelb.etcddiscovery import parse_entry
from simplelb.source import Source
from simplelb.specs import BackendSpec, SourceSpec

from .conftest import NoWorkers, run_cli

# --- the configuration --------------------------------------------------------------------


def test_dns_entries_of_the_backends_are_sources_not_backends():
    cluster = Config.of(backends="dns://web.test:8080=3,a:1", backups="dns+srv://_http._tcp.svc.test").cluster
    assert [s.address for s in cluster.backends] == ["a:1"]
    assert cluster.sources == (SourceSpec("dns://web.test:8080", 3, False),
                               SourceSpec("dns+srv://_http._tcp.svc.test", 1, True))
    assert cluster_from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster


def test_sources_alone_are_enough_and_nothing_at_all_is_not():
    assert Config.of(backends="dns://web.test:80").cluster.backends == ()
    assert Config.of(discovery="etcd://127.0.0.1:2379/app").cluster.discovers
    with pytest.raises(ConfigError, match="no backends given"):
        Config.of(dns_server="127.0.0.1:53")


@pytest.mark.parametrize("backends, message", [
    ("dns://web.test", "expected dns://NAME:PORT"),
    ("dns://web test:80", "is not a DNS name"),
    ("dns://" + "a" * 64 + ".test:80", "is not a DNS name"),  # a label is at most 63 octets
    ("dns+srv://_http._tcp.x:80", "takes no port"),
    ("dns://a:80,dns://a:80", "listed twice"),
])
def test_a_bad_source_is_one_clear_error(backends, message):
    with pytest.raises(ConfigError, match=message):
        Config.of(backends=backends)


def test_discovery_flags_are_checked():
    with pytest.raises(ConfigError, match="--discovery: expected etcd://HOST"):
        Config.of(backends="a:1", discovery="http://127.0.0.1:2379/app")
    with pytest.raises(ConfigError, match="--dns-server: must be a resolver's IP"):
        Config.of(backends="a:1", dns_server="resolver.example:53")
    assert Config.of(backends="a:1", dns_server="[::1]:5353").cluster.dns_server == ("::1", 5353)
    with pytest.raises(ConfigError, match="--dns-refresh: must be from 0.1"):  # 0.001 flooded the DNS server
        Config.of(backends="dns://web.test:80", dns_refresh_s=0.001)


def test_a_bad_weight_of_a_source_in_a_file_says_where_once(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('[[backend]]\naddress = "dns+srv://_http._tcp.x.test"\nweight = 0\n')
    with pytest.raises(ConfigError) as info:
        ConfigSource(str(path)).load()
    assert str(info.value).count("[[backend]] #1") == 1, str(info.value)


def test_a_source_in_a_backend_table(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('discovery = "etcd://127.0.0.1:2379/app"\n\n[[backend]]\naddress = "dns://web.test:80"\n'
                    'weight = 2\n\n[[backend]]\naddress = "a:1"\n')
    cluster = ConfigSource(str(path)).load().cluster
    assert cluster.sources == (SourceSpec("dns://web.test:80", 2),) and cluster.discovery.endswith("/app")
    path.write_text('[[backend]]\naddress = "dns://web.test:80"\nname = "web"\n')
    with pytest.raises(ConfigError, match="'name' does not apply to a DNS source"):
        ConfigSource(str(path)).load()


def test_check_names_the_sources():
    result = run_cli("-m", "simplelb", "--backends", "dns://web.test:80", "--discovery", "etcd://127.0.0.1:1/app",
                     "--check")
    assert result.returncode == 0, result.stderr
    assert "dns://web.test:80 (discovered), etcd://127.0.0.1:1/app (discovered)" in result.stdout


# --- the merge ------------------------------------------------------------------------------


class FakeControl:
    """What Discovery needs of a control: ``change(edit, operator=)``, applied to a held configuration."""

    def __init__(self, cluster):
        self.discovery = Discovery(self.change)
        self.running = self.discovery.configure(cluster)
        self.generations = 1

    def change(self, edit, *, operator=True):
        after = edit(self.running)
        self.running = self.discovery.prepare_edit(self.running, after).commit() if operator else after
        self.generations += 1
        return self.generations

    def found(self, index: int, *specs: BackendSpec) -> None:
        source = self.discovery._sources[self.discovery._order[index]]
        self.discovery._apply([(source, specs)])  # what the watcher does with what a source sent

    def names(self):
        return [(s.name, s.weight, s.state) for s in self.running.backends]


def spec(address: str, **kwargs) -> BackendSpec:
    host, port = address.rsplit(":", 1)
    return BackendSpec(host, int(port), **kwargs)


@pytest.fixture
def control():
    return FakeControl(Config.of(backends="static:1,dns://a.test:80,dns://b.test:80").cluster)


def test_static_backends_first_then_each_source_in_order_without_duplicates(control):
    control.found(1, spec("10.0.0.2:80"), spec("static:1"))
    control.found(0, spec("10.0.0.1:80"), spec("10.0.0.2:80"))
    assert [name for name, _, _ in control.names()] == ["static:1", "10.0.0.1:80", "10.0.0.2:80"]
    generation = control.generations
    control.found(0, spec("10.0.0.1:80"), spec("10.0.0.2:80"))
    assert control.generations == generation  # the same list again changes nothing


def test_an_operator_change_of_a_discovered_backend_outlives_updates_until_a_reload(control):
    control.found(0, spec("10.0.0.1:80"), spec("10.0.0.3:80"))
    control.change(lambda c: c.with_backends(tuple(s.but(state="drain", weight=7) if s.name == "10.0.0.1:80" else s
                                                   for s in c.backends)))
    control.found(0, spec("10.0.0.1:80", weight=2), spec("10.0.0.4:80"))
    assert control.names() == [("static:1", 1, "ready"), ("10.0.0.1:80", 7, "drain"), ("10.0.0.4:80", 1, "ready")]
    control.found(0)  # gone from its source, then back: the override is still there
    control.found(0, spec("10.0.0.1:80"))
    assert ("10.0.0.1:80", 7, "drain") in control.names()
    control.running = control.discovery.configure(Config.of(backends="static:1,dns://a.test:80").cluster)
    assert control.names() == [("static:1", 1, "ready"), ("10.0.0.1:80", 1, "ready")]  # source kept, override gone


def test_a_backend_added_by_the_operator_stays_static(control):
    control.change(lambda c: c.with_backends((*c.backends, spec("added:2"))))
    control.found(0, spec("10.0.0.1:80"))
    assert [name for name, _, _ in control.names()] == ["static:1", "added:2", "10.0.0.1:80"]


def test_a_discovered_backend_cannot_be_deleted_here(control):
    control.found(0, spec("10.0.0.1:80"))
    with pytest.raises(Conflict, match="is discovered"):
        control.change(lambda c: c.with_backends(tuple(s for s in c.backends if s.name != "10.0.0.1:80")))


def test_a_static_backend_a_source_lists_too_cannot_be_deleted_here(control):
    # Left out of the source's list as taken; deleted, it would come back at once as the source's,
    # and the DELETE would have answered "removing" for a backend that stays.
    control.change(lambda c: c.with_backends((*c.backends, spec("10.0.0.1:80", weight=3))))
    control.found(0, spec("10.0.0.1:80"), spec("10.0.0.2:80"))
    running = control.names()
    with pytest.raises(Conflict, match="'10.0.0.1:80' is discovered too"):
        control.change(lambda c: changes.remove_backend(c, "10.0.0.1:80"))
    assert control.names() == running
    control.change(lambda c: changes.remove_backend(c, "static:1"))  # one no source lists goes as asked
    assert [name for name, _, _ in control.names()] == ["10.0.0.1:80", "10.0.0.2:80"]


def test_a_reload_that_drops_a_source_drops_its_backends(control):
    control.found(0, spec("10.0.0.1:80"))
    control.found(1, spec("10.0.0.2:80"))
    control.running = control.discovery.configure(Config.of(backends="static:1,dns://b.test:80").cluster)
    assert [name for name, _, _ in control.names()] == ["static:1", "10.0.0.2:80"]
    assert [s["source"] for s in control.discovery.status()] == ["dns://b.test:80"]


def test_a_reload_that_drops_a_source_drops_its_backends_while_another_never_listed(control):
    control.found(0, spec("10.0.0.1:80"))  # b.test has not answered since start, and may never
    control.running = control.discovery.configure(Config.of(backends="static:1,dns://b.test:80").cluster)
    assert [name for name, _, _ in control.names()] == ["static:1"]


def test_a_reload_that_changes_a_source_keeps_the_old_list_until_the_new_source_lists(control):
    control.found(0, spec("10.0.0.1:80"))
    control.found(1, spec("10.0.0.2:80"))
    # a.test becomes c.test (or a mistyped name): until c.test answers, a.test's backends stay.
    control.running = control.discovery.configure(Config.of(backends="static:1,dns://c.test:80,dns://b.test:80").cluster)
    assert [name for name, _, _ in control.names()] == ["static:1", "10.0.0.2:80", "10.0.0.1:80"]
    control.found(1, spec("10.0.0.2:80"), spec("10.0.0.3:80"))  # another source listing changes nothing of that
    assert "10.0.0.1:80" in [name for name, _, _ in control.names()]
    control.found(0, spec("10.0.0.9:80"))
    assert [name for name, _, _ in control.names()] == ["static:1", "10.0.0.9:80", "10.0.0.2:80", "10.0.0.3:80"]


def test_a_change_that_races_its_sources_removal_does_not_make_the_backend_static(control):
    control.found(0, spec("10.0.0.1:80"), spec("10.0.0.2:80"))
    apply_removal = control.discovery._change

    def operator_first(edit, *, operator=True):
        # The source's removal of 10.0.0.1 is in its list already and waits for the control's lock,
        # which an operator's PATCH of that backend holds.
        control.change(lambda c: c.with_backends(tuple(s.but(weight=5) for s in c.backends)))
        return apply_removal(edit, operator=operator)

    control.discovery._change = operator_first
    control.found(0, spec("10.0.0.2:80"))
    assert [(name, weight) for name, weight, _ in control.names()] == [("static:1", 5), ("10.0.0.2:80", 5)]


# --- a change the control refuses --------------------------------------------------------


def fleet_control():
    from simplelb.fleetcontrol import FleetControl

    return FleetControl(NoWorkers(), None, Config.of(backends="static:1,dns://a.test:80", workers=2))


def local_control():
    from simplelb.cluster import Cluster
    from simplelb.control import LocalControl

    config = Config.of(backends="static:1,dns://a.test:80")
    return LocalControl(Cluster(config.cluster), None, config)


def refuse_in_fleet(control, monkeypatch):
    """What a worker would not read back: the fleet's check of the merged result fails."""
    from simplelb import fleetcontrol

    def refused(values):
        raise ConfigError("refused (as a worker would)")

    monkeypatch.setattr(fleetcontrol, "cluster_from_dict", refused)


def refuse_in_cluster(control, monkeypatch):
    """The cluster of this process fails to take the merged result (a CA file broken meanwhile, a bug)."""

    def refused(config):
        raise ConfigError("refused by the cluster")

    monkeypatch.setattr(control.cluster, "update", refused)


def backends_of(control):
    return [(s.name, s.state) for s in control.config().backends]


@pytest.mark.parametrize("make, refuse", [(fleet_control, refuse_in_fleet), (local_control, refuse_in_cluster)],
                         ids=["fleet", "local"])
def test_a_change_or_reload_that_is_refused_leaves_discovery_as_it_was(make, refuse, monkeypatch):
    from simplelb.configfile import FixedSource

    control = make()
    source = control.discovery._sources[control.discovery._order[0]]
    control.discovery._apply([(source, (spec("10.0.0.1:80"),))])  # what the watcher does with a list
    control.change(lambda c: changes.patch_backend(c, "10.0.0.1:80", {"state": "drain"}))
    running = backends_of(control)
    assert running == [("static:1", "ready"), ("10.0.0.1:80", "drain")]

    control.source = FixedSource(Config.of(backends="static:1,dns://b.test:80", workers=2))
    with monkeypatch.context() as patched:
        refuse(control, patched)
        with pytest.raises(ConfigError, match="refused"):
            control.change(lambda c: changes.add_backend(c, spec("added:2")))
        with pytest.raises(ConfigError, match="refused"):
            control.reload()
    assert backends_of(control) == running
    # The refused reload neither stopped a.test nor started b.test, and counts as failed.
    assert not source.stopping.is_set() and [s["source"] for s in control.discovery.status()] == ["dns://a.test:80"]
    assert control.reloads.failure == 1 and "refused" in control.reloads.last_error[0]

    # The next update merges from what runs: no refused backend, the operator's drain kept.
    control.discovery._apply([(source, (spec("10.0.0.1:80"), spec("10.0.0.2:80")))])
    assert backends_of(control) == [("static:1", "ready"), ("10.0.0.1:80", "drain"), ("10.0.0.2:80", "ready")]


def test_a_source_that_fails_with_a_bug_runs_again(monkeypatch):
    monkeypatch.setattr("simplelb.source.RESTART_S", 0.05)
    lists = queue.SimpleQueue()

    class FailsOnce(Source):
        runs = 0

        def run(self):
            FailsOnce.runs += 1
            if FailsOnce.runs == 1:
                raise RecursionError("a bug")
            self.found((spec("10.0.0.1:80"),))
            self.stopping.wait()

    source = FailsOnce("test://", ("test",), lambda source, specs: lists.put(specs)).start()
    try:
        assert lists.get(timeout=5) == (spec("10.0.0.1:80"),)  # (before: the thread ended, for good)
    finally:
        source.stop()
        source.join(5)
    assert not source.alive()


# --- etcd values ------------------------------------------------------------------------------


def test_an_etcd_value_becomes_a_backend_named_by_its_key():
    entry = parse_entry("app/backends/web-1", b'{"address": "127.0.0.1:8081", "weight": 3, "state": "drain",'
                                              b' "registered_by": "deploy-42"}', "app/backends/")
    assert entry == BackendSpec("127.0.0.1", 8081, 3, False, "web-1", "drain")


@pytest.mark.parametrize("key, value, message", [
    ("app/backends/web-1", b"{not json", "not JSON"),
    ("app/backends/web-1", b'["127.0.0.1:1"]', "not a JSON object"),
    ("app/backends/web-1", b'{"weight": 2}', "'address' must be a string"),
    ("app/backends/web-1", b'{"address": "127.0.0.1:1", "weight": 0}', "weight must be"),
    ("app/backends/web-1", b'{"address": "127.0.0.1:1", "state": "off"}', "'state' must be one of"),
    ("app/backends/a b", b'{"address": "127.0.0.1:1"}', "is not 1-128 letters"),
])
def test_a_malformed_etcd_value_says_what_is_wrong(key, value, message):
    with pytest.raises(ValueError, match=message):
        parse_entry(key, value, "app/backends/")


def test_balancers_given_one_secret_file_share_the_cookie_secret(tmp_path):
    from simplelb import LoadBalancer

    path = tmp_path / "secret"
    path.write_text("a-shared-secret-of-some-length\n")
    config = Config.of(backends="127.0.0.1:1", sticky_secret_file=str(path), port=0)
    balancers = [LoadBalancer(config), LoadBalancer(config)]
    try:
        assert {lb.cluster._secret for lb in balancers} == {b"a-shared-secret-of-some-length"}
    finally:
        for lb in balancers:
            lb.stop(grace_s=0)
    path.write_text("short")
    with pytest.raises(ConfigError, match="one secret of at least 16 characters"):
        Config.of(backends="127.0.0.1:1", sticky_secret_file=str(path))
