"""The rooms the MQTT sink publishes for, and Home Assistant MQTT discovery (pure: no I/O).

The agent tells the sink which rooms exist (:meth:`MqttSink.set_rooms`, on start and after
every SIGHUP reload): the device rooms (``<base>/devices/<id>/...``) and, once the calendar
sources know theirs, the calendar-only rooms (Microsoft 365 or Google resources without a
device, ``<base>/rooms/<id>/...``; DESIGN.md "Rooms and calendar sources"). Two things follow
from those lists:

**Removed rooms are cleared.** A room that left the configuration (or the directory) keeps
nothing retained on the broker: a device room's ``devices/<id>/availability`` and
``devices/<id>/bookings``, a calendar room's ``rooms/<id>/bookings`` (and, with discovery, the
Home Assistant topics below) get an empty retained message, which deletes a retained message
(MQTT 3.1.1 section 3.3.1.3, MQTT 5 section 3.3.1.3), and Home Assistant removes the entities
whose discovery config became empty. Undelivered events of the removed room are still
delivered to its ``events`` topic, but no longer re-create its retained topics (a device's
``device.offline`` is committed on removal, a calendar room's empty snapshot when it leaves
the directory; both are delivered after the clearing). Only rooms removed while the agent runs
are compared with the lists; for rooms removed while it was stopped, the sink reads once per
process (on a connection of its own, as a late subscriber would) what the broker retains under
``<base>/devices/`` (and ``<base>/rooms/`` once the calendar rooms were told) and clears the
rooms it finds there that are not in the lists. Agents that share a base topic must therefore
share the room lists (fleet members with one config do; the default base has the site name in
it). Calendar rooms the agent was never told about are left alone (their poller may have
found them a moment before the agent's next :meth:`RoomTopics.set_rooms`): only a room that
left the list loses its retained topics.

**Home Assistant discovery** (opt-in: ``[mqtt] discovery = true``; ``discovery_prefix``,
default ``homeassistant``). Per room, retained discovery configs on
``<prefix>/<component>/<node_id>/<object_id>/config`` (node id ``roomos-edge-<site>``, object
id ``<room>_<entity>``; both limited to ``[a-zA-Z0-9_-]``, other characters become ``_``).
State topics live under the room's own tree, ``<room tree>`` = ``<base>/devices/<id>`` for a
device room, ``<base>/rooms/<id>`` for a calendar-only room:

- ``binary_sensor`` ``booked`` (state ``<room tree>/ha/booked``, ``ON``/``OFF``). A device
  room: ``ON`` while the device reports ``BookedUntil``, from ``room.availability``. A
  calendar-only room has no device to say so: ``ON`` while a booking of its latest
  ``bookings.snapshot`` spans the present, computed when the snapshot arrives and again at
  every :meth:`RoomTopics.tick` (the sink's ``set_rooms(..., now=...)``), since a calendar
  sends a snapshot only when the calendar changes, not when a meeting starts. A window that
  arrived before the calendar rooms were told gets its states at the first tick after.
- ``sensor`` ``next_booking`` (device class ``timestamp``): the start of the first booking that
  starts after the latest ``bookings.snapshot`` was taken (a calendar room: after the later of
  that and the last tick), ``None`` (unknown) when there is none; its title (unless the
  booking is private or confidential), end and meeting id as attributes on
  ``<room tree>/ha/next_booking/attributes``. Refreshed with every snapshot (a device's: every
  list, starts and ends, and at least every ``relist_interval_s``) and, for calendar rooms,
  every tick.
- ``sensor`` ``people_count``: the head count of ``room.occupancy`` (``None`` while the device
  is not counting), published once the room has sent one (rooms whose software does not count
  people, and calendar-only rooms without a sensor, get no such entity).

Each config carries a ``device`` block (one Home Assistant device per room, identifiers
``roomos-edge_<site>_<room>``), an ``origin`` block, and ``availability`` = the agent's
``bridge/state`` AND, for a device room, the room's ``devices/<id>/availability``
(``availability_mode: all``): an entity is available only while both the agent and its device
link are ``online``; a calendar-only room's follow the agent's state alone. The configs are
sent again on every connect (a broker without persistence forgets them); the state topics are
retained and refreshed like the other retained topics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from edge_agent import __version__, jsoncodec
from edge_agent.clock import parse_utc
from edge_agent.forward.base import OutboxEvent
from edge_agent.forward.mqtt.topics import OFFLINE, ONLINE, Publication, Topics
from edge_agent.ops.status_page import is_private

DEFAULT_PREFIX = "homeassistant"
CLEARED = b""
"""An empty retained message deletes the topic's retained message (and a discovery config)."""
NONE = b"None"
"""What Home Assistant's MQTT sensor takes for "unknown"."""
MAX_REMOVED_KEPT = 10_000
"""Calendar rooms remembered as removed (their late events must not re-create retained
topics); the oldest is forgotten past it."""

Tree = Literal["devices", "rooms"]
"""Where a room's topics live: ``devices/<id>`` (a device room), ``rooms/<id>`` (calendar-only)."""

_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]")
_SOURCES = {
    "microsoft": ("Microsoft", "Microsoft 365 room"),
    "google": ("Google", "Google Workspace room"),
}


def _ha_id(text: str) -> str:
    return _NOT_ID.sub("_", text)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Booking:
    start: datetime
    end: datetime | None
    doc: Mapping[str, Any]


def _window(bookings: Any) -> list[_Booking]:
    """A snapshot's ``data.bookings`` (``null`` for a room that left the directory)."""
    out = []
    for b in bookings if isinstance(bookings, list) else []:
        start = _parse_time(b.get("start")) if isinstance(b, Mapping) else None
        if start is not None:
            out.append(_Booking(start, _parse_time(b.get("end")), b))
    return sorted(out, key=lambda b: b.start)


class RoomTopics:
    """Which rooms exist, what clears the removed ones, and Home Assistant discovery.

    Pure: it computes :class:`Publication` s; :class:`~edge_agent.forward.mqtt.MqttSink`
    publishes them (and retries the unacknowledged ones after a reconnect). Time comes in with
    the events (a snapshot's ``timestamp``) and with :meth:`tick`.

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
        self._rooms: set[str] | None = None  # device rooms; None: not told yet, all published
        self._calendar: dict[str, str] | None = None  # calendar-only room -> source; None: untold
        self._removed: dict[str, None] = {}  # calendar rooms that left the list (ordered, bounded)
        self._counting: set[str] = set()  # rooms that sent room.occupancy (bounded by rooms)
        self._pending: dict[str, bytes] = {}  # topic -> payload not yet acknowledged
        # Calendar-only rooms with discovery: the latest snapshot's window and the state last
        # made from it (what tick() compares with); both bounded by the calendar rooms.
        self._windows: dict[str, list[_Booking]] = {}
        self._shown: dict[str, bytes] = {}
        self._now: datetime | None = None  # the latest time told (a tick, or a snapshot's)

    # --- the room lists ------------------------------------------------------------------------

    def set_rooms(
        self, rooms: Iterable[str], calendar_rooms: Mapping[str, str] | None = None
    ) -> list[str]:
        """Take the current room lists; returns the topics of removed rooms (the sink forgets
        the retained messages it keeps for them). What is due is in :meth:`due`.

        ``rooms``: the device rooms. ``calendar_rooms``: the calendar-only rooms, id -> source
        (``"microsoft"``, ``"google"``); ``None`` leaves the calendar list as it was (not told
        yet: no calendar room is cleared, and none gets discovery configs).
        """
        new = set(rooms)
        old = self._rooms or set()
        self._rooms = new
        removed: list[tuple[str, Tree]] = [(r, "devices") for r in sorted(old - new)]
        added: list[tuple[str, Tree]] = [(r, "devices") for r in sorted(new - old)]
        if calendar_rooms is not None:
            cal_old = self._calendar or {}
            cal_new = dict(calendar_rooms)
            self._calendar = cal_new
            removed += [(r, "rooms") for r in sorted(set(cal_old) - set(cal_new))]
            added += [(r, "rooms") for r in sorted(set(cal_new) - set(cal_old))]
        cleared: list[str] = []
        for room, tree in removed:
            cleared += self._clear(room, self.retained_topics(room, tree))
            if tree == "rooms":
                self._forget_window(room)
                self._removed.pop(room, None)
                self._removed[room] = None
                while len(self._removed) > MAX_REMOVED_KEPT:
                    del self._removed[next(iter(self._removed))]
        # After every clearing: a room that moved from one list to the other (a calendar room
        # that got a device) keeps the discovery configs its new kind publishes.
        for room, tree in added:
            if tree == "rooms":
                self._removed.pop(room, None)
            for topic in self.retained_topics(room, tree):  # back before its clearing went out
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

    def _forget_window(self, room: str) -> None:
        self._windows.pop(room, None)
        for entity in ("booked", "next_booking"):
            self._shown.pop(self._state(room, entity, "rooms"), None)

    @property
    def known(self) -> bool:
        """Whether the agent has told the room list yet."""
        return self._rooms is not None

    @property
    def calendar_known(self) -> bool:
        """Whether the agent has told the calendar-only rooms yet."""
        return self._calendar is not None

    @property
    def sweep_filter(self) -> str:
        """The topics a room's retained state lives under: every device room's, and once the
        calendar rooms were told, every calendar room's too (the whole base)."""
        if self._calendar is None:
            return f"{self.topics.base}/devices/#"
        return f"{self.topics.base}/#"

    def clear_unknown(self, retained: Mapping[str, bytes]) -> list[str]:
        """Retained topics on the broker (under :attr:`sweep_filter`) -> clear every room they
        show that is not in the room lists (removed while the agent was stopped); returns the
        topics made due, like :meth:`set_rooms`."""
        if self._rooms is None:
            return []
        trees: list[tuple[Tree, set[str]]] = [("devices", self._rooms)]
        if self._calendar is not None:
            trees.append(("rooms", set(self._calendar)))
        cleared: list[str] = []
        for tree, listed in trees:
            prefix = f"{self.topics.base}/{tree}/"
            by_room: dict[str, set[str]] = {}
            for topic, payload in retained.items():
                if not topic.startswith(prefix) or not payload:
                    continue
                room, _, leaf = topic.removeprefix(prefix).partition("/")
                if tree == "rooms" and not (leaf == "bookings" or leaf.startswith("ha/")):
                    continue  # not the agent's: a sensor's retained occupancy/set, say
                by_room.setdefault(room, set()).add(topic)
            if tree == "rooms":
                listed = listed | self._rooms  # rooms/<device>/occupancy/set is a device's
            for room in sorted(set(by_room) - listed):
                # What the broker showed (whatever leaf), and what the agent knows it publishes;
                # not the configs a room of the other list with this id publishes now.
                topics = by_room[room] | set(self.retained_topics(room, tree))
                if self.exists(room, "rooms" if tree == "devices" else "devices"):
                    topics -= {p.topic for p in self.configs(room)}
                cleared += self._clear(room, sorted(topics))
        return cleared

    def exists(self, room: str, tree: Tree = "devices") -> bool:
        """Whether ``room`` is (or may be) in the list of ``tree``."""
        if tree == "rooms":
            return self._calendar is not None and room in self._calendar
        return self._rooms is None or room in self._rooms

    def due(self, *, reconnected: bool = False) -> list[Publication]:
        """What to publish now: unacknowledged clears, configs and calendar rooms' states;
        after a (re)connect also every room's discovery configs again."""
        due = dict(self._pending)
        if reconnected and self.discovery:
            for room in sorted((self._rooms or set()) | set(self._calendar or {})):
                for pub in self.configs(room):
                    due.setdefault(pub.topic, pub.payload)
        return [Publication(topic, payload, True) for topic, payload in due.items()]

    def acknowledged(self, pub: Publication) -> None:
        if self._pending.get(pub.topic) == pub.payload:
            del self._pending[pub.topic]

    def retained_topics(self, room: str, tree: Tree = "devices") -> list[str]:
        """Every retained topic the agent may have published for ``room`` (a device room, or
        with ``tree="rooms"`` a calendar-only room)."""
        if tree == "devices":
            out = [self.topics.device(room, "availability"), self.topics.device(room, "bookings")]
        else:
            out = [self.topics.room(room, "bookings")]
        if self.discovery:
            out += [self._state(room, "booked", tree), self._state(room, "next_booking", tree)]
            out += [self._state(room, "next_booking", tree) + "/attributes"]
            out += [self._state(room, "people_count", tree)]
            out += [self._config_topic(room, c, e) for c, e in _ENTITIES]
        return out

    # --- time ------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[Publication]:
        """Time passed: the calendar-only rooms' ``booked`` and ``next_booking`` states that
        changed since they were last made (a meeting started or ended). They are also made due
        (:meth:`due`) until acknowledged. A time older than one already told changes nothing."""
        if self._now is not None and now < self._now:
            return []
        self._now = now
        if self._calendar is None:
            return []
        out: list[Publication] = []
        for room in sorted(self._windows):
            for pub in self._calendar_states(room, self._windows[room], now):
                if self._shown.get(pub.topic) != pub.payload:
                    self._shown[pub.topic] = pub.payload
                    self._pending[pub.topic] = pub.payload
                    out.append(pub)
        return out

    def next_change(self) -> datetime | None:
        """When a calendar-only room's state changes next by time alone (a booking starts or
        ends after the latest time told), or ``None``."""
        now = self._now
        times = [
            t
            for window in self._windows.values()
            for b in window
            for t in (b.start, b.end)
            if t is not None and (now is None or t > now)
        ]
        return min(times, default=None)

    # --- per event -----------------------------------------------------------------------------

    def publications(self, event: OutboxEvent, base: list[Publication]) -> list[Publication]:
        """``base`` (what :func:`.topics.publications` makes of ``event``) adjusted: no retained
        message for a removed room; with discovery, the Home Assistant state topics."""
        room = event.device_id
        data = event.envelope.get("data")
        if isinstance(data, Mapping) and "device_id" not in data:
            return self._calendar_publications(room, event, base)
        if not self.exists(room):
            return [p for p in base if not p.retain]
        if not self.discovery:
            return base
        return base + self._states(room, event)

    def _calendar_publications(
        self, room: str, event: OutboxEvent, base: list[Publication]
    ) -> list[Publication]:
        """A calendar-only room (``rooms/<id>/...``): until the calendar rooms are told, its
        topics are left as the poller makes them."""
        if room in self._removed:
            return [p for p in base if not p.retain]
        if not self.discovery:
            return base
        if event.type == "bookings.snapshot":
            data = event.envelope.get("data")
            window = _window(data.get("bookings") if isinstance(data, Mapping) else None)
            taken = _parse_time(event.envelope.get("timestamp"))
            now = max((t for t in (taken, self._now) if t is not None), default=None)
            self._now = now
            self._windows[room] = window
            if self._calendar is None:
                # Not told yet: no entity exists, so no state; the first tick after the
                # calendar rooms are told publishes this window's (the next snapshot may be
                # days away).
                return base
            states = self._calendar_states(room, window, now)
            for pub in states:
                self._shown[pub.topic] = pub.payload
                if self._pending.get(pub.topic) not in (None, CLEARED):
                    del self._pending[pub.topic]  # a tick's older state must not follow this one
            return base + states
        if event.type == "room.occupancy" and self._calendar is not None:
            return base + self._people_count(room, event, "rooms")
        return base

    def _calendar_states(
        self, room: str, window: list[_Booking], now: datetime | None
    ) -> list[Publication]:
        booked = now is not None and any(
            b.start <= now and (b.end is None or now < b.end) for b in window
        )
        state = Publication(self._state(room, "booked", "rooms"), b"ON" if booked else b"OFF", True)
        return [state, *self._next_booking(room, now, window, "rooms")]

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
            taken = _parse_time(event.envelope.get("timestamp"))
            return self._next_booking(room, taken, _window(data.get("bookings")), "devices")
        if event.type == "room.occupancy":
            return self._people_count(room, event, "devices")
        return []

    def _people_count(self, room: str, event: OutboxEvent, tree: Tree) -> list[Publication]:
        data = event.envelope.get("data")
        if not isinstance(data, Mapping):
            return []
        occupancy = data.get("occupancy")
        source = occupancy if isinstance(occupancy, Mapping) else data
        count = source.get("people_count")
        out = []
        if room not in self._counting:
            self._counting.add(room)
            out.append(self._config(room, "sensor", "people_count"))
        # -1: the device is not counting.
        value = str(count).encode() if isinstance(count, int) and count >= 0 else NONE
        out.append(Publication(self._state(room, "people_count", tree), value, True))
        return out

    def _next_booking(
        self, room: str, now: datetime | None, window: list[_Booking], tree: Tree
    ) -> list[Publication]:
        topic = self._state(room, "next_booking", tree)
        first = next((b for b in window if now is None or b.start > now), None)
        if first is None:
            return [
                Publication(topic, NONE, True),
                Publication(topic + "/attributes", b"{}", True),
            ]
        doc = first.doc
        attributes = {
            "title": None if is_private(doc) else doc.get("title"),
            "start": doc.get("start"),
            "end": doc.get("end"),
            "meeting_id": doc.get("meeting_id"),
        }
        return [
            Publication(topic, str(doc.get("start")).encode(), True),
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

    def _tree(self, room: str) -> Tree:
        calendar_only = self._calendar is not None and room in self._calendar
        return "rooms" if calendar_only and room not in (self._rooms or set()) else "devices"

    def _state(self, room: str, entity: str, tree: Tree = "devices") -> str:
        return f"{self.topics.base}/{tree}/{room}/ha/{entity}"

    def _config_topic(self, room: str, component: str, entity: str) -> str:
        return f"{self.prefix}/{component}/{self._node}/{_ha_id(room)}_{entity}/config"

    def _config(self, room: str, component: str, entity: str) -> Publication:
        tree = self._tree(room)
        availability = [
            {
                "topic": self.topics.bridge_state,
                "payload_available": ONLINE.decode(),
                "payload_not_available": OFFLINE.decode(),
            }
        ]
        if tree == "devices":
            availability.append(
                {
                    "topic": self.topics.device(room, "availability"),
                    "payload_available": ONLINE.decode(),
                    "payload_not_available": OFFLINE.decode(),
                }
            )
            manufacturer, model = "Cisco", "RoomOS device"
        else:
            source = (self._calendar or {}).get(room, "")
            manufacturer, model = _SOURCES.get(source, ("", "Calendar room"))
        device: dict[str, Any] = {
            "identifiers": [f"roomos-edge_{_ha_id(self.site)}_{_ha_id(room)}"],
            "name": room,
            "model": model,
        }
        if manufacturer:
            device["manufacturer"] = manufacturer
        doc: dict[str, Any] = {
            "name": _NAMES[entity],
            "unique_id": f"roomos-edge_{_ha_id(self.site)}_{_ha_id(room)}_{entity}",
            "state_topic": self._state(room, entity, tree),
            "availability": availability,
            "availability_mode": "all",
            "device": device,
            "origin": {
                "name": "roomos-edge-agent",
                "sw_version": __version__,
                "support_url": "https://github.com/roomos-edge/edge-agent",
            },
            "qos": 1,
            **_EXTRA[entity],
        }
        if entity == "next_booking":
            doc["json_attributes_topic"] = self._state(room, entity, tree) + "/attributes"
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
