"""simplelb.etcd against a real etcd: keys, leases, the create-if-absent transaction, watches."""

import socket
import threading

import pytest
import requests

from simplelb.etcd import EtcdClient, EtcdError, parse_etcd_url, prefix_range_end

from .conftest import free_port, run_cli, wait_for
from .etcd_support import running_etcd


@pytest.fixture
def prefix(etcd):
    return etcd.prefix() + "/"


class Collector:
    """Iterates a watch on a thread of its own, keeping every event."""

    def __init__(self, watch):
        self.watch = watch
        self.events = []
        self.error = None
        self.thread = threading.Thread(target=self._run, name="test watch", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.watch:
                self.events.append(event)
        except EtcdError as exc:
            self.error = exc

    def stop(self):
        self.watch.stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the watch did not stop"


# --- pure functions ---------------------------------------------------------------


def test_parse_etcd_url():
    assert parse_etcd_url("etcd://127.0.0.1:2379/app") == ("http://127.0.0.1:2379", "app")
    assert parse_etcd_url("etcd://etcd.local/a/b/") == ("http://etcd.local:2379", "a/b")
    assert parse_etcd_url("etcd://[::1]:2380//rooted") == ("http://[::1]:2380", "/rooted")
    for bad in ("http://h:2379/app", "etcd://h:2379", "etcd://h:2379/", "etcd://h:notaport/app", "etcd:///app"):
        with pytest.raises(EtcdError, match="etcd://HOST"):
            parse_etcd_url(bad)


# What each URL does wrong, as the one-line error names it. Each was once taken without a word:
# port 0 became 2379, and the user info, query and fragment were dropped.
BAD_ETCD_URLS = [
    ("etcd://h:0/app", "the port must be a number from 1 to 65535"),
    ("etcd://h:/app", "the port must be a number from 1 to 65535"),
    ("etcd://h:70000/app", "the port must be a number from 1 to 65535"),
    ("etcd://u:secret@h/app", "no user name or password"),
    ("etcd://u@h/app", "no user name or password"),
    ("etcd://h/app?x=1", "no query"),
    ("etcd://h/app?", "no query"),
    ("etcd://h/app#f", "no fragment"),
    ("etcd://h/app#", "no fragment"),
]


@pytest.mark.parametrize("url, problem", BAD_ETCD_URLS)
def test_parse_etcd_url_names_what_is_wrong(url, problem):
    with pytest.raises(EtcdError, match="expected etcd://HOST") as caught:
        parse_etcd_url(url)
    assert problem in str(caught.value) and "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)  # a password is not repeated where logs and terminals keep it


@pytest.mark.parametrize("url, problem", [case for case in BAD_ETCD_URLS if case[0] in {
    "etcd://h:0/app", "etcd://u:secret@h/app", "etcd://h/app?", "etcd://h/app#f"}])
@pytest.mark.parametrize("command", [["simplelb", "--check", "--backends", "127.0.0.1:1", "--discovery"],
                                     ["mockserv", "1", "--base-port", "0", "--register"]])
def test_bad_etcd_url_is_a_one_line_error_on_the_command_line(command, url, problem):
    result = run_cli("-m", *command, url)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{command[0]}: error:") and problem in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


def test_prefix_range_end():
    assert prefix_range_end(b"a/") == b"a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"


# --- keys -------------------------------------------------------------------------


def test_put_get_prefix_delete(client, prefix):
    first = client.put(prefix + "a", "1")
    second = client.put(prefix + "b", b"\x00\xff binary")
    client.put(prefix.rstrip("/") + "0-outside", "not under the prefix")
    assert second > first
    assert client.get(prefix + "a").text == "1"
    assert client.get(prefix + "b").value == b"\x00\xff binary"
    assert client.get(prefix + "missing") is None
    kvs, revision = client.get_prefix(prefix)
    assert [(kv.key, kv.value) for kv in kvs] == [(prefix + "a", b"1"), (prefix + "b", b"\x00\xff binary")]
    assert revision >= second and kvs[0].mod_revision == first
    assert client.delete(prefix + "a") == 1
    assert client.delete(prefix + "a") == 0
    assert client.delete_prefix(prefix) == 1
    assert client.get_prefix(prefix)[0] == []


def test_keys_and_values_in_unicode(client, prefix):
    client.put(prefix + "ключ", "värde ✓")
    assert client.get(prefix + "ключ").text == "värde ✓"


# --- leases -------------------------------------------------------------------------


def test_lease_revoke_deletes_its_keys(client, prefix):
    lease = client.grant(30)
    assert lease.ttl_s == 30
    client.put(prefix + "leased", "x", lease=lease.id)
    assert client.get(prefix + "leased").lease == lease.id
    assert 0 < client.keepalive(lease.id) <= 30
    assert client.revoke(lease.id) is True
    assert client.get(prefix + "leased") is None
    assert client.revoke(lease.id) is False  # already gone: not an error
    assert client.keepalive(lease.id) == 0
    assert client.time_to_live(lease.id) == -1


def test_lease_expires_without_keepalive(client, prefix):
    lease = client.grant(2)  # etcd's minimum
    client.put(prefix + "short-lived", "x", lease=lease.id)
    wait_for(lambda: client.get(prefix + "short-lived") is None, 10, "the lease to expire")
    assert client.keepalive(lease.id) == 0


def test_put_under_an_unknown_lease_is_a_clear_error(client, prefix):
    with pytest.raises(EtcdError, match="lease not found") as error:
        client.put(prefix + "k", "v", lease=12345)
    assert error.value.grpc_code == 5


# --- create if absent -----------------------------------------------------------------


def test_create_if_absent_creates_once(client, prefix):
    assert client.create_if_absent(prefix + "secret", "first")[0] is True
    created, current = client.create_if_absent(prefix + "secret", "second")
    assert created is False and current.text == "first"


def test_create_if_absent_race_has_one_winner(client, prefix):
    results = []
    barrier = threading.Barrier(8)

    def contend(i):
        contender = EtcdClient(client.endpoint)
        barrier.wait(5)
        results.append(contender.create_if_absent(prefix + "raced", f"value-{i}"))
        contender.close()

    threads = [threading.Thread(target=contend, args=(i,), name=f"contender {i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(created for created, _ in results) == 1
    assert len({kv.value for _, kv in results}) == 1
    assert client.get(prefix + "raced").value == results[0][1].value


# --- watch -------------------------------------------------------------------------


def test_watch_sees_puts_and_deletes_in_order(client, prefix):
    collector = Collector(client.watch(prefix))
    try:
        wait_for(lambda: collector.watch.next_revision is not None, 5, "the watch to be created")
        client.put(prefix + "x", "1")
        client.put(prefix + "x", "2")
        client.put(prefix.rstrip("/") + "0-outside", "ignored")
        client.delete(prefix + "x")
        wait_for(lambda: len(collector.events) == 3, 5, "three events")
    finally:
        collector.stop()
    assert [(e.type, e.kv.key, e.kv.value) for e in collector.events] == [
        ("PUT", prefix + "x", b"1"), ("PUT", prefix + "x", b"2"), ("DELETE", prefix + "x", b"")]
    revisions = [e.revision for e in collector.events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 3
    assert collector.error is None


def test_watch_resumes_from_a_revision(client, prefix):
    revisions = [client.put(prefix + f"k{i}", str(i)) for i in range(5)]
    collector = Collector(client.watch(prefix, start_revision=revisions[2]))
    try:
        wait_for(lambda: len(collector.events) == 3, 5, "the history from revision 3 on")
        assert [e.kv.text for e in collector.events] == ["2", "3", "4"]
        assert collector.watch.next_revision == revisions[4] + 1
    finally:
        collector.stop()


def test_watch_stops_from_another_thread_while_waiting(client, prefix):
    collector = Collector(client.watch(prefix))
    wait_for(lambda: collector.watch.next_revision is not None, 5, "the watch to be created")
    collector.stop()  # asserts the iterating thread returned
    assert collector.error is None and collector.events == []


def test_watch_of_compacted_history_says_so(client, prefix):
    first = client.put(prefix + "old", "1")
    latest = client.put(prefix + "old", "2")
    requests.post(client.endpoint + "/v3/kv/compaction", json={"revision": str(latest)}, timeout=5).raise_for_status()
    with pytest.raises(EtcdError, match="compacted"):
        for _ in client.watch(prefix, start_revision=first):
            pass


def test_unreachable_etcd_is_one_clear_error():
    unreachable = EtcdClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(EtcdError, match=r"etcd at http://127.0.0.1:\d+: cannot put: Connection refused"):
        unreachable.put("k", "v")
    with pytest.raises(EtcdError, match="cannot watch: Connection refused"):
        next(iter(unreachable.watch("p/")))


def test_a_watch_broken_by_etcd_dying_raises_and_resumes_after_restart():
    with running_etcd() as server:
        client = EtcdClient(server.endpoint)
        prefix = server.prefix() + "/"
        collector = Collector(client.watch(prefix))
        wait_for(lambda: collector.watch.next_revision is not None, 5, "the watch to be created")
        client.put(prefix + "before", "1")
        wait_for(lambda: len(collector.events) == 1, 5, "the first event")
        server.kill()
        collector.thread.join(10)
        assert isinstance(collector.error, EtcdError) and "watch" in str(collector.error)
        server.restart()
        client.put(prefix + "after", "2")  # made while no one watched
        resumed = Collector(client.watch(prefix, start_revision=collector.watch.next_revision))
        try:
            wait_for(lambda: len(resumed.events) == 1, 5, "the change made while etcd was away")
            assert resumed.events[0].kv.key == prefix + "after"
        finally:
            resumed.stop()
            client.close()


def test_a_server_that_accepts_and_never_answers_holds_up_neither_stop_nor_the_watch():
    silent = socket.create_server(("127.0.0.1", 0))  # connections wait in its backlog, unanswered
    try:
        client = EtcdClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=1)
        with pytest.raises(EtcdError, match="cannot watch: .*timed out"):
            next(iter(client.watch("p/")))  # not for ever: the answer's head has the client's timeout
        collector = Collector(client.watch("p/"))
        stopper = threading.Thread(target=collector.watch.stop, daemon=True)
        stopper.start()  # (while the request is, or is about to be, unanswered)
        stopper.join(5)
        assert not stopper.is_alive(), "stop() waited for the unanswered request"
        collector.thread.join(5)
        assert not collector.thread.is_alive()
    finally:
        silent.close()
