"""The local API's booking routes: book a room, follow the request, release a booking.

- ``POST /v1/rooms/{room}/bookings`` ``{title, start?, duration_min, organizer?}`` -> **202**
  ``{request_uuid, status: "pending", room_id, expires_at}`` with ``Location:
  /v1/requests/{uuid}``. Refused before anything is sent: **404** unknown room, **422** naming
  the field (``{"error", "field"}``: title required and at most 128 characters, duration_min
  1..1440, start an ISO 8601 time inside the device's window), **409** overlapping a booking of
  the stored window or a request still pending (``{"error", "conflict"}``: the booking id or
  the request UUID), **503** device offline, or a calendar-only room's calendar unreachable
  (its last round failed, no token; ``Retry-After``), **501** an agent that takes no bookings
  or a room whose source cannot book. **502** when the device answers ``Bookings Book`` with
  an error (the request is then ``failed``). A calendar-only room: the event is created in its
  calendar after the 202 (Microsoft: ``transactionId`` = the request UUID,
  ``edge_agent.calendars.graph.booking``; Google: an event id derived from it,
  ``edge_agent.calendars.google.booking``); a refusal then makes the request ``failed`` with
  the cause.
- ``GET /v1/requests/{uuid}`` -> ``{request_uuid, room_id, status, request, created_at,
  updated_at, ...}``; ``status`` is ``pending``, ``overdue`` (its deadline passed but the
  device, or the calendar round, has not closed it: it may still become ``created``, as in
  ``/v1/pending``), or one of the final ``created`` (with ``booking_id``, ``meeting_id``,
  ``booking``), ``failed`` (with ``cause``) and ``expired`` (closed by the session or the
  calendar booking). Kept a day; 404 after.
- ``DELETE /v1/rooms/{room}/bookings/{id}`` -> **202** ``{room_id, booking_id, status:
  "releasing"}``; the outcome arrives as ``booking.deleted``. 404 unknown room or booking, 503
  offline or calendar unreachable, 502 refused by the device or the calendar, 501 as above.

Who may call them is :mod:`edge_agent.ops.api_guard` (the POST and DELETE need the token).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

import structlog
from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.bookings.book import BookingOrder, OrderInvalid, OrderRefused, parse_order
from edge_agent.bookings.models import Booking
from edge_agent.clock import parse_utc, utc_iso
from edge_agent.store.requests import BookingRequestRow

log = structlog.get_logger(__name__)

__all__ = ["BookingAccepted", "BookingDesk", "add_routes", "request_view"]

OFFLINE_RETRY_AFTER_S = 30


class BookingAccepted(Protocol):
    request_uuid: str
    deadline: datetime
    answered: bool


@runtime_checkable
class BookingDesk(Protocol):
    """What the booking routes use of the agent (``edge_agent.agent.Agent`` implements it)."""

    def booking_room(self, room_id: str) -> Literal["device", "calendar"] | None: ...

    async def book(self, room_id: str, order: BookingOrder) -> BookingAccepted: ...

    async def release(self, room_id: str, booking_id: str) -> Booking: ...

    async def booking_request(self, request_uuid: str) -> dict[str, Any] | None: ...


def request_view(row: BookingRequestRow, now: datetime) -> dict[str, Any]:
    """What ``GET /v1/requests/{uuid}`` answers for a stored request at ``now``.

    Only the stored row's status is final. A pending row past its deadline is ``overdue``,
    never ``expired``: a device that was offline may still report it created at its next
    re-list, so ``expired`` comes only from whatever closes the row (the session's expiry, the
    calendar booking's outcome).
    """
    status: str = row.status
    expires_at = row.request.get("expires_at")
    if status == "pending" and isinstance(expires_at, str):
        try:
            if now >= parse_utc(expires_at):
                status = "overdue"
        except ValueError:
            pass
    view: dict[str, Any] = {
        "request_uuid": row.uuid,
        "room_id": row.room_id,
        "status": status,
        "request": row.request,
        "created_at": utc_iso(datetime.fromtimestamp(row.created_at, UTC)),
        "updated_at": utc_iso(datetime.fromtimestamp(row.updated_at, UTC)),
    }
    outcome = row.outcome or {}
    if status == "created":
        view |= {
            "booking_id": outcome.get("booking_id"),
            "meeting_id": outcome.get("meeting_id"),
            "booking": outcome.get("booking"),
        }
    elif status == "failed":
        view["cause"] = outcome.get("cause")
        if outcome.get("detail"):
            view["detail"] = outcome["detail"]
    return view


def _answer(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=jsoncodec.dumpb(dict(body)),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def add_routes(app: web.Application, agent: object) -> None:
    """Register the booking routes; an agent without booking support answers 501."""
    routes = _BookingRoutes(agent if isinstance(agent, BookingDesk) else None)
    app.router.add_post("/v1/rooms/{room}/bookings", routes.book)
    app.router.add_delete("/v1/rooms/{room}/bookings/{id}", routes.release)
    app.router.add_get("/v1/requests/{uuid}", routes.request)


class _BookingRoutes:
    def __init__(self, desk: BookingDesk | None) -> None:
        self._desk = desk

    def _room(self, room_id: str) -> tuple[BookingDesk | None, web.Response | None]:
        desk = self._desk
        if desk is None:
            return None, _answer(501, {"error": "this agent does not take bookings"})
        kind = desk.booking_room(room_id)
        if kind is None:
            return None, _answer(404, {"error": f"unknown room {room_id!r}"})
        return desk, None

    async def book(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        desk, refused = self._room(room_id)
        if refused is not None:
            return refused
        assert desk is not None
        raw = await request.read()
        try:
            body = jsoncodec.loads(raw)
        except ValueError:
            return _answer(400, {"error": "the body is not valid JSON"})
        try:
            order = parse_order(body)
        except OrderInvalid as exc:
            return _answer(422, {"error": str(exc), "field": exc.field})
        return await _book(desk, room_id, order)

    async def release(self, request: web.Request) -> web.Response:
        room_id, booking_id = request.match_info["room"], request.match_info["id"]
        desk, refused = self._room(room_id)
        if refused is not None:
            return refused
        assert desk is not None
        from edge_agent.session import BookingRejected, DeviceOffline

        try:
            await desk.release(room_id, booking_id)
        except DeviceOffline as exc:
            return _offline(exc)
        except LookupError as exc:
            return _answer(404, {"error": str(exc)})
        except BookingRejected as exc:
            return _answer(502, {"error": str(exc)})
        except NotImplementedError as exc:
            return _answer(501, {"error": str(exc)})
        log.info("booking release sent through the local API", room=room_id, booking_id=booking_id)
        return _answer(202, {"room_id": room_id, "booking_id": booking_id, "status": "releasing"})

    async def request(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        if self._desk is None:
            return _answer(501, {"error": "this agent does not take bookings"})
        view = await self._desk.booking_request(uuid)
        if view is None:
            return _answer(
                404, {"error": f"no booking request {uuid!r} (requests are kept for a day)"}
            )
        return _answer(200, view)


def _offline(exc: Exception) -> web.Response:
    return _answer(503, {"error": str(exc)}, {"Retry-After": str(OFFLINE_RETRY_AFTER_S)})


async def _book(desk: BookingDesk, room_id: str, order: BookingOrder) -> web.Response:
    from edge_agent.session import BookingRejected, DeviceOffline
    from edge_agent.store import StoreError

    try:
        sent = await desk.book(room_id, order)
    except LookupError as exc:
        return _answer(404, {"error": str(exc)})
    except DeviceOffline as exc:
        return _offline(exc)
    except OrderRefused as exc:
        if exc.reason == "overlap":
            conflict = exc.conflict.id if exc.conflict else exc.pending
            return _answer(409, {"error": str(exc), "conflict": conflict})
        return _answer(422, {"error": f"start: {exc}", "field": "start"})
    except BookingRejected as exc:
        body = {"error": str(exc), "status": "failed", "request_uuid": exc.request_uuid}
        return _answer(502, body)
    except StoreError as exc:
        return _answer(503, {"error": f"cannot record the request: {exc}"})
    except NotImplementedError as exc:  # a calendar source the agent cannot book
        return _answer(501, {"error": str(exc)})
    uuid = sent.request_uuid
    log.info("booking requested through the local API", room=room_id, booking_request_uuid=uuid)
    return _answer(
        202,
        {
            "request_uuid": uuid,
            "status": "pending",
            "room_id": room_id,
            "expires_at": utc_iso(sent.deadline),
        },
        {"Location": f"/v1/requests/{uuid}"},
    )
