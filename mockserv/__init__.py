"""mockserv: mock HTTP backends for trying a load balancer, many in one process.

Each server says who it is, serves ``/health``, and can be made slow, flaky,
unhealthy or dead at runtime (see ``mockserv.server``).
"""

from .server import MockServer, parse_error_rate, parse_latency

__all__ = ["MockServer", "parse_error_rate", "parse_latency"]
