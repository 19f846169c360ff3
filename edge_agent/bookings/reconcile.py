"""Reconciliation: the stored window against a fresh ``Bookings List`` -> the changes missed.

Run after every (re)connect, ``SyncRequired``/``Updated``, a request deadline and local midnight:
events sent while the link was down are lost, so the list is the truth and the diff is what the
cloud did not hear about.

Decisions (the envelope types are fixed by DESIGN.md, so no new ones are invented here):

- A time change (start or end) is ``moved``. Any other change (title, organizer, privacy, join
  URL...) is a silent ``updated``: it is in the new window and so in the snapshot, but no event.
- A stored booking missing from the list is ``deleted`` -- unless it merely left the window
  because time passed (it ends at or before the new window's start, or, when ``now`` is given, at
  or before ``now``: some devices drop ended meetings from the list). That is ``aged_out``, never
  a deletion.
- Device ``Id`` values change after a reboot on hybrid calendars, and a booking keyed ``id:<Id>``
  gains a MeetingId later. A stored booking whose key vanished is matched to a new fresh one with
  the same ``Id`` and the same title or start, or else with the same title + start + end (and
  organizer, when both sides have one); only an unambiguous match counts. Such a pair is one
  booking with a new key (``rekeyed``), not a delete + create.
- A fresh booking outside the window is ignored, except that a stored booking moved out of the
  window is still reported ``moved`` (and leaves the window).
- What the list does not carry is kept from the stored copy: ``booking_request_uuid`` and
  ``checked_in``.

``fresh`` must be the whole list (all pages): a partial list would read as deletions. When the
device listed an entry the agent could not parse, the list is incomplete and says so:

- a stored booking whose device ``Id`` is in ``skipped_ids`` (and whose key the list does not
  carry) is ``kept`` as stored -- no delete, no move, no re-key;
- with ``complete=False`` (an entry was skipped without a readable ``Id``: it may be any stored
  booking) nothing is deleted: every vanished booking that has not aged out is ``kept``. The next
  complete list reconciles it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from edge_agent.bookings.models import Booking, booking_key
from edge_agent.bookings.window import WindowBounds, in_window

__all__ = ["Moved", "Reconciliation", "reconcile"]


@dataclass(frozen=True, slots=True)
class Moved:
    before: Booking
    after: Booking


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The new window and what changed. Every tuple is in start order."""

    window: dict[str, Booking]
    created: tuple[Booking, ...] = ()
    moved: tuple[Moved, ...] = ()
    deleted: tuple[Booking, ...] = ()
    updated: tuple[Booking, ...] = ()
    aged_out: tuple[Booking, ...] = ()
    rekeyed: tuple[tuple[str, str], ...] = ()  # (old key, new key)
    kept: tuple[Booking, ...] = ()  # stored, missing from an incomplete list, kept as they were
    notes: tuple[str, ...] = ()  # things worth a log line (duplicate keys in the list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.moved or self.deleted)


def _sort_key(b: Booking) -> tuple[datetime, datetime, str]:
    return (b.start, b.end, booking_key(b))


def _same_slot(a: Booking, b: Booking) -> bool:
    if a.title != b.title or a.start != b.start or a.end != b.end:
        return False
    for attr in ("id", "email"):
        x, y = getattr(a.organizer, attr), getattr(b.organizer, attr)
        if x is not None and y is not None and x != y:
            return False
    return True


def _carry_over(old: Booking, new: Booking) -> Booking:
    if new.booking_request_uuid is None and old.booking_request_uuid is not None:
        new = replace(new, booking_request_uuid=old.booking_request_uuid)
    if new.checked_in is None and old.checked_in is not None:
        new = replace(new, checked_in=old.checked_in)
    return new


def reconcile(
    stored: Mapping[str, Booking],
    fresh: Sequence[Booking],
    bounds: WindowBounds,
    *,
    now: datetime | None = None,
    skipped_ids: Collection[str] = (),
    complete: bool = True,
) -> Reconciliation:
    """Diff ``stored`` (the window as last known) against ``fresh`` (the list) for ``bounds``
    (the new window). ``skipped_ids``: device Ids of list entries that could not be parsed;
    ``complete``: False when some entry was skipped without a readable Id. Pure; see the module
    docstring for the rules."""
    notes: list[str] = []
    fresh_by_key: dict[str, Booking] = {}
    for b in fresh:
        k = booking_key(b)
        if k in fresh_by_key:
            notes.append(
                f"list has key {k!r} twice (Id {fresh_by_key[k].id} and {b.id}); kept the first"
            )
            continue
        fresh_by_key[k] = b

    pairs: list[tuple[Booking, Booking]] = []
    rekeyed: list[tuple[str, str]] = []
    vanished = {k: b for k, b in stored.items() if k not in fresh_by_key}
    unlisted = {k: b for k, b in vanished.items() if b.id in skipped_ids}
    for k in unlisted:
        del vanished[k]
    appeared = {k: b for k, b in fresh_by_key.items() if k not in stored}
    for k, old in stored.items():
        if k in fresh_by_key:
            pairs.append((old, fresh_by_key[k]))

    def match(old_key: str, old: Booking, same: Callable[[Booking, Booking], bool]) -> bool:
        hits = [nk for nk, nb in appeared.items() if same(old, nb)]
        if len(hits) != 1:
            return False
        # The match must be unambiguous from the other side too.
        nk = hits[0]
        back = [ok for ok, ob in vanished.items() if same(ob, appeared[nk])]
        if back != [old_key]:
            return False
        pairs.append((old, appeared.pop(nk)))
        del vanished[old_key]
        rekeyed.append((old_key, nk))
        return True

    def same_id(a: Booking, b: Booking) -> bool:
        return a.id == b.id and (a.title == b.title or a.start == b.start)

    sames: tuple[Callable[[Booking, Booking], bool], ...] = (same_id, _same_slot)
    for same in sames:
        for ok, ob in sorted(vanished.items(), key=lambda kv: _sort_key(kv[1])):
            if ok in vanished:
                match(ok, ob, same)

    window: dict[str, Booking] = {}
    created: list[Booking] = []
    moved: list[Moved] = []
    updated: list[Booking] = []
    for old, new0 in pairs:
        new = _carry_over(old, new0)
        if in_window(new, bounds):
            window[booking_key(new)] = new
        if old.start != new.start or old.end != new.end:
            moved.append(Moved(old, new))
        elif old != new and in_window(new, bounds):
            updated.append(new)
    for b in appeared.values():
        if in_window(b, bounds):
            window[booking_key(b)] = b
            created.append(b)
    deleted: list[Booking] = []
    aged_out: list[Booking] = []
    kept: list[Booking] = []
    for k, old in unlisted.items():
        # Its entry is in the list, so it has not ended early: only the window can drop it.
        if in_window(old, bounds):
            window[k] = old
            kept.append(old)
        else:
            aged_out.append(old)
    for k, old in vanished.items():
        if old.end <= bounds.start or (now is not None and old.end <= now):
            aged_out.append(old)
        elif not complete and in_window(old, bounds):
            window[k] = old
            kept.append(old)
        else:
            deleted.append(old)

    return Reconciliation(
        window=dict(sorted(window.items(), key=lambda kv: _sort_key(kv[1]))),
        created=tuple(sorted(created, key=_sort_key)),
        moved=tuple(sorted(moved, key=lambda m: _sort_key(m.after))),
        deleted=tuple(sorted(deleted, key=_sort_key)),
        updated=tuple(sorted(updated, key=_sort_key)),
        aged_out=tuple(sorted(aged_out, key=_sort_key)),
        rekeyed=tuple(rekeyed),
        kept=tuple(sorted(kept, key=_sort_key)),
        notes=tuple(notes),
    )
