"""A third-party sensor over MQTT, through the real CLI: ``<base>/rooms/<room>/occupancy/set``
reaches a RoomOS 26.8 device as ``RoomAnalytics RoomInUse Set`` and comes back as
``room.occupancy`` ``in_use``; an older device refuses it with a clear error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.publish as mqtt_publish

from device_sim import DeviceFleet, SimConfig
from device_sim.occupancy import SensingSettings
from tests.mosquitto import Mosquitto
from tests.occupancy.test_occupancy_cli import (
    AGENT_ENV,
    PASSWORD,
    Site,
    eventually,
    of,
    start_agent,
    stop_agent,
)
from tests.ops.test_cli import WHSEC, write_config
from tests.receivers import WebhookReceiver


async def test_sensor_topic_to_room_in_use(tmp_path: Path) -> None:
    fleet = DeviceFleet(
        SimConfig(
            devices=2,
            password=PASSWORD,
            profiles={0: "current"},
            sensing=SensingSettings(walkin_per_hour=0.0, jitter=False),
        )
    )
    await fleet.start()
    for dev in fleet.devices:
        dev.calendar.people(0)
    rx = WebhookReceiver(secret=WHSEC)
    await rx.start()
    broker = Mosquitto(tmp_path).start()
    d = fleet.devices
    body = f"""
[defaults]
username = "admin"
password_env = "EDGE_AGENT_DEVICE_PASSWORD"
occupancy_min_interval_s = 0
[[devices]]
id = "room-1"
url = "{d[0].url}"
fingerprint = "{fleet.cert_sha256}"
[[devices]]
id = "room-2"
url = "{d[1].url}"
fingerprint = "{fleet.cert_sha256}"
[webhook]
url = "{rx.url}"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
[mqtt]
url = "{broker.url}"
"""
    site = Site(fleet, rx, write_config(tmp_path, body), "", tmp_path)
    proc = await start_agent(site)

    def publish(room: str, payload: bytes) -> None:
        mqtt_publish.single(
            f"roomos-edge/hq/rooms/{room}/occupancy/set",
            payload,
            qos=1,
            hostname=broker.host,
            port=broker.port,
        )

    try:
        await eventually(lambda: len(of(rx, "device.online")) >= 2, "both devices online")
        await eventually(
            lambda: [e for e in of(rx, "room.occupancy", "room-1") if e["data"]["in_use"] is False],
            "room-1 not in use",
        )
        # The sink subscribes after it connects: keep publishing until the device has it.
        msg = json.dumps({"in_use": True, "sensor": "pir-7", "duration_s": 600}).encode()
        async with asyncio.timeout(20):
            while d[0].core.sensing.in_use_set is None:
                await asyncio.to_thread(publish, "room-1", msg)
                await asyncio.sleep(0.2)
        assert d[0].core.sensing.in_use_set.sensor == "pir-7"
        await eventually(
            lambda: [e for e in of(rx, "room.occupancy", "room-1") if e["data"]["in_use"]],
            "room-1 in use, as the device reports it back",
        )
        await asyncio.to_thread(publish, "room-2", msg)  # RoomOS 26.4: refused
        await asyncio.to_thread(publish, "room-1", b"{not json")
        await asyncio.to_thread(publish, "nowhere", msg)
        # Ordered after the three above on the same topic tree: the agent has handled them.
        done = json.dumps({"in_use": False, "sensor": "pir-7"}).encode()
        await asyncio.to_thread(publish, "room-1", done)
        await eventually(
            lambda: d[0].core.sensing.in_use_set is not None
            and not d[0].core.sensing.in_use_set.state,
            "the last reading passed",
        )
        log = await stop_agent(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        broker.stop()
        await rx.stop()
        await fleet.stop()
    refused = [line for line in log.splitlines() if "sensor not passed" in line]
    assert any('"room-2"' in line and "RoomOS 26.8 or later" in line for line in refused), log
    assert any('"nowhere"' in line and "no device" in line for line in refused), refused
    assert any("bad sensor command dropped" in line and "not JSON" in line
               for line in log.splitlines())  # fmt: skip
