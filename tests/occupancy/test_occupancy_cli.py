"""Occupancy through the real CLI: the simulator, ``edge-agent run`` as a process, a receiver.

One fleet: room-1 on RoomOS 26.8 (``current``), room-2 releasing its ghosts, room-3 a device
that cannot count (people count and presence detection off), and ``kiosk`` a user whose role
may not read RoomAnalytics. The agent runs on the wall clock, as in production, and the
simulator on a clock that starts at the wall time: only durations of a few seconds decide the
verdicts (ghost_after_s = 2), never the hour or the day.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_sim import DeviceFleet, SimConfig
from device_sim.occupancy import SensingSettings
from tests.mosquitto import free_port
from tests.ops.test_cli import ENV, WHSEC, acli, cli_env, write_config
from tests.receivers import WebhookReceiver

PASSWORD = "Occ-Adm1n-Pw-2026"


async def eventually(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    last = None
    try:
        async with asyncio.timeout(timeout):
            while not (last := pred()):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"waited {timeout:g} s for {what}; last {last!r:.300}") from None
    return last


def of(rx: WebhookReceiver, etype: str, device: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in rx.events
        if e["type"] == etype and (device is None or e["data"]["device_id"] == device)
    ]


@dataclass
class Site:
    fleet: DeviceFleet
    rx: WebhookReceiver
    cfg: Path
    api: str
    tmp: Path


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    fleet = DeviceFleet(
        SimConfig(
            devices=4,
            password=PASSWORD,
            profiles={0: "current"},
            counting_off=frozenset({2}),
            presence_off=frozenset({2}),
            users={"kiosk": ("kiosk-pw", "RoomControl")},
            sensing=SensingSettings(walkin_per_hour=0.0, jitter=False),
        )
    )
    await fleet.start()
    for dev in fleet.devices[:2]:
        dev.calendar.people(0)  # nobody in rooms 1 and 2 until the test says
    rx = WebhookReceiver(secret=WHSEC)
    await rx.start()
    port = free_port()
    d = fleet.devices
    body = f"""
[defaults]
username = "admin"
password_env = "EDGE_AGENT_DEVICE_PASSWORD"
fingerprint_note = "unused"
occupancy_min_interval_s = 0
ghost_after_s = 2
[[devices]]
id = "room-1"
url = "{d[0].url}"
fingerprint = "{fleet.cert_sha256}"
[[devices]]
id = "room-2"
url = "{d[1].url}"
fingerprint = "{fleet.cert_sha256}"
release_after_s = 3
[[devices]]
id = "room-3"
url = "{d[2].url}"
fingerprint = "{fleet.cert_sha256}"
[[devices]]
id = "kiosk"
url = "{d[3].url}"
fingerprint = "{fleet.cert_sha256}"
username = "kiosk"
password_env = "KIOSK_PW"
[api]
listen = "127.0.0.1:{port}"
[webhook]
url = "{rx.url}"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
""".replace('fingerprint_note = "unused"\n', "")
    cfg = write_config(tmp_path, body)
    try:
        yield Site(fleet, rx, cfg, f"http://127.0.0.1:{port}", tmp_path)
    finally:
        await rx.stop()
        await fleet.stop()


AGENT_ENV = ENV | {"EDGE_AGENT_DEVICE_PASSWORD": PASSWORD, "KIOSK_PW": "kiosk-pw"}


async def start_agent(site: Site) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "run", "-c", str(site.cfg),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(AGENT_ENV), cwd=site.tmp,
    )  # fmt: skip


async def stop_agent(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


async def devices(site: Site) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=site.api) as http:
        for _ in range(200):
            try:
                doc = (await http.get("/v1/devices")).json()
                return {d["id"]: d for d in doc["devices"]}
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError("the local API never answered")


async def test_ghost_release_restart_report_and_degraded_devices(site: Site) -> None:
    fleet, rx = site.fleet, site.rx
    proc = await start_agent(site)
    restarted: asyncio.subprocess.Process | None = None
    try:
        await eventually(lambda: len(of(rx, "device.online")) >= 4, "four devices online")
        await eventually(lambda: of(rx, "room.occupancy", "room-1"), "room-1's first occupancy")
        first = of(rx, "room.occupancy", "room-1")[0]["data"]
        assert first["people_count"] == 0 and first["presence"] == "No"
        assert first["in_use"] is False  # RoomOS 26.8 has RoomInUse

        # Degraded: room-3 cannot count, kiosk may not read RoomAnalytics.
        info = await devices(site)
        assert info["room-3"]["occupancy"]["available"] is False
        assert "PeopleCountOutOfCall" in info["room-3"]["occupancy"]["hint"]
        assert info["kiosk"]["occupancy"]["available"] is False
        assert "permission denied" in info["kiosk"]["occupancy"]["hint"]
        assert info["room-1"]["occupancy"]["available"] is True
        assert info["room-1"]["occupancy"]["hint"] is None

        # A booking in room-1 (nobody comes: a ghost), one in room-2 (a ghost, released).
        now = fleet.clock.now()
        b1 = fleet.devices[0].calendar.add(now + timedelta(seconds=1), 30, "Planning")
        b2 = fleet.devices[1].calendar.add(now + timedelta(seconds=1), 30, "Review")
        ghost = await eventually(lambda: of(rx, "booking.ghost", "room-1"), "room-1's ghost")
        assert ghost[0]["data"]["booking"]["id"] == b1.id
        assert ghost[0]["data"]["empty_s"] >= 2
        await eventually(lambda: of(rx, "booking.released", "room-2"), "room-2 released")
        released = of(rx, "booking.released", "room-2")[0]["data"]
        assert released["booking"]["id"] == b2.id
        assert b2.id not in {b.id for b in fleet.devices[1].calendar.bookings()}
        await eventually(lambda: of(rx, "booking.deleted", "room-2"), "room-2's deletion")

        # Late arrivals in room-1, then the agent restarts mid-meeting.
        fleet.devices[0].calendar.people(3)
        await eventually(
            lambda: [e for e in of(rx, "room.occupancy", "room-1") if e["data"]["people_count"]],
            "room-1 occupied",
        )
        log = await stop_agent(proc)
        warned = [
            line
            for line in log.splitlines()
            if "reports less than it could" in line and '"kiosk"' in line
        ]
        assert len(warned) == 1, warned  # said once
        online_before = len(of(rx, "device.online"))
        restarted = await start_agent(site)
        await eventually(lambda: len(of(rx, "device.online")) >= online_before + 4, "online again")
        fleet.devices[0].calendar.people(0)
        await eventually(
            lambda: of(rx, "room.occupancy", "room-1")[-1]["data"]["people_count"] == 0,
            "room-1 empty again",
        )
        fleet.clock.advance(30 * 60)  # the meeting's end
        ended = await eventually(lambda: of(rx, "booking.ended", "room-1"), "room-1's end")
        occupancy = ended[0]["data"]["occupancy"]
        assert occupancy["people_max"] == 3
        assert occupancy["occupied_s"] > 0 and occupancy["empty_s"] >= 2
        assert len(of(rx, "booking.ghost", "room-1")) == 1  # once, across the restart
        await stop_agent(restarted)
    finally:
        for p in (proc, restarted):
            if p is not None and p.returncode is None:
                p.kill()
                await p.wait()

    # The report, read from the store.
    until = (fleet.clock.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, err = await acli(
        "report", "-c", str(site.cfg), "--since", "1d", "--until", until, "--format", "json",
        env=AGENT_ENV,
    )  # fmt: skip
    assert code == 0, err
    rooms = {r["room"]: r for r in json.loads(out)["rooms"]}
    assert rooms["room-1"]["bookings"] == 1 and rooms["room-1"]["ghost_bookings"] == 1
    assert rooms["room-1"]["peak_people"] == 3 and rooms["room-1"]["no_shows"] == 0
    assert rooms["room-1"]["hours_booked_used"] > 0
    assert rooms["room-2"]["ghost_bookings"] == 1 and rooms["room-2"]["no_shows"] == 1
    assert rooms["room-2"]["released_bookings"] == 1
    code, table, _ = await acli(
        "report", "-c", str(site.cfg), "--since", "1d", "--until", until, "--room", "room-1",
        env=AGENT_ENV,
    )  # fmt: skip
    assert code == 0 and "room-1" in table and "room-2" not in table
    code, _, err = await acli("report", "-c", str(site.cfg), "--since", "soon", env=AGENT_ENV)
    assert code == 2 and "--since 'soon'" in err


async def test_check_config_shows_what_each_device_can_count(site: Site) -> None:
    code, out, err = await acli("check-config", "-c", str(site.cfg), "--connect", env=AGENT_ENV)
    rows, failed = {}, []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] == "occupancy":
            rows[parts[0]] = line
        if "  FAIL  " in line:
            failed.append(line)
    # Occupancy problems are warnings; the kiosk's role may not list bookings either (FAIL).
    assert code == 1 and len(failed) == 1 and failed[0].startswith("kiosk"), out + err
    assert "ok" in rows["room-1"] and "in use False" in rows["room-1"]
    assert "WARN" in rows["room-3"] and "PeopleCountOutOfCall" in rows["room-3"]
    assert "PeoplePresenceDetector" in rows["room-3"]
    assert "WARN" in rows["kiosk"] and "permission denied" in rows["kiosk"]
