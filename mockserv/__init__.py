"""mockserv: mock HTTP backends for trying a load balancer, many in one process.

Each server says who it is, serves ``/health`` and a WebSocket echo on
``/ws``, and can be made slow, flaky, unhealthy or dead at runtime (see
``mockserv.server`` and ``mockserv.handler``). ``MockFleet`` owns the
servers of a process and is what the control endpoints act on.
"""

from .behaviour import BehaviourError, parse_error_rate, parse_health, parse_latency
from .fleet import FleetError, MockFleet, UnknownServer
from .server import MockServer

__all__ = [
    "BehaviourError", "FleetError", "MockFleet", "MockServer", "UnknownServer",
    "parse_error_rate", "parse_health", "parse_latency",
]
