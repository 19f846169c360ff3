"""A stopped process (issue 10 item 1, the SIGSTOP case): a real ``edge-agent run`` is stopped
while the device keeps sending, so the kernel buffers its frames and the agent reads them all
at once on resume. Identical events the device sent farther apart than the duplicate horizon
must all be delivered (before the fix they were read, and stamped, milliseconds apart and all
but the first were dropped as repeats)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from edge_agent.bookings.on_event import DUPLICATE_HORIZON
from tests.e2e.harness import PASSWORD, SECRET, eventually, of_type
from tests.mosquitto import free_port

pytestmark = pytest.mark.slow

SENT = 3
SPACING_S = DUPLICATE_HORIZON.total_seconds() + 0.5  # farther apart than the horizon: not repeats
STOPPED_S = SENT * SPACING_S + 0.5  # every one of them sent while the agent is stopped


def _write_config(path: Path, fleet, receiver_url: str, ca_file: Path, api_port: int) -> None:
    devices = "\n".join(
        f'[[devices]]\nid = "{d.device_id}"\nurl = "{d.url}"\n' for d in fleet.devices
    )
    path.write_text(
        f"""site = "sigstop"
[store]
path = "{path.parent / "agent.db"}"
[defaults]
username = "{fleet.config.username}"
password_env = "SIM_PASSWORD"
ca_file = "{ca_file}"
[webhook]
url = "{receiver_url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:{api_port}"
{devices}"""
    )


def started(events: list[dict], meeting_id: str) -> list[dict]:
    return [
        e
        for e in of_type(events, "booking.started")
        if (e["data"].get("booking") or {}).get("meeting_id") == meeting_id
    ]


async def _device_info(api_port: int) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{api_port}/v1/devices") as resp:
            (device,) = (await resp.json())["devices"]
            return device


async def test_identical_events_buffered_while_stopped_are_all_delivered(
    make_fleet, receiver, tmp_path, ca_file
):
    # The agent runs in its own process on the wall clock, so this fleet must too. The verdict
    # does not depend on the hour: the booking lies 1 h ahead, always inside the agent's window
    # (today + 8 h of tomorrow), and nothing is booked on a panel.
    fleet = await make_fleet(devices=1, mode="local", start=datetime.now(UTC))
    api_port = free_port()
    cfg = tmp_path / "agent.toml"
    _write_config(cfg, fleet, receiver.url, ca_file, api_port)
    env = {
        **os.environ,
        "SIM_PASSWORD": PASSWORD,
        "WEBHOOK_SECRET": SECRET,
        "EDGE_AGENT_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent",
        "run",
        "-c",
        str(cfg),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        device = fleet.devices[0]
        await eventually(lambda: of_type(receiver.events, "bookings.snapshot"), timeout=30)
        booking = device.calendar.add(fleet.clock.now() + timedelta(hours=1), 30, title="Standup")
        await eventually(
            lambda: [
                e
                for e in of_type(receiver.events, "booking.created")
                if e["data"]["booking"]["meeting_id"] == booking.meeting_id
            ],
            timeout=30,
        )
        fields = {"Id": booking.id, "MeetingId": booking.meeting_id}
        proc.send_signal(signal.SIGSTOP)
        try:
            # The scenario's own pacing, not a synchronization: the device sends while the
            # agent cannot read, each Start farther from the last than the horizon.
            for _ in range(SENT):
                await asyncio.sleep(SPACING_S / 2)
                device.core.emit_event("Start", fields)
                await asyncio.sleep(SPACING_S / 2)
            await asyncio.sleep(STOPPED_S - SENT * SPACING_S)
        finally:
            proc.send_signal(signal.SIGCONT)
        await eventually(
            lambda: len(started(receiver.events, booking.meeting_id)) >= SENT, timeout=30
        )
        info = await _device_info(api_port)
        got = started(receiver.events, booking.meeting_id)
        print(
            f"SIGSTOP {STOPPED_S:.1f} s: {SENT} identical Start sent {SPACING_S} s apart, "
            f"{len(got)} delivered; duplicates_dropped={info.get('duplicates_dropped')}, "
            f"repeats_kept_uncertain={info.get('repeats_kept_uncertain')}"
        )
        assert info["duplicates_dropped"] == 0
        assert info["repeats_kept_uncertain"] == SENT - 1  # each kept, and counted as such
        assert receiver.bad_signatures == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            await proc.wait()
