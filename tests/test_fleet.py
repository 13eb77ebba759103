"""``--workers 2``: one admin listener in the parent, one configuration in every worker, counters summed."""

import contextlib
import os
import re
import signal
import threading
import time

import pytest
import requests

from .conftest import JSON, ROOT, holding, run_cli, start_lb_process, wait_for


def write_config(path, mocks, extra=""):
    tables = "".join(f'\n[[backend]]\nname = "{m.name}"\naddress = "{m.address}"\n' for m in mocks)
    path.write_text(f'workers = 2\nadmin = "127.0.0.1:0"\nhealth-interval = 60\nlog-level = "warning"\n{extra}\n{tables}')


def fresh_get(url: str) -> requests.Response:
    """A request on a new connection: the kernel may hand it to either worker."""
    with requests.Session() as session:
        return session.get(url, timeout=5)


def status(admin: str) -> dict:
    return requests.get(admin + "/status", timeout=5).json()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_share_one_configuration_and_their_counts_add_up(process, mock_servers, tmp_path):
    mocks = mock_servers(3)
    path = tmp_path / "lb.toml"
    write_config(path, mocks[:2])
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    first = status(admin)
    assert len(first["workers"]) == 2 and first["applied"] is True
    assert {w["generation"] for w in first["workers"]} == {1}
    pids = {w["pid"] for w in first["workers"]}
    assert len(pids) == 2 and os.getpid() not in pids

    assert all(fresh_get(url).status_code == 200 for _ in range(40))
    assert sum(b["requests"] for b in status(admin)["backends"]) == 40  # each counted once, by its worker

    started = time.monotonic()
    added = requests.post(admin + "/backends", json={"address": mocks[2].address, "name": "mock-3"}, timeout=5)
    assert added.status_code == 201
    after = status(admin)
    assert time.monotonic() - started < 1.0
    assert after["applied"] is True and {w["generation"] for w in after["workers"]} == {2}
    wait_for(lambda: status(admin)["backends"][2]["state"] == "up", what="mock-3 up in the workers")
    assert "mock-3" in {fresh_get(url).headers["X-Backend"] for _ in range(30)}

    write_config(path, mocks[1:])  # mock-1 out
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status(admin)["generation"] == 3 and status(admin)["applied"], what="the reload in every worker")
    wait_for(lambda: "mock-1" not in [b["name"] for b in status(admin)["backends"]], what="mock-1 gone")
    assert "mock-1" not in {fresh_get(url).headers["X-Backend"] for _ in range(20)}

    path.write_text("workers = 2\nport = 0\nalgorithm = 7\n")
    bad = requests.post(admin + "/reload", headers=JSON, timeout=5)
    assert bad.status_code == 400 and "algorithm" in bad.json()["error"]
    assert status(admin)["generation"] == 3
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0 and "Traceback" not in proc.stderr


def test_a_replaced_worker_does_not_take_its_counts_with_it(process, mock_servers):
    mocks = mock_servers(2)
    proc, url, admin = start_lb_process(process, "--backends", ",".join(m.address for m in mocks), "--workers", "2",
                                        "--admin", "127.0.0.1:0", "--health-interval", "60")
    for _ in range(30):
        fresh_get(url)
    before = status(admin)
    total = sum(b["requests"] for b in before["backends"])
    assert total == 30
    victim = before["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    proc.wait_for_output(f"(pid {victim}) died (killed by SIGKILL); starting a new one")
    wait_for(lambda: len(status(admin)["workers"]) == 2 and victim not in {w["pid"] for w in status(admin)["workers"]},
             timeout_s=20, what="a replacement worker")
    assert sum(b["requests"] for b in status(admin)["backends"]) >= total
    assert all(fresh_get(url).status_code == 200 for _ in range(10))
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_a_stopped_worker_is_killed_and_replaced_and_the_admin_side_keeps_answering(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, admin = start_lb_process(process, "--backends", mock.address, "--workers", "2",
                                        "--admin", "127.0.0.1:0", "--health-interval", "60")
    victim = status(admin)["workers"][0]["pid"]
    os.kill(victim, signal.SIGSTOP)  # alive, holding its share of the port, answering nothing
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3:  # its silence costs /status a second at most, never a hang
            assert requests.get(admin + "/status", timeout=3).status_code == 200
        proc.wait_for_output(f"(pid {victim}) has not answered for 10s; killing it", timeout_s=30)
        wait_for(lambda: victim not in {w["pid"] for w in status(admin)["workers"]}
                 and len(status(admin)["workers"]) == 2, timeout_s=20, what="a replacement worker")
    finally:
        with contextlib.suppress(ProcessLookupError):  # lets it go if the test failed before it was killed
            os.kill(victim, signal.SIGCONT)
    assert not alive(victim)
    assert all(fresh_get(url).status_code == 200 for _ in range(20))
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_a_send_to_a_worker_that_stopped_reading_fails_in_time_and_so_does_every_later_one():
    import socket

    from simplelb.channel import Channel, ChannelClosed

    ours, theirs = socket.socketpair()
    channel = Channel(ours, send_timeout_s=0.2)
    try:
        message = {"op": "apply", "cluster": "x" * 60_000}
        started = time.monotonic()
        with pytest.raises(ChannelClosed, match="stopped reading"):
            for _ in range(1000):  # the socket buffers fill within a few dozen; then a send must give up
                channel.send(message)
        assert time.monotonic() - started < 5
        theirs.recv(1 << 20)  # room again, but part of a line may be on the wire: the channel stays broken
        with pytest.raises(ChannelClosed, match="stopped reading"):
            channel.send({"op": "stats"})
    finally:
        channel.close()
        theirs.close()


def test_a_merged_backend_is_up_exactly_when_its_merged_state_is_up():
    from itertools import product

    from simplelb.backend import STATES, Backend, takes_new_in
    from simplelb.fleetcontrol import merge_backends
    from simplelb.specs import BackendSpec

    spec = BackendSpec("127.0.0.1", 9, name="web")
    up_here, down_there = Backend(spec), Backend(spec)
    down_there.await_first_probe()  # as just after POST /backends, or a mock's health just gone down in one worker
    (row,) = merge_backends([[up_here.status()], [down_there.status()]], {})
    assert (row["state"], row["up"]) == ("down", False)  # a tie goes to down; "up" was an OR of the workers' up
    assert row["worker_states"] == {"up": 1, "down": 1}
    for states in product(STATES, repeat=3):  # any two or three workers, whatever each says
        for count in (2, 3):
            reports = [[{**up_here.status(), "state": state, "up": takes_new_in(state)}] for state in states[:count]]
            (row,) = merge_backends(reports, {})
            assert row["up"] == (row["state"] == "up"), (states[:count], row["state"])


def test_what_dead_workers_counted_goes_to_the_backend_at_its_address_not_to_the_first_of_its_name():
    from simplelb.backend import Backend
    from simplelb.fleetcontrol import BACKEND_SUMS, merge_backends
    from simplelb.specs import BackendSpec

    moved, old = Backend(BackendSpec("127.0.0.1", 8, name="web")), Backend(BackendSpec("127.0.0.1", 9, name="web"))
    old.mark_removing()  # a reload moved "web" to port 8; port 9 finishes its requests
    report = [moved.status(), old.status()]
    dead = {key: old.status()[key] for key in BACKEND_SUMS} | {"requests": 4, "probes": {"pass": 5, "fail": 0}}
    rows = merge_backends([report, report], {("web", "127.0.0.1:9"): dead})
    assert [(r["address"], r["requests"], r["probes"]["pass"]) for r in rows] == [
        ("127.0.0.1:8", 0, 0), ("127.0.0.1:9", 4, 5)]


def test_a_backend_removed_and_added_again_starts_from_zero_though_the_workers_that_counted_it_died(
        process, mock_servers):
    first, second = mock_servers(2)
    proc, url, admin = start_lb_process(process, "--backends", first.address, "--workers", "2",
                                        "--admin", "127.0.0.1:0", "--health-interval", "60")

    def extra() -> dict | None:
        return next((b for b in status(admin)["backends"] if b["name"] == "extra"), None)

    def add() -> None:
        added = requests.post(admin + "/backends", json={"address": second.address, "name": "extra"}, timeout=5)
        assert added.status_code == 201
        wait_for(lambda: extra()["state"] == "up", what="extra up in every worker")

    add()
    assert all(fresh_get(url).status_code == 200 for _ in range(20))
    counted = extra()["requests"]  # (this /status also has every worker report what it counted)
    assert counted > 0
    victims = [w["pid"] for w in status(admin)["workers"]]
    for pid in victims:  # every worker that counted a request for it
        os.kill(pid, signal.SIGKILL)
    for pid in victims:
        proc.wait_for_output(f"(pid {pid}) died (killed by SIGKILL); starting a new one")
    wait_for(lambda: len(status(admin)["workers"]) == 2 and not set(victims) & {w["pid"] for w in status(admin)["workers"]},
             timeout_s=20, what="two new workers")
    assert extra()["requests"] == counted  # while it stays configured, what the dead counted stays

    assert requests.delete(admin + "/backends/extra", headers=JSON, timeout=5).status_code == 202
    wait_for(lambda: extra() is None, what="extra gone from every worker")
    add()
    again = extra()
    assert again["requests"] == again["failures"] == again["retries"] == again["ejections"] == 0, again
    assert set(again["responses"].values()) == {0} and set(again["response_time"]["counts"]) == {0}
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0 and "Traceback" not in proc.stderr


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def test_a_stop_while_the_workers_start_does_not_wait_for_them(process, mock_servers, tmp_path):
    (mock,) = mock_servers(1)
    # Every worker hangs before it starts (a loaded machine, a slow disk); the parent is not slowed.
    (tmp_path / "sitecustomize.py").write_text(
        "import time\nif b'simplelb.worker' in open('/proc/self/cmdline', 'rb').read():\n    time.sleep(60)\n")
    proc = process("-m", "simplelb", "--port", "0", "--backends", mock.address, "--workers", "2",
                   env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})

    wait_for(lambda: children(proc.proc.pid), timeout_s=10, what="the first worker to be started")
    starting = children(proc.proc.pid)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0, proc.stderr  # not after the 15 s a worker is given to start
    assert not any(alive(pid) for pid in starting)


def test_a_change_while_a_replacement_worker_starts_does_not_kill_it(process, mock_servers, tmp_path):
    (mock,) = mock_servers(1)
    slow = tmp_path / "slow"  # while it exists, a worker starting sleeps 3 s first (a busy machine)
    (tmp_path / "sitecustomize.py").write_text(
        f"import os, time\nif b'simplelb.worker' in open('/proc/self/cmdline', 'rb').read() and "
        f"os.path.exists({str(slow)!r}):\n    time.sleep(3)\n")
    proc = process("-m", "simplelb", "--port", "0", "--backends", mock.address, "--workers", "2",
                   "--admin", "127.0.0.1:0", env={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    admin = re.search(r"admin on (http://\S+)", proc.wait_for_output("admin on", 20)).group(1)
    slow.touch()
    victim = status(admin)["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(proc.proc.pid)) == 2 and victim not in children(proc.proc.pid),
             what="the replacement started (and sleeping)")
    patched = requests.patch(f"{admin}/backends/{mock.address}", json={"weight": 7}, timeout=10)
    assert patched.status_code == 200
    wait_for(lambda: status(admin)["applied"], 15, "the replacement serving the change")
    assert "failed generation" not in proc.stderr  # (it was killed for not confirming while it started)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_each_patch_is_answered_with_what_it_did_though_others_run_at_once(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, _, admin = start_lb_process(process, "--backends", mock.address, "--workers", "2", "--admin", "127.0.0.1:0")
    wrong = []

    def patch(weights) -> None:
        for weight in weights:
            answer = requests.patch(f"{admin}/backends/{mock.address}", json={"weight": weight}, timeout=10).json()
            if answer["weight"] != weight:  # (it was read after the change, and another had come since)
                wrong.append((weight, answer["weight"]))

    threads = [threading.Thread(target=patch, args=(range(10 * i + 1, 10 * i + 9),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert wrong == []
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_sighup_with_a_bad_file_keeps_the_fleet_serving(process, mock_servers, tmp_path):
    mocks = mock_servers(2)
    path = tmp_path / "lb.toml"
    write_config(path, mocks)
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    # A port of superscript digits passed str.isdigit() and then failed int(): the fleet used to exit.
    path.write_text(f'workers = 2\nadmin = "127.0.0.1:0"\n[[backend]]\naddress = "127.0.0.1:{mocks[0].port}\u00b2"\n')
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for_output("reload failed, keeping the running configuration")
    reloads = status(admin)["reloads"]
    assert reloads["failure"] == 1 and "is not a port number" in reloads["last_error"][0]
    assert all(fresh_get(url).status_code == 200 for _ in range(10))
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0 and "Traceback" not in proc.stderr


def test_a_name_moved_to_another_address_is_listed_beside_the_old_one_while_it_drains(
        process, mock_servers, scripted, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()
    old = scripted(holding(release, most_s=20))
    (new,) = mock_servers(1)
    path = tmp_path / "lb.toml"

    def configure(address: str) -> None:
        path.write_text(f'workers = 2\nadmin = "127.0.0.1:0"\nhealth-interval = 60\nlog-level = "warning"\n'
                        f'[[backend]]\nname = "web"\naddress = "{address}"\n')

    configure(old.address)
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fresh_get, url)
        wait_for(lambda: len(old.received) == 1, what="a request in flight on the old address")
        configure(new.address)
        assert requests.post(admin + "/reload", headers=JSON, timeout=5).status_code == 200
        wait_for(lambda: [(b["name"], b["address"], b["state"]) for b in status(admin)["backends"]]
                 == [("web", new.address, "up"), ("web", old.address, "removing")], what="both, each as it is")
        assert requests.get(admin + "/backends/web", timeout=5).json()["address"] == new.address
        patched = requests.patch(admin + "/backends/web", json={"weight": 3}, timeout=5)
        assert patched.status_code == 200 and patched.json()["weight"] == 3
        release.set()
        assert pending.result(10).status_code == 200
    wait_for(lambda: [(b["address"], b["state"]) for b in status(admin)["backends"]] == [(new.address, "up")],
             what="the old one gone once drained")


def test_workers_exit_when_the_parent_is_killed(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, admin = start_lb_process(process, "--backends", mock.address, "--workers", "2", "--admin", "127.0.0.1:0")
    workers = [w["pid"] for w in status(admin)["workers"]]
    proc.proc.kill()
    proc.proc.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout_s=15, what="the workers to exit with their parent")


def test_a_second_balancer_on_the_same_port_is_refused(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, _ = start_lb_process(process, "--backends", mock.address, "--workers", "2")
    port = url.rsplit(":", 1)[1]
    for workers in ("2", "1"):
        result = run_cli("-m", "simplelb", "--backends", mock.address, "--workers", workers, "--port", port)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"simplelb: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # ...and right after it stopped, the port can be taken again (SO_REUSEADDR despite TIME_WAIT).
    again, url2, _ = start_lb_process(process, "--backends", mock.address, "--workers", "2", "--port", port)
    assert fresh_get(url2).status_code == 200
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0


def test_changes_under_traffic_through_two_workers_cause_no_client_error(process, mock_servers, tmp_path):
    from .conftest import SteadyTraffic

    mocks = mock_servers(3, latency_ms=(1, 5))
    path = tmp_path / "lb.toml"
    write_config(path, mocks[:2])
    proc, url, admin = start_lb_process(process, "--config", str(path), admin=True)
    traffic = SteadyTraffic(url, rate=200, clients=8, max_s=60).start()
    try:
        steps = [
            lambda: requests.post(admin + "/backends", json={"address": mocks[2].address, "name": "mock-3"}, timeout=5),
            lambda: requests.patch(admin + "/backends/mock-1", json={"weight": 4}, timeout=5),
            lambda: requests.patch(admin + "/backends/mock-2", json={"state": "drain"}, timeout=5),
            lambda: requests.delete(admin + "/backends/mock-2", headers=JSON, timeout=5),
            lambda: requests.post(admin + "/reload", headers=JSON, timeout=5),  # back to mock-1 and mock-2
        ]
        for step in steps:
            assert step().status_code in (200, 201, 202)
            wanted = sum(traffic.snapshot()[0].values()) + 60
            wait_for(lambda: sum(traffic.snapshot()[0].values()) >= wanted, what="traffic")  # noqa: B023
            assert status(admin)["applied"]
    finally:
        traffic.stop()
    outcomes, backends = traffic.snapshot()
    assert set(outcomes) == {200}, traffic.errors[:5]
    assert set(backends) == {"mock-1", "mock-2", "mock-3"}
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
