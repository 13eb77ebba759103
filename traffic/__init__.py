"""traffic: a traffic simulator that shows how a load balancer spreads requests.

``runner`` sends the requests, ``report`` summarises them, ``demo`` runs the
whole product (mock backends, balancer, traffic) in one process.
"""

from .report import format_report, summarize
from .runner import Result, Target, parse_target, run_load

__all__ = ["Result", "Target", "format_report", "parse_target", "run_load", "summarize"]
