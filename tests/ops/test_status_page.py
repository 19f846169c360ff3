"""The status page at ``/``: over real HTTP on 127.0.0.1 from a real Store, and in headless
Chromium (Debian's ``chromium``; skipped where it is not installed): what the page shows
matches ``/v1/*``, and a private booking's title and organizer are nowhere."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edge_agent.ops.api import DeviceStatus, LocalApi, SinkStatus, StoreView
from edge_agent.ops.status_page import booking_view, is_private
from edge_agent.store import Change, Store
from tests.e2e.conftest import ca, ca_file, env, make_fleet, receiver  # noqa: F401
from tests.e2e.harness import agent_config, eventually, of_type, start_agent

NOW = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # a Monday; Oslo is UTC+1, New York UTC-5
SECRET_TITLE = "Board: acquisition of Initech"
SECRET_ORGANIZER = "Bill Lumbergh"


class FixedClock:
    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return 0.0


@dataclass
class FakeAgent:
    store: StoreView | None
    device_list: list[DeviceStatus] = field(default_factory=list)
    sink_list: list[SinkStatus] = field(default_factory=list)

    def devices(self) -> Sequence[DeviceStatus]:
        return self.device_list

    def sinks(self) -> Sequence[SinkStatus]:
        return self.sink_list


def rooms() -> list[DeviceStatus]:
    return [
        {  # type: ignore[typeddict-unknown-key]
            "id": "room-4a",
            "connected": True,
            "last_error": None,
            "time_zone": "Europe/Oslo",
            "window_size": 3,
            "connected_since": "2026-11-23T07:00:00.000Z",
            "last_seen": "2026-11-23T08:29:55.000Z",
            "occupancy": {"people_count": 4, "presence": "Yes"},
        },
        {  # type: ignore[typeddict-unknown-key]
            "id": "room-4b",
            "connected": False,
            "last_error": "room-4b: device refused the credentials (HTTP 403)",
            "last_error_at": "2026-11-23T08:10:00.000Z",
            "time_zone": "America/New_York",
            "window_size": 0,
            "down_since": "2026-11-23T08:10:00.000Z",
            "last_seen": "2026-11-23T08:09:58.000Z",
        },
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    await s.commit(
        Change(
            "room-4a",
            window_replace={
                "b1": {
                    "id": "b1",
                    "title": "Standup",
                    "start": "2026-11-23T09:00:00.000Z",
                    "end": "2026-11-23T09:15:00.000Z",
                    "organizer": {"name": "Ann Perkins", "email": "ann@example.com", "id": None},
                    "privacy": "Public",
                },
                "b2": {
                    "id": "b2",
                    "title": SECRET_TITLE,
                    "start": "2026-11-23T11:00:00.000Z",
                    "end": "2026-11-23T12:00:00.000Z",
                    "organizer": {"name": SECRET_ORGANIZER, "email": "bill@example.com", "id": "7"},
                    "privacy": "Private",
                    "agenda": "do not leak",
                },
                "b3": {
                    "id": "b3",
                    "title": "Retro",
                    "start": "2026-11-24T13:00:00.000Z",
                    "end": "2026-11-24T14:00:00.000Z",
                    "organizer": {"name": None, "email": None, "id": None},
                    "privacy": None,
                },
            },
        )
    )
    yield s
    await s.close()


def make_agent(store: Store) -> FakeAgent:
    return FakeAgent(
        store=store,
        device_list=rooms(),
        sink_list=[
            {"name": "webhook", "state": "running", "ready": True, "last_error": None},
            {"name": "mqtt", "state": "running", "ready": False, "last_error": "broker refused"},
        ],
    )


@pytest.fixture
async def api(store: Store) -> AsyncIterator[LocalApi]:
    async with LocalApi(make_agent(store), "127.0.0.1:0", clock=FixedClock()) as local:
        yield local


def rows(html: str) -> dict[str, dict[str, str]]:
    found = re.findall(
        r'<tr data-room="([^"]+)" data-connected="(true|false)" data-bookings="(\d+)"', html
    )
    return {rid: {"connected": c, "bookings": n} for rid, c, n in found}


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("privacy", "private"),
    [
        ("Private", True),
        ("private", True),
        ("Confidential", True),
        ("Public", False),
        (None, False),
        ("normal", False),
        (7, False),
    ],
)
def test_which_bookings_are_private(privacy: object, private: bool) -> None:
    assert is_private({"privacy": privacy}) is private


def test_booking_view_hides_title_organizer_and_agenda() -> None:
    b = {
        "id": "x",
        "title": "T",
        "organizer": {"name": "N", "email": "e"},
        "agenda": "A",
        "privacy": "Private",
        "start": "s",
    }
    hidden = booking_view(b, show_private=False)
    assert hidden == {
        "id": "x",
        "title": None,
        "organizer": {"name": None, "email": None},
        "agenda": None,
        "privacy": "Private",
        "start": "s",
        "hidden": True,
    }
    assert booking_view(b, show_private=True) == b
    assert b["title"] == "T"  # the stored row is not changed


# --- over HTTP ---------------------------------------------------------------------------------


async def test_page_matches_v1(api: LocalApi) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
        r = await http.get("/")
        devices = (await http.get("/v1/devices")).json()["devices"]
        counts = {
            d["id"]: (await http.get(f"/v1/devices/{d['id']}/bookings")).json()["count"]
            for d in devices
        }
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    shown = rows(html)
    assert shown == {
        d["id"]: {"connected": str(d["connected"]).lower(), "bookings": str(counts[d["id"]])}
        for d in devices
    }
    assert list(shown) == ["room-4b", "room-4a"]  # the down room first
    assert SECRET_TITLE not in html and SECRET_ORGANIZER not in html and "do not leak" not in html
    assert "(private)" in html
    # Local time: 09:00Z is 10:00 in Oslo; tomorrow's booking carries its day.
    assert "10:00–10:15" in html and "Standup" in html and "Tue 24 Nov 14:00–15:00" in html
    assert "device refused the credentials" in html and "20 min ago" in html  # error and its time
    assert "4 people, occupied" in html
    assert 'data-sink="mqtt"' in html and "not ready" in html
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)  # no external assets


async def test_v1_bookings_hide_private_unless_show_private(store: Store) -> None:
    for show, visible in ((False, False), (True, True)):
        agent = make_agent(store)
        async with (
            LocalApi(agent, "127.0.0.1:0", show_private=show, clock=FixedClock()) as api,
            httpx.AsyncClient(base_url=api.url, timeout=5) as http,
        ):
            body = (await http.get("/v1/devices/room-4a/bookings")).json()
            page = (await http.get("/")).text
        b2 = next(b for b in body["bookings"] if b["id"] == "b2")
        assert (b2["title"] == SECRET_TITLE) is visible
        assert (b2["organizer"]["name"] == SECRET_ORGANIZER) is visible
        assert (SECRET_TITLE in page) is visible and (SECRET_TITLE in body.__repr__()) is visible
        assert b2.get("hidden", False) is not visible


async def test_page_without_store_or_rooms() -> None:
    async with (
        LocalApi(FakeAgent(store=None), "127.0.0.1:0", clock=FixedClock()) as api,
        httpx.AsyncClient(base_url=api.url, timeout=5) as http,
    ):
        r = await http.get("/")
    assert r.status_code == 200
    assert "NOT READY" in r.text and "store not open" in r.text and "no room configured" in r.text


# --- in headless Chromium ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")


async def chromium(url: str, profile: Path, *extra: str) -> bytes:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        *extra,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out[-2000:]
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.timeout(300)
async def test_in_headless_chromium(api: LocalApi, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
        devices = (await http.get("/v1/devices")).json()["devices"]
    dom = (
        await chromium(
            api.url + "/", tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom"
        )
    ).decode()
    shown = rows(dom)
    assert {k: v["connected"] for k, v in shown.items()} == {
        d["id"]: str(d["connected"]).lower() for d in devices
    }
    assert shown["room-4a"]["bookings"] == "3"
    assert SECRET_TITLE not in dom and SECRET_ORGANIZER not in dom
    png = Path(os.environ.get("STATUS_PAGE_SCREENSHOT", tmp_path / "status.png"))
    await chromium(api.url + "/", tmp_path / "profile2", f"--screenshot={png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@dataclass
class CountingStore:
    """The real store, counting ``stats()`` calls: one per rendering of the page."""

    store: Store
    renders: int = 0

    async def stats(self) -> dict[str, object]:
        self.renders += 1
        return await self.store.stats()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


@dataclass
class RecoveringAgent(FakeAgent):
    """room-4b comes back after the page's first rendering."""

    counting: CountingStore | None = None

    def devices(self) -> Sequence[DeviceStatus]:
        out = rooms()
        if self.counting is not None and self.counting.renders >= 1:
            out[1]["connected"] = True
        return out


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.timeout(300)
async def test_the_page_refreshes_itself(store: Store, tmp_path: Path) -> None:
    counting = CountingStore(store)
    agent = RecoveringAgent(store=counting, counting=counting)  # type: ignore[arg-type]
    async with LocalApi(agent, "127.0.0.1:0", clock=FixedClock()) as api:
        # Virtual time runs the page's 10 s timer without waiting for it.
        dom = (
            await chromium(
                api.url + "/", tmp_path / "profile", "--virtual-time-budget=15000", "--dump-dom"
            )
        ).decode()
    assert counting.renders >= 2
    assert rows(dom)["room-4b"]["connected"] == "true"


# --- a running agent with simulated rooms --------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_running_agents_page_matches_its_v1(
    make_fleet,  # noqa: F811
    receiver,  # noqa: F811
    tmp_path: Path,
    ca_file,  # noqa: F811
    env,  # noqa: F811
) -> None:
    fleet = await make_fleet(mode="hybrid", devices=3)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 3)
        room = fleet.devices[0]
        for hours, title in ((1, "Standup"), (3, "Planning")):
            room.calendar.add(fleet.clock.now() + timedelta(hours=hours), 30, title=title)
        await eventually(lambda: len(of_type(receiver.events, "booking.created")) >= 2)
        down = fleet.devices[2]
        await down.stop()
        await eventually(lambda: not running.agent._sessions[down.device_id].client.connected)
        await running.agent.sample()
        api = running.agent.api
        assert api is not None
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            html = (await http.get("/")).text
            devices = (await http.get("/v1/devices")).json()["devices"]
            counts = {
                d["id"]: (await http.get(f"/v1/devices/{d['id']}/bookings")).json()["count"]
                for d in devices
            }
        assert rows(html) == {
            d["id"]: {"connected": str(d["connected"]).lower(), "bookings": str(counts[d["id"]])}
            for d in devices
        }
        assert all(d.get("connected_since") or d.get("down_since") for d in devices)
        assert counts[room.device_id] == 2 and "Standup" in html and "Planning" in html
        assert next(iter(rows(html))) == down.device_id  # the down room first
        assert "edge-agent · test" in html
        if CHROMIUM is not None:
            png = Path(os.environ.get("STATUS_PAGE_SCREENSHOT_AGENT", tmp_path / "agent.png"))
            await chromium(api.url + "/", tmp_path / "profile", f"--screenshot={png}")
            assert png.stat().st_size > 10_000
    finally:
        await running.stop()
