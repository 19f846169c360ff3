"""A Microsoft Graph and identity platform fake, written from Microsoft's documentation.

Never imports ``edge_agent``. See ``sim.py`` for the in-process API and ``cli.py`` for
``graph-sim``.
"""

from .directory import EventSpec
from .model import Event, GraphError, Mailbox, Recurrence
from .sim import GraphSim, GraphSimConfig, fault_from_json

__all__ = [
    "Event",
    "EventSpec",
    "GraphError",
    "GraphSim",
    "GraphSimConfig",
    "Mailbox",
    "Recurrence",
    "fault_from_json",
]
