"""traffic's command-line manners: flags that do not apply, limits, output paths, Ctrl-C, a closed stdout."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli, wait_for
from .traffic_support import recorder  # noqa: F401 - a fixture

TRAFFIC = ("-m", "traffic")


@pytest.mark.parametrize("args, message", [
    (["--scenario", "burst", "--rate", "5"], "--rate does not apply to --scenario"),
    (["--demo", "--url", "http://x:1"], "--url does not apply to --demo"),
    (["--compare", "round-robin", "--duration", "2"], "--duration does not apply to --compare"),
    (["--compare", "round-robin", "--scenario", "burst", "--n", "5"], "--n does not apply to --compare with --scenario"),
    (["--speed", "2"], "--speed does not apply to a run against --url"),
    (["--demo", "--threshold", "p99<1s"], "--threshold does not apply to --demo"),
    (["--scenario", "burst", "--processes", "2"], "--processes does not apply to --scenario"),
    (["--replay", "x.log", "--method", "POST"], "--method does not apply to --replay"),
    (["--targets", "t.txt", "--path", "/x"], "--path does not go with --targets"),
    (["--concurrency", "10001"], "--concurrency: must be a whole number from 1 to 10,000"),
    (["--rate", "100001"], "--rate: must be greater than zero and at most 100,000"),
    (["--processes", "4", "--concurrency", "2"], "--processes 4 needs --concurrency of at least 4"),
    (["--threshold", "p99<fast"], "not a threshold: 'p99<fast'"),
    (["--demo", "--scenario", "burst"], "--demo and --scenario do not go together"),
    (["--cacert", "ca.pem", "--insecure"], "give --cacert or --insecure, not both"),
    # These were tracebacks, or every worker thread dying and a report of none failed out of 0:
    (["--timeout", "inf"], "--timeout: must be greater than zero and at most 3,600"),
    (["--duration", "inf", "--rate", "5"], "--duration: must be greater than zero and at most 86,400"),
    (["--url", "http://[::1"], "a URL must look like http://host:port"),
    (["-H", "X-Name: \u4e2d"], "a header's value must be Latin-1 text"),
    (["--url", "http://127.0.0.1:1/a\x01b"], "no spaces or control characters"),
    (["--csv", "same.out", "--html", "same.out"], "--html and --csv name the same file"),
    (["--csv", ""], "--csv: needs a file name"),
    (["--rate", "5", "--concurrency", "1", "--processes", "4"], "--processes 4 needs --concurrency of at least 4"),
    (["--demo", "--n", "1"], "--n with --demo must be at least 3"),
    (["--url", "http://127.0.0.1:0"], "invalid port in 'http://127.0.0.1:0'"),  # (was port 80, silently)
    (["--method", ""], "not an HTTP method: ''"),  # (was GET, silently)
    (["--compare", "round-robin,round-robin"], "each algorithm once"),  # (two runs, one row)
])
def test_a_flag_that_does_not_fit_is_a_one_line_error(args, message):
    result = run_cli(*TRAFFIC, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("traffic: error:")
    assert message in result.stderr


def test_a_path_beyond_ascii_is_sent_percent_encoded(recorder):  # noqa: F811
    server = recorder()
    result = run_cli(*TRAFFIC, "--url", server.url + "/caf\u00e9?q=\u4e2d", "--n", "3", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["requests"] == 3
    assert [r["target"] for r in server.received] == ["/caf%C3%A9?q=%E4%B8%AD"] * 3


@pytest.mark.parametrize("flag", ["--html", "--json-file", "--csv"])
def test_an_unwritable_output_path_fails_before_the_run(recorder, tmp_path, flag):  # noqa: F811
    server = recorder()
    for path in (tmp_path / "missing-dir" / "out", tmp_path):
        result = run_cli(*TRAFFIC, "--url", server.url, "--n", "5", flag, str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert f"{flag}: " in result.stderr
    assert server.received == []  # nothing was sent
    assert list(tmp_path.iterdir()) == []  # and the check left no file behind


def test_a_scenario_that_is_not_utf8_or_not_there_is_one_line(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes("description = 'caf\xe9'\n[[phase]]\nduration = 1\nrate = 5\n".encode("latin-1"))
    for path, message in ((latin, "is not UTF-8 text"), (tmp_path / "none.toml", "cannot read the scenario")):
        result = run_cli(*TRAFFIC, "--scenario", str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--scenario", "--replay", "--targets", "--data", "--cacert"])
def test_a_fifo_named_as_an_input_file_is_a_one_line_error_at_once(recorder, tmp_path, flag):  # noqa: F811
    # open() on a FIFO waits for a writer: traffic used to hang before sending anything
    server = recorder()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    url = server.url.replace("http://", "https://") if flag == "--cacert" else server.url
    args = {"--scenario": [flag, str(fifo)], "--replay": ["--url", url, flag, str(fifo)],
            "--data": ["--url", url, "--n", "1", flag, f"@{fifo}"]}.get(flag, ["--url", url, "--n", "1", flag, str(fifo)])
    result = run_cli(*TRAFFIC, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not a regular file (a FIFO)" in result.stderr and "Traceback" not in result.stderr
    assert server.received == []


def test_a_closed_stdout_exits_quietly(recorder):  # noqa: F811
    server = recorder()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *TRAFFIC, "--url", server.url, "--n", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the report is written, as with | head
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err
    shell = subprocess.run(f"{sys.executable} -m traffic --url {server.url} --n 30 --json | head -c 1", shell=True,
                           capture_output=True, env=env, timeout=30)
    assert shell.stdout == b"{" and b"Traceback" not in shell.stderr


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def interrupt(proc, marker: str, timeout_s: float = 30) -> float:
    """Wait for ``marker`` in the output, press Ctrl-C, and return how long the process took to exit."""
    proc.wait_for_output(marker, timeout_s)
    pressed = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0, proc.stderr
    return time.monotonic() - pressed


# Within a second; on this shared 2-core machine a loaded moment adds some.
PROMPT_S = 1.5


def test_ctrl_c_on_a_stalled_server_reports_within_a_second(recorder, process):  # noqa: F811
    server = recorder(delay_s=30)
    proc = process(*TRAFFIC, "--url", server.url, "--n", "50", "--concurrency", "2", "--timeout", "60")
    wait_for(lambda: len(server.received) == 2, 15, "two stalled requests")
    pressed = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert time.monotonic() - pressed < PROMPT_S
    report = "".join(proc.stdout_lines)
    assert "Traceback" not in proc.stderr
    # The two it was waiting for are counted, not dropped: with them left out, this read "none of 0".
    assert "2 requests to" in report and "Failed: 2 of 2 (100.00%): transport 2 (unanswered at stop x 2)" in report


def test_ctrl_c_with_processes_leaves_no_process_behind(recorder, process):  # noqa: F811
    server = recorder()
    proc = process(*TRAFFIC, "--url", server.url, "--duration", "60", "--concurrency", "2", "--processes", "2",
                   "--json")
    wait_for(lambda: len(server.received) > 50, 30, "traffic from both processes")
    children = children_of(proc.proc.pid)
    assert len(children) >= 2  # the two senders (and multiprocessing's resource tracker)
    pressed = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert time.monotonic() - pressed < PROMPT_S + 1  # the children send back their results first
    report = json.loads("".join(proc.stdout_lines))
    assert report["requests"] >= 50 and report["requests"] <= len(server.received)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 5, "the children to be gone")


@pytest.mark.parametrize("args, marker", [
    (["--demo", "--n", "200000"], "-> phase 1"),
    (["--scenario", "rolling-restart"], "-> rolling restart"),
    (["--compare", "round-robin,peak-ewma", "--n", "200000"], "-> round-robin"),
])
def test_ctrl_c_in_every_mode_stops_within_a_second_with_a_report(process, args, marker):
    proc = process(*TRAFFIC, *args)
    took = interrupt(proc, marker)
    assert took < PROMPT_S, f"took {took:.2f}s"
    out = "".join(proc.stdout_lines)
    assert ("requests to" in out or "Compared on" in out) and "Traceback" not in proc.stderr
    assert children_of(proc.proc.pid) == []


@contextlib.contextmanager
def in_own_group(*args: str):
    """``python -m traffic ARGS`` as the leader of a process group of its own (as a shell starts a job)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *TRAFFIC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def test_ctrl_c_while_the_processes_start_prints_no_traceback_and_exits_at_once(recorder):  # noqa: F811
    server = recorder()
    with in_own_group("--url", server.url, "--processes", "4", "--duration", "5", "--concurrency", "4") as proc:
        wait_for(lambda: len(children_of(proc.pid)) >= 4, 10, "the processes to be started")
        # A terminal's Ctrl-C goes to the whole process group: the children too, while they still import.
        os.killpg(proc.pid, signal.SIGINT)
        pressed = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - pressed
    assert proc.returncode == 0 and b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    # Each process waiting for a start that would never come was given a second of its own: 4 s here.
    # And a Ctrl-C landing while the last one started was lost (taken by the signal-watcher thread
    # while the main thread ignored it), and the run went on to its end: about 6 s.
    assert took < 3.0, f"took {took:.2f}s"
    assert server.received == []


def test_sigterm_to_the_process_group_with_processes_reports_what_was_sent(recorder):  # noqa: F811
    server = recorder()
    with in_own_group("--url", server.url, "--processes", "2", "--duration", "60", "--concurrency", "2",
                      "--json") as proc:
        wait_for(lambda: len(server.received) > 50, 30, "traffic from both processes")
        os.killpg(proc.pid, signal.SIGTERM)  # as a service manager stops a job: every process of it
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    # The children died of it before: the report said 0 requests.
    assert 50 <= report["requests"] <= len(server.received)
