"""simplelb: an HTTP/1.1 load balancer on the Python standard library and requests.

The public API is the server, its configuration and its cluster::

    from simplelb import Config, LoadBalancer
    lb = LoadBalancer(Config.of(backends="127.0.0.1:8081,127.0.0.1:8082", port=0)).start()
    lb.cluster.update(...)   # change the backends while it runs
    lb.stop()
"""

__version__ = "0.2.0"

from .config import ClusterConfig, Config, ListenerConfig  # noqa: E402
from .errors import ConfigError  # noqa: E402
from .server import LoadBalancer  # noqa: E402
from .specs import BackendSpec  # noqa: E402

__all__ = ["BackendSpec", "ClusterConfig", "Config", "ConfigError", "ListenerConfig", "LoadBalancer", "__version__"]
