"""kill -9 of the agent process during a burst: nothing the devices produced is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.harness import PASSWORD, SECRET, eventually, of_type

pytestmark = pytest.mark.slow


def _write_config(path: Path, fleet, receiver_url: str, ca_file: Path, db: Path) -> None:
    devices = "\n".join(
        f'[[devices]]\nid = "{d.device_id}"\nurl = "{d.url}"\n' for d in fleet.devices
    )
    path.write_text(
        f"""site = "kill9"
[store]
path = "{db}"
[defaults]
username = "{fleet.config.username}"
password_env = "SIM_PASSWORD"
ca_file = "{ca_file}"
request_grace_s = 5
[webhook]
url = "{receiver_url}"
secret_env = "WEBHOOK_SECRET"
timeout_s = 5
[api]
listen = "127.0.0.1:0"
{devices}"""
    )


async def _spawn(cfg: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "SIM_PASSWORD": PASSWORD,
        "WEBHOOK_SECRET": SECRET,
        "EDGE_AGENT_LOG_LEVEL": "warning",
    }
    return await asyncio.create_subprocess_exec(
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


async def test_kill9_during_burst_loses_nothing(make_fleet, receiver, tmp_path, ca_file):
    # The agent runs in its own process on the wall clock, so this fleet must too (the only one
    # not at SIM_START). The verdict still does not depend on the hour: the bookings lie 1-3 h
    # ahead, always inside the agent's window (today + 8 h of tomorrow), and nothing is booked
    # on a panel, so a busy room cannot decline anything.
    fleet = await make_fleet(devices=5, mode="hybrid", start=datetime.now(UTC))
    cfg = tmp_path / "agent.toml"
    _write_config(cfg, fleet, receiver.url, ca_file, tmp_path / "agent.db")
    proc = await _spawn(cfg)
    try:
        await eventually(
            lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 5, timeout=30
        )
        now = fleet.clock.now()
        made: set[str] = set()
        after_restart: set[str] = set()
        per_device = 60
        for i in range(per_device):
            if i == 2 * per_device // 3:
                # devices kept producing while the agent was dead; now it comes back
                proc = await _spawn(cfg)
                await eventually(
                    lambda: len(of_type(receiver.events, "device.online")) >= 10, timeout=30
                )
            for dev in fleet.devices:
                b = dev.calendar.add(now + timedelta(hours=1, minutes=2 * i), 1, title=f"b{i}")
                made.add(b.meeting_id)
                if i >= 2 * per_device // 3:
                    after_restart.add(b.meeting_id)
            if i == per_device // 3:
                proc.send_signal(signal.SIGKILL)  # mid-burst: events in flight, commits under way
                await proc.wait()
            await asyncio.sleep(0.01)

        def delivered() -> set[str]:
            return {
                e["data"]["booking"]["meeting_id"]
                for e in of_type(receiver.events, "booking.created")
            }

        await eventually(lambda: delivered() >= made, timeout=60)
        # what the restarted agent heard itself arrives as itself, not rebuilt by a re-list
        direct = {
            e["data"]["booking"]["meeting_id"]
            for e in of_type(receiver.events, "booking.created")
            if not e["data"].get("reconciled")
        }
        assert after_restart <= direct
        produced = fleet.produced().get("Bookings.BookingCreated", 0)
        assert produced == len(made) == 5 * per_device
        assert receiver.bad_signatures == 0
        # at least once: duplicates are allowed (and counted), losses are not
        print(
            f"kill -9: {len(made)} bookings produced, all delivered; "
            f"{receiver.duplicates} duplicate deliveries"
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
