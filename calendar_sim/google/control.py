"""The Google fake's control routes, added to ``calendar_sim.common.ControlServer``.

Besides ``/healthz``, ``/clock`` and ``/faults`` (kinds ``throttle``, ``quota``, ``sync_reset``,
``unavailable``, ``slow``, ``hold``; ``calendar`` names the resource):

- ``GET  /key`` -> the service-account JSON key file
- ``POST /rooms`` ``{"email", "name"?, "category"?, "resource_type"?}`` (category
  ``CONFERENCE_ROOM`` by default, ``OTHER`` for equipment); ``DELETE /rooms/{email}``
- ``GET  /calendars/{email}/events`` -> ``[{id, summary, start, end, status}]``
- ``POST /calendars/{email}/events`` ``{"start": "...Z", "minutes": 30, "summary"?,
  "daily_count"?}``; ``POST /calendars/{email}/events/{id}/move`` ``{"start", "minutes"?}``;
  ``POST /calendars/{email}/events/{id}/cancel``
- ``POST /sync_tokens/expire`` ``{"calendar"?}``; ``POST /tokens/expire``
- ``GET  /state`` -> ``{"requests": {route tag: n}, "quota": {"per_user", "per_project",
  "refused", "peak": {user: most requests in one sliding minute}, "in_window": {user: n}}}``
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..common.control import error, json_body
from .model import GEvent

if TYPE_CHECKING:
    from .sim import GoogleSim


def _time(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise error(400, f"not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise error(400, f"{value!r} needs a UTC offset or Z")
    return moment


def _event(e: GEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "summary": e.summary,
        "start": e.start.isoformat(),
        "end": e.end.isoformat(),
        "status": e.status,
    }


def add_routes(app: web.Application, sim: GoogleSim) -> None:
    def guard(fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return web.json_response(await fn(request))
            except KeyError as exc:
                raise error(404, f"unknown: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise error(400, f"bad request: {exc}") from None

        return handler

    async def key(request: web.Request) -> Any:
        return sim.key_file()

    async def add_room(request: web.Request) -> Any:
        body = await json_body(request)
        return sim.add_room(
            str(body["email"]),
            body.get("name"),
            category=str(body.get("category", "CONFERENCE_ROOM")),
            resource_type=str(body.get("resource_type", "Conference room")),
        ).resource_json()

    async def remove_room(request: web.Request) -> Any:
        sim.remove_room(request.match_info["email"])
        return {"ok": True}

    async def events(request: web.Request) -> Any:
        return [
            _event(e) for e in sim.calendars[request.match_info["email"].lower()].events.values()
        ]

    async def add_event(request: web.Request) -> Any:
        body = await json_body(request)
        return _event(
            sim.add_event(
                request.match_info["email"],
                _time(body["start"]),
                int(body.get("minutes", 30)),
                str(body.get("summary", "Meeting")),
                daily_count=int(body.get("daily_count", 0)),
            )
        )

    async def move(request: web.Request) -> Any:
        body = await json_body(request)
        minutes = body.get("minutes")
        return _event(
            sim.move_event(
                request.match_info["email"],
                request.match_info["id"],
                _time(body["start"]),
                None if minutes is None else int(minutes),
            )
        )

    async def cancel(request: web.Request) -> Any:
        return _event(sim.cancel_event(request.match_info["email"], request.match_info["id"]))

    async def expire_sync(request: web.Request) -> Any:
        body = await json_body(request)
        return {"expired": sim.expire_sync_tokens(body.get("calendar"))}

    async def expire_tokens(request: web.Request) -> Any:
        sim.expire_tokens()
        return {"ok": True}

    async def state(request: web.Request) -> Any:
        q = sim.api.quota
        return {
            "requests": dict(sim.api.requests),
            "quota": {
                "per_user": q.per_user,
                "per_project": q.per_project,
                "refused": q.refused,
                "peak": dict(q.peak),
                "in_window": {u: q.in_window(u) for u in q.peak},
            },
        }

    app.add_routes(
        [
            web.get("/state", guard(state)),
            web.get("/key", guard(key)),
            web.post("/rooms", guard(add_room)),
            web.delete("/rooms/{email}", guard(remove_room)),
            web.get("/calendars/{email}/events", guard(events)),
            web.post("/calendars/{email}/events", guard(add_event)),
            web.post("/calendars/{email}/events/{id}/move", guard(move)),
            web.post("/calendars/{email}/events/{id}/cancel", guard(cancel)),
            web.post("/sync_tokens/expire", guard(expire_sync)),
            web.post("/tokens/expire", guard(expire_tokens)),
        ]
    )
