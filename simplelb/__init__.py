"""simplelb: an HTTP/1.1 load balancer on the Python standard library and requests.

The public API is the server and its configuration::

    from simplelb import Config, LoadBalancer
    lb = LoadBalancer(Config(backends="127.0.0.1:8081,127.0.0.1:8082", port=0)).start()
    ...
    lb.stop()
"""

from .config import BackendSpec, Config, ConfigError
from .server import LoadBalancer

__all__ = ["BackendSpec", "Config", "ConfigError", "LoadBalancer"]
__version__ = "0.1.0"
