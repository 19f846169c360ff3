"""A minimal Microsoft identity platform + Graph, over real HTTPS on 127.0.0.1, for these tests.

Written from the docs' shapes (the project's full simulator is built separately): OpenID
discovery and the v2.0 token endpoint (client credentials); ``places/microsoft.graph.room``
paged with ``@odata.nextLink``; ``users/{mailbox}/calendarView/delta`` with a full round that
pages by ``odata.maxpagesize`` through ``$skiptoken`` links and ends with a ``$deltatoken``
``@odata.deltaLink``, later rounds giving only what changed (``@removed`` for deleted events and
for events that left the range). Faults are scripted per request: ``fake.script("delta",
Reply(429, retry_after="7"))``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from edge_agent import jsoncodec


@dataclass(slots=True)
class Reply:
    status: int
    body: Any = None
    retry_after: str | None = None


@dataclass(slots=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)


def graph_event(
    eid: str, start: str, end: str, subject: str = "Meeting", **extra: Any
) -> dict[str, Any]:
    """An event as the calendarView/delta example response shows it (trimmed)."""
    ev: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.event",
        "@odata.etag": f'W/"{eid}-etag"',
        "id": eid,
        "changeKey": f"{eid}-ck",
        "iCalUId": f"040000008200E00074C5B7101A82E008-{eid}",
        "subject": subject,
        "isAllDay": False,
        "isCancelled": False,
        "sensitivity": "normal",
        "start": {"dateTime": start + ".0000000", "timeZone": "UTC"},
        "end": {"dateTime": end + ".0000000", "timeZone": "UTC"},
        "organizer": {"emailAddress": {"name": "Ada Lovelace", "address": "ada@contoso.com"}},
        "onlineMeetingProvider": "teamsForBusiness",
        "onlineMeeting": {"joinUrl": f"https://teams.microsoft.com/l/meetup-join/{eid}"},
    }
    ev.update(extra)
    return ev


class FakeGraph:
    def __init__(self, ssl_context: ssl.SSLContext, tenant: str = "tenant-1") -> None:
        self.tenant = tenant
        self._ssl = ssl_context
        self.rooms: list[dict[str, Any]] = []
        self.rooms_page = 2
        # The base its links name (None: its own): Graph's own host, as behind a reverse proxy.
        self.link_url: str | None = None
        self.events: dict[str, dict[str, dict[str, Any]]] = {}  # mailbox -> id -> event
        self.log: list[tuple[int, str, str]] = []  # (version, mailbox, id) change log
        self.version = 0
        self.valid_tokens: set[str] = set()
        self.issued = 0
        self.requests: list[Seen] = []
        self._scripts: list[tuple[str, Reply]] = []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.hold = asyncio.Event()  # calendar answers wait on it when holding is on
        self.hold.set()
        self._arrivals = asyncio.Condition()
        self.base = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ control

    def script(self, path_contains: str, *replies: Reply) -> None:
        for r in replies:
            self._scripts.append((path_contains, r))

    def put(self, mailbox: str, ev: dict[str, Any]) -> None:
        self.version += 1
        self.events.setdefault(mailbox.lower(), {})[ev["id"]] = ev
        self.log.append((self.version, mailbox.lower(), ev["id"]))

    def delete(self, mailbox: str, eid: str) -> None:
        self.version += 1
        self.events[mailbox.lower()].pop(eid)
        self.log.append((self.version, mailbox.lower(), eid))

    def revoke_tokens(self) -> None:
        self.valid_tokens.clear()

    @property
    def graph_url(self) -> str:
        return f"{self.base}/v1.0"

    @property
    def authority_url(self) -> str:
        return self.base

    async def wait_in_flight(self, mailbox: str, n: int) -> None:
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self.in_flight.get(mailbox.lower(), 0) >= n)

    def of(self, part: str) -> list[Seen]:
        return [s for s in self.requests if part in s.path]

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/v1.0/places/microsoft.graph.room", self._places)
        app.router.add_get("/v1.0/users/{mailbox}/calendarView/delta", self._delta)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _scripted(self, path: str) -> Reply | None:
        for i, (part, r) in enumerate(self._scripts):
            if part in path:
                del self._scripts[i]
                return r
        return None

    @staticmethod
    def _json(status: int, body: Any, retry_after: str | None = None) -> web.Response:
        headers = {"Retry-After": retry_after} if retry_after else None
        return web.Response(
            status=status,
            body=jsoncodec.dumpb(body),
            content_type="application/json",
            headers=headers,
        )

    @staticmethod
    def _error(status: int, code: str, message: str = "") -> dict[str, Any]:
        return {"error": {"code": code, "message": message or code}}

    async def _record(self, request: web.Request) -> Seen:
        form = dict(await request.post()) if request.method == "POST" else {}
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            {k: str(v) for k, v in form.items()},
        )
        self.requests.append(seen)
        return seen

    def _authorized(self, request: web.Request) -> web.Response | None:
        scripted = self._scripted(request.path_qs)
        if scripted is not None:
            return self._json(scripted.status, scripted.body or {}, scripted.retry_after)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return self._json(401, self._error(401, "InvalidAuthenticationToken", "expired"))
        return None

    async def _openid(self, request: web.Request) -> web.Response:
        await self._record(request)
        t = request.match_info["tenant"]
        return self._json(
            200,
            {
                "token_endpoint": f"{self.base}/{t}/oauth2/v2.0/token",
                "authorization_endpoint": f"{self.base}/{t}/oauth2/v2.0/authorize",
                "issuer": f"{self.base}/{t}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            },
        )

    async def _token(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        scripted = self._scripted(request.path)
        if scripted is not None:
            return self._json(scripted.status, scripted.body or {})
        if seen.form.get("client_secret") != "s3cret" and "client_assertion" not in seen.form:
            return self._json(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret.",
                },
            )
        self.issued += 1
        tok = f"tok-{self.issued}"
        self.valid_tokens.add(tok)
        return self._json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": tok})

    async def _places(self, request: web.Request) -> web.Response:
        await self._record(request)
        denied = self._authorized(request)
        if denied is not None:
            return denied
        skip = int(request.query.get("$skip", "0"))
        page = self.rooms[skip : skip + self.rooms_page]
        body: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#places/microsoft.graph.room",
            "value": page,
        }
        if skip + self.rooms_page < len(self.rooms):
            body["@odata.nextLink"] = (
                f"{self.link_url or self.graph_url}/places/microsoft.graph.room"
                f"?$skip={skip + self.rooms_page}"
            )
        return self._json(200, body)

    async def _delta(self, request: web.Request) -> web.Response:
        await self._record(request)
        mailbox = request.match_info["mailbox"].lower()
        self.in_flight[mailbox] = self.in_flight.get(mailbox, 0) + 1
        self.max_in_flight[mailbox] = max(
            self.max_in_flight.get(mailbox, 0), self.in_flight[mailbox]
        )
        async with self._arrivals:
            self._arrivals.notify_all()
        try:
            await self.hold.wait()
            denied = self._authorized(request)
            if denied is not None:
                return denied
            return self._delta_page(request, mailbox)
        finally:
            self.in_flight[mailbox] -= 1

    def _delta_page(self, request: web.Request, mailbox: str) -> web.Response:
        prefer = request.headers.get("Prefer", "")
        size = 10
        for part in prefer.split(","):
            if part.strip().startswith("odata.maxpagesize="):
                size = int(part.strip().split("=", 1)[1])
        q = request.query
        base = self.link_url or self.graph_url
        self_url = f"{base}/users/{quote(mailbox, safe='@')}/calendarView/delta"
        if "$skiptoken" in q:
            since, offset, start, end = q["$skiptoken"].split("~")
        elif "$deltatoken" in q:
            since, start, end = q["$deltatoken"].split("~")
            offset = "0"
        else:
            since, offset, start, end = "-1", "0", q["startDateTime"], q["endDateTime"]
        lo, hi = start[:19], end[:19]

        def in_range(ev: dict[str, Any]) -> bool:
            return bool(ev["start"]["dateTime"][:19] < hi and ev["end"]["dateTime"][:19] > lo)

        evs = self.events.get(mailbox, {})
        if since == "-1":
            items: list[dict[str, Any]] = [e for e in evs.values() if in_range(e)]
        else:
            changed = sorted({eid for v, mb, eid in self.log if mb == mailbox and v > int(since)})
            items = []
            for eid in changed:
                ev = evs.get(eid)
                if ev is not None and in_range(ev):
                    items.append(ev)
                else:
                    items.append(
                        {
                            "@odata.type": "#microsoft.graph.event",
                            "id": eid,
                            "@removed": {"reason": "deleted"},
                        }
                    )
        off = int(offset)
        page = items[off : off + size]
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(event)",
            "value": page,
        }
        if off + size < len(items):
            body["@odata.nextLink"] = f"{self_url}?$skiptoken={since}~{off + size}~{start}~{end}"
        else:
            body["@odata.deltaLink"] = f"{self_url}?$deltatoken={self.version}~{start}~{end}"
        return self._json(200, body)
