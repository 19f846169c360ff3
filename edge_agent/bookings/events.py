"""xAPI Bookings events -> envelope types, and the envelope builder (DESIGN.md "Contracts").

Events carry far fewer fields than a listed booking (``Start`` may carry only ``Id`` on older
software), so :func:`parse_event` yields :class:`EventFields` and :func:`merge` lays them over the
stored window entry.

Decisions: ``SyncRequired`` and ``Updated`` produce no envelope, only a re-list.
``StartTimeBuffer``, ``EndTimeBuffer``, ``TimeRemaining`` and ``NotificationSnoozed`` are UI
reminders with no contract type: they are ignored (no invented types).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from edge_agent.bookings.models import (
    Booking,
    Organizer,
    device_int,
    device_str,
    parse_device_time,
    plus_minutes,
)
from edge_agent.clock import utc_iso

__all__ = [
    "ENVELOPE_TYPES",
    "EVENT_TYPES",
    "IGNORED_EVENTS",
    "MAX_EVENT_DEPTH",
    "RELIST_EVENTS",
    "Entropy",
    "EventFields",
    "make_envelope",
    "merge",
    "nesting_depth",
    "new_event_id",
    "parse_event",
    "partial_booking_dict",
]

Entropy = Callable[[int], bytes]
"""Source of random bytes (default :func:`prng_bytes`; tests pass a seeded one)."""

EVENT_TYPES: Final[Mapping[str, str]] = {
    "BookingRequested": "booking.requested",
    "BookingCreated": "booking.created",
    "BookingFailed": "booking.failed",
    "BookingMoved": "booking.moved",
    "Deleted": "booking.deleted",
    "Start": "booking.started",
    "End": "booking.ended",
    "ExtensionRequested": "booking.extension_requested",
    "ExtensionFailed": "booking.extension_failed",
    "EditRequested": "booking.edit_requested",
    "EditFailed": "booking.edit_failed",
    "CheckedIn": "booking.checked_in",
}
"""xAPI ``Event Bookings <Name>`` -> envelope ``type``."""

RELIST_EVENTS: Final[frozenset[str]] = frozenset({"SyncRequired", "Updated"})
IGNORED_EVENTS: Final[frozenset[str]] = frozenset(
    {"StartTimeBuffer", "EndTimeBuffer", "TimeRemaining", "NotificationSnoozed"}
)

ENVELOPE_TYPES: Final[frozenset[str]] = frozenset(EVENT_TYPES.values()) | {
    "booking.request_expired",
    "bookings.snapshot",
    "room.availability",
    "device.online",
    "device.offline",
    "room.occupancy",
    "booking.ghost",
    "booking.released",
}
"""Every envelope type of the contract, and no other."""


# --------------------------------------------------------------------------- event ids

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Event ids need uniqueness, not secrecy: a PRNG seeded from the OS spares a getrandom(2) call
# per envelope (it showed in profiles at thousands of events per second).
_rng = random.Random()


def prng_bytes(n: int) -> bytes:
    """``n`` bytes from the module's PRNG (seeded from the OS at import)."""
    return _rng.getrandbits(8 * n).to_bytes(n, "big")


def new_event_id(now: datetime, entropy: Entropy = prng_bytes) -> str:
    """A UUIDv7 (RFC 9562) string: 48-bit unix ms, then 12 bits of sub-millisecond time (method 3,
    so ids made for later microseconds sort later), then 62 random bits. Time-sortable."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    us = (now - _EPOCH) // timedelta(microseconds=1)
    ms, sub_us = divmod(us, 1000)
    sub = (sub_us * 4096) // 1000
    rand = int.from_bytes(entropy(8), "big") & ((1 << 62) - 1)
    value = ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (sub << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --------------------------------------------------------------------------- envelopes


def make_envelope(
    type: str,
    *,
    site: str,
    device_id: str | None,
    now: datetime,
    room_id: str | None = None,
    source: str = "device",
    xevent: str | None = None,
    booking: Booking | Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    observed_at: datetime | None = None,
    event_id: str | None = None,
    entropy: Entropy = prng_bytes,
) -> dict[str, Any]:
    """One contract envelope::

        {"type", "timestamp", "data": {"event_id", "site", ["device_id"], ["booking"], "xevent",
                                        "observed_at", "room_id", "source", **extra}}

    ``room_id`` is the room the event is about (default: the device id, DESIGN.md "Rooms and
    calendar sources"), ``source`` where the fact came from (``device``, ``microsoft``...);
    ``device_id`` None leaves it out (a calendar-only room's event).

    ``timestamp`` is ``now``; ``observed_at`` when the agent saw the device event (defaults to
    ``now``). ``xevent`` is ``"Bookings.<Name>"`` or None for agent-made events (snapshot,
    availability, online/offline, request_expired). ``extra`` keys go into ``data`` (they may not
    overwrite the fixed keys). Raises ValueError for a type the contract does not have.

    ``data.booking_request_uuid`` is where every request's outcome names it: ``booking.failed``
    and ``booking.request_expired`` pass it in ``extra``; a ``booking.requested`` whose UUID is
    known and a ``booking.created`` that resolves a request (``pending_ms``) get it here from
    their booking (or request), so receivers match requests to outcomes in one place. It is
    also left in ``data.booking`` (additive).
    """
    if type not in ENVELOPE_TYPES:
        raise ValueError(f"not an envelope type of the contract: {type!r}")
    data: dict[str, Any] = {"event_id": event_id or new_event_id(now, entropy), "site": site}
    if device_id is not None:
        data["device_id"] = device_id
    rid = room_id if room_id is not None else device_id
    if rid is None:
        raise ValueError("an envelope needs a room_id or a device_id")
    if booking is not None:
        data["booking"] = booking.to_dict() if isinstance(booking, Booking) else dict(booking)
    data["xevent"] = xevent
    data["observed_at"] = utc_iso(observed_at or now)
    data["room_id"] = rid
    data["source"] = source
    if extra:
        clash = set(extra) & {
            "event_id",
            "site",
            "device_id",
            "room_id",
            "source",
            "xevent",
            "observed_at",
        }
        if clash:
            raise ValueError(f"extra may not overwrite {sorted(clash)}")
        data.update(extra)
    uuid = _request_uuid(type, data)
    if uuid is not None:
        data.setdefault("booking_request_uuid", uuid)
    return {"type": type, "timestamp": utc_iso(now), "data": data}


def _request_uuid(type: str, data: Mapping[str, Any]) -> str | None:
    """The request a ``booking.requested`` opens, or a ``booking.created`` resolves."""
    if type == "booking.created" and "pending_ms" not in data:
        return None  # a booking made elsewhere (or one already reported): no request to close
    if type not in ("booking.created", "booking.requested"):
        return None
    for holder in ("booking", "request"):
        node = data.get(holder)
        if isinstance(node, Mapping) and isinstance(node.get("booking_request_uuid"), str):
            return str(node["booking_request_uuid"])
    return None


# --------------------------------------------------------------------------- event payloads


@dataclass(frozen=True, slots=True)
class EventFields:
    """One Bookings event, parsed. Every field is None when the event did not carry it."""

    name: str
    id: str | None = None
    meeting_id: str | None = None
    booking_request_uuid: str | None = None
    title: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    duration_min: int | None = None
    organizer: Organizer = field(default_factory=Organizer)
    cause: str | None = None  # Deleted.Cause or *Failed.FailureCause
    new_end: datetime | None = None  # ExtensionRequested.NewEndTime
    original_meeting_id: str | None = None  # ExtensionRequested/ExtensionFailed
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def xevent(self) -> str:
        return f"Bookings.{self.name}"

    @property
    def envelope_type(self) -> str | None:
        return EVENT_TYPES.get(self.name)

    @property
    def key(self) -> str | None:
        """The window key this event names (MeetingId, else ``id:<Id>``), if any."""
        if self.meeting_id:
            return self.meeting_id
        if self.id:
            return "id:" + self.id
        return None


MAX_EVENT_DEPTH: Final = 16
"""Deepest nesting a Bookings event may have. Real ones are three or four levels deep; the
fingerprint's JSON encoder (orjson) refuses documents past 254 levels, and nothing that deep is
an event."""


def nesting_depth(value: Any, limit: int = MAX_EVENT_DEPTH) -> int:
    """How deep ``value``'s objects and arrays nest, counting up to ``limit + 1`` at most
    (iterative: a hostile document cannot exhaust the stack)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        node, depth = todo.pop()
        # dict first: parsed JSON is dicts, and an ABC check costs several times more.
        if isinstance(node, (dict, Mapping)):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        for c in children:
            # Strings, numbers and null (nearly every value) end here, never queued.
            if isinstance(c, (dict, list, Mapping)):
                todo.append((c, depth))
    return deepest


def parse_event(payload: Mapping[str, Any]) -> EventFields | None:
    """Parse a Bookings event notification; None when it is not one.

    Accepts the handler payload ``{"Event": {"Bookings": {Name: {...}}}}``, or
    ``{"Bookings": {Name: {...}}}``, or ``{Name: {...}}``. Never raises on odd values.
    """
    node: Any = payload
    if isinstance(node, Mapping) and isinstance(node.get("Event"), Mapping):
        node = node["Event"]
    if isinstance(node, Mapping) and isinstance(node.get("Bookings"), Mapping):
        node = node["Bookings"]
    if not isinstance(node, Mapping) or not node:
        return None
    name = next((k for k in node if k not in ("id", "Id")), None)
    if name is None:
        return None
    body = node[name]
    if not isinstance(body, Mapping):
        known = name in EVENT_TYPES or name in RELIST_EVENTS or name in IGNORED_EVENTS
        if not known:
            return None
        body = {}  # an empty event ("SyncRequired": "") may arrive without an object
    # Most events carry two or three of these fields (Start: Id, MeetingId): the parsers run
    # only for the fields present (every event goes through here).
    got = {k: v for k, v in body.items() if v is not None}
    start = parse_device_time(got["StartTime"]) if "StartTime" in got else None
    end = parse_device_time(got["EndTime"]) if "EndTime" in got else None
    duration = device_int(got["Duration"]) if "Duration" in got else None
    if duration is None and "ScheduledDuration" in got:
        duration = device_int(got["ScheduledDuration"])
    if end is None and start is not None and duration is not None and name != "ExtensionRequested":
        end = plus_minutes(start, duration)
    text = {k: device_str(got[k]) for k in _TEXT_FIELDS if k in got}
    organizer = _NO_ORGANIZER
    if "OrganizerName" in text or "OrganizerEmail" in text or "OrganizerId" in text:
        organizer = Organizer(
            name=text.get("OrganizerName"),
            email=text.get("OrganizerEmail"),
            id=text.get("OrganizerId"),
        )
    return EventFields(
        name=str(name),
        id=text.get("Id"),
        meeting_id=text.get("MeetingId"),
        booking_request_uuid=text.get("BookingRequestUUID"),
        title=text.get("Title"),
        start=start,
        end=end,
        duration_min=duration,
        organizer=organizer,
        cause=text.get("FailureCause") or text.get("Cause"),
        new_end=parse_device_time(got["NewEndTime"]) if "NewEndTime" in got else None,
        original_meeting_id=text.get("OriginalMeetingId"),
        raw=dict(body),
    )


_TEXT_FIELDS: Final = (
    "Id",
    "MeetingId",
    "BookingRequestUUID",
    "Title",
    "FailureCause",
    "Cause",
    "OrganizerName",
    "OrganizerEmail",
    "OrganizerId",
    "OriginalMeetingId",
)
_NO_ORGANIZER: Final = Organizer()


def merge(stored: Booking | None, ev: EventFields) -> Booking | None:
    """The booking after ``ev``: the event's fields over the stored entry.

    None when neither side gives an ``Id``, a start and an end (the shell then re-lists).
    Organizer fields are taken one by one; the device's empty strings never erase stored values.
    """
    bid = ev.id or (stored.id if stored else None)
    start = ev.start or (stored.start if stored else None)
    end = ev.end
    if end is None and stored is not None:
        end = stored.end
        if ev.start is not None and ev.duration_min is None:
            try:
                end = ev.start + (stored.end - stored.start)  # moved, length kept
            except OverflowError:  # moved to the calendar's last day: the length cannot fit
                end = None
    if bid is None or start is None or end is None:
        return None
    so = stored.organizer if stored else Organizer()
    org = Organizer(
        name=ev.organizer.name or so.name,
        email=ev.organizer.email or so.email,
        id=ev.organizer.id or so.id,
    )
    if stored is None:
        return Booking(
            id=bid,
            start=start,
            end=end,
            title=ev.title,
            meeting_id=ev.meeting_id,
            booking_request_uuid=ev.booking_request_uuid,
            organizer=org,
        )
    checked_in = True if ev.name == "CheckedIn" else stored.checked_in
    return replace(
        stored,
        id=bid,
        start=start,
        end=end,
        title=ev.title or stored.title,
        meeting_id=ev.meeting_id or stored.meeting_id,
        booking_request_uuid=ev.booking_request_uuid or stored.booking_request_uuid,
        organizer=org,
        checked_in=checked_in,
    )


def partial_booking_dict(ev: EventFields) -> dict[str, Any]:
    """The contract booking dict from an event alone (unknown fields null): used when the booking
    is not in the window and the event lacks a time (``Start {Id}`` on older software)."""
    return {
        "id": ev.id,
        "meeting_id": ev.meeting_id or ev.original_meeting_id,
        "booking_request_uuid": ev.booking_request_uuid,
        "title": ev.title,
        "start": utc_iso(ev.start) if ev.start else None,
        "end": utc_iso(ev.end) if ev.end else None,
        "organizer": ev.organizer.to_dict(),
        "privacy": None,
        "platform": None,
        "join_url": None,
    }
