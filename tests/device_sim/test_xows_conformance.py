"""Cisco's own Python client (xows) against the simulator."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import xows
from simtest_helpers import SIM_START

from device_sim import DeviceFleet, SimConfig


async def test_xows_lists_reads_subscribes_and_books() -> None:
    config = SimConfig(
        devices=1,
        mode="hybrid",
        start=SIM_START,  # 07:00 in Oslo: the room is free "now", whatever the wall clock says
        confirm_delay_s=0.2,
        generate_day=True,
        time_zone="Europe/Oslo",
        username="admin",
        password="secret",
    )
    async with DeviceFleet(config) as fleet:
        dev = fleet.devices[0]
        async with xows.XoWSClient(dev.url, username="admin", password="secret") as client:
            listed = await client.xCommand(["Bookings", "List"], DayOffset=0, Days=2)
            assert listed["status"] == "OK"
            assert listed["ResultInfo"]["TotalRows"] == len(listed.get("Booking", []))
            availability = await client.xGet(["Status", "Bookings", "Availability", "Status"])
            assert availability in ("Free", "FreeUntil", "BookedUntil")

            got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            sub_id = await client.subscribe(
                ["Event", "Bookings"], lambda params, _id: got.put_nowait(params)
            )
            assert isinstance(sub_id, int)
            request = str(uuid.uuid4())
            answer = await client.xCommand(
                ["Bookings", "Book"], BookingRequestUUID=request, Duration=30, Title="xows"
            )
            assert answer == {"status": "OK"}
            first = await asyncio.wait_for(got.get(), 5)
            assert first["Event"]["Bookings"]["BookingRequested"]["BookingRequestUUID"] == request
            while True:
                bookings = (await asyncio.wait_for(got.get(), 5))["Event"]["Bookings"]
                # a declined request fails here, with its cause, not in a timeout later
                assert "BookingFailed" not in bookings, bookings["BookingFailed"]
                if "BookingCreated" in bookings:
                    created = bookings["BookingCreated"]
                    break
            assert created["BookingRequestUUID"] == request and created["MeetingId"]
            again = await client.xCommand(["Bookings", "Get"], Id=created["Id"])
            assert again["Booking"]["MeetingId"] == created["MeetingId"]
