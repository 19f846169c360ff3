"""The HTTP face of the fake: identity routes and Graph v1.0 routes on one aiohttp app.

Every Graph request passes, in order: the bearer token (401 ``InvalidAuthenticationToken``),
the fault table, the per-mailbox concurrency limit (4 in flight, then 429
``ApplicationThrottled``: "Application is over its MailboxConcurrency limit."), the app's
permissions (403 ``ErrorAccessDenied``), then the handler.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from .delta import Cursor, Removed, Round, SyncState, compute_round
from .directory import spec_from_graph
from .identity import IdentityError, TokenClaims
from .model import EventType, GraphError, Instance, Mailbox, event_json, parse_query_datetime, zone

if TYPE_CHECKING:
    from .sim import GraphSim

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLAIMS = web.RequestKey("claims", TokenClaims)
IDENTITY_ROUTES = {"token", "discovery", "keys", "instance"}
READ = ("Calendars.Read", "Calendars.ReadWrite", "Calendars.ReadBasic")
WRITE = ("Calendars.ReadWrite",)
PLACES = ("Place.Read.All", "Place.ReadWrite.All")
DEFAULT_PAGE = 10
PLACES_PAGE = 100
MAX_PAGE = 1000
# What an event that left the range carries in the null-field form (every field null).
_NULLED_FIELDS = (
    "subject",
    "start",
    "end",
    "organizer",
    "iCalUId",
    "isCancelled",
    "isAllDay",
    "sensitivity",
    "onlineMeeting",
    "type",
    "seriesMasterId",
)


def graph_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())},
        }
    }
    return web.json_response(body, status=status, headers=headers)


def _prefer(request: web.Request) -> dict[str, str]:
    """``Prefer: odata.maxpagesize=2, outlook.timezone="UTC"`` -> {name: value}."""
    out: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                out[name.strip().lower()] = value.strip().strip('"')
    return out


ROUTE_TAGS = {
    "/{tenant}/oauth2/v2.0/token": "token",
    "/{tenant}/v2.0/.well-known/openid-configuration": "discovery",
    "/{tenant}/discovery/v2.0/keys": "keys",
    "/common/discovery/instance": "instance",
    "/v1.0/places/microsoft.graph.room": "places",
    "/v1.0/users/{mailbox}/calendarView": "calendar_view",
    "/v1.0/users/{mailbox}/calendarView/delta": "delta",
    "/v1.0/users/{mailbox}/events": "events",
    "/v1.0/users/{mailbox}/events/{id}": "event",
    "/v1.0/users/{mailbox}/events/{id}/cancel": "event",
    "/v1.0/subscriptions": "subscriptions",
    "/v1.0/subscriptions/{id}": "subscription",
    "/v1.0/subscriptions/{id}/reauthorize": "subscription",
}


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return ROUTE_TAGS.get(resource.canonical if resource is not None else "", "unknown")


def _tags(request: web.Request) -> frozenset[str]:
    name = _route(request)
    tags = {name, "graph" if name not in IDENTITY_ROUTES else "identity"}
    if "$deltatoken" in request.query or "$skiptoken" in request.query:
        tags.add("delta_link")
    return frozenset(tags)


class GraphApi:
    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim
        self.in_flight: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.app = web.Application(middlewares=[self._middleware])
        self.app.add_routes(
            [
                web.post("/{tenant}/oauth2/v2.0/token", self.token),
                web.get("/{tenant}/v2.0/.well-known/openid-configuration", self.discovery),
                web.get("/{tenant}/discovery/v2.0/keys", self.keys),
                web.get("/common/discovery/instance", self.instance),
                web.get("/v1.0/places/microsoft.graph.room", self.places),
                web.get("/v1.0/users/{mailbox}/calendarView", self.calendar_view),
                web.get("/v1.0/users/{mailbox}/calendarView/delta", self.delta),
                web.post("/v1.0/users/{mailbox}/events", self.create_event),
                web.get("/v1.0/users/{mailbox}/events/{id}", self.get_event),
                web.patch("/v1.0/users/{mailbox}/events/{id}", self.patch_event),
                web.delete("/v1.0/users/{mailbox}/events/{id}", self.delete_event),
                web.post("/v1.0/users/{mailbox}/events/{id}/cancel", self.cancel_event),
                web.post("/v1.0/subscriptions", self.create_subscription),
                web.get("/v1.0/subscriptions", self.list_subscriptions),
                web.get("/v1.0/subscriptions/{id}", self.get_subscription),
                web.patch("/v1.0/subscriptions/{id}", self.patch_subscription),
                web.delete("/v1.0/subscriptions/{id}", self.delete_subscription),
                web.post("/v1.0/subscriptions/{id}/reauthorize", self.reauthorize),
            ]
        )

    # ---- the pipeline every request goes through ---------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        tags = _tags(request)
        name = _route(request)
        self.requests[name] += 1
        mailbox = request.match_info.get("mailbox")
        claims: TokenClaims | None = None
        if "graph" in tags:
            try:
                claims = self.sim.identity.verify(request.headers.get("Authorization"))
            except ValueError as exc:
                return graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    str(exc),
                    **{
                        "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.'
                        'microsoftonline.com/common/oauth2/authorize", '
                        'client_id="00000003-0000-0000-c000-000000000000"'
                    },
                )
        if mailbox is not None:
            try:
                mailbox = self.sim.directory.mailbox(mailbox).address
            except GraphError:
                pass
        key = (mailbox or "").lower()
        if mailbox is not None and self.in_flight[key] >= self.sim.config.mailbox_concurrency:
            return graph_error(
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                **{"Retry-After": "1"},
            )
        if mailbox is not None:
            self.in_flight[key] += 1  # a slow or held request holds its slot, as in Outlook
        fault = self.sim.faults.match(mailbox, tags)
        try:
            if fault is not None and fault.kind == "hold":
                await fault.released.wait()
            elif fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            if fault is not None and fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(int(fault.retry_after))
                if "identity" in tags:
                    body = IdentityError(
                        fault.status,
                        fault.code or "temporarily_unavailable",
                        90033,
                        fault.message or "A transient error has occurred. Please try again.",
                    ).body()
                    return web.json_response(body, status=fault.status, headers=headers)
                return graph_error(
                    fault.status,
                    fault.code or "InjectedFault",
                    fault.message or f"injected {fault.status}",
                    **headers,
                )
            if claims is not None:
                request[CLAIMS] = claims
            return await handler(request)
        except GraphError as exc:
            return graph_error(exc.status, exc.code, exc.message)
        finally:
            if mailbox is not None:
                self.in_flight[key] -= 1
                if self.in_flight[key] <= 0:
                    del self.in_flight[key]

    def _allow(self, request: web.Request, roles: tuple[str, ...], mailbox: Mailbox | None) -> None:
        claims: TokenClaims = request[CLAIMS]
        if not any(r in claims.roles for r in roles):
            raise GraphError(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and "
                f"try again. (needs one of {', '.join(roles)})",
            )
        app = self.sim.identity.apps.get(claims.client_id)
        if (
            mailbox is not None
            and app is not None
            and mailbox.address.lower() in app.denied_mailboxes
        ):
            raise GraphError(
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: [RAOP] : Blocked by "
                "tenant configured AppOnly AccessPolicy settings.",
            )

    def _box(self, request: web.Request, roles: tuple[str, ...]) -> Mailbox:
        box = self.sim.directory.mailbox(request.match_info["mailbox"])
        self._allow(request, roles, box)
        return box

    def _base(self, request: web.Request) -> str:
        return self.sim.url

    # ---- identity ----------------------------------------------------------------------------

    def _endpoint_urls(self) -> set[str]:
        names = (self.sim.identity.tenant_id, *self.sim.identity.domains)
        return {f"{self.sim.url}/{t}/oauth2/v2.0/token" for t in names}

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        try:
            answer = self.sim.identity.token(
                request.match_info["tenant"], form, self._endpoint_urls()
            )
        except IdentityError as exc:
            return web.json_response(exc.body(), status=exc.status)
        return web.json_response(answer, headers={"Cache-Control": "no-store, no-cache"})

    async def discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        try:
            self.sim.identity.check_tenant(tenant)
        except IdentityError as exc:
            return web.json_response(exc.body(), status=exc.status)
        return web.json_response(self.sim.identity.discovery(self.sim.url, tenant))

    async def keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.identity.jwks())

    async def instance(self, request: web.Request) -> web.Response:
        host = self.sim.url.split("://", 1)[1]
        return web.json_response(
            {
                "tenant_discovery_endpoint": f"{self.sim.url}/{self.sim.identity.tenant_id}"
                "/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    # ---- places ------------------------------------------------------------------------------

    def _page_args(self, request: web.Request, default: int) -> tuple[int, int]:
        try:
            top = int(request.query.get("$top", default))
            skip = int(request.query.get("$skip", 0))
        except ValueError:
            raise GraphError(400, "BadRequest", "$top and $skip must be integers.") from None
        if top < 1 or top > MAX_PAGE or skip < 0:
            raise GraphError(400, "BadRequest", f"$top must be 1..{MAX_PAGE}; $skip >= 0.")
        return top, skip

    async def places(self, request: web.Request) -> web.Response:
        self._allow(request, PLACES, None)
        top, skip = self._page_args(request, PLACES_PAGE)
        rooms = self.sim.directory.rooms()
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#places/microsoft.graph.room",
            "value": [r.room_json() for r in rooms[skip : skip + top]],
        }
        if skip + top < len(rooms):
            query = urlencode({"$top": top, "$skip": skip + top})
            body["@odata.nextLink"] = f"{self.sim.graph_url}/places/microsoft.graph.room?{query}"
        return web.json_response(body)

    # ---- calendarView and its delta ----------------------------------------------------------

    def _zone(self, request: web.Request) -> tuple[ZoneInfo, str, dict[str, str]]:
        wanted = _prefer(request).get("outlook.timezone")
        if not wanted:
            return ZoneInfo("UTC"), "UTC", {}
        return zone(wanted), wanted, {"Preference-Applied": f'outlook.timezone="{wanted}"'}

    def _render(
        self, box: Mailbox, item: Instance | Removed, tz: ZoneInfo, label: str
    ) -> dict[str, Any]:
        if isinstance(item, Removed):
            if item.left_range and self.sim.config.out_of_range_as_nulls:
                return {"id": item.id, **dict.fromkeys(_NULLED_FIELDS)}
            return {"id": item.id, "@removed": {"reason": "deleted"}}
        return event_json(item, tz, label, box.address)

    async def calendar_view(self, request: web.Request) -> web.Response:
        box = self._box(request, READ)
        start = parse_query_datetime(request.query.get("startDateTime"), "startDateTime")
        end = parse_query_datetime(request.query.get("endDateTime"), "endDateTime")
        top, skip = self._page_args(request, DEFAULT_PAGE)
        tz, label, headers = self._zone(request)
        rows = box.instances(start, end)
        body: dict[str, Any] = {
            "@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{box.address}')"
            "/calendarView",
            "value": [event_json(i, tz, label, box.address) for i in rows[skip : skip + top]],
        }
        if skip + top < len(rows):
            query = urlencode(
                {
                    "startDateTime": start.isoformat().replace("+00:00", "Z"),
                    "endDateTime": end.isoformat().replace("+00:00", "Z"),
                    "$top": top,
                    "$skip": skip + top,
                }
            )
            body["@odata.nextLink"] = (
                f"{self.sim.graph_url}/users/{box.address}/calendarView?{query}"
            )
        return web.json_response(body, headers=headers)

    async def delta(self, request: web.Request) -> web.Response:
        box = self._box(request, READ)
        states = self.sim.sync_states
        skip = request.query.get("$skiptoken")
        delta_token = request.query.get("$deltatoken")
        if skip or delta_token:
            state = states.get(skip or delta_token or "")
            if state is None or state.mailbox != box.address.lower():
                raise GraphError(
                    410,
                    "SyncStateNotFound",
                    "The sync state generation is not found: "
                    "start a new synchronization round without a token.",
                )
            if isinstance(state, SyncState):
                items, ends_in = compute_round(box, state.start, state.end, state)
                cursor = Cursor(Round(box.address.lower(), tuple(items), ends_in), 0)
            else:
                cursor = state
        else:
            start = parse_query_datetime(request.query.get("startDateTime"), "startDateTime")
            end = parse_query_datetime(request.query.get("endDateTime"), "endDateTime")
            if end <= start:
                raise GraphError(
                    400, "ErrorInvalidParameter", "endDateTime must be after startDateTime."
                )
            items, ends_in = compute_round(box, start, end, None)
            cursor = Cursor(Round(box.address.lower(), tuple(items), ends_in), 0)
        prefer = _prefer(request)
        headers: dict[str, str] = {}
        page = DEFAULT_PAGE
        if "odata.maxpagesize" in prefer:
            try:
                page = max(1, min(MAX_PAGE, int(prefer["odata.maxpagesize"])))
            except ValueError:
                raise GraphError(
                    400, "BadRequest", "odata.maxpagesize must be an integer."
                ) from None
            headers["Preference-Applied"] = f"odata.maxpagesize={page}"
        tz, label, tz_headers = self._zone(request)
        if tz_headers:
            headers["Preference-Applied"] = ", ".join(
                p
                for p in (headers.get("Preference-Applied"), tz_headers["Preference-Applied"])
                if p
            )
        round_ = cursor.round
        chunk = round_.items[cursor.position : cursor.position + page]
        position = cursor.position + len(chunk)
        base = f"{self.sim.graph_url}/users/{box.address}/calendarView/delta"
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(event)",
            "value": [self._render(box, item, tz, label) for item in chunk],
        }
        if position < len(round_.items):
            # the tokens are URL-safe already; Graph's links show "$skiptoken=" unescaped
            body["@odata.nextLink"] = f"{base}?$skiptoken={states.put(Cursor(round_, position))}"
        else:
            body["@odata.deltaLink"] = f"{base}?$deltatoken={states.put(round_.ends_in)}"
        return web.json_response(body, headers=headers)

    # ---- events ------------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        # The reference lists "Content-Type: application/json. Required." for every body, and
        # the errors table's 415 is "the content type of the request is a format that is not
        # supported": a body sent without it is refused, not guessed at.
        if request.content_type != "application/json":
            raise GraphError(
                415,
                "UnsupportedMediaType",
                f"Content-Type {request.headers.get('Content-Type') or '(none)'} is not "
                "supported; send Content-Type: application/json.",
            )
        try:
            body = await request.json()
        except ValueError:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from None
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
        return body

    def _one(self, request: web.Request, box: Mailbox, event_id: str) -> dict[str, Any]:
        event, day = self.sim.directory.find(box, event_id)
        tz, label, _ = self._zone(request)
        if day is None:
            kind: EventType = "seriesMaster" if event.recurrence is not None else "singleInstance"
            inst = Instance(event, event.id, event.start, event.end, kind, None)
        else:
            inst = next(
                i
                for i in event.instances(event.start, event.end.replace(year=9000))
                if i.id == event_id
            )
        return event_json(inst, tz, label, box.address)

    async def create_event(self, request: web.Request) -> web.Response:
        box = self._box(request, WRITE)
        spec = spec_from_graph(box, await self._json(request))
        event, _ = self.sim.directory.create(box, spec)
        body = self._one(request, box, event.id)
        location = f"{self.sim.graph_url}/users/{box.id}/events/{event.id}"
        return web.json_response(body, status=201, headers={"Location": location})

    async def get_event(self, request: web.Request) -> web.Response:
        box = self._box(request, READ)
        return web.json_response(self._one(request, box, request.match_info["id"]))

    async def patch_event(self, request: web.Request) -> web.Response:
        box = self._box(request, WRITE)
        event = self.sim.directory.update(box, request.match_info["id"], await self._json(request))
        return web.json_response(self._one(request, box, event.id))

    async def delete_event(self, request: web.Request) -> web.Response:
        box = self._box(request, WRITE)
        self.sim.directory.delete(box, request.match_info["id"])
        return web.Response(status=204)

    async def cancel_event(self, request: web.Request) -> web.Response:
        # Graph's cancel is the organizer's: the event leaves the organizer's calendar.
        box = self._box(request, WRITE)
        event, _ = self.sim.directory.find(box, request.match_info["id"])
        if event.organizer_address.lower() != box.address.lower():
            raise GraphError(
                400,
                "ErrorAccessDenied",
                "Your request can't be completed. You need to be an organizer to cancel a meeting.",
            )
        self.sim.directory.delete(box, request.match_info["id"])
        return web.Response(status=202)

    # ---- subscriptions -----------------------------------------------------------------------

    async def create_subscription(self, request: web.Request) -> web.Response:
        self._allow(request, READ, None)
        claims: TokenClaims = request[CLAIMS]
        sub = await self.sim.subscriptions.create(await self._json(request), claims.client_id)
        return web.json_response(sub.json(), status=201)

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        subs = self.sim.subscriptions.active()
        return web.json_response({"value": [s.json() for s in subs]})

    async def get_subscription(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.subscriptions.get(request.match_info["id"]).json())

    async def patch_subscription(self, request: web.Request) -> web.Response:
        sub = self.sim.subscriptions.renew(request.match_info["id"], await self._json(request))
        return web.json_response(sub.json())

    async def delete_subscription(self, request: web.Request) -> web.Response:
        self.sim.subscriptions.delete(request.match_info["id"])
        return web.Response(status=204)

    async def reauthorize(self, request: web.Request) -> web.Response:
        self.sim.subscriptions.reauthorize(request.match_info["id"])
        return web.Response(status=204)
