from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.calendars.model import CalendarBooking, Organizer, room_id_from_mailbox


@pytest.mark.parametrize(
    ("mailbox", "room_id"),
    [
        ("Room-B@contoso.com", "room-b"),
        ("conf.Room_4A@contoso.com", "conf-room-4a"),
        ("  HQ+Oslo@x.example ", "hq-oslo"),
        ("weird@sub@contoso.com", "weird-sub"),
    ],
)
def test_room_id_from_mailbox(mailbox: str, room_id: str) -> None:
    assert room_id_from_mailbox(mailbox) == room_id


def test_room_id_rejects_empty_local_part() -> None:
    with pytest.raises(ValueError, match="no local part"):
        room_id_from_mailbox("@contoso.com")


def test_envelope_dict_and_row_round_trip() -> None:
    b = CalendarBooking(
        id="AAMk1",
        start=datetime(2026, 11, 23, 9, tzinfo=UTC),
        end=datetime(2026, 11, 23, 10, tzinfo=UTC),
        title="Standup",
        meeting_id="040000008200E0",
        organizer=Organizer(name="Ada", email="ada@contoso.com"),
        privacy="normal",
        platform="teamsForBusiness",
        join_url="https://teams.example/l/1",
    )
    d = b.to_dict()
    assert d == {
        "id": "AAMk1",
        "meeting_id": "040000008200E0",
        "booking_request_uuid": None,
        "title": "Standup",
        "start": "2026-11-23T09:00:00.000Z",
        "end": "2026-11-23T10:00:00.000Z",
        "organizer": {"name": "Ada", "email": "ada@contoso.com", "id": None},
        "privacy": "normal",
        "platform": "teamsForBusiness",
        "join_url": "https://teams.example/l/1",
    }
    assert CalendarBooking.from_row(b.to_row()) == b
    with pytest.raises(ValueError, match="lacks id"):
        CalendarBooking.from_row({"id": "x"})
