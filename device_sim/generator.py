"""A seeded generator of a realistic office day of bookings for one meeting room."""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .calendar import Booking, Organizer

FIRST_NAMES = (
    "Ingrid", "Ola", "Kari", "Lars", "Maria", "Ahmed", "Chen", "Priya", "James", "Sofia",
    "Lukas", "Emma", "Noah", "Aisha", "Mateo", "Yuki", "Olga", "Pierre", "Fatima", "Erik",
)  # fmt: skip
LAST_NAMES = (
    "Hansen", "Johansen", "Olsen", "Larsen", "Nguyen", "Smith", "Garcia", "Müller", "Rossi",
    "Kowalski", "Patel", "Tanaka", "Dubois", "Berg", "Haugen", "Andersen", "Silva", "Kim",
)  # fmt: skip
TITLES = (
    "Weekly sync", "Project kickoff", "1:1", "Design review", "Sprint planning", "Retro",
    "Customer call", "All hands prep", "Budget review", "Interview", "Standup",
    "Architecture review", "Sales pipeline", "Onboarding", "Incident review", "Roadmap",
    "Vendor meeting", "Lunch & learn", "Board prep", "Team meeting",
)  # fmt: skip
PLATFORMS = ("Webex", "Webex", "Webex", "MicrosoftTeams", "None")


def _organizer(rng: random.Random, domain: str) -> Organizer:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{first.lower()}.{last.lower()}@{domain}".replace("ü", "u")
    return Organizer(first, last, email, f"{rng.getrandbits(64):016x}")


def generate_day(
    rng: random.Random,
    day: datetime,
    zone: ZoneInfo,
    *,
    with_meeting_ids: bool = True,
    domain: str = "example.com",
    first_hour: int = 8,
    last_hour: int = 18,
    density: float = 0.55,
) -> list[Booking]:
    """Bookings for the local day of ``day`` in ``zone`` (Ids left empty, to be assigned).

    Most meetings start on the hour or half hour and last 30 or 60 minutes; some are ad hoc
    (booked on the room's panel, odd start times, no dial-in, sometimes no meeting id).
    """
    local_day = day.astimezone(zone).date()
    slot = datetime.combine(local_day, time(first_hour), tzinfo=zone)
    end_of_day = datetime.combine(local_day, time(last_hour), tzinfo=zone)
    out: list[Booking] = []
    while slot < end_of_day:
        if rng.random() > density:
            slot += timedelta(minutes=30)
            continue
        adhoc = rng.random() < 0.12
        start = slot + (timedelta(minutes=rng.choice((5, 10, 15, 20))) if adhoc else timedelta())
        duration = rng.choices((15, 30, 45, 60, 90, 120), weights=(5, 45, 8, 32, 7, 3))[0]
        end = min(start + timedelta(minutes=duration), end_of_day + timedelta(hours=1))
        organizer = _organizer(rng, domain)
        platform = "None" if adhoc else rng.choice(PLATFORMS)
        number = ""
        url = ""
        if platform == "Webex":
            meeting_number = str(rng.randrange(2_300_000_000, 2_699_999_999))
            number = f"{meeting_number}@{domain.split('.')[0]}.webex.com"
            url = f"https://{domain.split('.')[0]}.webex.com/meet/{meeting_number}"
        elif platform == "MicrosoftTeams":
            number = f"{rng.randrange(100_000_000, 999_999_999)}@teams.{domain}"
        out.append(
            Booking(
                id="",
                meeting_id=(
                    f"{rng.getrandbits(128):032x}"
                    if with_meeting_ids and not (adhoc and rng.random() < 0.5)
                    else ""
                ),
                title="Booked on device" if adhoc else rng.choice(TITLES),
                start=start.astimezone(ZoneInfo("UTC")),
                end=end.astimezone(ZoneInfo("UTC")),
                organizer=organizer,
                agenda="" if adhoc else rng.choice(("", "", "Agenda: status, risks, next steps")),
                privacy=rng.choices(("Public", "Private"), weights=(85, 15))[0],
                start_buffer_s=0 if adhoc else 300,
                end_buffer_s=0,
                platform=platform,
                number=number,
                webex_url=url,
                webex_pin=str(rng.randrange(1000, 9999)) if platform == "Webex" else "",
            )
        )
        slot = _next_slot(end)
    return out


def _next_slot(moment: datetime) -> datetime:
    """The first half-hour boundary at or after ``moment``."""
    minutes = moment.minute % 30
    if minutes == 0 and moment.second == 0:
        return moment
    return (moment + timedelta(minutes=30 - minutes)).replace(second=0, microsecond=0)
