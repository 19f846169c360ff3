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
- ``GET  /clock`` -> ``{"now": "...Z", "speed": x}``; ``POST /clock`` ``{"advance_s": x}``

Errors: 400 ``{"error": "..."}`` for bad input, 404 for an unknown device or booking.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .calendar import CalendarError, parse_time, utc_iso
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
        return f.slow(float(body.get("delay_ms", 500)), None if duration is None else float(duration))
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

    @routes.get("/clock")
    async def clock_get(request: web.Request) -> web.Response:
        return web.json_response({"now": utc_iso(fleet.clock.now()), "speed": fleet.clock.speed})

    @routes.post("/clock")
    async def clock_post(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            now = fleet.clock.advance(float(body.get("advance_s", 0)))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"now": utc_iso(now), "speed": fleet.clock.speed})

    app = web.Application()
    app.add_routes(routes)
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
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
