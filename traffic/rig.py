"""Mock backends and a balancer in this process: what the demo, comparisons and scenarios run against.

This is the one place in ``traffic/`` that builds simplelb's ``Config`` and
``LoadBalancer`` and mockserv's ``MockFleet``. Everything else talks to them
as a user would: to each mock server through its control endpoints
(``control``), to the mock process through its control listener
(``restart``: ``POST /servers/NAME/start``), and to the balancer through its
URL and its admin listener (``available`` reads ``/status``; the demo prints
the live status page's address).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

from mockserv import MockServer
from mockserv.control import ControlListener
from mockserv.fleet import MockFleet
from simplelb import BackendSpec, Config, LoadBalancer
from simplelb.specs import bracket

BASE_LATENCY_MS = (1.0, 3.0)  # like a quick real service, so latency differences show


class ControlError(OSError):
    """A mock's control endpoint refused a change (its answer was not 2xx); the message says which and why."""


def _post(host: str, port: int, path: str, body: str = "") -> bytes:
    """POST to a control endpoint; ``ControlError`` unless it answers 2xx (a 400 names the bad value)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        try:
            reason = json.loads(answer)["error"]
        except (ValueError, KeyError, TypeError):
            reason = answer.decode("utf-8", "replace").strip() or response.reason
        raise ControlError(f"POST {path} to {bracket(host)}:{port} answered {response.status}: {reason}")
    return answer


@dataclass
class Rig:
    fleet: MockFleet
    mock_control: ControlListener  # the mock process's own control listener
    balancer: LoadBalancer

    @property
    def mocks(self) -> dict[str, MockServer]:
        """mock-1 ... mock-N, in the balancer's backend order."""
        return {server.name: server for server in self.fleet}

    @property
    def status_page(self) -> str:
        """The balancer's live status page (its admin listener)."""
        return self.balancer.admin.url + "/"

    @property
    def names(self) -> list[str]:
        return list(self.mocks)

    @property
    def url(self) -> str:
        return self.balancer.url + "/"

    def available(self, name: str) -> bool:
        """Whether the balancer would send traffic to this mock now, as its ``/status`` says."""
        admin = self.balancer.admin
        conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        try:
            conn.request("GET", "/status")
            backends = json.loads(conn.getresponse().read())["backends"]
        finally:
            conn.close()
        address = self.mocks[name].address
        return any(b["address"] == address and b["up"] for b in backends)

    def control(self, name: str, path: str, body: str = "") -> None:
        """POST to one of a mock server's control endpoints, as a user with curl would; ``ControlError`` if refused."""
        mock = self.mocks[name]
        _post(mock.host, mock.port, path, body)

    def running(self, name: str) -> bool:
        return self.mocks[name].running

    def restart(self, name: str) -> None:
        """Start a crashed mock again on its port, through the mock process's control listener."""
        _post("127.0.0.1", self.mock_control.port, f"/servers/{name}/start")

    def stop(self, grace_s: float = 2.0) -> None:
        try:
            self.balancer.stop(grace_s=grace_s)
        finally:
            self.mock_control.stop()
            self.fleet.stop()


def algorithm_names() -> list[str]:
    """The balancer's ``--algorithm`` choices."""
    from simplelb.algorithms import ALGORITHMS

    return list(ALGORITHMS)


def start_rig(
    servers: int = 3,
    *,
    latency_ms: tuple[float, float] = BASE_LATENCY_MS,
    slow_ms: float | None = None,
    algorithm: str = "round-robin",
    health_interval_s: float | None = None,
    eject_time_s: float | None = None,
) -> Rig:
    """Start ``servers`` mock backends (the last answering in ``slow_ms`` if given) and a balancer on free ports."""
    fleet = MockFleet(servers, latency_ms=latency_ms, seed=0)
    mock_control = None
    try:
        fleet.start()
        mock_control = ControlListener(fleet).start()
        options = {"algorithm": algorithm}
        if health_interval_s is not None:
            # Quick enough to watch; rise and fall of 2 so one probe neither takes out nor brings back.
            options.update(health_interval_s=health_interval_s, rise=2, fall=2)
        if eject_time_s is not None:
            options["eject_time_s"] = eject_time_s
        rig = Rig(fleet, mock_control, _start_balancer(list(fleet), options))
    except BaseException:
        if mock_control is not None:
            mock_control.stop()
        fleet.stop()
        raise
    if slow_ms is not None:
        try:
            rig.control(rig.names[-1], f"/_mock/latency?ms={slow_ms:g}")
        except BaseException:
            rig.stop(grace_s=0)
            raise
    return rig


def _start_balancer(mocks: list[MockServer], options: dict) -> LoadBalancer:
    """The one call into simplelb's configuration API: backends named as the mocks are, an admin listener."""
    backends = tuple(BackendSpec(mock.host, mock.port, name=mock.name) for mock in mocks)
    return LoadBalancer(Config.of(backends=backends, port=0, admin="127.0.0.1:0", **options)).start()


def version() -> str:
    """The version of the package ``traffic`` ships in (simplelb's)."""
    from simplelb import __version__

    return __version__
