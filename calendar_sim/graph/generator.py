"""A seeded generator of office-day bookings per room, relative to the simulated start.

Same seed, same room, same start: the same calendar, whatever the wall clock says.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta

from .directory import EventSpec
from .model import Recurrence, local_midnight, zone

TITLES = (
    "Weekly sync", "Project kickoff", "1:1", "Design review", "Sprint planning", "Retro",
    "Customer call", "Budget review", "Interview", "Architecture review", "Roadmap",
    "Vendor meeting", "Lunch & learn", "Board prep", "Team meeting", "Incident review",
)  # fmt: skip
PEOPLE = (
    "Ingrid Hansen", "Ola Olsen", "Kari Berg", "Ahmed Patel", "Chen Kim", "Priya Nguyen",
    "James Smith", "Sofia Rossi", "Lukas Müller", "Emma Dubois", "Yuki Tanaka", "Erik Larsen",
)  # fmt: skip


def office_days(
    seed: int, address: str, start: datetime, time_zone: str, days: int, domain: str
) -> list[EventSpec]:
    """Meetings 08:00-18:00 local on the weekdays of ``[local midnight of start, + days)``;
    about one room in three also has a daily stand-up series (expanded by calendarView)."""
    rng = random.Random(f"{seed}:{address.lower()}")
    tz = zone(time_zone)
    first = local_midnight(start, tz).astimezone(tz).date()
    out: list[EventSpec] = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        if day.weekday() >= 5:
            continue
        slot = datetime.combine(day, time(8), tzinfo=tz)
        end_of_day = datetime.combine(day, time(18), tzinfo=tz)
        while slot < end_of_day:
            if rng.random() > 0.5:
                slot += timedelta(minutes=30)
                continue
            minutes = rng.choices((30, 60, 90), weights=(50, 40, 10))[0]
            end = slot + timedelta(minutes=minutes)
            person = rng.choice(PEOPLE)
            mail = person.lower().replace(" ", ".").replace("ü", "u") + "@" + domain
            teams = rng.random() < 0.6
            out.append(
                EventSpec(
                    subject=rng.choice(TITLES),
                    start=slot.astimezone(UTC),
                    end=end.astimezone(UTC),
                    time_zone=time_zone,
                    organizer_name=person,
                    organizer_address=mail,
                    join_url=(
                        "https://teams.microsoft.com/l/meetup-join/19%3ameeting_"
                        f"{rng.getrandbits(96):024x}%40thread.v2/0"
                        if teams
                        else None
                    ),
                    sensitivity=rng.choices(("normal", "private"), weights=(85, 15))[0],
                )
            )
            slot = end
    if days > 0 and rng.random() < 0.34:
        standup = datetime.combine(first, time(7, 45), tzinfo=tz)
        out.append(
            EventSpec(
                subject="Daily stand-up",
                start=standup.astimezone(UTC),
                end=(standup + timedelta(minutes=15)).astimezone(UTC),
                time_zone=time_zone,
                organizer_name="Kari Berg",
                organizer_address=f"kari.berg@{domain}",
                recurrence=Recurrence(
                    "weekly",
                    first,
                    days_of_week=("monday", "tuesday", "wednesday", "thursday", "friday"),
                    range_type="endDate",
                    end_date=first + timedelta(days=days - 1),
                ),
            )
        )
    return out
