"""Pending booking requests: from ``BookingRequested`` until created, failed or expired.

``Bookings Book`` answers only ``{"status":"OK"}``; the outcome arrives later as
``BookingCreated``/``BookingFailed`` carrying the request's ``BookingRequestUUID``, inside the
device's confirmation window (``Configuration Bookings AdhocBooking BookingTimeout``, 60..300 s).
Legacy software (RoomOS 11) sends neither: a request is closed there by finding its booking in a
re-list. So a request is closed by

- ``BookingCreated`` with its UUID -> created (``pending_ms`` = event time - requested_at);
- ``BookingFailed`` with its UUID -> failed (with the device's ``FailureCause``);
- a booking in any re-list matching it (:func:`match_in_list`) -> created;
- a re-list after the deadline without a match -> expired.

The deadline is ``requested_at + clamp(BookingTimeout, 60, 300) + grace``. When it passes the
next tick asks for a re-list (``on_tick``); only the list after the deadline can expire a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from edge_agent.bookings.models import Booking, device_str, parse_device_time
from edge_agent.clock import utc_iso

__all__ = [
    "BOOKING_TIMEOUT_DEFAULT_S",
    "DEFAULT_GRACE_S",
    "START_TOLERANCE",
    "PendingRequest",
    "Resolution",
    "clamp_booking_timeout",
    "deadline_for",
    "match_in_list",
    "open_request",
    "resolve_by_list",
]

BOOKING_TIMEOUT_DEFAULT_S = 60
DEFAULT_GRACE_S = 30.0
"""Seconds past the device's BookingTimeout before a request without an outcome is re-listed
for (and expired by that list): the ``request_grace_s`` default (``[defaults]``, per device)."""
START_TOLERANCE = timedelta(minutes=1)
"""A listed booking matches a request whose StartTime is within a minute of its start
(devices and calendar backends round to the minute)."""


def clamp_booking_timeout(value: int | None) -> int:
    """The device's BookingTimeout, clamped to its value space 60..300 (None -> 60)."""
    if value is None:
        return BOOKING_TIMEOUT_DEFAULT_S
    return max(60, min(300, int(value)))


def deadline_for(requested_at: datetime, booking_timeout_s: int | None, grace_s: float) -> datetime:
    return requested_at + timedelta(seconds=clamp_booking_timeout(booking_timeout_s) + grace_s)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """One open booking request. ``start`` None means "now" (the request had no StartTime).

    ``relist_requested`` is set once the deadline passed and a re-list was asked for, so the tick
    asks only once per request.
    """

    device_id: str
    booking_request_uuid: str
    title: str | None
    start: datetime | None
    duration_min: int
    requested_at: datetime
    deadline: datetime
    relist_requested: bool = False

    def to_row(self) -> dict[str, Any]:
        """A JSON-able dict for the store's pending table: :meth:`to_dict` and what the
        tracker needs besides."""
        return {
            "device_id": self.device_id,
            **self.to_dict(),
            "relist_requested": self.relist_requested,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PendingRequest:
        """Inverse of :meth:`to_row`. Raises ValueError on a row that lacks the essentials."""
        dev = device_str(row.get("device_id"))
        uuid = device_str(row.get("booking_request_uuid"))
        requested_at = parse_device_time(row.get("requested_at"))
        deadline = parse_device_time(row.get("deadline"))
        if dev is None or uuid is None or requested_at is None or deadline is None:
            raise ValueError(
                f"pending row lacks device_id/uuid/requested_at/deadline: {dict(row)!r}"
            )
        return cls(
            device_id=dev,
            booking_request_uuid=uuid,
            title=device_str(row.get("title")),
            start=parse_device_time(row.get("start")),
            duration_min=int(row.get("duration_min") or 0),
            requested_at=requested_at,
            deadline=deadline,
            relist_requested=bool(row.get("relist_requested", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The request as envelopes carry it (``data.request``)."""
        return {
            "booking_request_uuid": self.booking_request_uuid,
            "title": self.title,
            "start": utc_iso(self.start) if self.start else None,
            "duration_min": self.duration_min,
            "requested_at": utc_iso(self.requested_at),
            "deadline": utc_iso(self.deadline),
        }


def open_request(
    *,
    device_id: str,
    booking_request_uuid: str,
    title: str | None,
    start: datetime | None,
    duration_min: int,
    requested_at: datetime,
    booking_timeout_s: int | None,
    grace_s: float = DEFAULT_GRACE_S,
) -> PendingRequest:
    """A new pending request (on ``BookingRequested``)."""
    return PendingRequest(
        device_id=device_id,
        booking_request_uuid=booking_request_uuid,
        title=title,
        start=start,
        duration_min=duration_min,
        requested_at=requested_at,
        deadline=deadline_for(requested_at, booking_timeout_s, grace_s),
    )


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a request closed. ``pending_ms`` only for ``created``; ``cause`` only for ``failed``;
    ``booking`` for ``created`` (with ``booking_request_uuid`` filled in)."""

    outcome: Literal["created", "failed", "expired"]
    request: PendingRequest
    at: datetime
    booking: Booking | None = None
    cause: str | None = None

    @property
    def pending_ms(self) -> int:
        return max(0, int((self.at - self.request.requested_at).total_seconds() * 1000))


def match_in_list(request: PendingRequest, fresh: Iterable[Booking]) -> Booking | None:
    """The listed booking that is this request's outcome, if any.

    Title must match when the request had one. With a StartTime, the booking must start within
    :data:`START_TOLERANCE` of it; without, within the confirmation window (deadline -
    requested_at) of ``requested_at``, either side (devices round an ad hoc "now" down to the
    minute). A booking already tied to another request UUID never matches. The closest start wins.
    """
    if request.start is not None:
        anchor, tolerance = request.start, START_TOLERANCE
    else:
        anchor, tolerance = request.requested_at, request.deadline - request.requested_at
    best: tuple[timedelta, Booking] | None = None
    for b in fresh:
        if b.booking_request_uuid not in (None, request.booking_request_uuid):
            continue
        if b.booking_request_uuid == request.booking_request_uuid:
            return b
        if request.title is not None and b.title != request.title:
            continue
        gap = abs(b.start - anchor)
        if gap > tolerance:
            continue
        if best is None or gap < best[0]:
            best = (gap, b)
    return best[1] if best else None


def resolve_by_list(
    request: PendingRequest, fresh: Iterable[Booking], now: datetime
) -> Resolution | None:
    """Close ``request`` from a complete re-list made at ``now``: created when its booking is
    there, expired when not and the deadline has passed, else None (still pending)."""
    hit = match_in_list(request, fresh)
    if hit is not None:
        return Resolution(
            "created",
            request,
            now,
            booking=replace(hit, booking_request_uuid=request.booking_request_uuid),
        )
    if now >= request.deadline:
        return Resolution("expired", request, now)
    return None
