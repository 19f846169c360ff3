"""Occupancy of one room and what it says about its bookings (pure: no I/O, the clock passed in).

Inputs are the device's ``Status RoomAnalytics`` feedback (``PeopleCount Current``, -1 when the
device is not counting; ``PeoplePresence`` Yes/No/Unknown; ``RoomInUse`` True/False on RoomOS
26.8+), the start and end of bookings, and time passing. Outputs are envelopes
(``room.occupancy``, ``booking.ghost``, ``booking.released``), the ``data.occupancy`` summary a
``booking.ended`` carries, the rows to persist (:class:`OccupancyRows`), and the bookings the
shell should release (``Bookings Delete``).

Whether the room is occupied: ``RoomInUse True`` (a third-party sensor or the device itself),
a count above 0 or presence ``Yes`` say yes; a count of 0, or presence ``No`` when the device
does not count, say no; anything else is unknown. Unknown time is neither occupied nor empty,
and an unknown stretch never makes a booking a ghost.

Time is kept as intervals of one state (``occupied``, ``empty``, ``unknown``) with the largest
count seen in each. The open interval is persisted with its start, so after a restart the time
the agent was down is counted in the state the room was last seen in (the device's count does
not change while nobody reads it; the first reading after the restart closes the interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from edge_agent.bookings.events import make_envelope
from edge_agent.clock import parse_utc

RoomState = Literal["occupied", "empty", "unknown"]
PRESENCE_VALUES = ("Yes", "No", "Unknown")


@dataclass(frozen=True, slots=True)
class OccupancyPolicy:
    """Per-device settings: ``ghost_after_s`` (>= 1), ``release_after_s`` (None: never release),
    ``min_interval_s`` between two ``room.occupancy`` of one room (a flapping count)."""

    ghost_after_s: float = 600.0
    release_after_s: float | None = None
    min_interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Reading:
    """What the device says now; None where it has not said (or cannot)."""

    people_count: int | None = None  # -1 kept as the device sends it: "not counting"
    presence: str | None = None
    in_use: bool | None = None

    @property
    def count(self) -> int | None:
        """The head count; None when unknown or not counting (-1)."""
        n = self.people_count
        return n if n is not None and n >= 0 else None

    def public(self) -> dict[str, Any]:
        """``room.occupancy`` data: a count of -1 (not counting) is ``null``."""
        return {"people_count": self.count, "presence": self.presence, "in_use": self.in_use}

    @property
    def state(self) -> RoomState:
        count = self.count
        if self.in_use is True or (count is not None and count > 0) or self.presence == "Yes":
            return "occupied"
        if count == 0 or self.presence == "No":
            return "empty"
        if self.in_use is False and count is None and self.presence in (None, "Unknown"):
            return "empty"
        return "unknown"

    @property
    def people(self) -> int:
        return self.people_count if self.people_count is not None and self.people_count > 0 else 0


@dataclass(frozen=True, slots=True)
class Interval:
    """A stretch of one state; ``end`` None while it lasts."""

    state: RoomState
    start: datetime
    end: datetime | None = None
    people_max: int = 0

    def to_row(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "start": self.start.timestamp(),
            "end": None if self.end is None else self.end.timestamp(),
            "people_max": self.people_max,
        }


@dataclass(frozen=True, slots=True)
class BookingTrack:
    """A booking that has started: what the room saw of it so far.

    ``occupied_s``/``empty_s`` count closed intervals only; :func:`summary` adds the open one.
    ``seen`` turns true at the first occupied moment: a booking once used is never a ghost.
    """

    booking: Mapping[str, Any]
    started_at: datetime
    occupied_s: float = 0.0
    empty_s: float = 0.0
    people_max: int = 0
    seen: bool = False
    ghost: bool = False
    released: bool = False
    release_asked: bool = False
    releasing: bool = False  # a Bookings Delete in flight: its outcome closes the track
    ended_at: datetime | None = None

    @property
    def booking_id(self) -> str:
        return str(self.booking.get("id"))

    def to_row(self) -> dict[str, Any]:
        return {
            "booking_id": self.booking_id,
            "booking": dict(self.booking),
            "started_at": self.started_at.timestamp(),
            "ended_at": None if self.ended_at is None else self.ended_at.timestamp(),
            "occupied_s": self.occupied_s,
            "empty_s": self.empty_s,
            "people_max": self.people_max,
            "seen": self.seen,
            "ghost": self.ghost,
            "released": self.released,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BookingTrack:
        return cls(
            booking=dict(row["booking"]),
            started_at=_ts(row["started_at"]),
            occupied_s=float(row["occupied_s"]),
            empty_s=float(row["empty_s"]),
            people_max=int(row["people_max"]),
            seen=bool(row["seen"]),
            ghost=bool(row["ghost"]),
            released=bool(row["released"]),
        )


@dataclass(frozen=True, slots=True)
class RoomOccupancy:
    """One room's occupancy state (one device)."""

    site: str
    device_id: str
    policy: OccupancyPolicy = OccupancyPolicy()
    reading: Reading = Reading()
    open: Interval | None = None
    bookings: Mapping[str, BookingTrack] = field(default_factory=dict)
    sent: Mapping[str, Any] | None = None  # the last room.occupancy data
    sent_at: datetime | None = None
    unsent: bool = False  # a change held back by the rate limit

    def next_wakeup(self) -> datetime | None:
        """When :func:`on_tick` has something to do (a held change, a ghost, a release)."""
        times: list[datetime] = []
        if self.unsent and self.sent_at is not None:
            times.append(self.sent_at + timedelta(seconds=self.policy.min_interval_s))
        since = self._empty_since()
        if since is not None:
            for track in self.bookings.values():
                if track.seen or track.released:
                    continue
                start = max(since, track.started_at)
                if not track.ghost:
                    times.append(start + timedelta(seconds=self.policy.ghost_after_s))
                elif self.policy.release_after_s is not None and not track.release_asked:
                    times.append(start + timedelta(seconds=self._release_after()))
        return min(times) if times else None

    def _empty_since(self) -> datetime | None:
        return self.open.start if self.open is not None and self.open.state == "empty" else None

    def _release_after(self) -> float:
        assert self.policy.release_after_s is not None
        return max(self.policy.release_after_s, self.policy.ghost_after_s)

    def info(self) -> dict[str, Any]:
        return {**self.reading.public(), "state": self.reading.state}


@dataclass(frozen=True, slots=True)
class OccupancyRows:
    """What to persist: closed intervals to insert, the open one (replaces the stored open
    row; None: no change), booking tracks to upsert."""

    closed: tuple[Interval, ...] = ()
    open: Interval | None = None
    bookings: tuple[BookingTrack, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.closed or self.open is not None or self.bookings)


@dataclass(frozen=True, slots=True)
class OccupancyStep:
    state: RoomOccupancy
    events: tuple[dict[str, Any], ...] = ()
    rows: OccupancyRows = OccupancyRows()
    release: tuple[Mapping[str, Any], ...] = ()  # bookings to delete on the device


# --------------------------------------------------------------------------- restoring


def restore(
    site: str,
    device_id: str,
    policy: OccupancyPolicy,
    open_row: Mapping[str, Any] | None,
    booking_rows: Sequence[Mapping[str, Any]],
) -> RoomOccupancy:
    """The state after a restart, from the stored open interval and unfinished bookings."""
    open_interval = None
    if open_row is not None:
        open_interval = Interval(
            state=open_row["state"],
            start=_ts(open_row["start"]),
            people_max=int(open_row["people_max"]),
        )
    tracks = {}
    for row in booking_rows:
        track = BookingTrack.from_row(row)
        # A ghost found before the restart keeps its release (if any) asked again.
        tracks[track.booking_id] = track
    return RoomOccupancy(
        site=site, device_id=device_id, policy=policy, open=open_interval, bookings=tracks
    )


# --------------------------------------------------------------------------- transitions


def parse_feedback(payload: Mapping[str, Any], reading: Reading) -> Reading | None:
    """Merge ``{"Status": {"RoomAnalytics": {...}}}`` into ``reading``; None: not RoomAnalytics.

    The device sends only what changed (``PeopleCount Current`` alone, say), so each field
    keeps its last value unless the payload carries it.
    """
    status = payload.get("Status")
    ra = status.get("RoomAnalytics") if isinstance(status, Mapping) else None
    if not isinstance(ra, Mapping):
        return None
    count = reading.people_count
    pc = ra.get("PeopleCount")
    if isinstance(pc, Mapping) and "Current" in pc:
        try:
            count = int(pc["Current"])
        except (TypeError, ValueError):
            count = None
    presence = reading.presence
    if "PeoplePresence" in ra:
        value = str(ra["PeoplePresence"])
        presence = value if value in PRESENCE_VALUES else "Unknown"
    in_use = reading.in_use
    if "RoomInUse" in ra:
        raw = ra["RoomInUse"]
        in_use = raw is True or str(raw).lower() == "true"
    return Reading(count, presence, in_use)


def on_reading(state: RoomOccupancy, reading: Reading, now: datetime) -> OccupancyStep:
    """The device reported ``reading`` at ``now`` (a frame's arrival time)."""
    closed: list[Interval] = []
    bookings = dict(state.bookings)
    touched: set[str] = set()
    new_state = reading.state
    people = reading.people
    opened = state.open
    if opened is None or opened.state != new_state:
        if opened is not None:
            done = replace(opened, end=now)
            closed.append(done)
            for bid, track in bookings.items():
                bookings[bid] = _account(track, done)
                touched.add(bid)
        opened = Interval(new_state, now, people_max=people)
        open_changed = True
    else:
        open_changed = people > opened.people_max
        opened = replace(opened, people_max=max(opened.people_max, people))
    if new_state == "occupied" or people:
        for bid, track in bookings.items():
            if track.ended_at is None and (not track.seen or people > track.people_max):
                bookings[bid] = replace(track, seen=True, people_max=max(track.people_max, people))
                touched.add(bid)
    st = replace(state, reading=reading, open=opened, bookings=bookings)
    events: list[dict[str, Any]] = []
    st = _maybe_send(st, now, events)
    rows = OccupancyRows(
        closed=tuple(closed),
        open=opened if open_changed else None,
        bookings=tuple(bookings[b] for b in sorted(touched)),
    )
    return OccupancyStep(st, tuple(events), rows)


def on_booking_started(
    state: RoomOccupancy, booking: Mapping[str, Any], now: datetime
) -> OccupancyStep:
    """A booking started (``booking.started``); a repeated start changes nothing."""
    bid = str(booking.get("id"))
    if bid in state.bookings:
        return OccupancyStep(state)
    people = state.reading.people
    track = BookingTrack(
        booking=dict(booking),
        started_at=now,
        people_max=people,
        seen=state.open is not None and state.open.state == "occupied",
    )
    st = replace(state, bookings={**state.bookings, bid: track})
    return OccupancyStep(st, rows=OccupancyRows(bookings=(track,)))


def on_booking_ended(
    state: RoomOccupancy, booking: Mapping[str, Any], now: datetime
) -> tuple[OccupancyStep, dict[str, Any]]:
    """A booking ended: the step (the track closed) and its ``data.occupancy`` summary.

    A booking whose start the agent did not see (it was down) is measured from its scheduled
    start, as far as the open interval reaches back.
    """
    bid = str(booking.get("id"))
    track = state.bookings.get(bid)
    if track is None:
        start = _booking_start(booking) or now
        track = BookingTrack(booking=dict(booking), started_at=min(start, now))
    summary = summary_of(track, state.open, now)
    done = replace(
        track,
        occupied_s=summary["occupied_s"],
        empty_s=summary["empty_s"],
        people_max=summary["people_max"],
        ended_at=now,
    )
    bookings = {k: v for k, v in state.bookings.items() if k != bid}
    st = replace(state, bookings=bookings)
    return OccupancyStep(st, rows=OccupancyRows(bookings=(done,))), summary


def on_booking_deleted(state: RoomOccupancy, booking_id: str, now: datetime) -> OccupancyStep:
    """A started booking was deleted (released, or cancelled mid-meeting): its track ends here.
    A booking deleted before it started was never tracked: nothing to do."""
    track = state.bookings.get(booking_id)
    if track is None or track.releasing:
        # Our own Bookings Delete: the device's Deleted can come before its reply.
        return OccupancyStep(state)
    step, _ = on_booking_ended(state, track.booking, now)
    return step


def on_tick(state: RoomOccupancy, now: datetime) -> OccupancyStep:
    """Time passed: a held ``room.occupancy``, ghost bookings, releases due."""
    events: list[dict[str, Any]] = []
    st = _maybe_send(state, now, events)
    bookings = dict(st.bookings)
    touched: list[BookingTrack] = []
    release: list[Mapping[str, Any]] = []
    since = st._empty_since()
    if since is not None:
        for bid, track in st.bookings.items():
            if track.seen or track.released:
                continue
            empty_s = (now - max(since, track.started_at)).total_seconds()
            if not track.ghost and empty_s >= st.policy.ghost_after_s:
                track = replace(track, ghost=True)
                events.append(
                    _envelope(
                        st,
                        "booking.ghost",
                        now,
                        booking=track.booking,
                        extra={"empty_s": round(empty_s, 3)},
                    )
                )
                touched.append(track)
            if (
                track.ghost
                and st.policy.release_after_s is not None
                and not track.release_asked
                and empty_s >= st._release_after()
            ):
                track = replace(track, release_asked=True, releasing=True)
                release.append(track.booking)
            bookings[bid] = track
    st = replace(st, bookings=bookings)
    return OccupancyStep(
        st, tuple(events), OccupancyRows(bookings=tuple(touched)), release=tuple(release)
    )


def on_released(
    state: RoomOccupancy, booking_id: str, now: datetime, error: str | None = None
) -> OccupancyStep:
    """The shell's ``Bookings Delete`` of a ghost succeeded (``error`` None) or failed."""
    track = state.bookings.get(booking_id)
    if track is None:
        return OccupancyStep(state)
    if error is not None:
        # Not retried: the booking ends on its own, and a person may have deleted it already.
        track = replace(track, releasing=False)
        return OccupancyStep(replace(state, bookings={**state.bookings, booking_id: track}))
    step, summary = on_booking_ended(state, track.booking, now)
    done = replace(step.rows.bookings[0], released=True, releasing=False)
    env = _envelope(
        state,
        "booking.released",
        now,
        booking=track.booking,
        extra={"empty_s": summary["empty_s"], "reason": "ghost"},
    )
    return OccupancyStep(step.state, (env,), OccupancyRows(bookings=(done,)))


def summary_of(
    track: BookingTrack, open_interval: Interval | None, now: datetime
) -> dict[str, Any]:
    """``{occupied_s, empty_s, people_max}`` of ``track`` up to ``now``."""
    occupied_s, empty_s, people_max = track.occupied_s, track.empty_s, track.people_max
    if open_interval is not None:
        part = _overlap(open_interval.start, now, track.started_at, now)
        if open_interval.state == "occupied":
            occupied_s += part
            people_max = max(people_max, open_interval.people_max if part > 0 else 0)
        elif open_interval.state == "empty":
            empty_s += part
    return {
        "occupied_s": round(occupied_s, 3),
        "empty_s": round(empty_s, 3),
        "people_max": people_max,
    }


# --------------------------------------------------------------------------- helpers


def _maybe_send(
    state: RoomOccupancy, now: datetime, events: list[dict[str, Any]]
) -> RoomOccupancy:
    data = state.reading.public()
    if data == state.sent:
        return replace(state, unsent=False) if state.unsent else state
    since_sent = None if state.sent_at is None else (now - state.sent_at).total_seconds()
    if since_sent is not None and since_sent < state.policy.min_interval_s:
        return state if state.unsent else replace(state, unsent=True)
    events.append(_envelope(state, "room.occupancy", now, extra=data))
    return replace(state, sent=data, sent_at=now, unsent=False)


def _account(track: BookingTrack, done: Interval) -> BookingTrack:
    if track.ended_at is not None or done.end is None:
        return track
    part = _overlap(done.start, done.end, track.started_at, done.end)
    if part <= 0:
        return track
    if done.state == "occupied":
        return replace(
            track,
            occupied_s=track.occupied_s + part,
            people_max=max(track.people_max, done.people_max),
            seen=True,
        )
    if done.state == "empty":
        return replace(track, empty_s=track.empty_s + part)
    return track


def _overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())


def _envelope(
    state: RoomOccupancy,
    type: str,
    now: datetime,
    *,
    booking: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return make_envelope(
        type, site=state.site, device_id=state.device_id, now=now, booking=booking, extra=extra
    )


def _booking_start(booking: Mapping[str, Any]) -> datetime | None:
    start = booking.get("start")
    if isinstance(start, str) and start:
        try:
            return parse_utc(start)
        except ValueError:
            return None
    return None


def _ts(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


__all__ = [
    "BookingTrack",
    "Interval",
    "OccupancyPolicy",
    "OccupancyRows",
    "OccupancyStep",
    "Reading",
    "RoomOccupancy",
    "on_booking_deleted",
    "on_booking_ended",
    "on_booking_started",
    "on_reading",
    "on_released",
    "on_tick",
    "parse_feedback",
    "restore",
    "summary_of",
]
