"""Builders for test bookings and RoomOS-shaped list entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge_agent.bookings.models import Booking, Organizer


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def booking(
    id: str = "1",
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    meeting_id: str | None = None,
    title: str | None = "Standup",
    organizer: Organizer | None = None,
    **kw: Any,
) -> Booking:
    start = start or utc(2026, 11, 23, 9)
    end = end or start.replace(hour=start.hour + 1)
    return Booking(
        id=id,
        start=start,
        end=end,
        title=title,
        meeting_id=meeting_id,
        organizer=organizer or Organizer(),
        **kw,
    )


def list_entry(
    pos: int = 1,
    Id: str = "1",
    MeetingId: str = "",
    Title: str = "Standup",
    StartTime: str = "2026-11-23T09:00:00Z",
    EndTime: str = "2026-11-23T10:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    """One ``Booking`` entry as RoomOS lists it (strings everywhere, empty for absent)."""
    entry: dict[str, Any] = {
        "id": str(pos),
        "Id": Id,
        "MeetingId": MeetingId,
        "Title": Title,
        "Agenda": "",
        "Privacy": "Public",
        "BookingStatus": "OK",
        "BookingStatusMessage": "",
        "Organizer": {
            "FirstName": "Ada",
            "LastName": "Lovelace",
            "Email": "ada@example.com",
            "Id": "org-1",
        },
        "Time": {
            "StartTime": StartTime,
            "StartTimeBuffer": "300",
            "EndTime": EndTime,
            "EndTimeBuffer": "0",
        },
        "MaximumMeetingExtension": "5",
        "MeetingExtensionAvailability": "Guaranteed",
        "Webex": {"Enabled": "False", "MeetingNumber": "", "Password": "", "Url": ""},
        "Encryption": "BestEffort",
        "Role": "Master",
        "Recording": "Disabled",
        "DialInfo": {
            "Calls": {
                "Call": [
                    {
                        "id": "1",
                        "Number": "room@example.webex.com",
                        "Protocol": "SIP",
                        "CallType": "Video",
                    }
                ]
            },
            "ConnectMode": "OBTP",
        },
    }
    entry.update(extra)
    return entry
