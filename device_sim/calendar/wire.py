"""The calendar on the wire: device time format, ``Bookings List`` rows, the Bookings events'
fields, and ``Bookings Put`` documents read back into bookings (the fields Cisco documents)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from .model import TIME_REMAINING_S, Booking, Event, Organizer, PendingRequest


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


# ---- Bookings List / Get rows -------------------------------------------------------------


def list_entry(booking: Booking, position: int, following: Iterable[datetime]) -> dict[str, Any]:
    """A ``Bookings List`` row, with every field a RoomOS device reports.

    ``following``: the starts of the bookings after this one (they bound its extension).
    """
    after = [start for start in following if start >= booking.end]
    room = int((min(after) - booking.end).total_seconds() // 60) if after else 60
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


# ---- Bookings events ------------------------------------------------------------------------


def booking_requested(request: PendingRequest) -> Event:
    assert request.start is not None
    return (
        "BookingRequested",
        {
            "BookingRequestUUID": request.uuid,
            "Duration": request.duration_min,
            "StartTime": utc_iso(request.start),
            "Title": request.title,
        },
    )


def booking_created(booking: Booking) -> Event:
    return (
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


def booking_failed(request: PendingRequest) -> Event:
    return ("BookingFailed", {"BookingRequestUUID": request.uuid, "FailureCause": _cause(request)})


def booking_moved(booking: Booking) -> Event:
    return (
        "BookingMoved",
        {
            "Id": booking.id,
            "MeetingId": booking.meeting_id,
            "StartTime": utc_iso(booking.start),
            "Duration": booking.duration_min,
        },
    )


def deleted(booking: Booking, now: datetime, cause: str = "Deleted") -> Event:
    freed = max(0, int((booking.end - max(now, booking.start)).total_seconds() // 60))
    return (
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


def edit_requested(booking: Booking) -> Event:
    return ("EditRequested", {"MeetingId": booking.meeting_id, "Id": booking.id})


def edit_failed(booking: Booking, request: PendingRequest) -> Event:
    return ("EditFailed", {"MeetingId": booking.meeting_id, "FailureCause": _cause(request)})


def extension_requested(booking: Booking, duration_min: int, new_end: datetime) -> Event:
    return (
        "ExtensionRequested",
        {
            "Id": booking.id,
            "MeetingId": booking.meeting_id,
            "OriginalMeetingId": booking.meeting_id,
            "Duration": duration_min,
            "NewEndTime": utc_iso(new_end),
        },
    )


def extension_failed(booking: Booking, request: PendingRequest) -> Event:
    return (
        "ExtensionFailed",
        {
            "OriginalMeetingId": booking.meeting_id,
            "ExtensionStart": utc_iso(booking.end),
            "FailureCause": _cause(request),
        },
    )


def checked_in(booking: Booking, now: datetime) -> Event:
    return (
        "CheckedIn",
        {
            "Id": booking.id,
            "MeetingId": booking.meeting_id,
            "StartTime": utc_iso(booking.start),
            "EndTime": utc_iso(booking.end),
            "MinuteOffset": int((now - booking.start).total_seconds() // 60),
        },
    )


def milestone(booking: Booking, name: str) -> Event:
    """Start, End, StartTimeBuffer, EndTimeBuffer or TimeRemaining of ``booking``."""
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


def _cause(request: PendingRequest) -> str:
    return "Timeout" if request.outcome == "timeout" else "Decline"


# ---- Bookings Put documents -------------------------------------------------------------------


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
