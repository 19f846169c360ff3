"""The tenant's mailboxes and their calendars, and every change made to them.

Changes come from two sides and are the same here: the Graph API (the agent creating, moving,
deleting) and the in-process/control API (someone "in Outlook"). Each bumps the mailbox's seq
and tells the listeners (change notifications of subscriptions).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from device_sim.clock import SimClock

from .model import (
    SENSITIVITIES,
    Event,
    GraphError,
    Mailbox,
    Recurrence,
    opaque_id,
    parse_datetime_tz,
    split_occurrence,
    zone,
)

ChangeType = Literal["created", "updated", "deleted"]
Listener = Callable[[Mailbox, ChangeType, str], None]
MAX_EVENTS_PER_MAILBOX = 50_000


def room_id_of(address: str) -> str:
    """A directory object id (GUID form), stable for the address."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + address.lower()))


@dataclass
class EventSpec:
    """An event as given by the one who makes it (Graph body or in-process call)."""

    subject: str
    start: datetime
    end: datetime
    time_zone: str = "UTC"
    organizer_name: str = ""
    organizer_address: str = ""
    join_url: str | None = None
    sensitivity: str = "normal"
    is_all_day: bool = False
    body: str = ""
    location: str = ""
    transaction_id: str | None = None
    recurrence: Recurrence | None = None


class Directory:
    def __init__(self, clock: SimClock, domain: str = "contoso.com") -> None:
        self.clock = clock
        self.domain = domain
        self.mailboxes: dict[str, Mailbox] = {}
        self._by_id: dict[str, Mailbox] = {}
        self.listeners: list[Listener] = []
        self._counter = 0

    # ---- mailboxes ---------------------------------------------------------------------------

    def add_mailbox(
        self,
        address: str,
        display_name: str | None = None,
        *,
        time_zone: str = "UTC",
        is_room: bool = True,
        capacity: int = 8,
        building: str = "",
        floor: int | None = None,
    ) -> Mailbox:
        if not re.fullmatch(r"[^@\s/]+@[^@\s/]+", address):
            raise ValueError(f"{address!r} is not a mailbox address (local@domain)")
        zone(time_zone)
        key = address.lower()
        if key in self.mailboxes:
            raise ValueError(f"mailbox {address} exists already")
        box = Mailbox(
            address=address,
            display_name=display_name or address.split("@")[0],
            id=room_id_of(address),
            time_zone=time_zone,
            is_room=is_room,
            capacity=capacity,
            building=building,
            floor=floor,
        )
        self.mailboxes[key] = box
        self._by_id[box.id] = box
        return box

    def remove_mailbox(self, address: str) -> Mailbox:
        box = self.mailbox(address)
        del self.mailboxes[box.address.lower()]
        del self._by_id[box.id]
        return box

    def mailbox(self, key: str) -> Mailbox:
        """By address (any case) or directory id; 404 ``ErrorInvalidUser`` otherwise."""
        box = self.mailboxes.get(key.lower()) or self._by_id.get(key)
        if box is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        return box

    def rooms(self) -> list[Mailbox]:
        return sorted((b for b in self.mailboxes.values() if b.is_room), key=lambda b: b.address)

    # ---- events ------------------------------------------------------------------------------

    def _changed(self, box: Mailbox, change: ChangeType, event_id: str) -> None:
        for listener in list(self.listeners):
            listener(box, change, event_id)

    def create(self, box: Mailbox, spec: EventSpec) -> tuple[Event, bool]:
        """(the event, whether it is new): a known ``transaction_id`` gives the first one back."""
        if spec.transaction_id and spec.transaction_id in box.by_transaction:
            known = box.events.get(box.by_transaction[spec.transaction_id])
            if known is not None:
                return known, False
        if spec.end < spec.start:
            raise GraphError(
                400, "ErrorInvalidRequest", "The end time of the event is before its start."
            )
        if spec.sensitivity not in SENSITIVITIES:
            raise GraphError(
                400, "RequestBodyRead", f"Requested value '{spec.sensitivity}' was not found."
            )
        if len(box.events) >= MAX_EVENTS_PER_MAILBOX:
            raise GraphError(
                507, "ErrorQuotaExceeded", "The mailbox has reached its calendar item limit."
            )
        self._counter += 1
        now = self.clock.now()
        event_id = opaque_id(box.address.lower(), str(self._counter), spec.subject)
        event = Event(
            id=event_id,
            ical_uid="040000008200E00074C5B7101A82E008" + event_id[6:38].upper(),
            subject=spec.subject,
            start=spec.start.astimezone(UTC),
            end=spec.end.astimezone(UTC),
            time_zone=spec.time_zone,
            organizer_name=spec.organizer_name or box.display_name,
            organizer_address=spec.organizer_address or box.address,
            created=now,
            modified=now,
            version=box.bump(),
            join_url=spec.join_url,
            sensitivity=spec.sensitivity,
            is_all_day=spec.is_all_day,
            body=spec.body,
            location=spec.location or box.display_name,
            transaction_id=spec.transaction_id,
            recurrence=spec.recurrence,
        )
        box.events[event_id] = event
        if spec.transaction_id:
            box.by_transaction[spec.transaction_id] = event_id
        self._changed(box, "created", event_id)
        return event, True

    def find(self, box: Mailbox, event_id: str) -> tuple[Event, Any]:
        """(the stored item, the occurrence date or None) for an event or occurrence id."""
        event = box.events.get(event_id)
        if event is not None:
            return event, None
        split = split_occurrence(event_id)
        if split is not None and split[0] in box.events:
            master = box.events[split[0]]
            if master.recurrence is not None and split[1] not in master.cancelled_dates:
                return master, split[1]
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    def update(self, box: Mailbox, event_id: str, changes: dict[str, Any]) -> Event:
        """Apply a Graph PATCH body (subject, start, end, sensitivity, body, location, ...)."""
        event, day = self.find(box, event_id)
        if day is not None:
            raise GraphError(
                400, "ErrorInvalidRequest", "The simulator edits a series through its master."
            )
        start = parse_datetime_tz(changes["start"], "start") if "start" in changes else event.start
        end = parse_datetime_tz(changes["end"], "end") if "end" in changes else event.end
        if end < start:
            raise GraphError(
                400, "ErrorInvalidRequest", "The end time of the event is before its start."
            )
        sensitivity = str(changes.get("sensitivity", event.sensitivity))
        if sensitivity not in SENSITIVITIES:
            raise GraphError(
                400, "RequestBodyRead", f"Requested value '{sensitivity}' was not found."
            )
        event.start, event.end, event.sensitivity = start, end, sensitivity
        if "start" in changes:
            event.time_zone = str(changes["start"].get("timeZone") or event.time_zone)
        if "subject" in changes:
            event.subject = str(changes["subject"])
        if "body" in changes and isinstance(changes["body"], dict):
            event.body = str(changes["body"].get("content", ""))
        if "location" in changes and isinstance(changes["location"], dict):
            event.location = str(changes["location"].get("displayName", ""))
        if "isAllDay" in changes:
            event.is_all_day = bool(changes["isAllDay"])
        if "recurrence" in changes:
            value = changes["recurrence"]
            event.recurrence = None if value is None else Recurrence.from_graph(value)
        self._touch(box, event)
        return event

    def move(
        self, box: Mailbox, event_id: str, start: datetime, duration: timedelta | None = None
    ) -> Event:
        event, day = self.find(box, event_id)
        if day is not None:
            raise ValueError("move a series through its master")
        length = duration if duration is not None else event.end - event.start
        event.start, event.end = start.astimezone(UTC), start.astimezone(UTC) + length
        self._touch(box, event)
        return event

    def cancel(self, box: Mailbox, event_id: str) -> Event:
        """The organizer cancelled: the room's copy stays, with ``isCancelled`` true."""
        event, _ = self.find(box, event_id)
        event.is_cancelled = True
        self._touch(box, event)
        return event

    def delete(self, box: Mailbox, event_id: str) -> None:
        event, day = self.find(box, event_id)
        if day is not None:
            event.cancelled_dates.add(day)
            self._touch(box, event)
            return
        del box.events[event.id]
        if event.transaction_id:
            box.by_transaction.pop(event.transaction_id, None)
        box.bump()
        self._changed(box, "deleted", event.id)

    def _touch(self, box: Mailbox, event: Event) -> None:
        event.version = box.bump()
        event.modified = self.clock.now()
        self._changed(box, "updated", event.id)


def spec_from_graph(box: Mailbox, body: dict[str, Any]) -> EventSpec:
    """An ``EventSpec`` from a Graph create-event body (400 naming what is wrong)."""
    if "start" not in body or "end" not in body:
        raise GraphError(400, "ErrorInvalidRequest", "An event needs 'start' and 'end'.")
    start = parse_datetime_tz(body["start"], "start")
    end = parse_datetime_tz(body["end"], "end")
    recurrence = body.get("recurrence")
    online = bool(body.get("isOnlineMeeting"))
    transaction = body.get("transactionId")
    if transaction is not None and not isinstance(transaction, str):
        raise GraphError(400, "RequestBodyRead", "transactionId must be a string.")
    subject = body.get("subject", "")
    content = body.get("body") if isinstance(body.get("body"), dict) else {}
    location = body.get("location") if isinstance(body.get("location"), dict) else {}
    return EventSpec(
        subject=str(subject or ""),
        start=start,
        end=end,
        time_zone=str(body["start"].get("timeZone") or "UTC"),
        join_url=(
            f"https://teams.microsoft.com/l/meetup-join/19%3ameeting_{uuid.uuid4().hex}%40thread.v2/0"
            if online
            else None
        ),
        sensitivity=str(body.get("sensitivity", "normal")),
        is_all_day=bool(body.get("isAllDay", False)),
        body=str((content or {}).get("content", "")),
        location=str((location or {}).get("displayName", "")),
        transaction_id=transaction or None,
        recurrence=None if recurrence is None else Recurrence.from_graph(recurrence),
    )
