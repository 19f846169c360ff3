"""The rooms the MQTT sink publishes for, and Home Assistant MQTT discovery (pure: no I/O).

The agent tells the sink which rooms exist (:meth:`MqttSink.set_rooms`, on start and after
every SIGHUP reload). Two things follow from that list:

**Removed rooms are cleared.** A room that left the configuration keeps nothing retained on the
broker: its ``devices/<id>/availability`` and ``devices/<id>/bookings`` (and, with discovery,
its Home Assistant topics below) get an empty retained message, which deletes a retained
message (MQTT 3.1.1 section 3.3.1.3, MQTT 5 section 3.3.1.3), and Home Assistant removes the
entities whose discovery config became empty. Undelivered events of the removed room are
still delivered to its ``events`` topic, but no longer re-create its retained topics (its
``device.offline`` is committed on removal, and delivered after the clearing). Only rooms
removed while the agent runs are compared with the list; for rooms removed while it was stopped, the
sink reads once per process (on a connection of its own, as a late subscriber would) what the
broker retains under ``<base>/devices/`` and clears the rooms it finds there that are not in
the list. Agents that share a base topic must therefore share the room list (fleet members
with one config do; the default base has the site name in it).

**Home Assistant discovery** (opt-in: ``[mqtt] discovery = true``; ``discovery_prefix``,
default ``homeassistant``). Per room, retained discovery configs on
``<prefix>/<component>/<node_id>/<object_id>/config`` (node id ``roomos-edge-<site>``, object
id ``<room>_<entity>``; both limited to ``[a-zA-Z0-9_-]``, other characters become ``_``):

- ``binary_sensor`` ``booked``: ``ON`` while the device reports
  ``BookedUntil``, from ``room.availability``; state topic ``<base>/devices/<id>/ha/booked``.
- ``sensor`` ``next_booking`` (device class ``timestamp``): the start of the first booking that
  starts after the latest ``bookings.snapshot`` was taken, ``None`` (unknown) when there is
  none; its title (unless the booking is private), end and meeting id as attributes on
  ``<base>/devices/<id>/ha/next_booking/attributes``. Refreshed with every snapshot (every
  list: calendar changes, starts and ends, and at least every ``relist_interval_s``).
- ``sensor`` ``people_count``: the head count of ``room.occupancy`` (``None`` while the device
  is not counting), published once the room has sent one (rooms whose software does not count
  people get no such entity).

Each config carries a ``device`` block (one Home Assistant device per room, identifiers
``roomos-edge_<site>_<room>``), an ``origin`` block, and ``availability`` = the agent's
``bridge/state`` AND the room's ``devices/<id>/availability`` (``availability_mode: all``):
an entity is available only while both the agent and its device link are ``online``. The
configs are sent again on every connect (a broker without persistence forgets them); the state
topics are retained and refreshed like the other retained topics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from edge_agent import __version__, jsoncodec
from edge_agent.clock import parse_utc
from edge_agent.forward.base import OutboxEvent
from edge_agent.forward.mqtt.topics import OFFLINE, ONLINE, Publication, Topics

DEFAULT_PREFIX = "homeassistant"
CLEARED = b""
"""An empty retained message deletes the topic's retained message (and a discovery config)."""
NONE = b"None"
"""What Home Assistant's MQTT sensor takes for "unknown"."""

_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]")


def _ha_id(text: str) -> str:
    return _NOT_ID.sub("_", text)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


class RoomTopics:
    """Which rooms exist, what clears the removed ones, and Home Assistant discovery.

    Pure: it computes :class:`Publication` s; :class:`~edge_agent.forward.mqtt.MqttSink`
    publishes them (and retries the unacknowledged ones after a reconnect).

    Args:
        topics: the sink's topic tree.
        site: the site name (discovery node id and unique ids).
        discovery: publish Home Assistant discovery configs and their state topics.
        prefix: Home Assistant's discovery prefix.
    """

    def __init__(
        self, topics: Topics, *, site: str, discovery: bool = False, prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.topics = topics
        self.site = site
        self.discovery = discovery
        self.prefix = prefix.strip("/") or DEFAULT_PREFIX
        self._node = _ha_id(f"roomos-edge-{site}")
        self._rooms: set[str] | None = None  # None: not told yet, every room is published
        self._counting: set[str] = set()  # rooms that sent room.occupancy (bounded by rooms)
        self._pending: dict[str, bytes] = {}  # topic -> payload not yet acknowledged

    # --- the room list -------------------------------------------------------------------------

    def set_rooms(self, rooms: Iterable[str]) -> list[str]:
        """Take the current room list; returns the topics of removed rooms (the sink forgets
        the retained messages it keeps for them). What is due is in :meth:`due`."""
        new = set(rooms)
        removed = sorted((self._rooms or set()) - new)
        added = sorted(new - (self._rooms or set()))
        self._rooms = new
        cleared: list[str] = []
        for room in removed:
            cleared += self._clear(room, self.retained_topics(room))
        for room in added:
            for topic in self.retained_topics(room):  # back before its clearing went out
                if self._pending.get(topic) == CLEARED:
                    del self._pending[topic]
            for pub in self.configs(room):
                self._pending[pub.topic] = pub.payload
        return cleared

    def _clear(self, room: str, topics: Iterable[str]) -> list[str]:
        self._counting.discard(room)
        cleared = list(topics)
        for topic in cleared:
            self._pending[topic] = CLEARED
        return cleared

    @property
    def known(self) -> bool:
        """Whether the agent has told the room list yet."""
        return self._rooms is not None

    @property
    def sweep_filter(self) -> str:
        """The topics a room's retained state lives under (the availability and bookings of
        every room the agent published for, under this base)."""
        return f"{self.topics.base}/devices/#"

    def clear_unknown(self, retained: Mapping[str, bytes]) -> list[str]:
        """Retained topics on the broker (under :attr:`sweep_filter`) -> clear every room they
        show that is not in the room list (removed while the agent was stopped); returns the
        topics made due, like :meth:`set_rooms`."""
        if self._rooms is None:
            return []
        prefix = f"{self.topics.base}/devices/"
        by_room: dict[str, set[str]] = {}
        for topic, payload in retained.items():
            if topic.startswith(prefix) and payload:
                by_room.setdefault(topic.removeprefix(prefix).split("/", 1)[0], set()).add(topic)
        cleared: list[str] = []
        for room in sorted(set(by_room) - self._rooms):
            # What the broker showed (whatever leaf), and what the agent knows it publishes.
            cleared += self._clear(room, sorted(by_room[room] | set(self.retained_topics(room))))
        return cleared

    def exists(self, room: str) -> bool:
        return self._rooms is None or room in self._rooms

    def due(self, *, reconnected: bool = False) -> list[Publication]:
        """What to publish now: unacknowledged clears and configs; after a (re)connect also
        every room's discovery configs again."""
        due = dict(self._pending)
        if reconnected and self.discovery and self._rooms is not None:
            for room in sorted(self._rooms):
                for pub in self.configs(room):
                    due.setdefault(pub.topic, pub.payload)
        return [Publication(topic, payload, True) for topic, payload in due.items()]

    def acknowledged(self, pub: Publication) -> None:
        if self._pending.get(pub.topic) == pub.payload:
            del self._pending[pub.topic]

    def retained_topics(self, room: str) -> list[str]:
        """Every retained topic the agent may have published for ``room``."""
        out = [self.topics.device(room, "availability"), self.topics.device(room, "bookings")]
        if self.discovery:
            out += [self._state(room, "booked"), self._state(room, "next_booking")]
            out += [self._state(room, "next_booking") + "/attributes"]
            out += [self._state(room, "people_count")]
            out += [self._config_topic(room, c, e) for c, e in _ENTITIES]
        return out

    # --- per event -----------------------------------------------------------------------------

    def publications(self, event: OutboxEvent, base: list[Publication]) -> list[Publication]:
        """``base`` (what :func:`.topics.publications` makes of ``event``) adjusted: no retained
        message for a removed room; with discovery, the Home Assistant state topics."""
        room = event.device_id
        if not self.exists(room):
            return [p for p in base if not p.retain]
        if not self.discovery:
            return base
        return base + self._states(room, event)

    def _states(self, room: str, event: OutboxEvent) -> list[Publication]:
        data = event.envelope.get("data")
        if not isinstance(data, Mapping):
            return []
        if event.type == "room.availability":
            availability = data.get("availability")
            status = availability.get("status") if isinstance(availability, Mapping) else None
            booked = b"ON" if status == "BookedUntil" else b"OFF"
            return [Publication(self._state(room, "booked"), booked, True)]
        if event.type == "bookings.snapshot":
            return self._next_booking(room, event.envelope.get("timestamp"), data.get("bookings"))
        if event.type == "room.occupancy":
            occupancy = data.get("occupancy")
            source = occupancy if isinstance(occupancy, Mapping) else data
            count = source.get("people_count")
            out = []
            if room not in self._counting:
                self._counting.add(room)
                out.append(self._config(room, "sensor", "people_count"))
            value = (
                str(count).encode() if isinstance(count, int) and count >= 0 else NONE
            )  # -1: the device is not counting
            out.append(Publication(self._state(room, "people_count"), value, True))
            return out
        return []

    def _next_booking(self, room: str, taken: Any, bookings: Any) -> list[Publication]:
        now = _parse_time(taken)
        upcoming: list[tuple[datetime, Mapping[str, Any]]] = []
        for b in bookings if isinstance(bookings, list) else []:
            start = _parse_time(b.get("start")) if isinstance(b, Mapping) else None
            if start is not None and (now is None or start > now):
                upcoming.append((start, b))
        topic = self._state(room, "next_booking")
        if not upcoming:
            return [
                Publication(topic, NONE, True),
                Publication(topic + "/attributes", b"{}", True),
            ]
        _, first = min(upcoming, key=lambda pair: pair[0])
        private = str(first.get("privacy") or "").lower() == "private"
        attributes = {
            "title": None if private else first.get("title"),
            "start": first.get("start"),
            "end": first.get("end"),
            "meeting_id": first.get("meeting_id"),
        }
        return [
            Publication(topic, str(first.get("start")).encode(), True),
            Publication(topic + "/attributes", jsoncodec.dumpb(attributes), True),
        ]

    # --- discovery configs ---------------------------------------------------------------------

    def configs(self, room: str) -> list[Publication]:
        """The room's discovery configs (people count only once the room counts people)."""
        if not self.discovery:
            return []
        out = [self._config(room, "binary_sensor", "booked")]
        out.append(self._config(room, "sensor", "next_booking"))
        if room in self._counting:
            out.append(self._config(room, "sensor", "people_count"))
        return out

    def _state(self, room: str, entity: str) -> str:
        return f"{self.topics.base}/devices/{room}/ha/{entity}"

    def _config_topic(self, room: str, component: str, entity: str) -> str:
        return f"{self.prefix}/{component}/{self._node}/{_ha_id(room)}_{entity}/config"

    def _config(self, room: str, component: str, entity: str) -> Publication:
        doc: dict[str, Any] = {
            "name": _NAMES[entity],
            "unique_id": f"roomos-edge_{_ha_id(self.site)}_{_ha_id(room)}_{entity}",
            "state_topic": self._state(room, entity),
            "availability": [
                {
                    "topic": self.topics.bridge_state,
                    "payload_available": ONLINE.decode(),
                    "payload_not_available": OFFLINE.decode(),
                },
                {
                    "topic": self.topics.device(room, "availability"),
                    "payload_available": ONLINE.decode(),
                    "payload_not_available": OFFLINE.decode(),
                },
            ],
            "availability_mode": "all",
            "device": {
                "identifiers": [f"roomos-edge_{_ha_id(self.site)}_{_ha_id(room)}"],
                "name": room,
                "manufacturer": "Cisco",
                "model": "RoomOS device",
            },
            "origin": {
                "name": "roomos-edge-agent",
                "sw_version": __version__,
                "support_url": "https://github.com/roomos-edge/edge-agent",
            },
            "qos": 1,
            **_EXTRA[entity],
        }
        if entity == "next_booking":
            doc["json_attributes_topic"] = self._state(room, entity) + "/attributes"
        return Publication(self._config_topic(room, component, entity), jsoncodec.dumpb(doc), True)


_ENTITIES: tuple[tuple[str, str], ...] = (
    ("binary_sensor", "booked"),
    ("sensor", "next_booking"),
    ("sensor", "people_count"),
)
_NAMES = {"booked": "Booked", "next_booking": "Next booking", "people_count": "People count"}
_EXTRA: dict[str, dict[str, Any]] = {
    "booked": {"payload_on": "ON", "payload_off": "OFF", "icon": "mdi:calendar-clock"},
    "next_booking": {"device_class": "timestamp"},
    "people_count": {"state_class": "measurement", "unit_of_measurement": "people"},
}


__all__ = ["DEFAULT_PREFIX", "RoomTopics"]
