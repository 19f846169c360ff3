"""What every calendar fake shares: HTTPS site, simulated clock, fault table, control API base."""

from .clock import SimClock, make_clock
from .control import ControlServer, json_body
from .faults import Fault, FaultTable
from .server import HttpsSite

__all__ = [
    "ControlServer",
    "Fault",
    "FaultTable",
    "HttpsSite",
    "SimClock",
    "json_body",
    "make_clock",
]
