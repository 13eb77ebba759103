"""Mock backends and a balancer in this process: what the demo, comparisons and scenarios run against.

This is the one place in ``traffic/`` that builds simplelb's ``Config`` and
``LoadBalancer`` and mockserv's ``MockServer``, and the one place that reads
the balancer's internal state. Their APIs are changing; a change to them is
made here (``_start_balancer``, ``Rig.available``) and nowhere else.

Everything else talks to the mock servers as a user would, through their
control endpoints (``control``), and to the balancer through its URL.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from mockserv import MockServer
from simplelb import Config, LoadBalancer

BASE_LATENCY_MS = (1.0, 3.0)  # like a quick real service, so latency differences show


@dataclass
class Rig:
    mocks: dict[str, MockServer]  # mock-1 ... mock-N, in the balancer's backend order
    balancer: LoadBalancer

    @property
    def names(self) -> list[str]:
        return list(self.mocks)

    @property
    def url(self) -> str:
        return self.balancer.url + "/"

    def available(self, name: str) -> bool:
        """Whether the balancer would send traffic to this mock now (its health checks say so)."""
        return self.balancer.backends[self.names.index(name)].healthy

    def control(self, name: str, path: str, body: str = "") -> None:
        """POST to one of a mock server's control endpoints, as a user with curl would."""
        mock = self.mocks[name]
        conn = http.client.HTTPConnection(mock.host, mock.port, timeout=5)
        try:
            conn.request("POST", path, body=body)
            conn.getresponse().read()
        finally:
            conn.close()

    def running(self, name: str) -> bool:
        return self.mocks[name].running

    def restart(self, name: str) -> None:
        """Start a crashed mock again on its port (in this process until mockserv can restart one itself)."""
        if not self.mocks[name].running:
            self.mocks[name].start()

    def stop(self, grace_s: float = 2.0) -> None:
        try:
            self.balancer.stop(grace_s=grace_s)
        finally:
            for mock in self.mocks.values():
                mock.stop()


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
    mocks: dict[str, MockServer] = {}
    try:
        for i in range(servers):
            mocks[f"mock-{i + 1}"] = MockServer(f"mock-{i + 1}", latency_ms=latency_ms, seed=i).start()
        options = {"algorithm": algorithm}
        if health_interval_s is not None:
            # Quick enough to watch; rise and fall of 2 so one probe neither takes out nor brings back.
            options.update(health_interval_s=health_interval_s, health_timeout_s=min(0.5, health_interval_s),
                           rise=2, fall=2)
        if eject_time_s is not None:
            options["eject_time_s"] = eject_time_s
        rig = Rig(mocks, _start_balancer([m.address for m in mocks.values()], options))
    except BaseException:
        for mock in mocks.values():
            mock.stop()
        raise
    if slow_ms is not None:
        rig.control(rig.names[-1], f"/_mock/latency?ms={slow_ms:g}")
    return rig


def _start_balancer(addresses: list[str], options: dict) -> LoadBalancer:
    """The one call into simplelb's configuration API (``Config.of`` where simplelb has it, else ``Config``)."""
    make = getattr(Config, "of", Config)
    return LoadBalancer(make(backends=",".join(addresses), port=0, **options)).start()


def version() -> str:
    """The version of the package ``traffic`` ships in (simplelb's)."""
    from simplelb import __version__

    return __version__
