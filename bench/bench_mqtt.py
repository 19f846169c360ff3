"""Events/s through the MQTT sink at QoS 1, and publish -> subscriber latency.

    .venv/bin/python bench/bench_mqtt.py                      # producer feeds the sink directly
    .venv/bin/python bench/bench_mqtt.py --via-drainer        # Store outbox -> Drainer -> sink

Starts its own mosquitto on a free 127.0.0.1 port (tests/mosquitto.py) and a subscriber in a
separate process (paho, QoS 1 subscription). Direct mode: ``--devices`` producers, each sends
its events in batches of ``--batch`` and waits for Delivered before the next batch (what the
drainer does per device), so up to ``--devices`` batches share the sink's in-flight window.
Drainer mode: the events are committed to a Store (SQLite WAL, group commits) while the real
Drainer delivers them. Latency: an event's ``data.sent_at`` (set when it is handed to the sink,
or committed in drainer mode) to its arrival at the subscriber. Bounded: stops after
``--events`` or ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent import jsoncodec
from edge_agent.forward.base import Delivered, OutboxEvent
from edge_agent.forward.mqtt import MqttSink
from tests.mosquitto import Mosquitto

BASE = "roomos-edge/bench"

SUBSCRIBER = rf"""
import json, sys, time, threading
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

port, expected, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
lat, seen, first, last = [], set(), [None], [None]
done = threading.Event()

def on_connect(c, u, f, rc, p):
    c.subscribe("{BASE}/devices/+/events", qos=1)

def on_subscribe(c, u, mid, rcs, p):
    print("subscribed", flush=True)

def on_message(c, u, m):
    now = time.time()
    d = orjson.loads(m.payload)["data"]
    if d["event_id"] in seen:
        return
    seen.add(d["event_id"])
    lat.append(now - d["sent_at"])
    if first[0] is None:
        first[0] = now
    last[0] = now
    if len(seen) >= expected:
        done.set()

c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sub")
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
done.wait(timeout)
c.loop_stop()
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
print(json.dumps({{"received": len(seen), "first": first[0], "last": last[0],
                  "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": q(1.0)}}), flush=True)
"""


def envelope(device: str, n: int) -> dict[str, Any]:
    # ~500 B, the shape of a booking.created envelope.
    return {
        "type": "booking.created",
        "timestamp": "2026-11-23T09:00:00.123Z",
        "data": {
            "event_id": f"{device}-{n:08d}",
            "site": "bench",
            "device_id": device,
            "booking": {
                "id": str(n),
                "meeting_id": f"m-{n}",
                "booking_request_uuid": "7f9d6c1e-4b3a-4f0e-9a53-2c1d9b8e7a60",
                "title": "Weekly planning",
                "start": "2026-11-23T09:00:00Z",
                "end": "2026-11-23T09:30:00Z",
                "organizer": {"name": "Ada Lovelace", "email": "ada@example.com", "id": "x"},
                "privacy": "Public",
                "platform": "Webex",
                "join_url": "https://example.webex.com/meet/ada",
            },
            "xevent": "Bookings.BookingCreated",
            "observed_at": "2026-11-23T09:00:00.100Z",
            "sent_at": time.time(),
        },
    }


def outbox_event(seq: int, device: str, n: int) -> OutboxEvent:
    env = envelope(device, n)
    return OutboxEvent(
        seq=seq,
        device_id=device,
        event_id=env["data"]["event_id"],
        type=env["type"],
        envelope=env,
        body=jsoncodec.dumpb(env),
        created_at=time.time(),
    )


async def produce_direct(
    sink: MqttSink, devices: int, per_device: int, batch: int, rate: float
) -> int:
    retries = 0
    interval = batch * devices / rate if rate else 0.0  # per device, between batches

    async def device(d: int) -> None:
        nonlocal retries
        name = f"room-{d:03d}"
        t_next = time.monotonic()
        for start in range(0, per_device, batch):
            if interval:
                t_next += interval
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            events = [
                outbox_event(d * per_device + n, name, n)
                for n in range(start, min(per_device, start + batch))
            ]
            while not isinstance(await sink.send(events), Delivered):
                retries += 1
                await asyncio.sleep(0.05)

    async with asyncio.TaskGroup() as tg:
        for d in range(devices):
            tg.create_task(device(d))
    return retries


async def produce_via_drainer(
    sink: MqttSink,
    workdir: Path,
    devices: int,
    per_device: int,
    batch: int,
    in_flight: int,
    rate: float,
) -> int:
    from edge_agent.forward.drainer import Drainer
    from edge_agent.store import Change, Store

    store = await Store.open(workdir / "outbox.db", sinks=("mqtt",))
    drainer = Drainer(store, sink, max_in_flight=in_flight)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(drainer.run(), name="drainer[mqtt]")
            # Commit in rounds of `batch` events per device, as device sessions would.
            interval = batch * devices / rate if rate else 0.0
            t_next = time.monotonic()
            for start in range(0, per_device, batch):
                if interval:
                    t_next += interval
                    await asyncio.sleep(max(0.0, t_next - time.monotonic()))
                await asyncio.gather(
                    *(
                        store.commit(
                            Change(
                                f"room-{d:03d}",
                                events=[
                                    envelope(f"room-{d:03d}", n)
                                    for n in range(start, min(per_device, start + batch))
                                ],
                            )
                        )
                        for d in range(devices)
                    )
                )
            while (await store.stats())["sinks"]["mqtt"]["depth"] > 0:
                await asyncio.sleep(0.1)
            task.cancel()
    finally:
        await store.close()
    return drainer.stats().retried


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--in-flight", type=int, default=50, help="the sink's PUBACK window")
    ap.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    ap.add_argument("--via-drainer", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument(
        "--rate", type=float, default=0.0, help="events/s offered (0: as fast as acked)"
    )
    args = ap.parse_args()
    per_device = args.events // args.devices
    total = per_device * args.devices

    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        # Let mosquitto's own windows (20 by default, and MQTT 5's Receive Maximum) match ours.
        broker = Mosquitto(
            Path(tmp), extra_config=f"max_inflight_messages {max(20, args.in_flight + 2)}"
        ).start()
        sub = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
            [sys.executable, "-c", SUBSCRIBER, str(broker.port), str(total), str(args.timeout)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sub.stdout is not None
            assert sub.stdout.readline().strip() == "subscribed"
            sink = MqttSink(
                broker.url,
                site="bench",
                client_id="bench-agent",
                base_topic=BASE,
                protocol=args.protocol,
                max_batch=args.batch,
                max_in_flight=args.in_flight,
                health_interval_s=3600,
            )
            t0 = time.time()
            if args.via_drainer:  # the drainer runs the sink's connection loop itself
                retries = await asyncio.wait_for(
                    produce_via_drainer(
                        sink,
                        Path(tmp),
                        args.devices,
                        per_device,
                        args.batch,
                        args.devices,
                        args.rate,
                    ),
                    args.timeout,
                )
                acked = time.time()
                await sink.close()
            else:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sink.run(), name="mqtt-sink")
                    while not sink.ready():
                        await asyncio.sleep(0.01)
                    t0 = time.time()
                    retries = await asyncio.wait_for(
                        produce_direct(sink, args.devices, per_device, args.batch, args.rate),
                        args.timeout,
                    )
                    acked = time.time()
                    await sink.close()
            out, _ = sub.communicate(timeout=args.timeout)
            result = json.loads(out.strip().splitlines()[-1])
        finally:
            sub.kill()
            broker.stop()

    last = result["last"] or acked
    report = {
        "mode": "store+drainer" if args.via_drainer else "direct (producer -> sink.send)",
        "protocol": args.protocol,
        "events": total,
        "devices": args.devices,
        "batch": args.batch,
        "in_flight": args.in_flight,
        "offered_rate": args.rate or "max",
        "retries": retries,
        "acked_per_s": round(total / (acked - t0)),
        "received": result["received"],
        "end_to_end_per_s": round(result["received"] / (last - t0)),
        "latency_p50_ms": result["p50_ms"],
        "latency_p99_ms": result["p99_ms"],
        "latency_max_ms": result["max_ms"],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if result["received"] < total:
        sys.exit(f"LOST: {total - result['received']} events never reached the subscriber")


if __name__ == "__main__":
    asyncio.run(main())
