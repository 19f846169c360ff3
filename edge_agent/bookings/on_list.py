"""``on_list``: a complete ``Bookings List`` -> :class:`~.state.Step` (reconciliation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from edge_agent.bookings.models import Booking, ListPage, booking_key
from edge_agent.bookings.pending import resolve_by_list
from edge_agent.bookings.reconcile import reconcile
from edge_agent.bookings.state import DeviceBookings, Step
from edge_agent.bookings.window import WindowBounds, window_bounds
from edge_agent.clock import utc_iso

__all__ = ["on_list"]

_SKIPPED_SHOWN = 5


def on_list(
    state: DeviceBookings,
    result: ListPage | Sequence[Booking],
    now: datetime,
    bounds: WindowBounds | None = None,
) -> Step:
    """A complete ``Bookings List`` (all pages merged) received at ``now``.

    Reconciles the window (``booking.created``/``moved``/``deleted`` with ``data.reconciled:
    true`` for what was missed), closes pending requests found in the list (``booking.created``
    with ``pending_ms``) or past their deadline (``booking.request_expired``), and ends with a
    ``bookings.snapshot``. ``bounds`` defaults to the window for ``now`` in ``state.tz``.

    A list with skipped (unparsable) entries is incomplete: the stored copy of a booking whose
    entry was skipped is kept as it was, an entry skipped without a readable ``Id`` suppresses
    every deletion. The next clean list reconciles what this one could not.
    """
    warnings: tuple[str, ...] = ()
    notes: list[str] = []
    if isinstance(result, ListPage):
        fresh = result.bookings
        skipped_ids = {i for i in result.skipped_ids if i}
        complete = result.complete
        if result.skipped:
            # One line per list, however many entries: a calendar with a bad entry would
            # otherwise log it on every list, and 500 bad entries would be 500 lines.
            shown = "; ".join(result.skipped[:_SKIPPED_SHOWN])
            more = len(result.skipped) - _SKIPPED_SHOWN
            warnings = (
                f"Bookings List: {len(result.skipped)} of {result.received or len(result.skipped)}"
                f" entries skipped (the rest of the list is applied): {shown}"
                + (f"; and {more} more" if more > 0 else ""),
            )
    else:
        fresh, skipped_ids, complete = tuple(result), set(), True
    b = bounds or window_bounds(now, state.tz)
    rec = reconcile(state.window, fresh, b, now=now, skipped_ids=skipped_ids, complete=complete)
    notes.extend(rec.notes)
    if rec.kept:
        if isinstance(result, ListPage) and result.cut_short is not None:
            why = "the list was cut short, so no deletions from this list"
        elif not complete:
            why = "an entry without a readable Id was skipped, so no deletions from this list"
        else:
            why = "their list entries were skipped"
        kept = ", ".join(f"{booking_key(x)!r} (Id {x.id})" for x in rec.kept)
        notes.append(f"kept {len(rec.kept)} stored booking(s) as they were ({why}): {kept}")
    notes.extend(f"booking re-keyed {o!r} -> {n!r}" for o, n in rec.rekeyed)
    window = dict(rec.window)
    events: list[dict[str, Any]] = []
    pending = dict(state.pending)
    pending_delete: list[str] = []
    claimed: set[str] = set()
    reported: set[str] = set()
    candidates = [window.get(booking_key(x), x) for x in fresh]
    for req in sorted(state.pending.values(), key=lambda p: p.requested_at):
        pool = [x for x in candidates if booking_key(x) not in claimed]
        res = resolve_by_list(req, pool, now)
        if res is None:
            continue
        del pending[req.booking_request_uuid]
        pending_delete.append(req.booking_request_uuid)
        if res.outcome == "created" and res.booking is not None:
            k = booking_key(res.booking)
            claimed.add(k)
            booking = res.booking
            if k in window:
                booking = replace(window[k], booking_request_uuid=req.booking_request_uuid)
                window[k] = booking
            reported.add(k)
            events.append(
                state._envelope(
                    "booking.created",
                    now,
                    booking=booking,
                    extra={"pending_ms": res.pending_ms, "reconciled": True},
                )
            )
        else:
            events.append(
                state._envelope(
                    "booking.request_expired",
                    now,
                    extra={
                        "booking_request_uuid": req.booking_request_uuid,
                        "request": req.to_dict(),
                    },
                )
            )
    if state.bounds is not None:
        for c in rec.created:
            k = booking_key(c)
            if k not in reported:
                events.append(
                    state._envelope(
                        "booking.created", now, booking=window.get(k, c), extra={"reconciled": True}
                    )
                )
        for m in rec.moved:
            events.append(
                state._envelope(
                    "booking.moved",
                    now,
                    booking=window.get(booking_key(m.after), m.after),
                    extra={
                        "reconciled": True,
                        "previous": {
                            "start": utc_iso(m.before.start),
                            "end": utc_iso(m.before.end),
                        },
                    },
                )
            )
        for d in rec.deleted:
            events.append(
                state._envelope(
                    "booking.deleted", now, booking=d, extra={"reconciled": True, "cause": None}
                )
            )
    new = replace(state, window=window, pending=pending, bounds=b)
    events.append(new.snapshot(now, b))
    return Step(
        new,
        window_replace=window,
        pending_delete=tuple(pending_delete),
        device_state=new.device_state_row(),
        events=tuple(events),
        notes=tuple(notes),
        warnings=warnings,
    )
