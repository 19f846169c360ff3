"""The running agent, as a package of its concerns.

- :mod:`~edge_agent.agent.core`: :class:`Agent`, the lifecycle (start, drain, shutdown,
  SIGHUP reload) and the status the local API and MQTT health read;
- :mod:`~edge_agent.agent.build`: the sinks, calendar clients and configured rooms, built
  from the configuration (``check-config --connect`` builds the very same ones);
- :mod:`~edge_agent.agent.calendars`: the Graph and Google pollers, their clients and push;
- :mod:`~edge_agent.agent.booking`: booking a calendar-only room through the agent;
- :mod:`~edge_agent.agent.fleet`: the store, and in fleet mode the devices by lease;
- :mod:`~edge_agent.agent.run`: :func:`run_agent`, the agent in a process with its signals.

What other modules, the tests and the docs import from ``edge_agent.agent`` is re-exported here.
"""

from __future__ import annotations

from edge_agent.agent.build import (
    build_google_client,
    build_graph_client,
    build_mqtt_sink,
    build_sinks,
    build_webhook_sink,
    certificate_thumbprint,
    check_rsa_key,
    devices_by_id,
    google_rooms,
    graph_rooms,
)
from edge_agent.agent.core import Agent
from edge_agent.agent.run import run_agent

__all__ = [
    "Agent",
    "build_google_client",
    "build_graph_client",
    "build_mqtt_sink",
    "build_sinks",
    "build_webhook_sink",
    "certificate_thumbprint",
    "check_rsa_key",
    "devices_by_id",
    "google_rooms",
    "graph_rooms",
    "run_agent",
]
