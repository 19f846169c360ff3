"""The I/O shell over real sockets on 127.0.0.1: TLS, auth, faults, the control API, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from simtest_helpers import SIM_START, basic, insecure_ssl, subprotocol
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from device_sim import DeviceFleet, SimConfig, utc_iso
from device_sim.control import ControlServer

AUTH = {"Authorization": basic("admin", "secret")}


@pytest.fixture
async def fleet() -> AsyncIterator[DeviceFleet]:
    f = DeviceFleet(SimConfig(devices=2, users={"viewer": ("pw", "User")}, start=SIM_START))
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
async def http_fleet() -> AsyncIterator[DeviceFleet]:
    f = DeviceFleet(SimConfig(devices=1, http=True, start=SIM_START))
    await f.start()
    yield f
    await f.stop()


async def ws(url: str, **kw: Any) -> ClientConnection:
    if url.startswith("wss") and "ssl" not in kw:
        kw["ssl"] = insecure_ssl()
    kw.setdefault("additional_headers", AUTH)
    return await connect(url, compression=None, open_timeout=3, **kw)


async def call(conn: ClientConnection, method: str, rid: Any = 1, **params: Any) -> dict[str, Any]:
    await conn.send(
        orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).decode()
    )
    while True:
        msg = orjson.loads(await asyncio.wait_for(conn.recv(), 3))
        if msg.get("id") == rid:
            return msg  # type: ignore[no-any-return]


async def next_event(conn: ClientConnection, timeout: float = 3) -> dict[str, Any]:
    while True:
        msg = orjson.loads(await asyncio.wait_for(conn.recv(), timeout))
        if msg.get("method") == "xFeedback/Event":
            return msg  # type: ignore[no-any-return]


# ---- TLS and auth -------------------------------------------------------------------------


async def test_wss_verifies_against_the_served_certificate(fleet: DeviceFleet) -> None:
    ctx = ssl.create_default_context(cadata=fleet.cert_pem.decode())
    async with await ws(fleet.devices[0].url, ssl=ctx) as conn:
        reply = await call(conn, "xGet", Path=["Status", "SystemUnit", "ProductId"])
        assert reply["result"] == "Cisco Room Kit Pro"
    assert len(fleet.cert_sha256) == 64
    assert fleet.devices[1].port != fleet.devices[0].port


async def test_subprotocol_auth_is_echoed(fleet: DeviceFleet) -> None:
    proto = subprotocol("admin", "secret")
    async with await ws(fleet.devices[0].url, additional_headers={}, subprotocols=[proto]) as conn:  # type: ignore[list-item]
        assert conn.subprotocol == proto
        assert (await call(conn, "xGet", rid="s", Path="Status Bookings Current Id"))[
            "result"
        ] == ""


async def test_bad_credentials_get_403(fleet: DeviceFleet) -> None:
    for headers in ({"Authorization": basic("admin", "wrong")}, {}):
        with pytest.raises(InvalidStatus) as info:
            await ws(fleet.devices[0].url, additional_headers=headers)
        assert info.value.response.status_code == 403


async def test_user_role_reads_only_what_the_schema_lets_it(fleet: DeviceFleet) -> None:
    headers = {"Authorization": basic("viewer", "pw")}
    async with await ws(fleet.devices[0].url, additional_headers=headers) as conn:
        reply = await call(conn, "xGet", Path="Configuration Bookings AdhocBooking BookingTimeout")
        assert "result" in reply, reply
        reply = await call(conn, "xGet", Path="Configuration Bookings")
        assert reply["error"]["code"] == -31999


async def test_http_and_https_only(http_fleet: DeviceFleet) -> None:
    dev = http_fleet.devices[0]
    assert dev.url.startswith("ws://")
    async with await ws(dev.url) as conn:
        assert (await call(conn, "xGet", Path="Configuration NetworkServices HTTP Mode"))[
            "result"
        ] == "HTTP+HTTPS"
    async with DeviceFleet(SimConfig(http=True, https_only=True, start=SIM_START)) as strict:
        with pytest.raises(InvalidStatus) as info:
            await ws(strict.devices[0].url)
        assert info.value.response.status_code == 401


# ---- faults through the Python API --------------------------------------------------------


async def test_drop_aborts_without_close_frame(fleet: DeviceFleet) -> None:
    dev = fleet.devices[0]
    async with await ws(dev.url) as conn:
        await call(conn, "xGet", Path="Status")
        assert dev.faults.drop() == 1
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 3)
        assert info.value.rcvd is None  # no close frame from the device


async def test_silent_then_answers(fleet: DeviceFleet) -> None:
    dev = fleet.devices[0]
    async with await ws(dev.url) as conn:
        dev.faults.silent(0.4)
        started = time.monotonic()
        await conn.send('{"jsonrpc":"2.0","id":1,"method":"xGet","params":{"Path":"Status"}}')
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.recv(), 0.2)
        await asyncio.wait_for(conn.recv(), 2)
        assert time.monotonic() - started >= 0.35


async def test_reboot_502_then_not_ready_then_sync_required(fleet: DeviceFleet) -> None:
    dev = fleet.devices[0]
    conn = await ws(dev.url)
    dev.faults.reboot(down_s=0.3, not_ready_s=0.3)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 2)
    with pytest.raises(InvalidStatus) as info:
        await ws(dev.url)
    assert info.value.response.status_code == 502
    await asyncio.sleep(0.35)
    async with await ws(dev.url) as booting:
        assert (await call(booting, "xGet", Path="Status"))["error"]["code"] == -31997
    await asyncio.sleep(0.35)
    async with await ws(dev.url) as ready:
        reply = await call(ready, "xFeedback/Subscribe", Query=["Event", "Bookings"])
        assert reply["result"] == {"Id": 0}
        note = await next_event(ready)
        assert note["params"] == {"Id": 0, "Event": {"Bookings": {"SyncRequired": {}}}}
    assert dev.core.produced["Bookings.SyncRequired"] == 1


async def test_rate_limit_503(fleet: DeviceFleet) -> None:
    dev = fleet.devices[1]
    dev.faults.rate_limit(0.3)
    with pytest.raises(InvalidStatus) as info:
        await ws(dev.url)
    assert info.value.response.status_code == 503
    await asyncio.sleep(0.35)
    (await ws(dev.url)).transport.abort()


async def test_duplicate_malformed_slow(fleet: DeviceFleet) -> None:
    dev = fleet.devices[0]
    async with await ws(dev.url) as conn:
        await call(conn, "xFeedback/Subscribe", Query=["Event", "Bookings"])
        dev.faults.duplicate(count=1)
        dev.calendar.request(duration_min=15, start=fleet.clock.now() + timedelta(hours=1))
        first, second = await next_event(conn), await next_event(conn)
        assert first == second and "BookingRequested" in first["params"]["Event"]["Bookings"]
        while "Updated" not in (await next_event(conn))["params"]["Event"]["Bookings"]:
            pass
        assert dev.core.produced["Bookings.BookingRequested"] == 1  # counted once

        dev.faults.malformed(kind=None, count=4)
        frames = [await asyncio.wait_for(conn.recv(), 2) for _ in range(4)]
        assert isinstance(frames[3], bytes)
        with pytest.raises(ValueError):
            json.loads(frames[0])
        assert "jsonrpc" not in json.loads(frames[1])
        assert json.loads(frames[2])["params"]["Id"] == 987654

        dev.faults.slow(250)
        started = time.monotonic()
        await call(conn, "xGet", Path="Status Bookings")
        assert time.monotonic() - started >= 0.24
        dev.faults.slow(0)


async def test_slow_consumer_is_disconnected() -> None:
    async with DeviceFleet(SimConfig(send_queue_frames=4, start=SIM_START)) as f:
        dev = f.devices[0]
        async with await ws(dev.url) as conn:
            await call(conn, "xFeedback/Subscribe", Query=["Event"])
            for _ in range(10):  # more frames at once than the device queues for a client
                dev.calendar.request(duration_min=1)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(conn.recv(), 3)


async def test_clock_advance_fires_events(fleet: DeviceFleet) -> None:
    dev = fleet.devices[0]
    now = fleet.clock.now()
    booking = dev.calendar.add(now + timedelta(minutes=2))
    async with await ws(dev.url) as conn:
        await call(conn, "xFeedback/Subscribe", Query=["Event", "Bookings", "Start"])
        fleet.clock.advance(125)
        note = await next_event(conn)
        assert note["params"]["Event"]["Bookings"]["Start"]["Id"] == booking.id


# ---- the control API and the CLI ------------------------------------------------------------


async def test_control_api(fleet: DeviceFleet) -> None:
    control = ControlServer(fleet)
    await control.start()
    base = f"http://127.0.0.1:{control.port}"
    dev = fleet.devices[0]
    try:
        async with aiohttp.ClientSession() as http, await ws(dev.url) as conn:
            await call(conn, "xFeedback/Subscribe", Query=["Event", "Bookings"])
            start = "2030-01-07T09:00:00Z"
            async with http.post(
                f"{base}/devices/0/calendar/add", json={"start": start, "title": "Outlook"}
            ) as r:
                assert r.status == 200
                booking_id = (await r.json())["results"][0]["Id"]
            assert "BookingCreated" in (await next_event(conn))["params"]["Event"]["Bookings"]
            await next_event(conn)  # Updated
            async with http.post(
                f"{base}/devices/0/calendar/move",
                json={"id": booking_id, "start": "2030-01-07T10:00:00Z"},
            ) as r:
                assert r.status == 200
            assert "BookingMoved" in (await next_event(conn))["params"]["Event"]["Bookings"]
            async with http.post(f"{base}/devices/0/calendar/delete", json={"id": "999"}) as r:
                assert r.status == 404
            async with http.post(f"{base}/devices/0/faults/drop") as r:
                assert (await r.json())["results"] == [1]
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(conn.recv(), 3)
            async with http.post(
                f"{base}/devices/all/faults/rate_limit", json={"duration_s": 5}
            ) as r:
                assert r.status == 200
            with pytest.raises(InvalidStatus):
                await ws(fleet.devices[1].url)
            async with http.post(f"{base}/devices/all/faults/clear") as r:
                assert r.status == 200
            async with http.post(f"{base}/clock", json={"advance_s": 60}) as r:
                assert (await r.json())["speed"] == 1.0
            async with http.get(f"{base}/devices") as r:
                listed = await r.json()
            assert listed[0]["port"] == dev.port
            assert listed[0]["events"]["Bookings.BookingCreated"] == 1
            assert listed[0]["events"]["Bookings.BookingMoved"] == 1
            assert listed[0]["handshakes"]["101"] == 1
            async with http.get(f"{base}/devices/0/bookings") as r:
                assert (await r.json())["status"] == "OK"
    finally:
        await control.stop()


def _free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports, below Linux's ephemeral range (32768+),
    so client sockets of concurrent tests cannot take P+1.. between the check and the bind."""
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        try:
            socks = []
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + k))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no block of free loopback ports")


async def test_cli_subprocess_with_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    port = _free_port_block(3)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_sim",
            "--devices",
            "3",
            "--port",
            str(port),
            "--control-port",
            "0",
            "--mode",
            "hybrid",
            "--confirm-delay",
            "0.1",
            "--generate",
            "--start",
            utc_iso(SIM_START),
            "--fault",
            "malformed:every=1000",
            "--ready-file",
            str(ready),
            "--log-level",
            "WARNING",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DEVICE_SIM_PASSWORD": "pw1"},
    )
    try:
        for _ in range(200):
            if ready.exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        info = json.loads(ready.read_text())
        assert [d["port"] for d in info["devices"]] == [port, port + 1, port + 2]
        headers = {"Authorization": basic("edge-agent", "pw1")}  # the CLI default user
        async with await ws(info["devices"][2]["url"], additional_headers=headers) as conn:
            reply = await call(conn, "xCommand/Bookings/List", DayOffset=0, Days=2)
            assert reply["result"]["status"] == "OK"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{info['control_url']}/devices") as r:
                assert [d["port"] for d in await r.json()][0] == port
            async with http.get(f"{info['control_url']}/devices/0") as r:
                assert (await r.json())[0]["faults"]["malformed_every"] == 1000
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
