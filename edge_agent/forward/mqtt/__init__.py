"""Forward the outbox over MQTT: the ``mqtt`` sink, on paho driven by the asyncio loop.

- :mod:`.topics` (pure): the topic tree and what each event becomes (:func:`publications`).
- :mod:`.errors` (pure): broker addresses; CONNACK, socket and TLS failures as sentences with
  what to fix (:class:`BrokerError`).
- :mod:`.link`: one connection (:class:`BrokerLink`, :func:`open_link`), the only MQTT client
  code of the agent; also the ``check-config`` probe and :func:`read_retained`.
- :mod:`.sink`: :class:`MqttSink`, the connection loop and at-least-once delivery.
"""

from __future__ import annotations

from edge_agent.forward.mqtt.errors import BrokerAddress, BrokerError, parse_broker_url
from edge_agent.forward.mqtt.link import (
    BrokerLink,
    BrokerLinkLost,
    BrokerSettings,
    broker_settings,
    open_link,
    read_retained,
)
from edge_agent.forward.mqtt.sink import MqttSink
from edge_agent.forward.mqtt.topics import Publication, Topics, check_topic_level, publications

__all__ = [
    "BrokerAddress",
    "BrokerError",
    "BrokerLink",
    "BrokerLinkLost",
    "BrokerSettings",
    "MqttSink",
    "Publication",
    "Topics",
    "broker_settings",
    "check_topic_level",
    "open_link",
    "parse_broker_url",
    "publications",
    "read_retained",
]
