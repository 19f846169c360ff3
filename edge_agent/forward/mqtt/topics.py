"""What an outbox event becomes on the broker: the topic tree and the messages (pure).

Topics, under a base that defaults to ``roomos-edge/<site>``:

``<base>/bridge/state``
    Retained ``online`` / ``offline``. ``offline`` is the Last Will (QoS 1, retained): the
    broker publishes it when the agent dies (kill -9: at once, the kernel closes the socket) or
    its link goes silent for 1.5 x keepalive. ``online`` is published, retained, after EVERY
    CONNACK; a broker finishes a client-id takeover (and fires the old link's will) before it
    answers CONNACK, so the fresh ``online`` always lands after a stale ``offline``. A clean
    DISCONNECT discards the will, so :meth:`MqttSink.close` publishes ``offline`` itself first.
``<base>/bridge/health``
    JSON, QoS 1, not retained (a retained health message from a dead agent would look alive):
    ``timestamp``, ``site``, ``uptime_s``, ``mqtt`` (this link's counters) and whatever the
    agent's ``health()`` callback returns (devices connected, outbox depth, deliveries...). Sent
    on connect and every ``health_interval_s``.
``<base>/devices/<id>/events``
    QoS 1, not retained: every event's envelope (``OutboxEvent.body``, byte for byte the
    webhook body), one per message, in order per device, ``bookings.snapshot`` included.
``<base>/devices/<id>/availability``
    Retained ``online`` / ``offline``, following the ``device.online`` / ``device.offline``
    events of the stream. Meaningful only while ``bridge/state`` is ``online``: when the agent is
    gone the last value stays retained, and consumers should read the bridge state first.
``<base>/devices/<id>/bookings``
    Retained: the whole envelope of the latest ``bookings.snapshot`` (``data.window``,
    ``data.bookings``), not just its ``data``, so a late subscriber gets the current window with
    its ``event_id`` and ``timestamp`` and can line it up against the events topic. For a
    device linked to a calendar (``[[devices]] calendar``) this is the calendar's window: the
    device's own snapshots are not forwarded (``edge_agent/bookings/precedence.py``).
``<base>/rooms/<room_id>/events`` and ``<base>/rooms/<room_id>/bookings``
    The same two for a calendar-only room (no device): an event whose envelope has no
    ``data.device_id`` (DESIGN.md "Rooms and calendar sources"). Each event is published once:
    a room's events go to its ``devices/`` topics or to its ``rooms/`` topics, never both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from edge_agent.forward.base import OutboxEvent

ONLINE = b"online"
OFFLINE = b"offline"


@dataclass(frozen=True, slots=True)
class Topics:
    base: str

    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state"

    @property
    def bridge_health(self) -> str:
        return f"{self.base}/bridge/health"

    def device(self, device_id: str, leaf: Literal["events", "availability", "bookings"]) -> str:
        return f"{self.base}/devices/{device_id}/{leaf}"

    def room(self, room_id: str, leaf: Literal["events", "bookings"]) -> str:
        return f"{self.base}/rooms/{room_id}/{leaf}"


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool


@functools.lru_cache(maxsize=4096)  # device ids: checked once each, not per message
def check_topic_level(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` can stand as one MQTT topic level."""
    if not name or any(c in name for c in "/+#\0"):
        raise ValueError(f"{name!r} cannot be an MQTT topic level (empty, or has / + # NUL)")


def publications(event: OutboxEvent, topics: Topics) -> list[Publication]:
    """The messages one event becomes, in publish order."""
    check_topic_level(event.device_id)
    data = event.envelope.get("data")
    if isinstance(data, dict) and "device_id" not in data and "room_id" in data:
        # A calendar-only room: its stream is the room id.
        out = [Publication(topics.room(event.device_id, "events"), event.body, False)]
        if event.type == "bookings.snapshot":
            out.append(Publication(topics.room(event.device_id, "bookings"), event.body, True))
        return out
    out = [Publication(topics.device(event.device_id, "events"), event.body, False)]
    if event.type == "device.online":
        out.append(Publication(topics.device(event.device_id, "availability"), ONLINE, True))
    elif event.type == "device.offline":
        out.append(Publication(topics.device(event.device_id, "availability"), OFFLINE, True))
    elif event.type == "bookings.snapshot":
        out.append(Publication(topics.device(event.device_id, "bookings"), event.body, True))
    return out
