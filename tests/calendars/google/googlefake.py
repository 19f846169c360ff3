"""A minimal Google OAuth token endpoint + Admin Directory + Calendar API, over real HTTPS on
127.0.0.1, for these tests.

Written from Google's documented payloads (the project's full simulator is built separately):

- ``POST /token``: the JWT-bearer grant (``grant_type=urn:ietf:params:oauth:grant-type:jwt-
  bearer``, ``assertion``). The assertion's RS256 signature is checked with the service
  account's public key, and its ``iss``, ``sub``, ``scope`` and ``aud`` (always
  ``https://oauth2.googleapis.com/token``, the docs say) are checked; a wrong one
  is refused the way Google refuses (``invalid_grant``, ``unauthorized_client``).
- ``GET /admin/directory/v1/customer/{customer}/resources/calendars``: ``items`` of calendar
  resources, paged by ``pageToken``/``nextPageToken``.
- ``GET /calendar/v3/calendars/{calendarId}/events``: a full sync (``timeMin``/``timeMax``,
  events overlapping the range, not cancelled) or an incremental one (``syncToken``: every
  event changed since, cancelled ones as ``status: cancelled`` with little more than the id),
  paged by ``maxResults`` through ``pageToken``; only the last page carries
  ``nextSyncToken``. A ``syncToken`` together with ``timeMin``/``timeMax``/``updatedMin``/
  ``orderBy`` is a 400, and a forgotten token a 410 ``fullSyncRequired``, as the docs say.

Faults are scripted per request: ``fake.script("/events", Reply(429, rate_limited(429)))``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import jwt
from aiohttp import web

from edge_agent import jsoncodec

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The OAuth docs: "When making an access token request this value is always
# https://oauth2.googleapis.com/token", wherever the token endpoint is reached.
AUDIENCE = "https://oauth2.googleapis.com/token"
CLIENT_EMAIL = "edge-agent@rooms-project.iam.gserviceaccount.com"
ADMIN = "admin@example.com"
SCOPES = {
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/admin.directory.resource.calendar.readonly",
}
_NOT_WITH_SYNC_TOKEN = ("timeMin", "timeMax", "updatedMin", "orderBy", "q", "iCalUID")


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


def google_error(status: int, reason: str, message: str, domain: str = "global") -> dict[str, Any]:
    """The error guide's JSON shape."""
    return {
        "error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }


def rate_limited(status: int = 403, reason: str = "rateLimitExceeded") -> dict[str, Any]:
    return google_error(status, reason, "Rate Limit Exceeded", "usageLimits")


def google_event(
    eid: str, start: str, end: str, summary: str = "Meeting", **extra: Any
) -> dict[str, Any]:
    """An Event resource as events.list shows it (trimmed). ``start``/``end``: an RFC 3339
    ``dateTime``, or ``yyyy-mm-dd`` for an all-day event."""

    def when(v: str) -> dict[str, str]:
        return {"date": v} if len(v) == 10 else {"dateTime": v, "timeZone": "Europe/Oslo"}

    ev: dict[str, Any] = {
        "kind": "calendar#event",
        "etag": f'"{eid}-etag"',
        "id": eid,
        "status": "confirmed",
        "htmlLink": f"https://www.google.com/calendar/event?eid={eid}",
        "summary": summary,
        "creator": {"email": "ada@example.com"},
        "organizer": {"email": "ada@example.com", "displayName": "Ada Lovelace"},
        "start": when(start),
        "end": when(end),
        "iCalUID": f"{eid}@google.com",
        "sequence": 0,
        "visibility": "default",
        "hangoutLink": f"https://meet.google.com/{eid}-abc-def",
        "conferenceData": {
            "entryPoints": [
                {"entryPointType": "video", "uri": f"https://meet.google.com/{eid}-abc-def"}
            ],
            "conferenceSolution": {"key": {"type": "hangoutsMeet"}, "name": "Google Meet"},
            "conferenceId": f"{eid}-abc-def",
        },
    }
    ev.update(extra)
    return ev


class FakeGoogle:
    def __init__(self, ssl_context: ssl.SSLContext, public_key_pem: bytes) -> None:
        self._ssl = ssl_context
        self.public_key_pem = public_key_pem
        self.client_email = CLIENT_EMAIL
        self.subject = ADMIN
        self.zone = ZoneInfo("Europe/Oslo")  # the calendars' zone, for all-day ranges
        self.rooms: list[dict[str, Any]] = []
        self.rooms_page = 2
        self.events: dict[str, dict[str, dict[str, Any]]] = {}  # calendar -> id -> event
        self.changed: dict[str, dict[str, int]] = {}  # calendar -> id -> seq of last change
        self.seq = 0
        self.sync_tokens: dict[str, tuple[str, int]] = {}  # token -> (calendar, seq)
        self.valid_tokens: set[str] = set()
        self.grants: list[dict[str, Any]] = []  # verified assertion claims
        self.issued = 0
        self.requests: list[Seen] = []
        self._scripts: list[tuple[str, Reply]] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ control

    @property
    def token_uri(self) -> str:
        return f"{self.base}/token"

    @property
    def calendar_url(self) -> str:
        return f"{self.base}/calendar/v3"

    def script(self, path_contains: str, *replies: Reply) -> None:
        for r in replies:
            self._scripts.append((path_contains, r))

    def put(self, calendar: str, ev: dict[str, Any]) -> None:
        self.seq += 1
        self.events.setdefault(calendar.lower(), {})[ev["id"]] = ev
        self.changed.setdefault(calendar.lower(), {})[ev["id"]] = self.seq

    def cancel(self, calendar: str, eid: str) -> None:
        """Delete an event: Google keeps it as ``status: cancelled`` for incremental syncs."""
        self.seq += 1
        cal = calendar.lower()
        old = self.events[cal][eid]
        self.events[cal][eid] = {
            "kind": "calendar#event",
            "id": eid,
            "status": "cancelled",
            "etag": old["etag"],
        }
        self.changed[cal][eid] = self.seq

    def purge(self, calendar: str, eid: str) -> None:
        """Delete an event with no tombstone left (what a full resync cannot report)."""
        self.seq += 1
        self.events[calendar.lower()].pop(eid, None)
        self.changed[calendar.lower()].pop(eid, None)

    def forget_sync_tokens(self) -> None:
        self.sync_tokens.clear()

    def of(self, part: str) -> list[Seen]:
        return [s for s in self.requests if part in s.path]

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get(
            "/admin/directory/v1/customer/{customer}/resources/calendars", self._resources
        )
        app.router.add_get("/calendar/v3/calendars/{calendar}/events", self._events)
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
            return self._json(401, google_error(401, "authError", "Invalid Credentials"))
        return None

    async def _token(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        scripted = self._scripted(request.path)
        if scripted is not None:
            return self._json(scripted.status, scripted.body or {})
        if seen.form.get("grant_type") != JWT_BEARER:
            return self._json(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(
                seen.form.get("assertion", ""),
                self.public_key_pem,
                algorithms=["RS256"],
                audience=AUDIENCE,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError as e:
            return self._json(
                400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {e}"}
            )
        if claims.get("iss") != self.client_email:
            return self._json(400, {"error": "invalid_grant", "error_description": "Invalid iss"})
        if claims.get("sub") != self.subject:
            return self._json(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "Client is unauthorized to retrieve access tokens "
                    "using this method, or client not authorized for any of the scopes "
                    "requested.",
                },
            )
        if set(str(claims.get("scope", "")).split()) != SCOPES:
            return self._json(400, {"error": "invalid_scope", "error_description": "scope"})
        self.grants.append(claims)
        self.issued += 1
        token = f"ya29.fake-{self.issued}"
        self.valid_tokens.add(token)
        return self._json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def _resources(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (denied := self._authorized(request)) is not None:
            return denied
        offset = int(request.query.get("pageToken", "0"))
        page = self.rooms[offset : offset + self.rooms_page]
        body: dict[str, Any] = {
            "kind": "admin#directory#resources#calendars#calendarResourcesList",
            "etag": '"resources-etag"',
            "items": page,
        }
        if offset + self.rooms_page < len(self.rooms):
            body["nextPageToken"] = str(offset + self.rooms_page)
        return self._json(200, body)

    def _bound(self, v: dict[str, Any]) -> datetime:
        if "dateTime" in v:
            return datetime.fromisoformat(v["dateTime"]).astimezone(UTC)
        return datetime.combine(date.fromisoformat(v["date"]), time(), self.zone).astimezone(UTC)

    async def _events(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (denied := self._authorized(request)) is not None:
            return denied
        q = request.query
        cal = request.match_info["calendar"].lower()
        if cal not in self.events:
            return self._json(404, google_error(404, "notFound", "Not Found"))
        size = int(q.get("maxResults", "250"))
        sync = q.get("syncToken")
        if sync is not None:
            if any(k in q for k in _NOT_WITH_SYNC_TOKEN):
                return self._json(
                    400, google_error(400, "invalid", "Sync token cannot be used with filters")
                )
            known = self.sync_tokens.get(sync)
            if known is None or known[0] != cal:
                return self._json(
                    410,
                    google_error(
                        410,
                        "fullSyncRequired",
                        "Sync token is no longer valid, a full sync is required.",
                        "calendar",
                    ),
                )
            since = known[1]
            ids = sorted((s, eid) for eid, s in self.changed.get(cal, {}).items() if s > since)
            listed = [self.events[cal][eid] for _, eid in ids]
        else:
            t_min = datetime.fromisoformat(q["timeMin"]) if "timeMin" in q else None
            t_max = datetime.fromisoformat(q["timeMax"]) if "timeMax" in q else None
            listed = []
            for ev in self.events[cal].values():
                if ev.get("status") == "cancelled":
                    continue
                s, e = self._bound(ev["start"]), self._bound(ev["end"])
                if (t_max is None or s < t_max) and (t_min is None or e > t_min):
                    listed.append(ev)
        offset = int(q.get("pageToken", "0"))
        page = listed[offset : offset + size]
        body: dict[str, Any] = {
            "kind": "calendar#events",
            "summary": cal,
            "timeZone": "Europe/Oslo",
            "items": page,
        }
        if offset + size < len(listed):
            body["nextPageToken"] = str(offset + size)
        else:
            token = f"sync-{cal}-{self.seq}-{len(self.sync_tokens)}"
            self.sync_tokens[token] = (cal, self.seq)
            body["nextSyncToken"] = token
        return self._json(200, body)
