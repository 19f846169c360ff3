"""The device's calendar: bookings, the Bookings commands and the events they cause (sans-I/O).

Every method takes ``now`` (an aware UTC datetime) and appends the Bookings events it causes to
``Calendar.out`` as ``(name, fields)``; the device drains that list, filters it through its
software profile and notifies subscribers. Nothing here sleeps or reads a clock: time-driven
events (Start, End, hybrid confirmations...) happen in ``tick(now)``, and ``next_due()`` tells
the scheduler when to call it next.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

CalendarMode = Literal["local", "hybrid"]
FailureCause = Literal["Timeout", "Decline", "ConfigError", "HttpError", "KmsError"]

TIME_REMAINING_S = 300  # the device warns this long before a meeting ends
KEEP_PAST = timedelta(days=2)  # bookings older than this fall out of the calendar
Event = tuple[str, dict[str, Any]]


class CalendarError(Exception):
    """A Bookings command the device refuses (JSON-RPC error code 1, ``data.Cause``)."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def utc_iso(moment: datetime) -> str:
    """The device's time format: UTC, seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse a device time ("2026-11-23T09:00:00Z", fractions and offsets allowed)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if "." in value:
        head, _, tail = value.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        value = head + "." + digits[:6] + tail[len(digits) :]
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(slots=True)
class Organizer:
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    id: str = ""

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @classmethod
    def from_name(cls, name: str, email: str = "", id: str = "") -> Organizer:
        first, _, last = name.strip().partition(" ")
        return cls(first, last, email, id)


@dataclass(slots=True)
class Booking:
    """One booking as the device holds it."""

    id: str
    meeting_id: str
    title: str
    start: datetime
    end: datetime
    organizer: Organizer = field(default_factory=Organizer)
    agenda: str = ""
    privacy: str = "Public"
    start_buffer_s: int = 300
    end_buffer_s: int = 0
    platform: str = "Webex"  # MeetingPlatform: Webex, MicrosoftTeams, GoogleMeet, Zoom, Other, None
    number: str = ""  # what the device dials (DialInfo)
    webex_url: str = ""
    webex_pin: str = ""
    booking_request_uuid: str = ""
    checked_in: bool = False
    fired: set[str] = field(default_factory=set)

    @property
    def duration_min(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)

    def milestones(self) -> list[tuple[datetime, int, str]]:
        """(when, order, event) for the events this booking fires as time passes."""
        out = [(self.start, 1, "Start"), (self.end, 3, "End")]
        if self.start_buffer_s > 0:
            out.append((self.start - timedelta(seconds=self.start_buffer_s), 0, "StartTimeBuffer"))
        if (self.end - self.start).total_seconds() > TIME_REMAINING_S:
            out.append((self.end - timedelta(seconds=TIME_REMAINING_S), 2, "TimeRemaining"))
        if self.end_buffer_s > 0:
            out.append((self.end, 4, "EndTimeBuffer"))
        return out

    def mark_past(self, now: datetime, *, start_if_current: bool) -> None:
        """Forget milestones already behind ``now`` (a new or moved booking fires no history).

        With ``start_if_current`` a booking that is running right now still gets its Start
        (a room booked "from now" on the touch panel starts at once).
        """
        self.fired = set()
        for when, _, name in self.milestones():
            if when < now or (when == now and name != "Start"):
                if name == "Start" and start_if_current and self.end > now:
                    continue
                self.fired.add(name)


def _meeting_number(rng: random.Random) -> str:
    return str(rng.randrange(2_000_000_000, 2_999_999_999))


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for the (simulated) calendar backend in hybrid mode."""

    kind: Literal["book", "edit", "extend"]
    due: datetime
    outcome: Literal["accept", "decline", "timeout"]
    uuid: str = ""
    start: datetime | None = None
    duration_min: int = 30
    title: str = ""
    organizer: Organizer = field(default_factory=Organizer)
    booking_id: str = ""
    changes: dict[str, Any] = field(default_factory=dict)


class Calendar:
    """The bookings of one device and the state machine of the Bookings commands."""

    def __init__(
        self,
        *,
        mode: CalendarMode = "local",
        confirm_delay_s: float = 5.0,
        booking_timeout_s: int = 60,
        seed: int = 0,
        now: datetime | None = None,
    ) -> None:
        self.mode: CalendarMode = mode
        self.confirm_delay_s = confirm_delay_s
        self.booking_timeout_s = booking_timeout_s
        self.bookings: dict[str, Booking] = {}
        self.pending: list[PendingRequest] = []
        self.out: list[Event] = []
        self.decline_next = 0
        self.last_updated = now or datetime.now(UTC)
        self._next_id = 1
        self._rng = random.Random(seed)

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
            return "BookedUntil", utc_iso(end), current.id
        upcoming = [b.start for b in self.bookings.values() if b.start > now]
        if upcoming:
            return "FreeUntil", utc_iso(min(upcoming)), ""
        return "Free", "", ""

    def _changed(self, now: datetime) -> None:
        self.last_updated = now
        self.out.append(("Updated", {}))

    def _created(self, booking: Booking) -> None:
        self.out.append(
            (
                "BookingCreated",
                {
                    "Id": booking.id,
                    "MeetingId": booking.meeting_id,
                    **(
                        {"BookingRequestUUID": booking.booking_request_uuid}
                        if booking.booking_request_uuid
                        else {}
                    ),
                    "Duration": booking.duration_min,
                    "StartTime": utc_iso(booking.start),
                    "Title": booking.title,
                    "OrganizerName": booking.organizer.name,
                    "OrganizerEmail": booking.organizer.email,
                    "OrganizerId": booking.organizer.id,
                },
            )
        )

    def _moved(self, booking: Booking) -> None:
        self.out.append(
            (
                "BookingMoved",
                {
                    "Id": booking.id,
                    "MeetingId": booking.meeting_id,
                    "StartTime": utc_iso(booking.start),
                    "Duration": booking.duration_min,
                },
            )
        )

    def _deleted(self, booking: Booking, now: datetime, cause: str = "Deleted") -> None:
        freed = max(0, int((booking.end - max(now, booking.start)).total_seconds() // 60))
        self.out.append(
            (
                "Deleted",
                {
                    "Id": booking.id,
                    "MeetingId": booking.meeting_id,
                    "Cause": cause,
                    "StartTime": utc_iso(booking.start),
                    "EndTime": utc_iso(booking.end),
                    "ScheduledDuration": booking.duration_min,
                    "MinutesFreed": freed,
                    "OrganizerId": booking.organizer.id,
                    "TimeStamp": utc_iso(now),
                },
            )
        )

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
        result["LastUpdated"] = utc_iso(self.last_updated)
        result["ResultInfo"] = {"TotalRows": total}
        result["status"] = "OK"
        return result

    def entry(self, booking: Booking, position: int) -> dict[str, Any]:
        """A ``Bookings List`` row, with every field a RoomOS device reports."""
        following = [b.start for b in self.bookings.values() if b.start >= booking.end]
        room = int((min(following) - booking.end).total_seconds() // 60) if following else 60
        webex = booking.platform == "Webex" and bool(booking.number)
        calls: dict[str, Any] = {}
        if booking.number:
            protocol = "Spark" if webex else "SIP"
            calls["Call"] = [
                {
                    "id": 1,
                    "Number": booking.number,
                    "Protocol": protocol,
                    "CallRate": 6000,
                    "CallType": "Video",
                }
            ]
        return {
            "id": position,
            "Id": booking.id,
            "MeetingId": booking.meeting_id,
            "Title": booking.title,
            "Agenda": booking.agenda,
            "Privacy": booking.privacy,
            "Organizer": {
                "FirstName": booking.organizer.first_name,
                "LastName": booking.organizer.last_name,
                "Email": booking.organizer.email,
                "Id": booking.organizer.id,
            },
            "Time": {
                "StartTime": utc_iso(booking.start),
                "StartTimeBuffer": booking.start_buffer_s,
                "EndTime": utc_iso(booking.end),
                "EndTimeBuffer": booking.end_buffer_s,
            },
            "MaximumMeetingExtension": max(0, min(room, 60)),
            "MeetingExtensionAvailability": "Guaranteed" if room >= 30 else "NotGuaranteed",
            "BookingStatus": "OK",
            "BookingStatusMessage": "",
            "Webex": {
                "Enabled": "True" if webex else "False",
                "MeetingNumber": booking.number.split("@")[0] if webex else "",
                "Url": booking.webex_url if webex else "",
                "Pin": booking.webex_pin if webex else "",
            },
            "InteropBridge": {"Number": "", "ConferenceId": ""},
            "Encryption": "BestEffort",
            "Role": "Master",
            "Recording": "Disabled",
            "MeetingPlatform": booking.platform,
            "CheckedIn": "True" if booking.checked_in else "False",
            "DialInfo": {"Calls": calls, "ConnectMode": "OBTP" if booking.number else "Manual"},
        }

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
        request_uuid = request_uuid or self.new_uuid()
        start = (start or now).replace(microsecond=0)
        title = title or "Booked on device"
        self.out.append(
            (
                "BookingRequested",
                {
                    "BookingRequestUUID": request_uuid,
                    "Duration": duration_min,
                    "StartTime": utc_iso(start),
                    "Title": title,
                },
            )
        )
        end = start + timedelta(minutes=duration_min)
        outcome: Literal["accept", "decline", "timeout"] = "accept"
        if self.decline_next > 0:
            self.decline_next -= 1
            outcome = "decline"
        elif self.overlapping(start, end) is not None:
            outcome = "decline"
        request = PendingRequest(
            "book",
            now,
            outcome,
            uuid=request_uuid,
            start=start,
            duration_min=duration_min,
            title=title,
            organizer=organizer or Organizer(),
        )
        if self.mode == "local":
            self._resolve(request, now)
        else:
            self._defer(request, now)
        return request_uuid

    def _defer(self, request: PendingRequest, now: datetime) -> None:
        if self.confirm_delay_s > self.booking_timeout_s:
            request.outcome = "timeout"
            request.due = now + timedelta(seconds=self.booking_timeout_s)
        else:
            request.due = now + timedelta(seconds=self.confirm_delay_s)
        self.pending.append(request)

    def _resolve(self, request: PendingRequest, now: datetime) -> None:
        if request.kind == "book":
            self._resolve_book(request, now)
        elif request.kind == "edit":
            self._resolve_edit(request, now)
        else:
            self._resolve_extend(request, now)

    def _resolve_book(self, request: PendingRequest, now: datetime) -> None:
        assert request.start is not None
        end = request.start + timedelta(minutes=request.duration_min)
        if request.outcome == "accept" and self.overlapping(request.start, end) is not None:
            request.outcome = "decline"
        if request.outcome != "accept":
            cause = "Timeout" if request.outcome == "timeout" else "Decline"
            self.out.append(
                ("BookingFailed", {"BookingRequestUUID": request.uuid, "FailureCause": cause})
            )
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
        self._created(booking)
        self._changed(now)

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
        self.out.append(("EditRequested", {"MeetingId": booking.meeting_id, "Id": booking.id}))
        outcome: Literal["accept", "decline"] = "accept"
        if self.decline_next > 0:
            self.decline_next -= 1
            outcome = "decline"
        request = PendingRequest("edit", now, outcome, booking_id=booking.id, changes=changes)
        if self.mode == "local":
            self._resolve(request, now)
        else:
            self._defer(request, now)

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
            cause = "Timeout" if request.outcome == "timeout" else "Decline"
            self.out.append(
                ("EditFailed", {"MeetingId": booking.meeting_id, "FailureCause": cause})
            )
            return
        moved = start != booking.start or end != booking.end
        booking.start, booking.end = start, end
        booking.title = changes.get("title", booking.title)
        booking.organizer = changes.get("organizer", booking.organizer)
        if moved:
            booking.mark_past(now, start_if_current=True)
            self._moved(booking)
        self._changed(now)

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
        self.out.append(
            (
                "ExtensionRequested",
                {
                    "Id": booking.id,
                    "MeetingId": booking.meeting_id,
                    "OriginalMeetingId": booking.meeting_id,
                    "Duration": duration_min,
                    "NewEndTime": utc_iso(new_end),
                },
            )
        )
        outcome: Literal["accept", "decline"] = "accept"
        if self.decline_next > 0:
            self.decline_next -= 1
            outcome = "decline"
        request = PendingRequest(
            "extend", now, outcome, booking_id=booking.id, duration_min=duration_min
        )
        if self.mode == "local":
            self._resolve(request, now)
        else:
            self._defer(request, now)

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
            cause = "Timeout" if request.outcome == "timeout" else "Decline"
            self.out.append(
                (
                    "ExtensionFailed",
                    {
                        "OriginalMeetingId": booking.meeting_id,
                        "ExtensionStart": utc_iso(booking.end),
                        "FailureCause": cause,
                    },
                )
            )
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
        self._deleted(booking, now, cause)
        self._changed(now)
        return booking

    def check_in(
        self, now: datetime, *, booking_id: str | None = None, meeting_id: str | None = None
    ) -> None:
        booking = self.find(booking_id, meeting_id)
        booking.checked_in = True
        self.out.append(
            (
                "CheckedIn",
                {
                    "Id": booking.id,
                    "MeetingId": booking.meeting_id,
                    "StartTime": utc_iso(booking.start),
                    "EndTime": utc_iso(booking.end),
                    "MinuteOffset": int((now - booking.start).total_seconds() // 60),
                },
            )
        )

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
            booking = booking_from_document(doc, fallback_id=self.new_id())
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
            self._created(booking)
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
        self._moved(booking)
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
        due = [p.due for p in self.pending]
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
        ready = sorted((p for p in self.pending if p.due <= now), key=lambda p: p.due)
        for request in ready:
            self.pending.remove(request)
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
            self.out.append(self._milestone_event(booking, name))
        return bool(steps)

    def _milestone_event(self, booking: Booking, name: str) -> Event:
        fields: dict[str, Any] = {"Id": booking.id, "MeetingId": booking.meeting_id}
        if name == "End":
            fields |= {
                "StartTime": utc_iso(booking.start),
                "EndTime": utc_iso(booking.end),
                "ScheduledDuration": booking.duration_min,
            }
        elif name == "TimeRemaining":
            fields["Seconds"] = TIME_REMAINING_S
        return name, fields

    def _forget_old(self, now: datetime) -> None:
        old = [b.id for b in self.bookings.values() if b.end < now - KEEP_PAST]
        for booking_id in old:
            del self.bookings[booking_id]


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """00:00 of ``day`` in ``zone``, as UTC."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def booking_from_document(doc: dict[str, Any], fallback_id: str) -> Booking:
    """A booking from a ``Bookings Put`` document entry (the fields Cisco documents)."""
    times = doc.get("Time", {})
    start = parse_time(str(times["StartTime"])).replace(microsecond=0)
    if "Duration" in times:
        end = start + timedelta(minutes=int(times["Duration"]))
    else:
        end = parse_time(str(times["EndTime"]))
    org = doc.get("Organizer", {})
    if "FirstName" in org or "LastName" in org:
        organizer = Organizer(
            str(org.get("FirstName", "")),
            str(org.get("LastName", "")),
            str(org.get("Email", "")),
            str(org.get("Id", "")),
        )
    else:
        organizer = Organizer.from_name(
            str(org.get("Name", "")), str(org.get("Email", "")), str(org.get("Id", ""))
        )
    return Booking(
        id=str(doc.get("Id") or fallback_id),
        meeting_id=str(doc.get("MeetingId", "")),
        title=str(doc.get("Title", "")),
        start=start,
        end=end,
        organizer=organizer,
        agenda=str(doc.get("Agenda", "")),
        privacy=str(doc.get("Privacy", "Public")),
        start_buffer_s=int(times.get("StartTimeBuffer", 300)),
        end_buffer_s=int(times.get("EndTimeBuffer", 0)),
        platform=str(doc.get("MeetingPlatform", "None")),
        number=str(doc.get("Number", "")),
    )
