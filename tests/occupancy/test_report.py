"""``edge-agent report``: the sums (pure), every format, and the html page in headless Chromium."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.ops.cli.report import parse_since, render_table, summarize
from edge_agent.store import Store
from edge_agent.store.occupancy import OccupancyWrite
from tests.ops.test_cli import acli, write_config

MONDAY = datetime(2026, 11, 16, tzinfo=UTC)
UNTIL = "2026-11-21T00:00:00Z"  # the Saturday after: five office days


def _t(day: int, hour: float) -> float:
    return (MONDAY + timedelta(days=day, hours=hour)).timestamp()


def _track(bid: str, start: float, end: float, *, ghost: bool = False, seen: bool = True) -> dict:
    return {
        "booking_id": bid,
        "booking": {"id": bid, "title": f"Meeting {bid}"},
        "started_at": start,
        "ended_at": end,
        "occupied_s": 0,
        "empty_s": 0,
        "people_max": 0,
        "seen": seen,
        "ghost": ghost,
        "released": False,
    }


def _occupied(start: float, end: float, people: int) -> dict:
    return {"start": start, "end": end, "state": "occupied", "people_max": people}


def week() -> dict[str, OccupancyWrite]:
    """room-a: three meetings a day (the 11:00 one a ghost on Tuesday and Thursday), a walk-in
    at 16:00; room-b: one long meeting a day, half used."""
    out = {}
    for room in ("room-a", "room-b"):
        intervals: list[dict] = []
        tracks: list[dict] = []
        for day in range(5):
            if room == "room-a":
                ghost = day in (1, 3)
                for n, (h0, h1, people) in enumerate(((9, 10, 4), (11, 12.5, 6), (14, 15, 2))):
                    bid = f"a{day}{n}"
                    is_ghost = ghost and n == 1
                    tracks.append(
                        _track(bid, _t(day, h0), _t(day, h1), ghost=is_ghost, seen=not is_ghost)
                    )
                    if not is_ghost:
                        late = 0.1 if n == 0 else 0
                        intervals.append(_occupied(_t(day, h0 + late), _t(day, h1 - 0.05),
                                                   people + day % 2))  # fmt: skip
                intervals.append(_occupied(_t(day, 16), _t(day, 16.4), 1))
            else:
                tracks.append(_track(f"b{day}", _t(day, 10), _t(day, 14)))
                intervals.append(_occupied(_t(day, 10.5), _t(day, 12.5), 8))
        out[room] = OccupancyWrite(room, closed=intervals, bookings=tracks)
    return out


async def _fill(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, "")
    store = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    try:
        for w in week().values():
            await store.save_occupancy(w)
    finally:
        await store.close()
    return cfg


def test_parse_since() -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError):
        parse_since("7 days")


def test_summarize_counts_ghosts_no_shows_walk_ins() -> None:
    w = week()
    intervals = {r: list(x.closed) for r, x in w.items()}
    bookings = {r: list(x.bookings) for r, x in w.items()}
    reps = {r.room: r for r in summarize(intervals, bookings, _t(0, 0), _t(5, 0))}
    a, b = reps["room-a"], reps["room-b"]
    assert a.bookings == 15 and a.hours_booked == pytest.approx(5 * 3.5)
    assert a.ghost_bookings == 2 and a.no_shows == 2 and a.walk_ins == 5
    assert a.peak_people == 6  # the 11:00 meeting; its odd days (+1) were ghosts
    assert b.hours_booked_used == pytest.approx(10.0) and b.no_shows == 0 and b.walk_ins == 0
    only = summarize(intervals, bookings, _t(0, 0), _t(1, 0), room="room-b")
    assert [r.room for r in only] == ["room-b"] and only[0].bookings == 1


async def test_report_formats_and_missing_store(tmp_path: Path) -> None:
    cfg = await _fill(tmp_path)
    base = ("report", "-c", str(cfg), "--since", "5d", "--until", UNTIL)
    code, out, err = await acli(*base, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["since"] == "2026-11-16T00:00:00.000Z"
    assert [r["room"] for r in doc["rooms"]] == ["room-a", "room-b"]
    code, out, _ = await acli(*base, "--format", "csv")
    assert out.splitlines()[0].startswith("room,hours_booked,hours_booked_used,ghost_bookings")
    assert out.splitlines()[1].startswith("room-a,17.5,")
    code, out, _ = await acli(*base, "--room", "nowhere")
    assert code == 1
    # Nothing recorded (a new store, a room-less range): the table says so (it raised).
    assert render_table([]).splitlines() == [
        "ROOM  BOOKED h  USED h  GHOSTS  NO-SHOWS  WALK-INS  PEAK",
        "(no occupancy recorded in this range)",
    ]
    (tmp_path / "none").mkdir()
    code, _, err = await acli("report", "-c", str(write_config(tmp_path / "none", "")))
    assert code == 1 and "no store" in err


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/install-system-deps.sh)")
async def test_html_report_in_headless_chromium(tmp_path: Path) -> None:
    cfg = await _fill(tmp_path)
    base = ("report", "-c", str(cfg), "--since", "5d", "--until", UNTIL)
    code, out, err = await acli(*base, "--format", "json")
    assert code == 0, err
    numbers = {r["room"]: r for r in json.loads(out)["rooms"]}
    page = tmp_path / "report.html"
    code, _, err = await acli(*base, "--format", "html", "-o", str(page))
    assert code == 0, err
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text  # self-contained
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90,
        check=True,
    ).stdout  # fmt: skip
    for section in re.findall(r'<section data-room="([^"]+)">(.*?)</section>', dom, re.S):
        room, body = section
        cells = dict(re.findall(r'<td data-key="(\w+)">([^<]*)</td>', body))
        want = numbers[htmllib.unescape(room)]
        assert set(cells) == {
            "hours_booked", "hours_booked_used", "ghost_bookings", "no_shows", "walk_ins",
            "peak_people",
        }  # fmt: skip
        for key, value in cells.items():
            assert float(value) == pytest.approx(want[key], abs=0.005), (room, key)
        assert body.count("<svg") == 1 and body.count("<rect") > 5
    assert dom.count("<section") == 2
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True, timeout=90, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000
