"""A lean reference pipeline: the agent's durable work per event and nothing else.

    .venv/bin/python bench/bench_reference.py [--sink mqtt|webhook] [--batch-max 1]
        [--devices 500] [--rate 3000] [--duration 25] [--latency-rate 200] [--latency-s 10]
        [--backlog 0] [--skip-burst] [--skip-latency]

runs the same rig as bench_pipeline.py (bench/_harness.py: simulator, flood, mosquitto +
subscriber or webhook receiver) against this pipeline alone and prints the same figures.
bench_pipeline.py ``--reference`` runs it right after the agent, in the same run.

The pipeline (``bench_reference.py pipeline --config FILE.json``, one process, asyncio):
one wss connection per device (the ``websockets`` library, Basic auth, the certificate pinned
by SHA-256 fingerprint), ``xFeedback/Subscribe`` to ``Event Bookings``; per notification
frame: ``orjson`` parse -> the envelope (Standard Webhooks shape, DESIGN.md) -> SQLite WAL
(``synchronous = NORMAL``, as the bench's agent config) group commit by one writer (every
event waiting goes in one transaction, with the deletes of what was acknowledged meanwhile)
-> deliver -> delete the row on acknowledgement. Sinks: MQTT QoS 1 with paho (its network
thread; at most 32 PUBLISH unacknowledged; delete on PUBACK), or Standard Webhooks over httpx
on aiohttp's transport (the agent's engine): one POST per event or, with ``--batch-max N``,
up to N waiting events of one device in one ``{"type":"batch","data":{"events":[...]}}`` POST
(the agent's batch); one request at a time per device, so its order holds, and at most
``--max-in-flight`` in all; any non-2xx or network error is retried after 1 s.

What it leaves out, on purpose: reconnect backoff, re-listing, booking state, duplicate
filters, statuses (it subscribes to ``Event Bookings`` only, so a burst brings it one
``booking.started`` per device where the agent also forwards ``room.availability``), metrics,
logging. Memory: committed events wait for their sink in memory (the agent reads them back
from its store), so a large backlog costs the reference RAM. What it keeps, as the agent: durable before
sent, at least once (a row goes only on acknowledgement; a restart resends what is left), in
order per device (MQTT: one connection, QoS 1; webhooks: one request per device at a time).

Its local API (``GET /v1/devices``, ``GET /v1/outbox``) answers in the agent's shapes, so the
harness drives both pipelines the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import sqlite3
import ssl
import sys
import tempfile
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import orjson

MQTT_IN_FLIGHT = 32
Row = tuple[int, str, str, bytes]  # seq, device id, event id, envelope
TYPES = {"Start": "booking.started", "End": "booking.ended"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reference:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.db = sqlite3.connect(cfg["db"], isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, body BLOB)")
        self.writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self.seq = itertools.count(1)
        self.incoming: list[Row] = []  # built, not yet committed
        self.acked: list[int] = []  # delivered, row not yet deleted
        self.wake = asyncio.Event()
        self.ready: asyncio.Queue[Row] = asyncio.Queue()  # committed
        self.depth = 0
        self.connected: dict[str, bool] = {d["id"]: False for d in cfg["devices"]}
        # One context for every device, no CA store loaded: the certificate is pinned instead.
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.tls.check_hostname, self.tls.verify_mode = False, ssl.CERT_NONE

    # ---- devices ----------------------------------------------------------------------------

    async def device(self, dev: dict[str, str]) -> None:
        from websockets.asyncio.client import connect

        ctx = self.tls
        token = base64.b64encode(f"{h.USERNAME}:{h.PASSWORD}".encode()).decode()
        sub = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "xFeedback/Subscribe",
            "params": {"Query": ["Event", "Bookings"], "NotifyCurrentValue": False},
        }
        while True:
            try:
                async with connect(
                    dev["url"], ssl=ctx, additional_headers={"Authorization": f"Basic {token}"}
                ) as ws:
                    der = ws.transport.get_extra_info("ssl_object").getpeercert(True)
                    if hashlib.sha256(der).hexdigest() != self.cfg["fingerprint"]:
                        raise SystemExit(f"{dev['id']}: certificate fingerprint mismatch")
                    await ws.send(json.dumps(sub))
                    async for frame in ws:
                        self.frame(dev["id"], frame)
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                print(f"{dev['id']}: {exc!r}; again in 1 s", file=sys.stderr)
            self.connected[dev["id"]] = False
            await asyncio.sleep(1)

    def frame(self, device: str, frame: str | bytes) -> None:
        now = time.time()
        doc = orjson.loads(frame)
        if doc.get("id") == 1:
            self.connected[device] = "result" in doc
            return
        if doc.get("method") != "xFeedback/Event":
            return
        for name, fields in doc["params"]["Event"].get("Bookings", {}).items():
            f = fields if isinstance(fields, dict) else {}
            event_id = str(uuid.uuid4())
            env = {
                "type": TYPES.get(name, "booking." + name.lower()),
                "timestamp": iso(now),
                "data": {
                    "event_id": event_id,
                    "site": h.SITE,
                    "device_id": device,
                    "booking": {"id": f.get("Id"), "meeting_id": f.get("MeetingId") or None},
                    "xevent": f"Bookings.{name}",
                    "observed_at": iso(now),
                },
            }
            self.incoming.append((next(self.seq), device, event_id, orjson.dumps(env)))
            self.depth += 1
        self.wake.set()

    # ---- the store: one writer, group commit ------------------------------------------------

    def commit(self, rows: list[Row], gone: list[int]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO outbox VALUES (?, ?)", [(s, b) for s, _, _, b in rows])
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in gone])
        self.db.execute("COMMIT")

    async def writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            rows, self.incoming = self.incoming, []
            gone, self.acked = self.acked, []
            await loop.run_in_executor(self.writer_thread, self.commit, rows, gone)
            for row in rows:  # durable: now it may be sent
                self.ready.put_nowait(row)

    def ack(self, seqs: list[int]) -> None:
        self.acked += seqs
        self.depth -= len(seqs)
        self.wake.set()

    # ---- sinks ------------------------------------------------------------------------------

    async def mqtt(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        loop = asyncio.get_running_loop()
        up = asyncio.Event()
        window = asyncio.Semaphore(MQTT_IN_FLIGHT)
        by_mid: dict[int, int] = {}

        def acked(mid: int) -> None:
            self.ack([by_mid.pop(mid)])
            window.release()

        v5 = self.cfg["mqtt_protocol"] == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="bench-reference",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        client.max_inflight_messages_set(MQTT_IN_FLIGHT)

        def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
            loop.call_soon_threadsafe(up.set)

        def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:  # paho's thread
            loop.call_soon_threadsafe(acked, mid)

        client.on_connect, client.on_publish = on_connect, on_publish
        client.connect("127.0.0.1", self.cfg["mqtt_port"], keepalive=30)
        client.loop_start()
        try:
            await asyncio.wait_for(up.wait(), 10)
            while True:
                seq, device, _, body = await self.ready.get()
                await window.acquire()
                topic = f"{h.MQTT_BASE}/devices/{device}/events"
                by_mid[client.publish(topic, body, qos=1).mid] = seq
        finally:
            client.disconnect()
            client.loop_stop()

    async def webhook(self) -> None:
        import httpx
        from httpx_aiohttp import AiohttpTransport

        cfg = self.cfg
        n_max, key = cfg["batch_max"], base64.b64decode(cfg["secret"].removeprefix("whsec_"))
        limits = httpx.Limits(max_connections=cfg["max_in_flight"])
        transport = AiohttpTransport(limits=limits, trust_env=False)
        headers = {"content-type": "application/json"}
        # As the agent: one request at a time per device (its order kept), a batch holds one
        # device's events, at most max_in_flight requests in all.
        waiting: dict[str, deque[Row]] = defaultdict(deque)  # committed, per device, in order
        turn: deque[str] = deque()  # devices with events waiting and no request in flight
        busy: set[str] = set()
        async with httpx.AsyncClient(transport=transport, headers=headers, timeout=10) as client:

            async def post(device: str, rows: list[Row]) -> None:
                bodies = [b for _, _, _, b in rows]
                if len(rows) == 1:
                    msg_id, body = rows[0][2], bodies[0]
                else:
                    msg_id = f"batch_{rows[0][2]}_{len(rows)}"
                    body = (
                        b'{"type":"batch","timestamp":"'
                        + iso(time.time()).encode()
                        + b'","data":{"events":['
                        + b",".join(bodies)
                        + b"]}}"
                    )
                while True:
                    ts = str(int(time.time()))
                    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256)
                    sig = "v1," + base64.b64encode(mac.digest()).decode()
                    hdrs = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig}
                    try:
                        r = await client.post(cfg["webhook_url"], content=body, headers=hdrs)
                        if 200 <= r.status_code < 300:
                            break
                        if r.status_code < 500 and r.status_code not in (408, 429):
                            print(f"{msg_id}: HTTP {r.status_code}; again in 1 s", file=sys.stderr)
                    except httpx.HTTPError as exc:
                        print(f"{msg_id}: {exc!r}; again in 1 s", file=sys.stderr)
                    await asyncio.sleep(1)
                self.ack([s for s, _, _, _ in rows])
                busy.discard(device)
                if waiting[device]:
                    turn.append(device)
                start_requests()

            def start_requests() -> None:
                while turn and len(busy) < cfg["max_in_flight"]:
                    device = turn.popleft()
                    q = waiting[device]
                    rows = [q.popleft() for _ in range(min(n_max, len(q)))]
                    busy.add(device)
                    tg.create_task(post(device, rows))

            async with asyncio.TaskGroup() as tg:
                while True:
                    row = await self.ready.get()
                    while True:
                        q = waiting[row[1]]
                        q.append(row)
                        if len(q) == 1 and row[1] not in busy:
                            turn.append(row[1])
                        if self.ready.empty():
                            break
                        row = self.ready.get_nowait()
                    start_requests()

    # ---- local API and the whole ------------------------------------------------------------

    async def api(self) -> None:
        from aiohttp import web

        async def devices(_: web.Request) -> web.Response:
            out = [{"id": d, "connected": c} for d, c in self.connected.items()]
            return web.json_response({"devices": out})

        async def outbox(_: web.Request) -> web.Response:
            return web.json_response({"sinks": {self.cfg["sink"]: {"depth": self.depth}}})

        app = web.Application()
        app.router.add_get("/v1/devices", devices)
        app.router.add_get("/v1/outbox", outbox)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.cfg["api_port"]).start()

    async def run(self) -> None:
        leftover = self.db.execute("SELECT seq, body FROM outbox ORDER BY seq").fetchall()
        for seq, body in leftover:  # a restart resends what was stored and not acknowledged
            data = orjson.loads(body)["data"]
            self.ready.put_nowait((seq, data["device_id"], data["event_id"], body))
        self.seq = itertools.count(max((s for s, _ in leftover), default=0) + 1)
        self.depth = len(leftover)
        await self.api()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer(), name="writer")
            sink = self.mqtt() if self.cfg["sink"] == "mqtt" else self.webhook()
            tg.create_task(sink, name="sink")
            for d in self.cfg["devices"]:
                tg.create_task(self.device(d), name=f"device[{d['id']}]")


def pipeline_main(config: str) -> None:
    import signal

    cfg = json.loads(Path(config).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await Reference(cfg).run()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass


# --------------------------------------------------------------------------------------------
# Driven by a bench: start it against a rig
# --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One reference configuration: its label in tables and its webhook batch size."""

    label: str
    batch_max: int = 1


def variants(sink: str, batch_max: int) -> list[Variant]:
    """What the agent is compared with: MQTT one way; webhooks one POST per event and, when
    ``batch_max > 1``, ``batch_max`` events per POST."""
    out = [Variant("reference")]
    if sink == "webhook" and batch_max > 1:
        out.append(Variant(f"reference batch {batch_max}", batch_max))
    return out


def start(rig: h.Rig, variant: Variant, *, max_in_flight: int, mqtt_protocol: str) -> h.Target:
    """Spawn the reference pipeline as a child of ``rig``, on a fresh store."""
    slug = variant.label.replace(" ", "-")
    api_port = h.free_port()
    cfg = {
        "devices": [{"id": d["id"], "url": d["url"]} for d in rig.sim_info["devices"]],
        "fingerprint": str(rig.sim_info["cert_sha256"]).replace(":", "").lower(),
        "db": str(rig.tmp / f"{slug}.db"),
        "sink": rig.sink,
        "mqtt_port": rig.broker_port,
        "mqtt_protocol": mqtt_protocol,
        "webhook_url": f"{rig.rx}/hook",
        "secret": h.SECRET,
        "batch_max": variant.batch_max,
        "max_in_flight": max_in_flight,
        "api_port": api_port,
    }
    path = rig.tmp / f"{slug}.json"
    path.write_text(json.dumps(cfg))
    log = f"{slug}.log"
    proc = rig.spawn(
        [sys.executable, str(Path(__file__).resolve()), "pipeline", "--config", str(path)], log
    )
    return h.Target(variant.label, proc, f"http://127.0.0.1:{api_port}", rig.tmp / log)


async def standalone(args: argparse.Namespace) -> None:
    variant = variants(args.sink, args.batch_max)[-1]
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as t:
        rig = h.Rig(
            Path(t),
            sink=args.sink,
            devices=args.devices,
            flood_bookings=args.flood_bookings,
            bursts=0 if args.skip_burst else 1,
            broker_inflight=args.broker_inflight,
        )
        target: h.Target | None = None
        try:
            async with asyncio.timeout(args.time_limit or h.TIME_PER_RUN_S):
                await rig.start()
                t0 = time.monotonic()
                target = start(
                    rig, variant, max_in_flight=args.max_in_flight, mqtt_protocol=args.mqtt_protocol
                )
                run = await h.phases(rig, target, args, 0, t0)
            if run.sustained is not None:
                print(f"\n{run.name}: {run.sustained.per_cpu_s:.0f} events per CPU-second")
        except BaseException:
            if target is not None:
                print(f"{target.name} log (tail):\n  {target.log_tail()}", file=sys.stderr)
            raise
        finally:
            await rig.close()
            if args.keep_logs:
                rig.keep_logs(Path(args.keep_logs))


def main() -> None:
    if sys.argv[1:2] == ["pipeline"]:
        ap = argparse.ArgumentParser(description="the reference pipeline process")
        ap.add_argument("cmd")
        ap.add_argument("--config", required=True)
        pipeline_main(ap.parse_args().config)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    h.add_load_args(ap, devices=500)
    ap.set_defaults(batch_max=1)
    h.bench_main(ap, standalone)


if __name__ == "__main__":
    main()
