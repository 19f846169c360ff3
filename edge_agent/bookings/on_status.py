"""The small transitions: time passing (``on_tick``), ``Status Bookings``
(``on_availability``) and the device link (``on_connection``), each -> :class:`~.state.Step`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from edge_agent.bookings.models import device_str, parse_device_time
from edge_agent.bookings.state import Availability, DeviceBookings, Step
from edge_agent.bookings.window import window_bounds

__all__ = ["on_availability", "on_connection", "on_tick"]


def on_tick(state: DeviceBookings, now: datetime) -> Step:
    """Time passed. Requests past their deadline ask for a re-list once (the list after it
    resolves or expires them); so does a new local day (or a new time zone) since the last list."""
    due = [p for p in state.pending.values() if now >= p.deadline and not p.relist_requested]
    flagged = tuple(replace(p, relist_requested=True) for p in due)
    stale_window = state.bounds is not None and window_bounds(now, state.tz) != state.bounds
    if not flagged and not stale_window:
        return Step(state)
    pending = {**state.pending, **{p.booking_request_uuid: p for p in flagged}}
    return Step(replace(state, pending=pending), pending_upsert=flagged, relist=True)


def _availability_node(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = payload
    for key in ("Status", "Bookings"):
        if isinstance(node, Mapping) and isinstance(node.get(key), Mapping):
            node = node[key]
    return node if isinstance(node, Mapping) else {}


def on_availability(
    state: DeviceBookings,
    payload: Mapping[str, Any],
    now: datetime,
    *,
    observed_at: datetime | None = None,
) -> Step:
    """``Status Bookings`` (an ``xGet`` result or a status feedback, whole or partial) processed
    at ``now``, its frame arrived at ``observed_at`` (the envelope's ``observed_at``).

    Emits ``room.availability {status, until}`` only when the value changed. ``Current Id`` is
    kept in the state (no event)."""
    node = _availability_node(payload)
    avail_raw = node.get("Availability")
    cur = state.availability or Availability()
    new_avail = cur
    if isinstance(avail_raw, Mapping):
        status = device_str(avail_raw["Status"]) if "Status" in avail_raw else cur.status
        until = parse_device_time(avail_raw["TimeStamp"]) if "TimeStamp" in avail_raw else cur.until
        new_avail = Availability(status, until)
    current_id = state.current_id
    current_raw = node.get("Current")
    if isinstance(current_raw, Mapping) and "Id" in current_raw:
        current_id = device_str(current_raw.get("Id"))
    if new_avail == state.availability and current_id == state.current_id:
        return Step(state)
    new = replace(
        state,
        availability=new_avail if new_avail != Availability() else state.availability,
        current_id=current_id,
    )
    events: tuple[dict[str, Any], ...] = ()
    if new.availability != state.availability and new_avail.status is not None:
        events = (
            new._envelope(
                "room.availability",
                now,
                xevent="Bookings.Availability",
                extra={"availability": new_avail.to_dict()},
                observed_at=observed_at,
            ),
        )
    return Step(new, device_state=new.device_state_row(), events=events)


def on_connection(
    state: DeviceBookings,
    online: bool,
    now: datetime,
    *,
    reason: str | None = None,
    software: str | None = None,
    observed_at: datetime | None = None,
) -> Step:
    """The device link came up (``online``) or went down, seen at ``observed_at`` (the
    envelope's ``observed_at``) and processed at ``now``. ``device.online`` carries
    ``data.software`` (``SystemUnit Software Version``) when given; ``device.offline`` carries
    ``data.reason``. Only a change emits; going online also asks for a re-list (events sent while
    the link was down are lost)."""
    if state.online == online:
        return Step(state)
    new = replace(state, online=online)
    if online:
        env = new._envelope(
            "device.online", now, extra={"software": software}, observed_at=observed_at
        )
        return Step(new, events=(env,), relist=True)
    env = new._envelope("device.offline", now, extra={"reason": reason}, observed_at=observed_at)
    return Step(new, events=(env,))
