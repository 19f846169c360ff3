"""Precedence for a linked room: the calendar's window wins, the device's own signals still flow.

DESIGN.md "Rooms and calendar sources": when a device is linked to a calendar resource
(``[[devices]] calendar``), the window forwarded for the room (``bookings.snapshot``, the
retained bookings topic) comes from the calendar source alone, and booking changes the device
reports about that window are not forwarded as the room's. Pure: envelopes in, envelopes out.

What a linked device still forwards (:func:`forwarded_by_linked_device`):

- ``booking.requested``, ``booking.failed``, ``booking.request_expired`` (requests made on it);
- ``booking.created`` only when it resolves a request made on that device (it carries
  ``pending_ms``, from the device's ``BookingCreated`` with the request's UUID or from the list
  that showed the request's booking);
- ``booking.started``, ``booking.ended``, ``booking.checked_in``, extension and edit outcomes,
  ``room.availability``, ``device.online`` / ``device.offline``, and anything else that is not
  a change of the window.

What it drops: ``bookings.snapshot``, ``booking.moved``, ``booking.deleted``, and a
``booking.created`` that resolves no request (someone else's booking arriving through Hybrid
Calendar: the calendar source reports it).

No booking twice (:func:`already_reported`): the calendar does not report ``booking.created``
for a meeting the device already reported as the resolution of its request. The device's
stored window row of that booking carries ``booking_request_uuid``; the calendar event is the
same meeting when the iCalendar UIDs match (``meeting_id``), or else when both start at the same
instant with the same title (case and surrounding spaces ignored) -- the device's Hybrid
Calendar meeting id is not always the mailbox's iCalUId. The calendar booking stays in the
window and the snapshot either way.

The other order (:func:`awaited_by_request`): Hybrid Calendar may write the panel's meeting into
the mailbox before the device confirms the request. While a request made on the device is
pending, a calendar ``booking.created`` that matches it is not reported either: the device's
``booking.created`` resolving the request (with its ``booking_request_uuid``) reports it. It
matches when the titles agree (when the request has one) and the start is the request's start,
or, for a "book now" request without a start, lies within ``NOW_SLACK`` of when it was made.
If the request then fails or expires, the meeting is still in the calendar's snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from edge_agent.clock import parse_utc

__all__ = [
    "NOW_SLACK",
    "WINDOW_CHANGES",
    "already_reported",
    "awaited_by_request",
    "forwarded",
    "forwarded_by_linked_device",
]

NOW_SLACK = timedelta(minutes=5)
"""How far a "book now" meeting's start may lie from the request's time and still be it."""

WINDOW_CHANGES = frozenset({"booking.created", "booking.moved", "booking.deleted"})


def _forwarded(env: Mapping[str, Any]) -> bool:
    etype = env.get("type")
    if etype == "bookings.snapshot":
        return False
    if etype not in WINDOW_CHANGES:
        return True
    data = env.get("data")
    return etype == "booking.created" and isinstance(data, Mapping) and "pending_ms" in data


def forwarded_by_linked_device(events: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The device envelopes of a linked room that are forwarded (order kept)."""
    return tuple(env for env in events if _forwarded(env))


def forwarded(events: Iterable[dict[str, Any]], *, linked: bool) -> list[dict[str, Any]]:
    """The session's hook: every event of an unlinked device, the filtered ones of a linked."""
    return list(forwarded_by_linked_device(events) if linked else events)


def _same_title(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.strip().lower() == b.strip().lower()


def already_reported(
    booking: Mapping[str, Any], device_window: Sequence[Mapping[str, Any]]
) -> bool:
    """True when ``booking`` (a calendar ``data.booking`` dict) is a meeting the linked device
    already reported as created for a request made on it (rules in the module docstring)."""
    mid = booking.get("meeting_id")
    for row in device_window:
        if not row.get("booking_request_uuid"):
            continue
        if mid and row.get("meeting_id") == mid:
            return True
        if row.get("start") == booking.get("start") and _same_title(
            row.get("title"), booking.get("title")
        ):
            return True
    return False


def _instant(value: Any) -> Any:
    try:
        return parse_utc(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def awaited_by_request(booking: Mapping[str, Any], pending: Sequence[Mapping[str, Any]]) -> bool:
    """True when ``booking`` (a calendar ``data.booking`` dict) is the meeting of a request
    still pending on the linked device (``PendingRequest.to_row()`` dicts; rules above)."""
    start = _instant(booking.get("start"))
    if start is None:
        return False
    for req in pending:
        title = req.get("title")
        if title and not _same_title(title, booking.get("title")):
            continue
        asked = _instant(req.get("start"))
        if asked is not None:
            if asked == start:
                return True
            continue
        made = _instant(req.get("requested_at"))
        if made is not None and abs(start - made) <= NOW_SLACK:
            return True
    return False
