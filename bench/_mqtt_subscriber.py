"""The MQTT counterpart of the benches' webhook receiver (bench/_harness.py), in its own process.

    python bench/_mqtt_subscriber.py --ready FILE --port BROKER_PORT --topic 'BASE/devices/+/events'

A paho client (its own network thread, MQTT 3.1.1, clean session) subscribed at QoS 1 to the
agent's events topic; one envelope per message. Per message it takes the arrival time
(``time.time()`` in ``on_message``, before parsing), drops duplicates by ``data.event_id``
(counted) and records the same tuple as the webhook receiver: (arrival, type, device, booking
id, meeting id, ``data.observed_at`` as a Unix time).

It serves the receiver's control route on 127.0.0.1 so the bench drives both sinks alike:
``GET /stats`` -> ``{"requests", "accepted", "duplicates", "bad_signatures"}`` (``requests`` =
messages received); ``?trace=1`` adds the trace, ``&clear=1`` empties it. The ready file
(``{"port", "pid"}``) is written once the SUBACK is in. SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ready", required=True)
    ap.add_argument("--port", type=int, required=True, help="the broker's port on 127.0.0.1")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--client-id", default="bench-pipeline-sub")
    args = ap.parse_args()

    import orjson
    import paho.mqtt.client as paho
    from aiohttp import web
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    state: dict[str, Any] = {"messages": 0, "duplicates": 0, "trace": []}
    seen: set[str] = set()
    subscribed = threading.Event()
    iso_cache: dict[str, float] = {}

    def observed(obs: str | None) -> float | None:
        if not obs:
            return None
        t = iso_cache.get(obs)
        if t is None:
            t = datetime.fromisoformat(obs).timestamp()
            if len(iso_cache) > 10_000:
                iso_cache.clear()
            iso_cache[obs] = t
        return t

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            c.subscribe(args.topic, qos=1)

    def on_subscribe(c: Any, u: Any, mid: Any, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(c: Any, u: Any, m: Any) -> None:
        now = time.time()
        env = orjson.loads(m.payload)
        data = env["data"]
        eid = data["event_id"]
        booking = data.get("booking") or {}
        with lock:
            state["messages"] += 1
            if eid in seen:
                state["duplicates"] += 1
                return
            seen.add(eid)
            state["trace"].append(
                (
                    now,
                    env["type"],
                    data.get("device_id"),
                    booking.get("id"),
                    booking.get("meeting_id"),
                    observed(data.get("observed_at")),
                )
            )

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=paho.MQTTv311,
    )
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.reconnect_delay_set(1, 1)

    async def stats(request: web.Request) -> web.Response:
        q = request.query
        with lock:
            out: dict[str, Any] = {
                "requests": state["messages"],
                "accepted": len(seen),
                "duplicates": state["duplicates"],
                "bad_signatures": 0,
            }
            if q.get("trace"):
                out["trace"] = state["trace"]
            if q.get("clear"):
                state["trace"] = []
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def serve() -> None:
        client.connect("127.0.0.1", args.port, keepalive=30)
        client.loop_start()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, subscribed.wait, 15):
            raise SystemExit("subscriber: no SUBACK within 15 s")
        app = web.Application()
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        tmp = args.ready + ".tmp"
        Path(tmp).write_text(json.dumps({"port": port, "pid": os.getpid()}))
        os.replace(tmp, args.ready)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            client.disconnect()
            client.loop_stop()
            await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
