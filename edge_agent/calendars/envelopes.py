"""A calendar round's :class:`RoomUpdate` -> contract envelopes (DESIGN.md "Contracts").

``booking.created`` / ``booking.moved`` (with ``data.previous {start, end}``, as the device path
gives it) / ``booking.deleted`` per change, in the round's order, then ``bookings.snapshot``
(``data.bookings`` and ``data.window``; ``null`` for the empty snapshot of a room that left the
directory) when the round has one. Every envelope has ``data.room_id`` and ``data.source``; a
linked room's also ``data.device_id``. ``xevent`` is null (no device event behind them) and
``observed_at`` is when the round's answer arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge_agent.bookings.events import make_envelope
from edge_agent.bookings.precedence import already_reported, awaited_by_request
from edge_agent.clock import utc_iso

if TYPE_CHECKING:
    from edge_agent.calendars.graph.poller import RoomUpdate

__all__ = ["room_update_envelopes"]


def room_update_envelopes(
    update: RoomUpdate,
    *,
    site: str,
    device_window: Sequence[Mapping[str, Any]] = (),
    device_pending: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The envelopes of ``update``. ``device_window`` / ``device_pending``: the linked device's
    stored window rows and pending requests, so a meeting the device reported (or will report)
    as the resolution of a request made on it is not created twice
    (:mod:`edge_agent.bookings.precedence`)."""
    now = update.observed_at
    common: dict[str, Any] = {
        "site": site,
        "device_id": update.device_id,
        "room_id": update.room_id,
        "source": update.source,
        "now": now,
        "observed_at": now,
    }
    out: list[dict[str, Any]] = []
    for change in update.changes:
        booking = change.booking.to_dict()
        extra: dict[str, Any] | None = None
        if change.type == "booking.created" and (
            already_reported(booking, device_window) or awaited_by_request(booking, device_pending)
        ):
            continue
        if change.type == "booking.moved" and change.before is not None:
            extra = {
                "previous": {
                    "start": utc_iso(change.before.start),
                    "end": utc_iso(change.before.end),
                }
            }
        out.append(make_envelope(change.type, booking=booking, extra=extra, **common))
    if update.snapshot is not None:
        out.append(
            make_envelope(
                "bookings.snapshot",
                extra={
                    "bookings": [b.to_dict() for b in update.snapshot],
                    "window": update.window.to_dict() if update.window is not None else None,
                },
                **common,
            )
        )
    return out
