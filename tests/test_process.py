"""The balancer as a process: signals, flag manners, debug logging, IPv6."""

import re
import signal

import pytest
import requests

from mockserv import MockServer

from .conftest import (
    free_port,
    needs_ipv6,
    read_then_reset,
    run_cli,
    serve_forever_ok,
    start_lb_process,
    wait_for,
)


def test_stray_signals_are_logged_not_fatal_and_sigquit_stops_gracefully(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, _ = start_lb_process(process, "--backends", mock.address)
    for signum in (signal.SIGUSR2, signal.SIGALRM, signal.SIGHUP, signal.SIGUSR1):
        proc.proc.send_signal(signum)
    proc.wait_for_output("SIGALRM ignored")
    proc.wait_for_output("reloaded: generation 2")  # SIGHUP without --config: the flags, again
    assert requests.get(url, timeout=5).status_code == 200 and proc.proc.poll() is None
    proc.proc.send_signal(signal.SIGQUIT)
    assert proc.wait() == 0
    assert "SIGQUIT: stopping" in proc.stderr and "Traceback" not in proc.stderr


def test_workers_say_who_they_are_and_a_stop_is_not_a_death(process):
    dead = f"127.0.0.1:{free_port()}"
    proc, url, _ = start_lb_process(process, "--backends", dead, "--workers", "2", "--health-interval", "0.2",
                                    "--fall", "1")
    line = proc.wait_for_output(f"backend {dead} is DOWN")
    assert re.search(r"worker [12] simplelb\.health", line)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "died" not in proc.stderr


def test_a_short_health_interval_alone_is_accepted_and_enumerations_ignore_case():
    result = run_cli("-m", "simplelb", "--backends", "HTTP://127.0.0.1:9", "--health-interval", "0.5",
                     "--log-level", "WARNING", "--algorithm", "Round-Robin", "--eject-return", "Timer", "--check")
    assert result.returncode == 0, result.stderr
    too_long = run_cli("-m", "simplelb", "--backends", "a:1", "--health-interval", "0.5", "--health-timeout", "2")
    assert too_long.returncode == 2 and "--health-timeout must not be longer than --health-interval" in too_long.stderr


def test_a_size_error_names_the_flag_given():
    result = run_cli("-m", "simplelb", "--backends", "a:1", "--max-header-bytes", "1K")
    assert result.returncode == 2
    assert result.stderr.startswith("simplelb: error: --max-header-bytes 1024 is smaller than --max-url 8192")


@pytest.mark.parametrize("program", ["simplelb", "mockserv", "traffic"])
def test_every_program_has_a_version(program):
    result = run_cli("-m", program, "--version")
    assert result.returncode == 0 and re.fullmatch(rf"{program} \d+\.\d+\.\d+\n", result.stdout)


def test_debug_logging_shows_picks_retries_and_pool_reuse(process, scripted):
    good, bad = scripted(serve_forever_ok), scripted(read_then_reset)
    proc, url, _ = start_lb_process(process, "--backends", f"{bad.address},{good.address}", "--log-level", "debug",
                                    "--eject-after", "0")
    with requests.Session() as session:
        for _ in range(4):
            session.get(url, timeout=5)
        session.post(url, data=b"not idempotent", timeout=5)
    proc.wait_for_output(f"round-robin picked {good.address} among ['{bad.address}', '{good.address}']")
    proc.wait_for_output(f"reusing a pooled connection to {good.address}")
    proc.wait_for_output("opening a new connection to")
    proc.wait_for_output("retrying GET / on another backend")
    proc.wait_for_output("not retrying POST / (sent: True, replayable: False")
    proc.proc.terminate()
    assert proc.wait() == 0


# --- IPv6 -----------------------------------------------------------------------------


@needs_ipv6
def test_ipv6_listener_and_backends_end_to_end(process):
    mock = MockServer("v6", host="::1").start()
    try:
        proc, url, admin = start_lb_process(process, "--host", "::1", "--backends", f"[::1]:{mock.port}",
                                            "--admin", "[::1]:0")
        assert url.startswith("http://[::1]:")
        response = requests.get(url + "/six", timeout=5)
        assert response.status_code == 200 and response.json()["name"] == "v6"
        assert requests.get(admin + "/status", timeout=5).json()["backends"][0]["address"] == f"[::1]:{mock.port}"
        proc.proc.terminate()
        assert proc.wait() == 0
    finally:
        mock.stop()


@needs_ipv6
def test_listening_on_all_addresses_takes_ipv4_and_ipv6(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, _ = start_lb_process(process, "--host", "::", "--backends", mock.address)
    port = url.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert requests.get(f"http://[::1]:{port}/", timeout=5).status_code == 200
    proc.proc.terminate()
    assert proc.wait() == 0


@needs_ipv6
def test_ipv6_with_workers(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, _ = start_lb_process(process, "--host", "::1", "--backends", mock.address, "--workers", "2")
    assert all(requests.get(url, timeout=5).status_code == 200 for _ in range(4))
    proc.proc.terminate()
    assert proc.wait(30) == 0
    wait_for(lambda: proc.proc.poll() is not None, what="exit")
