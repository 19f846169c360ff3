"""The calendar of one device: the Bookings commands and the events they cause (sans-I/O).

Every method takes ``now`` (an aware UTC datetime) and appends the Bookings events it causes to
``Calendar.out`` as ``(name, fields)``; the device drains that list, filters it through its
software profile and notifies subscribers. Nothing here sleeps or reads a clock: time-driven
events (Start, End, hybrid confirmations...) happen in ``tick(now)``, and ``next_due()`` tells
the scheduler when to call it next. Whether and when a request is answered is the backend's
(``backend.Backend``); the event fields are ``wire``'s.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from . import wire
from .backend import Backend
from .model import (
    KEEP_PAST,
    Booking,
    CalendarError,
    CalendarMode,
    Event,
    Organizer,
    PendingRequest,
    local_midnight,
)


class Calendar:
    """The bookings of one device and the state machine of the Bookings commands."""

    def __init__(
        self,
        *,
        mode: CalendarMode = "local",
        confirm_delay_s: float = 5.0,
        booking_timeout_s: int = 60,
        seed: int = 0,
        now: datetime,
    ) -> None:
        self.backend = Backend(
            mode, confirm_delay_s=confirm_delay_s, booking_timeout_s=booking_timeout_s
        )
        self.bookings: dict[str, Booking] = {}
        self.out: list[Event] = []
        self.last_updated = now
        self._next_id = 1
        self._rng = random.Random(seed)

    @property
    def mode(self) -> CalendarMode:
        return self.backend.mode

    # ---- helpers -------------------------------------------------------------------------

    def new_id(self) -> str:
        value = str(self._next_id)
        self._next_id += 1
        return value

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def new_meeting_id(self) -> str:
        return self.new_uuid()

    def sorted_bookings(self) -> list[Booking]:
        return sorted(self.bookings.values(), key=lambda b: (b.start, b.end, int(b.id)))

    def find(self, booking_id: str | None = None, meeting_id: str | None = None) -> Booking:
        if booking_id:
            found = self.bookings.get(str(booking_id))
            if found is not None:
                return found
            raise CalendarError("NotFound", f"No booking with Id {booking_id}")
        if meeting_id:
            for booking in self.bookings.values():
                if booking.meeting_id and booking.meeting_id == meeting_id:
                    return booking
            raise CalendarError("NotFound", f"No booking with MeetingId {meeting_id}")
        raise CalendarError("MissingId", "Either Id or MeetingId is required")

    def overlapping(self, start: datetime, end: datetime, ignore: str = "") -> Booking | None:
        for booking in self.bookings.values():
            if booking.id != ignore and booking.start < end and start < booking.end:
                return booking
        return None

    def current(self, now: datetime) -> Booking | None:
        running = [b for b in self.bookings.values() if b.start <= now < b.end]
        return min(running, key=lambda b: b.start) if running else None

    def availability(self, now: datetime) -> tuple[str, str, str]:
        """(Availability Status, Availability TimeStamp, Current Id) at ``now``."""
        current = self.current(now)
        if current is not None:
            end = current.end
            # back-to-back bookings keep the room booked until the last one ends
            for booking in self.sorted_bookings():
                if booking.start <= end < booking.end:
                    end = booking.end
            return "BookedUntil", wire.utc_iso(end), current.id
        upcoming = [b.start for b in self.bookings.values() if b.start > now]
        if upcoming:
            return "FreeUntil", wire.utc_iso(min(upcoming)), ""
        return "Free", "", ""

    def _changed(self, now: datetime) -> None:
        self.last_updated = now
        self.out.append(("Updated", {}))

    # ---- list and get ----------------------------------------------------------------------

    def list_bookings(
        self,
        now: datetime,
        zone: ZoneInfo,
        *,
        day_offset: int | None = None,
        days: int | None = None,
        limit: int | None = None,
        offset: int = 0,
        schedule_type: str | None = None,
    ) -> dict[str, Any]:
        """The result of ``Bookings List``: days are the device's LOCAL days (``zone``)."""
        rows = self.sorted_bookings()
        if day_offset is not None or days is not None:
            today = now.astimezone(zone).date()
            first = today + timedelta(days=day_offset or 0)
            lo = local_midnight(first, zone)
            rows = [b for b in rows if b.end > lo]
            if days is not None:
                hi = local_midnight(first + timedelta(days=days), zone)
                rows = [b for b in rows if b.start < hi]
        if schedule_type == "Current":
            rows = [b for b in rows if b.start <= now < b.end]
        elif schedule_type == "Upcoming":
            rows = [b for b in rows if b.start > now]
        total = len(rows)
        page = rows[offset:]
        if limit is not None:
            page = page[:limit]
        result: dict[str, Any] = {}
        # the device leaves "Booking" out entirely, not empty, when nothing matches
        if page:
            result["Booking"] = [self.entry(b, i) for i, b in enumerate(page, start=1)]
        result["LastUpdated"] = wire.utc_iso(self.last_updated)
        result["ResultInfo"] = {"TotalRows": total}
        result["status"] = "OK"
        return result

    def entry(self, booking: Booking, position: int) -> dict[str, Any]:
        """A ``Bookings List`` row for ``booking`` (see ``wire.list_entry``)."""
        return wire.list_entry(booking, position, (b.start for b in self.bookings.values()))

    def get(self, booking_id: str | None = None, meeting_id: str | None = None) -> dict[str, Any]:
        booking = self.find(booking_id, meeting_id)
        return {"Booking": self.entry(booking, 1), "status": "OK"}

    # ---- changes made at the device (commands) ---------------------------------------------

    def book(
        self,
        now: datetime,
        *,
        request_uuid: str | None = None,
        duration_min: int = 30,
        start: datetime | None = None,
        title: str = "",
        organizer: Organizer | None = None,
    ) -> str:
        """``Bookings Book``: emits BookingRequested; the outcome follows now or later."""
        request = PendingRequest(
            "book",
            now,
            "accept",
            uuid=request_uuid or self.new_uuid(),
            start=(start or now).replace(microsecond=0),
            duration_min=duration_min,
            title=title or "Booked on device",
            organizer=organizer or Organizer(),
        )
        assert request.start is not None
        self.out.append(wire.booking_requested(request))
        end = request.start + timedelta(minutes=duration_min)
        request.outcome = self.backend.outcome(
            conflict=self.overlapping(request.start, end) is not None
        )
        self._submit(request, now)
        return request.uuid

    def edit(
        self,
        now: datetime,
        *,
        booking_id: str | None = None,
        meeting_id: str | None = None,
        start: datetime | None = None,
        duration_min: int | None = None,
        title: str | None = None,
        organizer: Organizer | None = None,
    ) -> None:
        """``Bookings Edit``: EditRequested, then the change (or EditFailed)."""
        booking = self.find(booking_id, meeting_id)
        changes: dict[str, Any] = {}
        if start is not None:
            changes["start"] = start
        if duration_min is not None:
            changes["duration_min"] = duration_min
        if title is not None:
            changes["title"] = title
        if organizer is not None:
            changes["organizer"] = organizer
        self.out.append(wire.edit_requested(booking))
        request = PendingRequest(
            "edit", now, self.backend.outcome(), booking_id=booking.id, changes=changes
        )
        self._submit(request, now)

    def extend(
        self,
        now: datetime,
        *,
        duration_min: int,
        booking_id: str | None = None,
        meeting_id: str | None = None,
    ) -> None:
        """``Bookings Extend``: ExtensionRequested, then the longer booking or ExtensionFailed."""
        booking = self.find(booking_id, meeting_id)
        new_end = booking.end + timedelta(minutes=duration_min)
        self.out.append(wire.extension_requested(booking, duration_min, new_end))
        request = PendingRequest(
            "extend", now, self.backend.outcome(), booking_id=booking.id, duration_min=duration_min
        )
        self._submit(request, now)

    def _submit(self, request: PendingRequest, now: datetime) -> None:
        if self.backend.submit(request, now):
            self._resolve(request, now)

    def _resolve(self, request: PendingRequest, now: datetime) -> None:
        """The backend answered ``request`` at ``now``: apply it, or report the failure."""
        if request.kind == "book":
            self._resolve_book(request, now)
        elif request.kind == "edit":
            self._resolve_edit(request, now)
        else:
            self._resolve_extend(request, now)

    def _resolve_book(self, request: PendingRequest, now: datetime) -> None:
        assert request.start is not None
        end = request.start + timedelta(minutes=request.duration_min)
        # the slot may have been taken while the backend thought about it
        if request.outcome == "accept" and self.overlapping(request.start, end) is not None:
            request.outcome = "decline"
        if request.outcome != "accept":
            self.out.append(wire.booking_failed(request))
            return
        booking = Booking(
            id=self.new_id(),
            meeting_id=self.new_meeting_id() if self.mode == "hybrid" else "",
            title=request.title,
            start=request.start,
            end=end,
            organizer=request.organizer,
            start_buffer_s=0,
            platform="None",
            booking_request_uuid=request.uuid,
        )
        booking.mark_past(now, start_if_current=True)
        self.bookings[booking.id] = booking
        self.out.append(wire.booking_created(booking))
        self._changed(now)

    def _resolve_edit(self, request: PendingRequest, now: datetime) -> None:
        booking = self.bookings.get(request.booking_id)
        if booking is None:
            return
        changes = request.changes
        start = changes.get("start", booking.start)
        duration = changes.get("duration_min", booking.duration_min)
        end = start + timedelta(minutes=duration)
        if request.outcome == "accept" and self.overlapping(start, end, booking.id) is not None:
            request.outcome = "decline"
        if request.outcome != "accept":
            self.out.append(wire.edit_failed(booking, request))
            return
        moved = start != booking.start or end != booking.end
        booking.start, booking.end = start, end
        booking.title = changes.get("title", booking.title)
        booking.organizer = changes.get("organizer", booking.organizer)
        if moved:
            booking.mark_past(now, start_if_current=True)
            self.out.append(wire.booking_moved(booking))
        self._changed(now)

    def _resolve_extend(self, request: PendingRequest, now: datetime) -> None:
        booking = self.bookings.get(request.booking_id)
        if booking is None:
            return
        new_end = booking.end + timedelta(minutes=request.duration_min)
        if (
            request.outcome == "accept"
            and self.overlapping(booking.end, new_end, booking.id) is not None
        ):
            request.outcome = "decline"
        if request.outcome != "accept":
            self.out.append(wire.extension_failed(booking, request))
            return
        booking.end = new_end
        booking.fired -= {"TimeRemaining", "End", "EndTimeBuffer"}
        for when, _, name in booking.milestones():
            if name in ("TimeRemaining", "EndTimeBuffer", "End") and when < now:
                booking.fired.add(name)
        self._changed(now)

    def delete(
        self,
        now: datetime,
        *,
        booking_id: str | None = None,
        meeting_id: str | None = None,
        cause: str = "Deleted",
    ) -> Booking:
        """``Bookings Delete`` (and a deletion in the organizer's calendar): Deleted, Updated."""
        booking = self.find(booking_id, meeting_id)
        del self.bookings[booking.id]
        self.out.append(wire.deleted(booking, now, cause))
        self._changed(now)
        return booking

    def check_in(
        self, now: datetime, *, booking_id: str | None = None, meeting_id: str | None = None
    ) -> None:
        booking = self.find(booking_id, meeting_id)
        booking.checked_in = True
        self.out.append(wire.checked_in(booking, now))

    def snooze(
        self, now: datetime, *, booking_id: str | None = None, meeting_id: str | None = None
    ) -> None:
        booking = self.find(booking_id, meeting_id)
        self.out.append(
            ("NotificationSnoozed", {"Id": booking.id, "MeetingId": booking.meeting_id})
        )

    def clear(self, now: datetime) -> None:
        self.bookings.clear()
        self._changed(now)

    def put(self, now: datetime, documents: list[dict[str, Any]]) -> None:
        """``Bookings Put``: replace the stored list with a management system's document."""
        new: dict[str, Booking] = {}
        for doc in documents:
            booking = wire.booking_from_document(doc, fallback_id=self.new_id())
            booking.mark_past(now, start_if_current=False)
            new[booking.id] = booking
            self._next_id = max(self._next_id, int(booking.id) + 1 if booking.id.isdigit() else 0)
        self.bookings = new
        self._changed(now)

    # ---- changes made behind the device's back ("in Outlook") -------------------------------

    def add(self, now: datetime, booking: Booking, *, announce: bool = True) -> Booking:
        """A booking appears in the room's calendar: BookingCreated, Updated."""
        if not booking.id or booking.id in self.bookings:
            booking = replace(booking, id=self.new_id(), fired=set())
        booking.mark_past(now, start_if_current=False)
        self.bookings[booking.id] = booking
        if announce:
            self.out.append(wire.booking_created(booking))
            self._changed(now)
        return booking

    def move(
        self,
        now: datetime,
        booking_id: str,
        start: datetime,
        duration_min: int | None = None,
    ) -> Booking:
        """The organizer moved a booking: BookingMoved, Updated."""
        booking = self.find(booking_id)
        duration = duration_min if duration_min is not None else booking.duration_min
        booking.start = start
        booking.end = start + timedelta(minutes=duration)
        booking.mark_past(now, start_if_current=False)
        self.out.append(wire.booking_moved(booking))
        self._changed(now)
        return booking

    def renumber(self) -> None:
        """Give every booking a new device Id (a hybrid-calendar device after a reboot)."""
        renumbered: dict[str, Booking] = {}
        for booking in self.sorted_bookings():
            booking.id = self.new_id()
            renumbered[booking.id] = booking
        self.bookings = renumbered

    # ---- time --------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """When ``tick`` has something to do next (None: nothing scheduled)."""
        due = [d for d in (self.backend.next_due(),) if d is not None]
        for booking in self.bookings.values():
            due.extend(when for when, _, name in booking.milestones() if name not in booking.fired)
        return min(due) if due else None

    def tick(self, now: datetime) -> None:
        """Fire everything due at or before ``now``, in time order."""
        # a confirmation resolved in this tick can create a booking with milestones that are
        # also due already (after a big clock jump): go round until nothing is left
        while self._tick_once(now):
            pass
        self._forget_old(now)

    def _tick_once(self, now: datetime) -> bool:
        ready = self.backend.ready(now)
        steps: list[tuple[datetime, int, str, Any]] = []
        for booking in self.bookings.values():
            for when, order, name in booking.milestones():
                if when <= now and name not in booking.fired:
                    steps.append((when, order, name, booking))
        for request in ready:
            steps.append((request.due, -1, "resolve", request))
        steps.sort(key=lambda s: (s[0], s[1]))
        for when, _, name, item in steps:
            if name == "resolve":
                self._resolve(item, when)
                continue
            booking = item
            if booking.id not in self.bookings or name in booking.fired:
                continue
            booking.fired.add(name)
            self.out.append(wire.milestone(booking, name))
        return bool(steps)

    def _forget_old(self, now: datetime) -> None:
        old = [b.id for b in self.bookings.values() if b.end < now - KEEP_PAST]
        for booking_id in old:
            del self.bookings[booking_id]
