"""Source-neutral calendar bookings, their envelope form, and room ids derived from mailboxes.

A calendar source (Graph, Google) maps its events into :class:`CalendarBooking`; everything past
that edge (the sync logic, the store, the envelope) is the same for every source. The envelope
form is the device path's :class:`edge_agent.bookings.models.Booking` dict, so a receiver sees one
booking shape whichever source a room has (DESIGN.md "Contracts").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_agent.bookings.models import Booking, Organizer, device_str, parse_device_time

__all__ = ["CalendarBooking", "Organizer", "room_id_from_mailbox"]

_NOT_ID_CHAR = re.compile(r"[^a-z0-9]")


def room_id_from_mailbox(mailbox: str) -> str:
    """``Room-B@contoso.com`` -> ``room-b``: the local part, lower-cased, other characters ``-``.

    Raises ValueError for an address with an empty local part (nothing to name the room by).
    """
    local = mailbox.strip().rsplit("@", 1)[0] if "@" in mailbox else mailbox.strip()
    if not local:
        raise ValueError(f"calendar mailbox {mailbox!r} has no local part to name the room by")
    return _NOT_ID_CHAR.sub("-", local.lower())


@dataclass(frozen=True, slots=True)
class CalendarBooking:
    """One meeting in a room's calendar, as the agent keeps it.

    ``id`` is the source's event id (Graph ``id``, Google ``id``): the window key, stable across
    moves. ``meeting_id`` the iCalendar UID (Graph ``iCalUId``, Google ``iCalUID``).
    ``start``/``end`` aware UTC. ``cancelled`` is carried so the sync logic can treat a cancelled
    meeting as deleted. ``series_id`` is the recurring series an instance belongs to (Google
    ``recurringEventId``): Google gives every instance of a series the series' ``iCalUID``, and
    cancelling the series names only the series id. It is kept in the store's row, not in the
    envelope.
    """

    id: str
    start: datetime
    end: datetime
    title: str | None = None
    meeting_id: str | None = None
    organizer: Organizer = field(default_factory=Organizer)
    privacy: str | None = None
    platform: str | None = None
    join_url: str | None = None
    cancelled: bool = False
    series_id: str | None = None

    def to_booking(self) -> Booking:
        return Booking(
            id=self.id,
            start=self.start,
            end=self.end,
            title=self.title,
            meeting_id=self.meeting_id,
            organizer=self.organizer,
            privacy=self.privacy,
            platform=self.platform,
            join_url=self.join_url,
        )

    def to_dict(self) -> dict[str, Any]:
        """The envelope's ``data.booking`` (DESIGN.md): the same shape as a device booking."""
        return self.to_booking().to_dict()

    def to_row(self) -> dict[str, Any]:
        """The JSON-able row the store keeps for the room's window (envelope fields + extras)."""
        row = self.to_dict()
        row["cancelled"] = self.cancelled
        if self.series_id is not None:
            row["series_id"] = self.series_id
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CalendarBooking:
        """Inverse of :meth:`to_row`. Raises ValueError on a row without id/start/end."""
        bid = device_str(row.get("id"))
        start = parse_device_time(row.get("start"))
        end = parse_device_time(row.get("end"))
        if bid is None or start is None or end is None:
            raise ValueError(f"calendar window row lacks id/start/end: {dict(row)!r}")
        org = row.get("organizer")
        return cls(
            id=bid,
            start=start,
            end=end,
            title=device_str(row.get("title")),
            meeting_id=device_str(row.get("meeting_id")),
            organizer=Organizer.from_dict(org if isinstance(org, Mapping) else None),
            privacy=device_str(row.get("privacy")),
            platform=device_str(row.get("platform")),
            join_url=device_str(row.get("join_url")),
            cancelled=row.get("cancelled") is True,
            series_id=device_str(row.get("series_id")),
        )
