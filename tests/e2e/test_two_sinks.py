"""Webhook and MQTT together: each sink keeps its own progress; one down never holds the other."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from edge_agent.backoff import Backoff
from tests.e2e.harness import agent_config, eventually, of_type, start_agent
from tests.mosquitto import Mosquitto, Subscriber


async def test_broker_down_does_not_hold_back_webhooks_and_catches_up(
    make_fleet, receiver, tmp_path, ca_file, env
):
    fleet = await make_fleet(mode="hybrid", devices=2)
    # Persistence on: the cloud's persistent session (and what the broker PUBACKed) survives the
    # restart, so anything missing afterwards would be the agent's loss.
    broker = Mosquitto(tmp_path, persistence=True).start()
    cfg = agent_config(
        fleet,
        tmp_path,
        webhook_url=receiver.url,
        ca_file=ca_file,
        extra={"mqtt": {"url": broker.url, "keepalive": 5}},
    )
    running = await start_agent(cfg, fleet, env=env, drainer={"backoff": Backoff(0.05, 0.3)})
    sub = Subscriber(
        broker, "roomos-edge/test/devices/+/events", client_id="cloud", clean=False
    ).start()
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 2)
        await eventually(lambda: len(sub.messages) >= 2)
        broker.stop()
        now = fleet.clock.now()
        made = {
            fleet.devices[i % 2]
            .calendar.add(now + timedelta(hours=1 + i), 30, title=f"while the broker is down {i}")
            .meeting_id
            for i in range(6)
        }

        def webhook_ids() -> set[str]:
            return {
                e["data"]["booking"]["meeting_id"]
                for e in of_type(receiver.events, "booking.created")
            }

        # the webhook sink delivers while MQTT cannot
        await eventually(lambda: webhook_ids() >= made, timeout=20)
        store = running.agent.store
        assert store is not None
        # The webhook keeps draining (the re-lists after those changes add snapshots behind
        # them) while the MQTT side only grows: wait for the webhook side to be empty.
        depths: dict[str, int] = {}
        for _ in range(500):
            stats = await store.stats()
            depths = {k: int(v["depth"]) for k, v in stats["sinks"].items()}
            if depths["webhook"] == 0:
                break
            await asyncio.sleep(0.02)
        assert depths["webhook"] == 0 and depths["mqtt"] > 0, depths

        broker.start()

        def mqtt_ids() -> set[str]:
            out = set()
            for _, payload, _ in list(sub.messages):
                env_ = json.loads(payload)
                if env_["type"] == "booking.created":
                    out.add(env_["data"]["booking"]["meeting_id"])
            return out

        await eventually(lambda: mqtt_ids() >= made, timeout=30)
    finally:
        sub.stop()
        await running.stop()
        broker.stop()
