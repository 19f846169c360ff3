from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest

from edge_agent.bookings.window import (
    WindowBounds,
    in_window,
    local_midnight,
    next_midnight,
    window_bounds,
)

from .helpers import booking, utc

OSLO = ZoneInfo("Europe/Oslo")
NY = ZoneInfo("America/New_York")
UTCZ = ZoneInfo("UTC")


def test_utc_zone() -> None:
    assert window_bounds(utc(2026, 11, 23, 15), UTCZ) == (utc(2026, 11, 23), utc(2026, 11, 24, 8))


def test_oslo_winter() -> None:
    b = window_bounds(utc(2026, 11, 23, 12), OSLO)
    assert b == WindowBounds(utc(2026, 11, 22, 23), utc(2026, 11, 24, 7))
    assert b.start.astimezone(OSLO).hour == 0
    assert b.to_dict() == {"start": "2026-11-22T23:00:00.000Z", "end": "2026-11-24T07:00:00.000Z"}


def test_oslo_late_evening_utc_already_next_day_locally() -> None:
    # 23:30Z on the 23rd is 00:30 on the 24th in Oslo: "today" is the 24th.
    b = window_bounds(utc(2026, 11, 23, 23, 30), OSLO)
    assert b.start == utc(2026, 11, 23, 23)


def test_oslo_spring_forward_day_is_23_hours() -> None:
    # 2026-03-29: 02:00 CET -> 03:00 CEST
    b = window_bounds(utc(2026, 3, 29, 12), OSLO)
    assert b.start == utc(2026, 3, 28, 23)  # 00:00 CET
    assert b.end == utc(2026, 3, 30, 6)  # 00:00 CEST on the 30th + 8 h
    assert b.end - b.start == timedelta(hours=23 + 8)


def test_oslo_day_before_spring_forward_end_is_8_elapsed_hours() -> None:
    b = window_bounds(utc(2026, 3, 28, 12), OSLO)
    assert b.start == utc(2026, 3, 27, 23)
    # tomorrow's midnight is 23:00Z; +8 elapsed hours = 07:00Z, which reads 09:00 CEST locally
    assert b.end == utc(2026, 3, 29, 7)
    assert b.end.astimezone(OSLO).hour == 9


def test_oslo_fall_back_day_is_25_hours() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET
    b = window_bounds(utc(2026, 10, 25, 12), OSLO)
    assert b.start == utc(2026, 10, 24, 22)  # 00:00 CEST
    assert b.end == utc(2026, 10, 26, 7)  # 00:00 CET on the 26th + 8 h
    assert b.end - b.start == timedelta(hours=25 + 8)


def test_oslo_day_before_fall_back() -> None:
    b = window_bounds(utc(2026, 10, 24, 12), OSLO)
    assert b.end == utc(2026, 10, 25, 6)
    assert b.end.astimezone(OSLO).hour == 7


def test_new_york_both_dst_days() -> None:
    spring = window_bounds(utc(2026, 3, 8, 18), NY)  # 02:00 EST -> 03:00 EDT
    assert spring == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 12))
    fall = window_bounds(utc(2026, 11, 1, 18), NY)  # 02:00 EDT -> 01:00 EST
    assert fall == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 13))


def test_new_york_evening_is_still_yesterday_locally() -> None:
    b = window_bounds(utc(2026, 11, 24, 3), NY)  # 22:00 EST on the 23rd
    assert b.start == utc(2026, 11, 23, 5)


@pytest.mark.parametrize(
    "zone",
    [
        "Europe/Oslo",
        "America/New_York",
        "America/Santiago",
        "Asia/Beirut",
        "America/Havana",
        "Australia/Lord_Howe",
        "Pacific/Apia",
        "UTC",
        "Asia/Kolkata",
    ],
)
def test_local_midnight_is_first_instant_of_the_day(zone: str) -> None:
    tz = ZoneInfo(zone)
    day = date(2026, 1, 1)
    for _ in range(366):
        m = local_midnight(day, tz)
        assert m.astimezone(tz).date() == day
        assert (m - timedelta(microseconds=1)).astimezone(tz).date() < day
        day += timedelta(days=1)


def test_santiago_midnight_gap() -> None:
    # Chile springs forward at local midnight (00:00 -> 01:00): the day starts at 01:00.
    tz = ZoneInfo("America/Santiago")
    m = local_midnight(date(2026, 9, 6), tz)
    assert m.astimezone(tz).hour == 1


def test_next_midnight() -> None:
    assert next_midnight(utc(2026, 11, 23, 12), OSLO) == utc(2026, 11, 23, 23)
    assert next_midnight(utc(2026, 11, 22, 23), OSLO) == utc(2026, 11, 23, 23)  # exactly midnight
    assert next_midnight(utc(2026, 3, 29, 1), OSLO) == utc(2026, 3, 29, 22)
    assert next_midnight(utc(2026, 10, 25, 1), OSLO) == utc(2026, 10, 25, 23)


def test_in_window_is_overlap_half_open() -> None:
    bounds = WindowBounds(utc(2026, 11, 23), utc(2026, 11, 24, 8))
    assert in_window(booking(start=utc(2026, 11, 23, 9), end=utc(2026, 11, 23, 10)), bounds)
    # started yesterday, still running
    assert in_window(booking(start=utc(2026, 11, 22, 23), end=utc(2026, 11, 23, 1)), bounds)
    # ended exactly at the start
    assert not in_window(booking(start=utc(2026, 11, 22, 22), end=utc(2026, 11, 23)), bounds)
    # starts exactly at the end
    assert not in_window(booking(start=utc(2026, 11, 24, 8), end=utc(2026, 11, 24, 9)), bounds)
    # straddles the end
    assert in_window(booking(start=utc(2026, 11, 24, 7), end=utc(2026, 11, 24, 9)), bounds)
