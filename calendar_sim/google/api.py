"""The HTTP face of the Google fake: token endpoint, Directory resources, Calendar events.

- ``POST /token`` (the key file's ``token_uri``)
- ``GET  /admin/directory/v1/customer/{customer}/resources/calendars`` (``maxResults`` <= 500,
  ``pageToken``/``nextPageToken``)
- ``GET  /calendar/v3/calendars/{calendarId}/events``: a full sync (``timeMin``, ``timeMax``,
  ``singleEvents``, ``orderBy``, ``maxResults`` <= 2500, ``showDeleted``), or ``syncToken``
  alone (400 with timeMin/timeMax/orderBy; 410 ``fullSyncRequired`` when forgotten); pages
  carry ``nextPageToken``, the last one ``nextSyncToken``
- ``POST /calendar/v3/calendars/{calendarId}/events`` (insert; a client ``id`` already used is
  409 ``duplicate``, so a retried insert never books twice)
- ``POST /calendar/v3/calendars/{calendarId}/events/watch``; ``POST /calendar/v3/channels/stop``

Every Calendar call (not the token endpoint, not the Directory: the Admin SDK has its own
quota) is counted against the usage quotas (:mod:`.quota`: 600 a minute per user, 10,000 per
project, sliding); past them 403/429 ``rateLimitExceeded``. A request body must be sent as
``Content-Type: application/json`` (what the reference's requests show); any other body is
refused with 400 ``parseError``, as Google refuses a form-encoded one.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .identity import CALENDAR_SCOPES, CALENDAR_WRITE, DIRECTORY_SCOPES, OAuthError
from .model import GoogleError, ResourceCalendar, parse_rfc3339
from .quota import UsageQuota

if TYPE_CHECKING:
    from .sim import GoogleSim

MAX_TOKENS = 200_000
ROUTE_TAGS = {
    "/token": "token",
    "/admin/directory/v1/customer/{customer}/resources/calendars": "resources",
    "/calendar/v3/calendars/{calendar}/events": "events",
    "/calendar/v3/calendars/{calendar}/events/watch": "watch",
    "/calendar/v3/calendars/{calendar}/events/{event}": "event",
    "/calendar/v3/channels/stop": "channels",
}
EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")  # base32hex, as events.insert requires


@dataclass
class SyncPoint:
    calendar: str
    seq: int
    single_events: bool  # the token keeps the original request's singleEvents


@dataclass
class Page:
    calendar: str
    items: list[dict[str, Any]]
    position: int
    sync_seq: int
    single_events: bool


class GoogleApi:
    def __init__(self, sim: GoogleSim) -> None:
        self.sim = sim
        self.tokens: OrderedDict[str, SyncPoint | Page] = OrderedDict()
        self.requests: dict[str, int] = {}
        self.quota = UsageQuota(sim.config.user_quota_per_min, sim.config.project_quota_per_min)
        self.app = web.Application(middlewares=[self._middleware])
        self.app.add_routes(
            [
                web.post("/token", self.token),
                web.get(
                    "/admin/directory/v1/customer/{customer}/resources/calendars", self.resources
                ),
                web.get("/calendar/v3/calendars/{calendar}/events", self.list_events),
                web.post("/calendar/v3/calendars/{calendar}/events", self.insert_event),
                web.post("/calendar/v3/calendars/{calendar}/events/watch", self.watch),
                web.get("/calendar/v3/calendars/{calendar}/events/{event}", self.get_event),
                web.delete("/calendar/v3/calendars/{calendar}/events/{event}", self.delete_event),
                web.post("/calendar/v3/channels/stop", self.stop_channel),
            ]
        )

    def _put(self, state: SyncPoint | Page) -> str:
        token = secrets.token_urlsafe(18)
        self.tokens[token] = state
        while len(self.tokens) > MAX_TOKENS:
            self.tokens.popitem(last=False)
        return token

    def forget(self, calendar: str | None = None) -> int:
        gone = [t for t, s in self.tokens.items() if calendar is None or s.calendar == calendar]
        for token in gone:
            del self.tokens[token]
        return len(gone)

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        name = ROUTE_TAGS.get(resource.canonical if resource is not None else "", "unknown")
        self.requests[name] = self.requests.get(name, 0) + 1
        tags = {name}
        if "syncToken" in request.query:
            tags.add("sync_token")
        if name == "events" and request.method == "POST":
            tags.add("insert")  # a fault for events.insert only, not the list
        calendar = request.match_info.get("calendar")
        fault = self.sim.faults.match(calendar, frozenset(tags))
        if fault is not None and fault.kind == "hold":
            await fault.released.wait()
        elif fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        elif fault is not None:
            headers = (
                {} if fault.retry_after is None else {"Retry-After": str(int(fault.retry_after))}
            )
            if name == "token":
                return web.json_response(
                    OAuthError(
                        fault.status, fault.code or "internal_failure", fault.message or "injected"
                    ).body(),
                    status=fault.status,
                    headers=headers,
                )
            domain = (
                "usageLimits"
                if fault.code in ("rateLimitExceeded", "userRateLimitExceeded")
                else "global"
            )
            err = GoogleError(
                fault.status,
                fault.code or "backendError",
                fault.message or f"injected {fault.status}",
                domain,
            )
            return web.json_response(err.body(), status=fault.status, headers=headers)
        try:
            return await handler(request)
        except GoogleError as exc:
            return web.json_response(exc.body(), status=exc.status)

    def _auth(self, request: web.Request, scopes: tuple[str, ...]) -> None:
        try:
            grant = self.sim.identity.verify(request.headers.get("Authorization"), scopes)
        except PermissionError as exc:
            raise GoogleError(403, "insufficientPermissions", str(exc)) from None
        except ValueError as exc:
            raise GoogleError(401, "authError", str(exc)) from None
        if request.path.startswith("/calendar/"):
            # The user of the quota: the impersonated subject (the service account itself
            # when the token was granted without ``sub``).
            refused = self.quota.admit(grant.subject or self.sim.identity.account.client_email)
            if refused is not None:
                raise GoogleError(refused.status, refused.reason, refused.message, "usageLimits")

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object; 400 ``parseError`` for a body not sent as JSON."""
        if request.content_type != "application/json":
            raise GoogleError(
                400,
                "parseError",
                f"This API does not support parsing {request.content_type or 'untyped'} input; "
                "send Content-Type: application/json.",
            )
        try:
            body = await request.json()
        except ValueError:
            raise GoogleError(400, "parseError", "Parse Error") from None
        if not isinstance(body, dict):
            raise GoogleError(400, "parseError", "Parse Error")
        return body

    def _calendar(self, request: web.Request) -> ResourceCalendar:
        key = request.match_info["calendar"].lower()
        cal = self.sim.calendars.get(key)
        if cal is None:
            raise GoogleError(404, "notFound", "Not Found")
        return cal

    def _int(self, request: web.Request, name: str, default: int, limit: int) -> int:
        try:
            value = int(request.query.get(name, default))
        except ValueError:
            raise GoogleError(400, "invalid", f"Invalid value for {name}.") from None
        if value < 1:
            raise GoogleError(400, "invalid", f"Invalid value for {name}.")
        return min(value, limit)

    # ---- routes --------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        try:
            return web.json_response(self.sim.identity.token(form, self.sim.token_uri))
        except OAuthError as exc:
            return web.json_response(exc.body(), status=exc.status)

    async def resources(self, request: web.Request) -> web.Response:
        self._auth(request, DIRECTORY_SCOPES)
        if request.match_info["customer"] not in ("my_customer", self.sim.config.customer_id):
            raise GoogleError(400, "badRequest", "Bad Request")
        size = self._int(request, "maxResults", 100, 500)
        rooms = sorted(self.sim.calendars.values(), key=lambda c: c.email)
        start = 0
        if "pageToken" in request.query:
            try:
                start = int(request.query["pageToken"].removeprefix("p"))
            except ValueError:
                raise GoogleError(400, "invalid", "Invalid pageToken") from None
        body: dict[str, Any] = {
            "kind": "admin#directory#resources#calendars#calendarResourcesList",
            "etag": f'"{len(rooms)}"',
            "items": [r.resource_json() for r in rooms[start : start + size]],
        }
        if start + size < len(rooms):
            body["nextPageToken"] = f"p{start + size}"
        return web.json_response(body)

    async def list_events(self, request: web.Request) -> web.Response:
        self._auth(request, CALENDAR_SCOPES)
        cal = self._calendar(request)
        q = request.query
        size = self._int(request, "maxResults", 250, 2500)
        if "pageToken" in q:
            state = self.tokens.get(q["pageToken"])
            if not isinstance(state, Page) or state.calendar != cal.email.lower():
                raise GoogleError(400, "invalid", "Invalid pageToken")
            page = state
        elif "syncToken" in q:
            for banned in ("timeMin", "timeMax", "orderBy", "q", "updatedMin", "iCalUID"):
                if banned in q:
                    raise GoogleError(
                        400, "invalid", f"syncToken cannot be combined with {banned}."
                    )
            point = self.tokens.get(q["syncToken"])
            if not isinstance(point, SyncPoint) or point.calendar != cal.email.lower():
                raise GoogleError(
                    410,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                    "calendar",
                )
            changed = sorted(
                (e for e in cal.events.values() if e.seq > point.seq), key=lambda e: e.seq
            )
            if point.single_events:
                changed = [i for e in changed for i in e.expand()]
            items = [e.json(cal.email) for e in changed]
            page = Page(cal.email.lower(), items, 0, cal.seq, point.single_events)
        else:
            low = parse_rfc3339(q["timeMin"], "timeMin") if "timeMin" in q else None
            high = parse_rfc3339(q["timeMax"], "timeMax") if "timeMax" in q else None
            order = q.get("orderBy")
            if order == "startTime" and q.get("singleEvents") != "true":
                raise GoogleError(400, "invalid", "orderBy=startTime requires singleEvents=true.")
            deleted = q.get("showDeleted") == "true"
            single = q.get("singleEvents") == "true"
            expanded = [i for e in cal.events.values() for i in (e.expand() if single else [e])]
            rows = [
                e
                for e in expanded
                if (deleted or e.status != "cancelled")
                and e.overlaps(
                    low or datetime.min.replace(tzinfo=UTC),
                    high or datetime.max.replace(tzinfo=UTC),
                )
            ]
            rows.sort(
                key=(lambda e: (e.start, e.id)) if order == "startTime" else (lambda e: e.seq)
            )
            items = [e.json(cal.email) for e in rows]
            page = Page(cal.email.lower(), items, 0, cal.seq, single)
        chunk = page.items[page.position : page.position + size]
        page.position += len(chunk)
        body: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"{cal.seq}"',
            "summary": cal.email,
            "updated": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "timeZone": cal.time_zone,
            "accessRole": "reader",
            "defaultReminders": [],
            "items": chunk,
        }
        if page.position < len(page.items):
            body["nextPageToken"] = self._put(page)
        else:
            point = SyncPoint(page.calendar, page.sync_seq, page.single_events)
            body["nextSyncToken"] = self._put(point)
        return web.json_response(body)

    async def insert_event(self, request: web.Request) -> web.Response:
        self._auth(request, CALENDAR_WRITE)
        cal = self._calendar(request)
        body = await self._json_body(request)
        try:
            start = parse_rfc3339(body["start"]["dateTime"], "start.dateTime")
            end = parse_rfc3339(body["end"]["dateTime"], "end.dateTime")
        except (ValueError, KeyError, TypeError):
            raise GoogleError(400, "required", "Missing or bad start/end dateTime.") from None
        event_id = body.get("id")
        if event_id is not None:
            if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
                raise GoogleError(400, "invalid", "Invalid resource id value.")
            if event_id in cal.events:
                raise GoogleError(409, "duplicate", "The requested identifier already exists.")
        if end <= start:
            raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")
        event = self.sim.create(
            cal,
            str(body.get("summary", "")),
            start,
            end,
            organizer=self.sim.config.admin,
            event_id=event_id,
        )
        return web.json_response(event.json(cal.email))

    async def get_event(self, request: web.Request) -> web.Response:
        """events.get: the event, a deleted one too (``status: cancelled``); 404 ``notFound``."""
        self._auth(request, CALENDAR_SCOPES)
        cal = self._calendar(request)
        event = cal.events.get(request.match_info["event"])
        if event is None:
            raise GoogleError(404, "notFound", "Not Found")
        return web.json_response(event.json(cal.email))

    async def delete_event(self, request: web.Request) -> web.Response:
        """events.delete: 204 with an empty body; 410 ``deleted`` when it already was, 404
        ``notFound`` for an id the calendar never had. The tombstone stays for sync."""
        self._auth(request, CALENDAR_WRITE)
        cal = self._calendar(request)
        event = cal.events.get(request.match_info["event"])
        if event is None:
            raise GoogleError(404, "notFound", "Not Found")
        if event.status == "cancelled":
            raise GoogleError(410, "deleted", "Resource has been deleted")
        self.sim.cancel_event(cal.email, event.id)
        return web.Response(status=204)

    async def watch(self, request: web.Request) -> web.Response:
        self._auth(request, CALENDAR_SCOPES)
        cal = self._calendar(request)
        body = await self._json_body(request)
        channel = await self.sim.channels.open(cal, body)
        return web.json_response(channel.json())

    async def stop_channel(self, request: web.Request) -> web.Response:
        self._auth(request, CALENDAR_SCOPES)
        body = await self._json_body(request)
        self.sim.channels.stop(str(body.get("id", "")), str(body.get("resourceId", "")))
        return web.Response(status=204)


def new_event_id() -> str:
    return uuid.uuid4().hex  # hex is a subset of base32hex
