"""The control HTTP API of a running simulator (aiohttp, bound to 127.0.0.1 only).

Routes (JSON in, JSON out; ``{k}`` is a device index or ``all``):

- ``GET  /healthz`` -> ``{"ok": true}``
- ``GET  /devices`` -> ``[{index, id, port, url, profile, mode, time_zone, connections, ready,
  handshakes {status: n}, bookings, events {"Bookings.Start": n, ..., "Status.Bookings.Availability":
  n}, events_total, faults}]``: ``events`` counts every event each device produced, per type
- ``GET  /devices/{k}`` -> one of those
- ``GET  /events`` -> the ``events`` counters summed over the fleet
- ``GET  /devices/{k}/bookings?day_offset=0&days=2`` -> what ``Bookings List`` answers
- ``POST /devices/{k}/faults/drop`` ``{}``
- ``POST /devices/{k}/faults/silent`` ``{"duration_s": 10}``
- ``POST /devices/{k}/faults/reboot`` ``{"down_s": 5, "not_ready_s": 5}``
- ``POST /devices/{k}/faults/rate_limit`` ``{"duration_s": 10}``
- ``POST /devices/{k}/faults/duplicate`` ``{"duration_s": 30}`` or ``{"count": 5}``
- ``POST /devices/{k}/faults/malformed`` ``{"kind": "invalid_json", "count": 1}`` or ``{"every": 10}``
- ``POST /devices/{k}/faults/slow`` ``{"delay_ms": 300, "duration_s": 60}``
- ``POST /devices/{k}/faults/clear`` ``{}``
- ``POST /devices/{k}/calendar/add`` ``{"start": "...Z", "duration_min": 30, "title": "...",
  "organizer": "Ola Normann", "meeting_id": "..."?}`` -> ``{"Id": ..., "MeetingId": ...}``
- ``POST /devices/{k}/calendar/move`` ``{"id": "3", "start": "...Z", "duration_min": 45?}``
- ``POST /devices/{k}/calendar/delete`` ``{"id": "3"}``
- ``POST /devices/{k}/calendar/request`` ``{"duration_min": 30, "start": "...Z"?, "title": "",
  "uuid": "..."?}`` (someone books on the touch panel) -> ``{"BookingRequestUUID": ...}``
- ``POST /devices/{k}/calendar/decline_next`` ``{"n": 1}``
- ``POST /devices/{k}/occupancy`` ``{"people_count": 3}`` forces the head count (presence
  follows at once), ``{"clear": true}`` returns to the calendar-driven model, ``{"counting":
  false}`` / ``{"presence_detector": false}`` switch ``RoomAnalytics PeopleCountOutOfCall`` /
  ``PeoplePresenceDetector``; answers the device's ``Status RoomAnalytics``
- ``GET  /clock`` -> ``{"now": "...Z", "speed": x, "unix": seconds.fraction}``; ``POST /clock``
  ``{"advance_s": x}`` (same answer)
- ``POST /devices/{k}/flood`` ``{"rate": 5, "duration_s": 20, "bookings": 40?, "trace": false}``
  (benchmarks) -> ``{"ok": true, "devices": n, "bookings": [k per device]}``: each device emits
  ``rate`` Bookings events per second for ``duration_s``, alternating ``Start`` and ``End`` of the
  bookings it holds inside the calendar window (today + 8 h of tomorrow, device zone; the first
  ``bookings`` of them), cycling through them. These are real notifications of bookings the
  device knows (a client holding the window forwards them without re-listing), counted in
  ``events``; they change nothing in the calendar. With ``trace`` every emission is recorded as
  ``[unix_time, device_id, booking_id, event]``. A new flood replaces the running one on those
  devices; a device keeps its place in the cycle across floods.
- ``GET  /flood`` -> ``{"active": n, "emitted": n, "trace": [...]}``; ``?clear=1`` also empties
  the trace; ``POST /flood/stop`` ``{}`` stops every flood

Errors: 400 ``{"error": "..."}`` for bad input, 404 for an unknown device or booking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from .calendar import Booking, CalendarError, local_midnight, parse_time, utc_iso
from .fleet import DeviceFleet
from .server import Device

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _targets(fleet: DeviceFleet, key: str) -> list[Device]:
    if key == "all":
        return list(fleet.devices)
    try:
        return [fleet.devices[int(key)]]
    except (ValueError, IndexError):
        raise web.HTTPNotFound(
            text=f'{{"error": "no device {key}"}}', content_type="application/json"
        ) from None


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "body is not JSON"}', content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be an object"}', content_type="application/json"
        )
    return data


def _fault(device: Device, name: str, body: dict[str, Any]) -> Any:
    f = device.faults
    if name == "drop":
        return f.drop()
    if name == "silent":
        return f.silent(float(body.get("duration_s", 10)))
    if name == "reboot":
        return f.reboot(float(body.get("down_s", 5)), float(body.get("not_ready_s", 5)))
    if name == "rate_limit":
        return f.rate_limit(float(body.get("duration_s", 10)))
    if name == "duplicate":
        duration = body.get("duration_s")
        count = body.get("count")
        return f.duplicate(
            None if duration is None else float(duration), None if count is None else int(count)
        )
    if name == "malformed":
        every = body.get("every")
        return f.malformed(
            body.get("kind"), int(body.get("count", 1)), None if every is None else int(every)
        )
    if name == "slow":
        duration = body.get("duration_s")
        return f.slow(
            float(body.get("delay_ms", 500)), None if duration is None else float(duration)
        )
    if name == "clear":
        return f.clear()
    raise web.HTTPNotFound(text=f'{{"error": "no fault {name}"}}', content_type="application/json")


def _calendar(device: Device, action: str, body: dict[str, Any]) -> Any:
    cal = device.calendar
    if action == "add":
        b = cal.add(
            parse_time(str(body["start"])),
            int(body.get("duration_min", 30)),
            str(body.get("title", "Meeting")),
            str(body.get("organizer", "Ola Normann")),
            organizer_email=str(body.get("organizer_email", "")),
            meeting_id=body.get("meeting_id"),
        )
        return {"Id": b.id, "MeetingId": b.meeting_id, "StartTime": utc_iso(b.start)}
    if action == "move":
        duration = body.get("duration_min")
        b = cal.move(
            str(body["id"]),
            parse_time(str(body["start"])),
            None if duration is None else int(duration),
        )
        return {"Id": b.id, "StartTime": utc_iso(b.start), "EndTime": utc_iso(b.end)}
    if action == "delete":
        b = cal.delete(str(body["id"]))
        return {"Id": b.id}
    if action == "request":
        start = body.get("start")
        made = cal.request(
            int(body.get("duration_min", 30)),
            None if start is None else parse_time(str(start)),
            str(body.get("title", "")),
            body.get("uuid"),
        )
        return {"BookingRequestUUID": made}
    if action == "decline_next":
        cal.decline_next(int(body.get("n", 1)))
        return None
    raise web.HTTPNotFound(
        text=f'{{"error": "no calendar action {action}"}}', content_type="application/json"
    )


FLOOD_TICK_S = 0.005
FLOOD_TRACE_MAX = 500_000


@dataclass(eq=False)
class _FloodCycle:
    """One device's Start/End cycle; kept across floods so repeats stay as far apart as they can."""

    events: list[tuple[str, dict[str, Any]]]
    position: int = 0


@dataclass(eq=False)
class _FloodPlan:
    device: Device
    cycle: _FloodCycle
    rate: float
    started: float
    ends: float
    emitted: int = 0


@dataclass
class Flooder:
    """Synthetic load for benchmarks: Start/End notifications of bookings each device holds,
    at a fixed rate per device, from one task ticking every ``FLOOD_TICK_S``."""

    fleet: DeviceFleet
    plans: dict[int, _FloodPlan] = field(default_factory=dict)
    cycles: dict[tuple[int, int | None], _FloodCycle] = field(default_factory=dict)
    trace: list[list[Any]] | None = None
    emitted: int = 0
    _task: asyncio.Task[None] | None = None

    @staticmethod
    def window_bookings(device: Device) -> list[Booking]:
        """The device's bookings overlapping [local midnight today, tomorrow midnight + 8 h)."""
        core = device.core
        today = device.clock.now().astimezone(core.zone).date()
        lo = local_midnight(today, core.zone)
        hi = local_midnight(today + timedelta(days=1), core.zone) + timedelta(hours=8)
        return [b for b in core.calendar.sorted_bookings() if b.end > lo and b.start < hi]

    def _cycle(self, device: Device, limit: int | None) -> _FloodCycle:
        key = (device.device_index, limit)
        cycle = self.cycles.get(key)
        if cycle is None:
            events: list[tuple[str, dict[str, Any]]] = []
            for b in self.window_bookings(device)[:limit]:
                ids = {"Id": b.id, "MeetingId": b.meeting_id}
                events.append(("Start", ids))
                events.append(
                    (
                        "End",
                        {
                            **ids,
                            "StartTime": utc_iso(b.start),
                            "EndTime": utc_iso(b.end),
                            "ScheduledDuration": b.duration_min,
                        },
                    )
                )
            cycle = self.cycles[key] = _FloodCycle(events)
        return cycle

    def start(
        self, devices: list[Device], rate: float, duration_s: float, limit: int | None, trace: bool
    ) -> list[int]:
        if not rate > 0 or not duration_s > 0:
            raise ValueError("rate and duration_s must be positive")
        if limit is not None and limit < 1:
            raise ValueError("bookings must be at least 1")
        cycles = [self._cycle(d, limit) for d in devices]
        if any(not c.events for c in cycles):
            raise ValueError("a device holds no booking in its calendar window to flood with")
        now = time.monotonic()
        for i, (device, cycle) in enumerate(zip(devices, cycles, strict=True)):
            # Spread the devices' first events over one period, so a slow per-device rate
            # still makes an even fleet-wide stream, not a burst every 1/rate seconds.
            phase = i / len(devices) / rate
            self.plans[device.device_index] = _FloodPlan(
                device, cycle, rate, now - phase, now + duration_s
            )
        if trace and self.trace is None:
            self.trace = []
        elif not trace:
            self.trace = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="device-sim.flood"
            )
        return [len(c.events) // 2 for c in cycles]

    async def _run(self) -> None:
        while self.plans:
            now = time.monotonic()
            for index, plan in list(self.plans.items()):
                due = int((min(now, plan.ends) - plan.started) * plan.rate) - plan.emitted
                cycle, core = plan.cycle, plan.device.core
                for _ in range(max(0, due)):
                    name, fields = cycle.events[cycle.position]
                    cycle.position = (cycle.position + 1) % len(cycle.events)
                    core.emit_event(name, fields)
                    if self.trace is not None and len(self.trace) < FLOOD_TRACE_MAX:
                        self.trace.append([time.time(), plan.device.device_id, fields["Id"], name])
                plan.emitted += max(0, due)
                self.emitted += max(0, due)
                if now >= plan.ends:
                    del self.plans[index]
            await asyncio.sleep(FLOOD_TICK_S)

    def describe(self, clear: bool) -> dict[str, Any]:
        out = {"active": len(self.plans), "emitted": self.emitted, "trace": self.trace or []}
        if clear and self.trace is not None:
            self.trace = []
        return out

    async def stop(self) -> None:
        self.plans.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def make_app(fleet: DeviceFleet) -> web.Application:
    """The control API application for ``fleet``."""
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "devices": len(fleet.devices)})

    @routes.get("/devices")
    async def devices(request: web.Request) -> web.Response:
        return web.json_response(fleet.describe())

    @routes.get("/events")
    async def events(request: web.Request) -> web.Response:
        return web.json_response(fleet.produced())

    @routes.get("/devices/{k}")
    async def device(request: web.Request) -> web.Response:
        wanted = {d.device_index for d in _targets(fleet, request.match_info["k"])}
        return web.json_response([d for d in fleet.describe() if d["index"] in wanted])

    @routes.get("/devices/{k}/bookings")
    async def bookings(request: web.Request) -> web.Response:
        dev = _targets(fleet, request.match_info["k"])[0]
        q = request.query
        return web.json_response(
            dev.calendar.list(int(q.get("day_offset", 0)), int(q.get("days", 2)))
        )

    @routes.post("/devices/{k}/faults/{name}")
    async def fault(request: web.Request) -> web.Response:
        body = await _body(request)
        results = []
        for dev in _targets(fleet, request.match_info["k"]):
            try:
                results.append(_fault(dev, request.match_info["name"], body))
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "results": results})

    @routes.post("/devices/{k}/calendar/{action}")
    async def calendar(request: web.Request) -> web.Response:
        body = await _body(request)
        results = []
        for dev in _targets(fleet, request.match_info["k"]):
            try:
                results.append(_calendar(dev, request.match_info["action"], body))
            except CalendarError as exc:
                return web.json_response({"error": exc.reason}, status=404)
            except (KeyError, ValueError, TypeError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
        return web.json_response({"ok": True, "results": results})

    @routes.post("/devices/{k}/occupancy")
    async def occupancy(request: web.Request) -> web.Response:
        body = await _body(request)
        out = []
        for device in _targets(fleet, request.match_info["k"]):
            try:
                count = body.get("people_count")
                device.calendar.people(
                    None if count is None else int(count),
                    clear=bool(body.get("clear", False)),
                    counting=None if "counting" not in body else bool(body["counting"]),
                    presence_detector=(
                        None
                        if "presence_detector" not in body
                        else bool(body["presence_detector"])
                    ),
                )
            except (TypeError, ValueError) as exc:
                raise web.HTTPBadRequest(
                    text=json.dumps({"error": str(exc)}), content_type="application/json"
                ) from None
            now = device.clock.now()
            out.append(device.core.status_tree(now)["RoomAnalytics"])
        return web.json_response(out[0] if len(out) == 1 else out)

    @routes.get("/clock")
    async def clock_get(request: web.Request) -> web.Response:
        now = fleet.clock.now()
        return web.json_response(
            {"now": utc_iso(now), "speed": fleet.clock.speed, "unix": now.timestamp()}
        )

    @routes.post("/clock")
    async def clock_post(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            now = fleet.clock.advance(float(body.get("advance_s", 0)))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(
            {"now": utc_iso(now), "speed": fleet.clock.speed, "unix": now.timestamp()}
        )

    flooder = Flooder(fleet)

    @routes.post("/devices/{k}/flood")
    async def flood(request: web.Request) -> web.Response:
        body = await _body(request)
        targets = _targets(fleet, request.match_info["k"])
        try:
            limit = body.get("bookings")
            sizes = flooder.start(
                targets,
                float(body.get("rate", 1.0)),
                float(body.get("duration_s", 10.0)),
                None if limit is None else int(limit),
                bool(body.get("trace", False)),
            )
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "devices": len(targets), "bookings": sizes})

    @routes.get("/flood")
    async def flood_get(request: web.Request) -> web.Response:
        clear = request.query.get("clear", "") not in ("", "0", "false")
        return web.json_response(flooder.describe(clear))

    @routes.post("/flood/stop")
    async def flood_stop(request: web.Request) -> web.Response:
        await flooder.stop()
        return web.json_response({"ok": True})

    async def on_cleanup(app: web.Application) -> None:
        await flooder.stop()

    app = web.Application()
    app.add_routes(routes)
    app.on_cleanup.append(on_cleanup)
    return app


class ControlServer:
    """The control API on ``127.0.0.1:port`` (0: any free port; see ``.port``)."""

    def __init__(self, fleet: DeviceFleet, port: int = 0, host: str = "127.0.0.1") -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(make_app(self.fleet), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
