"""Booking a room through the agent (pure): the order, its checks, the ``Bookings Book`` args.

What the local API and the MQTT mirror accept is checked here before anything is sent, so a
refusal costs the device nothing: :func:`parse_order` (the body; :class:`OrderInvalid` names the
field), then :func:`check_order` against the device's window (:class:`OrderRefused`: overlap,
or outside the window). :func:`book_args` are the ``Bookings Book`` arguments, always with our
``BookingRequestUUID`` (the outcome events carry it back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edge_agent.bookings.models import Booking
from edge_agent.bookings.pending import PendingRequest
from edge_agent.bookings.window import WindowBounds
from edge_agent.clock import utc_iso

TITLE_MAX = 128
"""``Bookings Book Title`` MaxLength (RoomOS schema); the organizer fields are bounded alike."""
DURATION_MAX_MIN = 1440
"""``Bookings Book Duration``: 1..1440 minutes (RoomOS schema)."""
PAST_TOLERANCE = timedelta(minutes=5)
"""A ``start`` this far in the past is still taken (clocks differ; devices round to a minute)."""

_KEYS = frozenset({"title", "start", "duration_min", "organizer"})
_ORGANIZER_KEYS = ("name", "email", "id")


class OrderInvalid(ValueError):
    """The order's ``field`` is missing or wrong (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OrderRefused(Exception):
    """The order is well formed but cannot be booked: ``reason`` is ``overlap`` (HTTP 409)
    or ``outside_window`` (HTTP 422, field ``start``)."""

    def __init__(
        self,
        reason: str,
        message: str,
        conflict: Booking | None = None,
        pending: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.conflict = conflict
        self.pending = pending
        """The request UUID of a pending request it overlaps."""


@dataclass(frozen=True, slots=True)
class BookingOrder:
    """A validated order. ``start`` ``None``: now (the device books from its own clock)."""

    title: str
    duration_min: int
    start: datetime | None = None
    organizer: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "duration_min": self.duration_min,
            "start": utc_iso(self.start) if self.start else None,
            "organizer": dict(self.organizer) if self.organizer else None,
        }


def _bounded_str(field: str, value: Any, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise OrderInvalid(field, "must be a string")
    text: str = value.strip()
    if required and not text:
        raise OrderInvalid(field, "is required and may not be empty")
    if len(text) > TITLE_MAX:
        raise OrderInvalid(field, f"at most {TITLE_MAX} characters (the device's limit)")
    if any(ord(c) < 32 for c in text):
        raise OrderInvalid(field, "may not contain control characters")
    return text


def parse_order(body: Any) -> BookingOrder:
    """The order in a request body ``{title, start?, duration_min, organizer?}``.

    Raises:
        OrderInvalid: naming the first field that is wrong.
    """
    if not isinstance(body, Mapping):
        raise OrderInvalid(
            "body", "must be a JSON object {title, start?, duration_min, organizer?}"
        )
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise OrderInvalid(unknown[0], f"unknown field; allowed: {', '.join(sorted(_KEYS))}")
    title = _bounded_str("title", body.get("title"), required=True)
    assert title is not None
    duration = body.get("duration_min")
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise OrderInvalid("duration_min", "is required: whole minutes, 1..1440")
    if not 1 <= duration <= DURATION_MAX_MIN:
        raise OrderInvalid("duration_min", f"must be 1..{DURATION_MAX_MIN} minutes")
    start: datetime | None = None
    raw_start = body.get("start")
    if raw_start is not None:
        if not isinstance(raw_start, str):
            raise OrderInvalid("start", "must be an ISO 8601 time with a UTC offset")
        try:
            start = datetime.fromisoformat(raw_start)
        except ValueError:
            raise OrderInvalid("start", "must be an ISO 8601 time with a UTC offset") from None
        if start.tzinfo is None:
            raise OrderInvalid("start", "needs a UTC offset (e.g. 2026-11-23T09:00:00Z)")
        start = start.astimezone(UTC).replace(microsecond=0)
    organizer: dict[str, str] | None = None
    raw_org = body.get("organizer")
    if raw_org is not None:
        if not isinstance(raw_org, Mapping) or set(raw_org) - set(_ORGANIZER_KEYS):
            raise OrderInvalid("organizer", "must be an object {name?, email?, id?}")
        organizer = {}
        for key in _ORGANIZER_KEYS:
            value = _bounded_str(f"organizer.{key}", raw_org.get(key), required=False)
            if value:
                organizer[key] = value
    return BookingOrder(title, duration, start, organizer or None)


def check_order(
    order: BookingOrder,
    window: Iterable[Booking],
    bounds: WindowBounds,
    now: datetime,
    pending: Iterable[PendingRequest] = (),
) -> datetime:
    """The order's start (``now`` when it has none) once it fits the device's window.

    Raises:
        OrderRefused: it starts outside ``bounds`` or in the past (``outside_window``), or
            overlaps a booking in the window or a request still pending (``overlap``; a
            double-tapped kiosk button must not send two Books the device would decline).
    """
    start = order.start or now
    end = start + timedelta(minutes=order.duration_min)
    if start < now - PAST_TOLERANCE or not bounds.start <= start < bounds.end:
        raise OrderRefused(
            "outside_window",
            f"start {utc_iso(start)} is outside the device's window "
            f"[{utc_iso(max(bounds.start, now))}, {utc_iso(bounds.end)})",
        )
    for b in sorted(window, key=lambda b: b.start):
        if b.start < end and start < b.end:
            raise OrderRefused(
                "overlap",
                f"overlaps booking {b.id} ({utc_iso(b.start)} - {utc_iso(b.end)})",
                conflict=b,
            )
    for p in pending:
        p_start = p.start or p.requested_at
        if p_start < end and start < p_start + timedelta(minutes=p.duration_min):
            raise OrderRefused(
                "overlap",
                f"overlaps request {p.booking_request_uuid}, still pending "
                f"({utc_iso(p_start)}, {p.duration_min} min)",
                pending=p.booking_request_uuid,
            )
    return start


def book_args(order: BookingOrder, request_uuid: str) -> dict[str, Any]:
    """The ``Bookings Book`` arguments (names from the RoomOS schema)."""
    args: dict[str, Any] = {
        "BookingRequestUUID": request_uuid,
        "Duration": order.duration_min,
        "Title": order.title,
    }
    if order.start is not None:
        args["StartTime"] = order.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for key, arg in (("name", "OrganizerName"), ("email", "OrganizerEmail"), ("id", "OrganizerId")):
        if order.organizer and order.organizer.get(key):
            args[arg] = order.organizer[key]
    return args
