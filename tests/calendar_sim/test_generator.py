"""The seeded office-day generator: a function of (seed, room, pinned start), nothing else."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from graphsim_helpers import START

from calendar_sim.graph import GraphSim, GraphSimConfig
from calendar_sim.graph.generator import office_days


def _calendar(seed: int) -> list[tuple[str, str, str]]:
    sim = GraphSim(GraphSimConfig(start=START, frozen=True, rooms=4, generate_days=7, seed=seed))
    box = sim.directory.mailbox("room-2@contoso.com")
    rows = box.instances(START - timedelta(days=1), START + timedelta(days=8))
    return [(i.start.isoformat(), i.end.isoformat(), i.item.subject) for i in rows]


def test_same_seed_same_calendar_and_a_different_seed_differs() -> None:
    assert _calendar(1) == _calendar(1)
    assert _calendar(1) != _calendar(2)


def test_meetings_are_on_weekdays_in_office_hours_from_the_pinned_start() -> None:
    oslo = ZoneInfo("Europe/Oslo")
    specs = office_days(3, "room-9@contoso.com", START, "Europe/Oslo", 7, "contoso.com")
    singles = [s for s in specs if s.recurrence is None]
    assert singles
    for spec in singles:
        local_start, local_end = spec.start.astimezone(oslo), spec.end.astimezone(oslo)
        assert local_start.weekday() < 5
        assert 8 <= local_start.hour < 18 and local_end <= local_start.replace(hour=19, minute=30)
        assert START.date() <= local_start.date() < START.date() + timedelta(days=7)
    # Pinned a week later, the same room's calendar is the same shape a week later.
    week_later = office_days(
        3, "room-9@contoso.com", START + timedelta(days=7), "Europe/Oslo", 7, "contoso.com"
    )
    assert [(s.start + timedelta(days=7), s.subject) for s in specs] == [
        (s.start, s.subject) for s in week_later
    ]
