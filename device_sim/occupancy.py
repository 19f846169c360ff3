"""People in a simulated room: a count and presence that follow the device's calendar.

Everything is a pure function of the simulated time, the seed and the bookings, so a run is the
same at any speed and after any clock jump, and never depends on the wall clock. Per booking
(keyed by its meeting id and start, which survive a hybrid calendar's renumbering): whether its
people come at all (``attendance``), how late (on time half of the time, else up to
``late_max_s``), how early they leave, how many. Per hour of the day, a walk-in (people in the
room with no booking) with probability ``walkin_per_hour``, where no booking is. The count
jitters by one every ``JITTER_S`` while people are in, as a head count does.

What the device reports (Cisco's RoomAnalytics docs, in the schema extracts):

- ``PeopleCount Current`` is -1 "when the device is in standby, or if the feature is turned off":
  a simulated device is never in a call, so it counts only with
  ``Configuration RoomAnalytics PeopleCountOutOfCall: On``.
- ``PeoplePresence`` is ``Unknown`` with ``PeoplePresenceDetector: Off``; "when someone enters
  the room, the status is updated immediately. After the room becomes empty, it may take up to
  two minutes": it stays ``Yes`` for ``PRESENCE_HOLD_S`` after the last person left.
- ``RoomInUse`` (RoomOS 26.8+): what a third-party sensor set with ``RoomAnalytics RoomInUse
  Set`` while its ``Duration`` lasts, else the device's own presence.

Tests force a count (:meth:`RoomSensing.force`); a forced count changes presence at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .calendar import Booking

JITTER_S = 120  # the device averages its head count: it moves no faster than this
PRESENCE_HOLD_S = 120
HORIZON = timedelta(hours=25)


@dataclass(slots=True)
class SensingSettings:
    """How people behave in one simulated room (all probabilities per booking / per hour)."""

    attendance: float = 0.8
    late_max_s: float = 600.0
    walkin_per_hour: float = 0.1
    jitter: bool = True
    capacity: int = 10


@dataclass(frozen=True, slots=True)
class Visit:
    """People in the room from ``start`` to ``end``."""

    start: datetime
    end: datetime
    people: int
    booking: str | None  # the booking's key, None for a walk-in


@dataclass(slots=True)
class RoomInUse:
    state: bool
    until: datetime | None
    sensor: str


class RoomSensing:
    """One room's people, from its bookings and the time."""

    def __init__(self, seed: int, settings: SensingSettings | None = None) -> None:
        self.seed = seed
        self.settings = settings or SensingSettings()
        self.forced: int | None = None
        self.in_use_set: RoomInUse | None = None

    # ---- the model ----------------------------------------------------------------------------

    def _u(self, key: str) -> float:
        # random.Random seeded with a str is stable across runs and Python versions (SHA-512)
        return random.Random(f"{self.seed}:{key}").random()

    def visits(self, bookings: Iterable[Booking], now: datetime) -> list[Visit]:
        """The visits reaching into ``[now - 1 h, now + HORIZON)``, by start."""
        s = self.settings
        lo, hi = now - timedelta(hours=1), now + HORIZON
        out: list[Visit] = []
        booked: list[tuple[datetime, datetime]] = []
        for b in bookings:
            booked.append((b.start, b.end))
            if b.end <= lo or b.start >= hi:
                continue
            key = f"{b.meeting_id or b.id}@{b.start.isoformat()}"
            if self._u(key + ":show") >= s.attendance:
                continue  # a no-show
            length = (b.end - b.start).total_seconds()
            late = 0.0 if self._u(key + ":ontime") < 0.5 else self._u(key + ":late") * s.late_max_s
            early = self._u(key + ":early") * 0.2 * length
            start = b.start + timedelta(seconds=min(late, length / 2))
            end = b.end - timedelta(seconds=early)
            people = 1 + int(self._u(key + ":size") * max(1, min(s.capacity, 6)))
            if end > start:
                out.append(Visit(start, end, people, key))
        first_hour = int(lo.timestamp() // 3600)
        for hour in range(first_hour, int(hi.timestamp() // 3600) + 1):
            if self._u(f"walkin:{hour}") >= s.walkin_per_hour:
                continue
            start = datetime.fromtimestamp(hour * 3600, lo.tzinfo) + timedelta(
                seconds=int(self._u(f"walkin:{hour}:at") * 1800)
            )
            end = start + timedelta(seconds=600 + int(self._u(f"walkin:{hour}:for") * 1200))
            if any(b0 < end and start < b1 for b0, b1 in booked):
                continue
            out.append(Visit(start, end, 1 + int(self._u(f"walkin:{hour}:n") * 2), None))
        out.sort(key=lambda v: v.start)
        return out

    def people(self, visits: list[Visit], now: datetime) -> int:
        """How many people the camera sees at ``now`` (the forced count, if any)."""
        if self.forced is not None:
            return self.forced
        base = sum(v.people for v in visits if v.start <= now < v.end)
        if base and self.settings.jitter:
            bucket = int(now.timestamp() // JITTER_S)
            base = max(1, base + (-1, 0, 0, 1)[int(self._u(f"jitter:{bucket}") * 4)])
        return base

    def present(self, visits: list[Visit], now: datetime) -> bool:
        if self.forced is not None:
            return self.forced > 0
        hold = timedelta(seconds=PRESENCE_HOLD_S)
        return any(v.start <= now < v.end + hold for v in visits)

    def in_use(self, present: bool, now: datetime) -> bool:
        s = self.in_use_set
        if s is not None and (s.until is None or now < s.until):
            return s.state
        return present

    def next_change(self, visits: list[Visit], now: datetime) -> datetime | None:
        """The next time the count, presence or RoomInUse may change."""
        times: list[datetime] = []
        hold = timedelta(seconds=PRESENCE_HOLD_S)
        if self.forced is None:
            for v in visits:
                times.extend(t for t in (v.start, v.end, v.end + hold) if t > now)
            if self.settings.jitter and any(v.start <= now < v.end for v in visits):
                bucket = int(now.timestamp() // JITTER_S) + 1
                times.append(datetime.fromtimestamp(bucket * JITTER_S, now.tzinfo))
        if self.in_use_set is not None and self.in_use_set.until is not None:
            if self.in_use_set.until > now:
                times.append(self.in_use_set.until)
        return min(times) if times else None

    # ---- hooks for tests and the control API -------------------------------------------------

    def force(self, people_count: int | None) -> None:
        """Pin the count (None: back to the model); presence follows at once."""
        if people_count is not None and people_count < 0:
            raise ValueError("people_count must be 0 or more (or null to clear)")
        self.forced = people_count

    def set_in_use(self, state: bool, duration_s: int | None, sensor: str, now: datetime) -> None:
        until = None if not duration_s else now + timedelta(seconds=duration_s)
        self.in_use_set = RoomInUse(state, until, sensor)
