"""``edge-agent demo``: the whole pipeline on one machine, in a minute.

Simulated devices (hybrid calendars, a fast clock, self-signed certificates pinned by SHA-256)
-> the agent (its own SQLite store in a temporary directory) -> a local webhook receiver that
checks every Standard Webhooks signature and prints each event on one line. The script books
rooms on touch panels, changes calendars "in Outlook", reboots a device while its calendar
changes, has the calendar decline one request and makes one that never gets an answer. Beside
the devices, a Microsoft Graph simulator (``calendar_sim.graph``, HTTPS with its own certificate,
on the same simulated clock) holds three calendar-only rooms and the mailbox one device is
linked to: the script changes a calendar-only room's meetings "in Outlook", and the linked
room's window comes from its mailbox (the calendar takes precedence). Then it prints a
summary: events the devices produced against events delivered, duplicates, latency p50/p99,
and whether each scripted outcome happened (the exit status is 1 when one did not).

The simulated clock starts at a fixed instant (``--start``, a Monday morning), never at the wall
clock, and the touch-panel requests go into slots the script found free: what the demo shows
does not depend on when it runs.

With ``--mqtt`` (needs the ``mosquitto`` binary) the agent also publishes to a broker started on
a loopback port, and the summary shows what a late MQTT subscriber sees (retained state).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.agent import Agent
from edge_agent.clock import parse_utc
from edge_agent.config import config_from_dict, resolve_secrets
from edge_agent.ops.logs import configure_logging

# A Monday, 08:50 in Oslo: the seeded office day (08:00-18:00 local) is under way, so the
# script's 40 simulated minutes show meetings ending and starting, not an empty night.
DEMO_START = datetime(2026, 11, 23, 7, 50, tzinfo=UTC)
PANEL_MINUTES = 30
GHOST_AFTER_S = 120
GRAPH_SECRET = "demo-graph-client-secret"
GRAPH_DOMAIN = "contoso.com"
CALENDAR_ROOMS = ("room-1", "room-2", "room-3")  # calendar-only: no device, only a mailbox
LINKED_MAILBOX = f"room-4@{GRAPH_DOMAIN}"  # the last simulated device is linked to it

SECRET = "whsec_" + base64.b64encode(b"edge-agent demo secret, not for production").decode()

# What each device event becomes in the envelope contract (DESIGN.md).
FORWARDED = {
    "Bookings.BookingRequested": "booking.requested",
    "Bookings.BookingCreated": "booking.created",
    "Bookings.BookingFailed": "booking.failed",
    "Bookings.BookingMoved": "booking.moved",
    "Bookings.Deleted": "booking.deleted",
    "Bookings.Start": "booking.started",
    "Bookings.End": "booking.ended",
    "Bookings.ExtensionRequested": "booking.extension_requested",
    "Bookings.ExtensionFailed": "booking.extension_failed",
    "Bookings.EditRequested": "booking.edit_requested",
    "Bookings.EditFailed": "booking.edit_failed",
    "Bookings.CheckedIn": "booking.checked_in",
    "Status.Bookings.Availability": "room.availability",
}


class SimulatorClock:
    """The agent's clock on the simulator's (fast) time, so windows and deadlines agree; real
    monotonic time for timeouts. Also used by the end-to-end tests."""

    def __init__(self, fleet: Any) -> None:
        self._fleet = fleet

    def now(self) -> datetime:
        now: datetime = self._fleet.clock.now()
        return now

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class Receiver:
    """A webhook receiver that verifies signatures by hand (HMAC-SHA256, Standard Webhooks)."""

    secret: str
    on_event: Callable[[dict[str, Any]], None]
    ids: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    bad_signatures: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    def verify(self, headers: Any, body: bytes) -> bool:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode()
        mac = hmac.new(key, signed + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        sigs = (headers.get("webhook-signature") or "").split()
        return any(hmac.compare_digest(expected, s) for s in sigs)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.verify(request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        doc = jsoncodec.loads(body)
        envelopes = doc["data"]["events"] if doc.get("type") == "batch" else [doc]
        for env in envelopes:
            if env["data"]["event_id"] in self.ids:
                self.duplicates += 1
                continue
            self.ids.add(env["data"]["event_id"])
            self.events.append(env)
            self.on_event(env)
        return web.Response(status=204)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port the OS chose for port 0
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Printer:
    """One compact line per delivered event."""

    def __init__(self, fleet: Any, speed: float, out: TextIO, quiet: bool) -> None:
        self.fleet = fleet
        self.speed = speed
        self.out = out
        self.quiet = quiet
        self.latencies: list[float] = []

    def __call__(self, env: dict[str, Any]) -> None:
        data = env["data"]
        observed = parse_utc(data["observed_at"])
        lag = (self.fleet.clock.now() - observed).total_seconds() / self.speed
        self.latencies.append(max(0.0, lag))
        if self.quiet or env["type"] == "room.occupancy":  # head counts: many; the summary counts
            return
        sim = observed.strftime("%H:%M:%S")
        where = data.get("device_id") or f"rooms/{data.get('room_id')}"
        print(f"{sim}  {where:<12} {env['type']:<28} {_details(env)}", file=self.out)


def _details(env: dict[str, Any]) -> str:
    data = env["data"]
    b = data.get("booking") or {}
    parts: list[str] = []
    if b.get("title"):
        parts.append(f'"{b["title"]}"')
    if b.get("start") and b.get("end"):
        parts.append(f"{b['start'][11:16]}-{b['end'][11:16]}Z")
    if b.get("meeting_id"):
        parts.append(f"meeting {b['meeting_id'][:8]}")
    if env["type"] == "booking.created" and "pending_ms" in data:
        parts.append(f"confirmed after {data['pending_ms'] / 1000:.0f}s")
    if env["type"] == "booking.failed":
        parts.append(_failure(data))
    elif data.get("cause"):
        parts.append(f"cause {data['cause']}")
    if data.get("reconciled"):
        parts.append("(reconciled: missed while disconnected)")
    if data.get("source") == "microsoft":
        parts.append("source microsoft")
    if env["type"] == "bookings.snapshot":
        parts.append(f"{len(data['bookings'])} bookings in the window")
    if env["type"] == "room.availability":
        a = data["availability"]
        parts.append(f"{a['status']}" + (f" until {a['until'][11:16]}Z" if a.get("until") else ""))
    if env["type"] == "booking.request_expired":
        parts.append(
            f"request {data['booking_request_uuid'][:8]}: "
            "no answer within BookingTimeout + grace: expired"
        )
    if env["type"] == "device.offline":
        parts.append(str(data.get("reason") or "")[:60])
    if env["type"] == "booking.ghost":
        parts.append(f"nobody came: the room stayed empty {data['empty_s'] / 60:.0f} min")
    if env["type"] == "booking.ended" and data.get("occupancy"):
        o = data["occupancy"]
        parts.append(f"used {o['occupied_s'] / 60:.0f} min, peak {o['people_max']} people")
    return "  ".join(parts)


def _failure(data: dict[str, Any]) -> str:
    """What a ``booking.failed`` means, in words (its ``cause`` is the device's FailureCause)."""
    request = str(data.get("booking_request_uuid") or "")[:8]
    cause = data.get("cause")
    if cause == "Decline":
        what = "declined by the calendar"
    elif cause == "Timeout":
        what = "the calendar did not answer within BookingTimeout"
    else:
        what = f"failed at the device (cause {cause})"
    return f"request {request}: {what}" if request else what


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _mosquitto(workdir: Path) -> AsyncIterator[str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit(
            "edge-agent demo --mqtt: mosquitto is not installed (make demo installs it)"
        )
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def _late_mqtt_view(url: str, base: str) -> dict[str, str]:
    """What a subscriber that connects now sees: the retained topics."""
    from edge_agent.forward.mqtt import broker_settings, read_retained

    late = broker_settings(url, client_id="demo-late-subscriber")
    return {t: p.decode() for t, p in (await read_retained(late, f"{base}/#")).items()}


async def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from device_sim import DeviceFleet, SimConfig

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    fleet = DeviceFleet(
        SimConfig(
            devices=args.devices,
            mode="hybrid",
            speed=args.speed,
            seed=args.seed,
            start=args.start,
            time_zone=args.time_zone,
            confirm_delay_s=30.0,
            booking_timeout_s=60,
            generate_day=True,
            password="demo-password",
        )
    )
    await fleet.start()
    from calendar_sim.graph import GraphSim, GraphSimConfig

    # On the fleet's simulated clock (itself pinned to --start), so the agent's one clock agrees
    # with both simulators; one office day of meetings per mailbox, like the devices' seed.
    graph = GraphSim(
        GraphSimConfig(
            client_secret=GRAPH_SECRET,
            start=fleet.clock.now(),
            speed=args.speed,
            seed=args.seed,
            domain=GRAPH_DOMAIN,
            time_zone=args.time_zone,
        )
    )
    for room in CALENDAR_ROOMS:
        graph.add_room(f"{room}@{GRAPH_DOMAIN}", f"Calendar-only {room}", generate_days=1)
    graph.add_room(LINKED_MAILBOX, "Linked room", generate_days=1)
    await graph.start()
    (workdir / "graph-ca.pem").write_bytes(graph.cert_pem)
    printer = Printer(fleet, args.speed, out, args.quiet)
    receiver = Receiver(SECRET, printer)
    hook_url = await receiver.start()
    mqtt_ctx: Any = _mosquitto(workdir) if args.mqtt else contextlib.nullcontext(None)
    agent_task: asyncio.Task[int] | None = None
    try:
        async with mqtt_ctx as mqtt_url:
            raw: dict[str, Any] = {
                "site": "demo",
                "store": {"path": str(workdir / "agent.db")},
                "defaults": {
                    "username": "admin",
                    "password_env": "DEMO_DEVICE_PASSWORD",
                    "request_grace_s": 30,
                    "time_zone": args.time_zone,
                    # A ghost after 2 simulated minutes (the default is 10), so one shows up.
                    "ghost_after_s": GHOST_AFTER_S,
                    "occupancy_min_interval_s": 300,
                },
                "devices": [
                    {"id": d.device_id, "url": d.url, "fingerprint": fleet.cert_sha256}
                    for d in fleet.devices
                ],
                "microsoft": {
                    "tenant_id": graph.config.tenant_id,
                    "client_id": graph.config.client_id,
                    "client_secret_env": "DEMO_GRAPH_SECRET",
                    "authority_url": graph.authority_url,
                    "graph_url": graph.graph_url,
                    "ca_file": str(workdir / "graph-ca.pem"),
                    "discover_rooms": False,  # the rooms below, by hand
                    "poll_interval_s": 1,  # real seconds: the demo lasts well under a minute
                    "time_zone": args.time_zone,
                },
                "rooms": [
                    {"id": room, "calendar": f"{room}@{GRAPH_DOMAIN}"} for room in CALENDAR_ROOMS
                ],
                "webhook": {"url": hook_url, "secret_env": "DEMO_WEBHOOK_SECRET"},
                "api": {"listen": "127.0.0.1:0"},
            }
            raw["devices"][-1]["calendar"] = LINKED_MAILBOX
            if mqtt_url:
                raw["mqtt"] = {"url": mqtt_url, "health_interval_s": 5}
            env = {
                "DEMO_DEVICE_PASSWORD": "demo-password",
                "DEMO_WEBHOOK_SECRET": SECRET,
                "DEMO_GRAPH_SECRET": GRAPH_SECRET,
            }
            cfg = config_from_dict(raw, env=env)
            agent = Agent(
                cfg,
                resolve_secrets(cfg, env=env),
                clock=SimulatorClock(fleet),
                session_overrides={"relist_debounce_s": 0.2, "tick_max_s": 0.2},
            )
            # Not in a TaskGroup: a failed start is not an exception but the agent's exit code,
            # which becomes the demo's; the ``finally`` below cancels and awaits it either way.
            agent_task = asyncio.create_task(agent.run(), name="demo.agent")
            ready = asyncio.create_task(agent.ready.wait(), name="demo.agent-ready")
            await asyncio.wait({agent_task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if agent_task.done():  # it failed while starting: say why
                ready.cancel()
                return int(agent_task.result())
            api_url = agent.api.url if agent.api else "-"
            print(
                f"edge-agent demo: {args.devices} simulated devices (hybrid calendar, clock x"
                f"{args.speed:g}, {args.time_zone}) -> agent -> webhook receiver"
                + (" + MQTT broker" if mqtt_url else ""),
                f"\n  devices   {fleet.devices[0].url} ... (self-signed, pinned by SHA-256)",
                f"\n  graph     {graph.graph_url} (Microsoft 365 simulator): calendar-only "
                f"rooms {', '.join(CALENDAR_ROOMS)}; {fleet.devices[-1].device_id} linked to "
                f"{LINKED_MAILBOX}",
                f"\n  receiver  {hook_url} (verifies every signature)",
                f"\n  agent     store {workdir / 'agent.db'}; local API {api_url}",
                f"\n  running for {args.duration:g} s; "
                f"sim time starts {fleet.clock.now():%a %Y-%m-%d %H:%M} UTC (--start)\n",
                file=out,
            )
            scripted = await _script(fleet, graph, rng, args.duration, out)
            await asyncio.sleep(2.0)  # the last deliveries
            stats = await agent.sample()
            pending = len(await agent.store.load_pending()) if agent.store else 0
            late = await _late_mqtt_view(mqtt_url, cfg.mqtt_base_topic) if mqtt_url else None
            agent.request_stop()
            await agent_task
            return _summary(fleet, receiver, printer, stats, pending, late, scripted, out)
    finally:
        if agent_task is not None and not agent_task.done():
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent_task
        await receiver.stop()
        await graph.stop()
        await fleet.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _say(out: TextIO, text: str) -> None:
    print(f"\n>>> {text}", file=out)


@dataclass
class Scripted:
    """What the script set up, so the summary can say whether each of it happened."""

    confirmed: dict[str, str] = field(default_factory=dict)  # request UUID -> device id
    declined: str = ""  # request UUID the calendar declines
    expired: str = ""  # request UUID whose answer is lost
    reconciled_title: str = ""  # a booking made while its device rebooted
    ghost: tuple[str, str] = ("", "")  # (device id, booking id) nobody comes to
    # Changes made "in Outlook" to calendar-only rooms: (room id, booking id, envelope type)
    outlook: list[tuple[str, str, str]] = field(default_factory=list)
    linked: str = ""  # the device whose window comes from its mailbox


def _free_slot(bookings: Sequence[Any], after: datetime, minutes: int) -> datetime:
    """The first start at or after ``after`` (whole minutes) with ``minutes`` free."""
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for booking in sorted(bookings, key=lambda b: b.start):
        if booking.end <= start:
            continue
        if booking.start >= start + timedelta(minutes=minutes):
            break
        start = booking.end
    return start


def _panel_request(dev: Any, fleet: Any, title: str) -> str:
    """Book the room on its touch panel in a slot its calendar holds free (so it can be kept)."""
    start = _free_slot(dev.calendar.bookings(), fleet.clock.now(), PANEL_MINUTES)
    made: str = dev.calendar.request(duration_min=PANEL_MINUTES, start=start, title=title)
    return made


async def _script(
    fleet: Any, graph: Any, rng: random.Random, duration: float, out: TextIO
) -> Scripted:
    # The last device is linked to a mailbox: its window is the calendar's, so the device
    # calendar changes and the ghost below use the others.
    linked, devices = fleet.devices[-1], fleet.devices[:-1] or fleet.devices
    t0 = time.monotonic()
    scripted = Scripted(linked=linked.device_id)
    moved_room, added_room = CALENDAR_ROOMS[0], CALENDAR_ROOMS[1]
    planning = graph.add_event(
        f"{moved_room}@{GRAPH_DOMAIN}", fleet.clock.now() + timedelta(hours=5), 30, "Planning"
    )

    async def at(second: float) -> None:
        await asyncio.sleep(max(0.0, t0 + second * duration / 40 - time.monotonic()))

    dev, booking = _no_show(devices, fleet)
    _say(
        out,
        f'{dev.device_id}: "{booking.title}" is booked from {booking.start:%H:%M}Z but nobody '
        f"comes -> a ghost booking after {GHOST_AFTER_S // 60} min",
    )
    scripted.ghost = (dev.device_id, booking.id)
    await at(4)
    _say(out, "three rooms are booked on their touch panels (hybrid: the calendar confirms later)")
    for dev in rng.sample(devices, min(3, len(devices))):
        uuid = _panel_request(dev, fleet, f"Ad hoc in {dev.device_id}")
        scripted.confirmed[uuid] = dev.device_id
    await at(10)
    _say(out, "organizers change meetings in Outlook: one added, one moved, one deleted")
    d = devices[1 % len(devices)]
    now = fleet.clock.now()
    d.calendar.add(now + timedelta(hours=2), 45, title="Added in Outlook")
    movable = [b for b in devices[0].calendar.bookings() if b.start > now + timedelta(minutes=30)]
    if movable:
        devices[0].calendar.move(movable[0].id, movable[0].start + timedelta(minutes=30))
    if len(movable) > 1:
        devices[0].calendar.delete(movable[1].id)
    await at(13)
    refused = devices[4 % len(devices)]
    _say(out, f"{refused.device_id}: a touch-panel request the calendar declines")
    refused.calendar.decline_next()
    scripted.declined = _panel_request(refused, fleet, "Declined by Exchange")
    await at(14)
    _say(
        out,
        f'calendar-only rooms, in Outlook: a meeting added in {added_room}, "Planning" moved '
        f"in {moved_room} (Microsoft 365, no device in the room)",
    )
    now = fleet.clock.now()
    added = graph.add_event(
        f"{added_room}@{GRAPH_DOMAIN}", now + timedelta(hours=4), 30, "Added in Outlook"
    )
    graph.move_event(
        f"{moved_room}@{GRAPH_DOMAIN}", planning.id, planning.start + timedelta(hours=1)
    )
    scripted.outlook = [
        (added_room, added.id, "booking.created"),
        (moved_room, planning.id, "booking.moved"),
    ]
    await at(16)
    victim = devices[2 % len(devices)]
    _say(out, f"{victim.device_id} reboots; while it is down its calendar changes behind its back")
    victim.faults.reboot(down_s=2.0, not_ready_s=1.0)
    await asyncio.sleep(0.3)
    now = fleet.clock.now()
    scripted.reconciled_title = "Booked during the reboot"
    victim.calendar.add(now + timedelta(hours=3), 30, title=scripted.reconciled_title)
    await at(24)
    quiet = devices[3 % len(devices)]
    _say(
        out,
        f"{quiet.device_id}: a touch-panel request whose answer is lost (the device drops off) "
        "-> it expires after BookingTimeout + grace",
    )
    quiet.calendar.decline_next()
    scripted.expired = _panel_request(quiet, fleet, "Nobody will answer")
    quiet.faults.reboot(down_s=1.0, not_ready_s=0.5)
    await at(40)
    return scripted


def _no_show(devices: Sequence[Any], fleet: Any) -> tuple[Any, Any]:
    """A meeting added "in Outlook" in the room free soonest, starting in a minute or so, to
    which nobody comes (the room's head count is held at 0): the demo's ghost booking."""
    now = fleet.clock.now()
    slots = [
        (_free_slot(d.calendar.bookings(), now, PANEL_MINUTES), i) for i, d in enumerate(devices)
    ]
    start, i = min(slots)
    dev = devices[i]
    dev.calendar.people(0)
    return dev, dev.calendar.add(start, PANEL_MINUTES, title="Nobody comes")


def _verdict(scripted: Scripted, events: Sequence[dict[str, Any]]) -> list[tuple[bool, str]]:
    """(happened, what) for each outcome the script set up, from the delivered envelopes."""

    def uuid_of(env: dict[str, Any]) -> str:
        data = env["data"]
        booking = data.get("booking") or {}
        return str(data.get("booking_request_uuid") or booking.get("booking_request_uuid") or "")

    created = {
        uuid_of(e): e["data"] for e in events if e["type"] == "booking.created" and uuid_of(e)
    }
    failed = {uuid_of(e): e["data"] for e in events if e["type"] == "booking.failed"}
    expired = {uuid_of(e) for e in events if e["type"] == "booking.request_expired"}
    checks: list[tuple[bool, str]] = []
    for uuid, device_id in scripted.confirmed.items():
        meeting = str((created.get(uuid, {}).get("booking") or {}).get("meeting_id") or "")
        checks.append(
            (
                bool(meeting),
                f"touch-panel request {uuid[:8]} on {device_id} confirmed"
                + (f" with meeting {meeting[:8]}" if meeting else ": no booking.created"),
            )
        )
    if scripted.declined:
        cause = failed.get(scripted.declined, {}).get("cause")
        checks.append(
            (
                cause == "Decline" and scripted.declined not in created,
                f"request {scripted.declined[:8]} declined by the calendar"
                + ("" if cause == "Decline" else f": got cause {cause!r}"),
            )
        )
    if scripted.expired:
        ok = scripted.expired in expired and scripted.expired not in created
        checks.append(
            (
                ok,
                f"request {scripted.expired[:8]} expired (no answer within BookingTimeout + grace)"
                + ("" if ok else ": no booking.request_expired"),
            )
        )
    if scripted.reconciled_title:
        found = any(
            e["type"] == "booking.created"
            and e["data"].get("reconciled")
            and (e["data"].get("booking") or {}).get("title") == scripted.reconciled_title
            for e in events
        )
        checks.append((found, f'"{scripted.reconciled_title}" reconciled after the reboot'))
    if scripted.ghost[0]:
        device_id, booking_id = scripted.ghost
        ghosts = [
            e
            for e in events
            if e["type"] == "booking.ghost"
            and e["data"]["device_id"] == device_id
            and (e["data"].get("booking") or {}).get("id") == booking_id
        ]
        checks.append(
            (
                len(ghosts) == 1,
                f"booking {booking_id} on {device_id} reported once as a ghost"
                + ("" if ghosts else ": no booking.ghost"),
            )
        )
    for room, booking_id, etype in scripted.outlook:
        delivered = any(
            e["type"] == etype
            and e["data"].get("room_id") == room
            and e["data"].get("source") == "microsoft"
            and "device_id" not in e["data"]
            and (e["data"].get("booking") or {}).get("id") == booking_id
            for e in events
        )
        checks.append(
            (
                delivered,
                f"calendar-only room {room}: Outlook change delivered as {etype}"
                + ("" if delivered else f": no {etype} from microsoft"),
            )
        )
    if scripted.linked:
        sources = {
            e["data"].get("source")
            for e in events
            if e["type"] == "bookings.snapshot" and e["data"].get("device_id") == scripted.linked
        }
        checks.append(
            (
                sources == {"microsoft"},
                f"linked room {scripted.linked}: its window came from the calendar"
                + (
                    ""
                    if sources == {"microsoft"}
                    else f": snapshots from {sorted(map(str, sources))}"
                ),
            )
        )
    return checks


def _summary(
    fleet: Any,
    receiver: Receiver,
    printer: Printer,
    stats: Any,
    pending: int,
    late: dict[str, str] | None,
    scripted: Scripted,
    out: TextIO,
) -> int:
    produced = fleet.produced()
    # The device rows count what came from devices; the room calendars have their own rows.
    delivered = Counter(
        e["type"] for e in receiver.events if e["data"].get("source") != "microsoft"
    )
    reconciled = Counter(e["type"] for e in receiver.events if e["data"].get("reconciled"))
    print("\n=== summary ===", file=out)
    print(f"{'device event':<32}{'produced':>9}   {'envelope':<28}{'delivered':>9}", file=out)
    produced_total = 0
    for xevent, etype in FORWARDED.items():
        n = produced.get(xevent, 0)
        if not n and not delivered.get(etype):
            continue
        produced_total += n
        extra = f"  ({reconciled[etype]} reconciled)" if reconciled.get(etype) else ""
        print(f"{xevent:<32}{n:>9}   {etype:<28}{delivered.get(etype, 0):>9}{extra}", file=out)
    for etype in (
        "bookings.snapshot",
        "device.online",
        "device.offline",
        "booking.request_expired",
        "room.occupancy",
        "booking.ghost",
    ):
        print(f"{'(agent)':<32}{'':>9}   {etype:<28}{delivered.get(etype, 0):>9}", file=out)
    from_graph = Counter(
        e["type"] for e in receiver.events if e["data"].get("source") == "microsoft"
    )
    for etype, n in sorted(from_graph.items()):
        print(f"{'(microsoft: room calendars)':<32}{'':>9}   {etype:<28}{n:>9}", file=out)
    lat = printer.latencies
    dead = int(stats.get("dead_letters", 0)) if stats else 0
    print(
        f"\ndelivered {len(receiver.events)} events; duplicates {receiver.duplicates}; "
        f"bad signatures {receiver.bad_signatures}; dead letters {dead}; "
        f"pending requests {pending}",
        f"\nlatency device event -> receiver: p50 {_pct(lat, 0.5) * 1000:.0f} ms, "
        f"p99 {_pct(lat, 0.99) * 1000:.0f} ms",
        file=out,
    )
    if late is not None:
        print("\nwhat a late MQTT subscriber sees (retained):", file=out)
        for topic in sorted(late):
            print(f"  {topic} = {late[topic][:70]}", file=out)
    checks = _verdict(scripted, receiver.events)
    checks.append((receiver.bad_signatures == 0, f"bad signatures {receiver.bad_signatures}"))
    checks.append((dead == 0, f"dead letters {dead}"))
    checks.append((pending == 0, f"pending requests at the end {pending}"))
    print("\nscripted outcomes:", file=out)
    for ok, what in checks:
        print(f"  {'ok     ' if ok else 'MISSING'} {what}", file=out)
    good = all(ok for ok, _ in checks)
    print("\nOK" if good else "\nPROBLEMS: see above", file=out)
    return 0 if good else 1


def _start_time(text: str) -> datetime:
    try:
        return parse_utc(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time such as 2026-11-23T07:50:00Z"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-agent demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    p.add_argument("--duration", type=float, default=40.0, help="real seconds to run the script")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--start",
        type=_start_time,
        default=DEMO_START,
        help=f"simulated start time (default {DEMO_START:%Y-%m-%dT%H:%M:%SZ}, a Monday morning)",
    )
    p.add_argument("--time-zone", default="Europe/Oslo")
    p.add_argument("--mqtt", action="store_true", help="also forward over MQTT (needs mosquitto)")
    p.add_argument("--quiet", action="store_true", help="summary only, no line per event")
    p.add_argument("--log-level", default="error")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    return asyncio.run(run_demo(args))


if __name__ == "__main__":
    raise SystemExit(main())
