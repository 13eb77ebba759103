"""traffic: a load tester that also shows how a load balancer spreads requests.

``runner`` sends the requests (``sender`` owns the connections), ``outcome``
says what a failed request is, ``report``, ``timeline`` and ``html`` turn the
results into reports, ``rig`` starts mock backends and a balancer for the
demo, comparisons and scenarios, ``cli`` and ``modes`` are the command line.
"""

from .outcome import Result
from .report import format_report, summarize
from .request import Target, TargetError, parse_target
from .runner import run_load

__all__ = ["Result", "Target", "TargetError", "format_report", "parse_target", "run_load", "summarize"]
