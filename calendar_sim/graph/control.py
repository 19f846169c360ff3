"""The Graph fake's control routes, added to ``calendar_sim.common.ControlServer``.

Besides the common ``/healthz``, ``/clock`` and ``/faults`` (fault kinds: ``throttle``
``{mailbox?, retry_after, count?, route?}``, ``sync_reset``, ``unauthorized``, ``unavailable``,
``status {status, code, message}``, ``slow {delay_s}``, ``hold``):

- ``GET  /state`` -> counters (rooms, events, requests per route, in flight, subscriptions)
- ``POST /rooms`` ``{"address", "display_name"?, "time_zone"?, "generate_days"?}``
- ``DELETE /rooms/{address}`` (``?keep_mailbox=1``: only leaves the directory)
- ``GET  /mailboxes/{address}/events`` -> ``[{id, subject, start, end, isCancelled}]``
- ``POST /mailboxes/{address}/events`` ``{"start": "...Z", "minutes": 30, "subject"?}``
- ``POST /mailboxes/{address}/events/{id}/move`` ``{"start": "...Z", "minutes"?}``
- ``POST /mailboxes/{address}/events/{id}/cancel``; ``DELETE /mailboxes/{address}/events/{id}``
- ``POST /sync_state/expire`` ``{"mailbox"?}``; ``POST /tokens/expire``
- ``GET  /subscriptions``; ``POST /subscriptions/{id}/lifecycle`` ``{"event": ...}``
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..common.control import error, json_body
from .model import Event, GraphError

if TYPE_CHECKING:
    from .sim import GraphSim


def _time(value: Any, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise error(400, f"{name}: not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise error(400, f"{name}: needs a UTC offset or Z")
    return moment


def _event(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "subject": e.subject,
        "start": e.start.isoformat(),
        "end": e.end.isoformat(),
        "isCancelled": e.is_cancelled,
    }


def add_routes(app: web.Application, sim: GraphSim) -> None:
    def guard(fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                result = await fn(request)
            except GraphError as exc:
                raise error(exc.status if exc.status in (404, 409) else 400, exc.message) from None
            except (KeyError, TypeError, ValueError) as exc:
                raise error(400, f"bad request: {exc}") from None
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)

        return handler

    async def state(request: web.Request) -> Any:
        return sim.describe()

    async def add_room(request: web.Request) -> Any:
        body = await json_body(request)
        box = sim.add_room(
            str(body["address"]),
            body.get("display_name"),
            time_zone=body.get("time_zone"),
            generate_days=int(body.get("generate_days", 0)),
        )
        return box.room_json()

    async def remove_room(request: web.Request) -> Any:
        sim.remove_room(
            request.match_info["address"],
            keep_mailbox=request.query.get("keep_mailbox") in ("1", "true"),
        )
        return {"ok": True}

    async def list_events(request: web.Request) -> Any:
        return [_event(e) for e in sim.events(request.match_info["address"])]

    async def add_event(request: web.Request) -> Any:
        body = await json_body(request)
        return _event(
            sim.add_event(
                request.match_info["address"],
                _time(body["start"], "start"),
                int(body.get("minutes", 30)),
                str(body.get("subject", "Meeting")),
            )
        )

    async def move_event(request: web.Request) -> Any:
        body = await json_body(request)
        minutes = body.get("minutes")
        return _event(
            sim.move_event(
                request.match_info["address"],
                request.match_info["id"],
                _time(body["start"], "start"),
                None if minutes is None else int(minutes),
            )
        )

    async def cancel_event(request: web.Request) -> Any:
        return _event(sim.cancel_event(request.match_info["address"], request.match_info["id"]))

    async def delete_event(request: web.Request) -> Any:
        sim.delete_event(request.match_info["address"], request.match_info["id"])
        return {"ok": True}

    async def expire_sync(request: web.Request) -> Any:
        body = await json_body(request)
        return {"expired": sim.expire_sync_state(body.get("mailbox"))}

    async def expire_tokens(request: web.Request) -> Any:
        sim.expire_tokens()
        return {"ok": True}

    async def subscriptions(request: web.Request) -> Any:
        return [s.json() for s in sim.subscriptions.active()]

    async def lifecycle(request: web.Request) -> Any:
        body = await json_body(request)
        sim.lifecycle(request.match_info["id"], str(body["event"]))
        return {"ok": True}

    app.add_routes(
        [
            web.get("/state", guard(state)),
            web.post("/rooms", guard(add_room)),
            web.delete("/rooms/{address}", guard(remove_room)),
            web.get("/mailboxes/{address}/events", guard(list_events)),
            web.post("/mailboxes/{address}/events", guard(add_event)),
            web.post("/mailboxes/{address}/events/{id}/move", guard(move_event)),
            web.post("/mailboxes/{address}/events/{id}/cancel", guard(cancel_event)),
            web.delete("/mailboxes/{address}/events/{id}", guard(delete_event)),
            web.post("/sync_state/expire", guard(expire_sync)),
            web.post("/tokens/expire", guard(expire_tokens)),
            web.get("/subscriptions", guard(subscriptions)),
            web.post("/subscriptions/{id}/lifecycle", guard(lifecycle)),
        ]
    )
