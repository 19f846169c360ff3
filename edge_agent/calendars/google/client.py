"""Google Directory and Calendar API calls for room calendars, on a caller's httpx client.

What Google's docs fix, and this module honours:

- ``GET {directory_url}/admin/directory/v1/customer/{customer}/resources/calendars`` lists the
  resource calendars; every ``nextPageToken`` is followed (scope
  ``admin.directory.resource.calendar.readonly``). A room is ``resourceEmail`` (its calendar
  id) and ``resourceName``.
- ``GET {calendar_url}/calendars/{calendarId}/events``: a full sync with ``timeMin``,
  ``timeMax`` and ``singleEvents=true`` (recurring events expanded into instances); pages by
  ``pageToken`` until the last page, the only one carrying ``nextSyncToken``. An incremental
  sync sends ``syncToken`` and none of the filters that cannot go with it (``timeMin``,
  ``timeMax``, ``updatedMin``, ``orderBy``, ``q``, ``iCalUID``); the rest of the query
  (``singleEvents``, ``maxResults``) stays the same as the full sync's, as the sync guide asks.
  Events outside the window come back then: the sync logic drops them.
- 410 Gone (``fullSyncRequired``): the token is dead, :class:`ResyncRequired`.
- 403/429 ``rateLimitExceeded``/``userRateLimitExceeded``: exponential backoff with jitter
  (the one :class:`~edge_agent.backoff.Backoff`), honouring a ``Retry-After`` when given; 5xx
  and an unreachable server likewise. 401: the token is renewed once, then
  :class:`GoogleAuthError`. Other 403s name the scope or the sharing to fix.
- The per-user quota: every request first takes a slot of the impersonated subject's
  :class:`~edge_agent.calendars.ratelimit.RequestRateLimiter` (retries too: a retry is a request).

Bounded: a body above ``max_body_bytes`` and a chain above ``max_pages`` are refused (an
error, never a silently truncated listing, which would read as deletions).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.auth import TokenSource
from edge_agent.calendars.google.auth import CALENDAR_SCOPE, DELEGATION_HINT, DIRECTORY_SCOPE
from edge_agent.calendars.google.errors import (
    CalendarNotFound,
    GoogleAuthError,
    GooglePermissionError,
    GoogleRequestError,
    GoogleUnavailable,
    ResyncRequired,
)
from edge_agent.calendars.http import TOO_LARGE, bounded_get
from edge_agent.calendars.ratelimit import RequestRateLimiter
from edge_agent.forward.webhook import parse_retry_after

__all__ = ["RATE_LIMIT_REASONS", "EventsRound", "GoogleClient", "GoogleRoom"]

log = structlog.get_logger(__name__)

RATE_LIMIT_REASONS = frozenset({"ratelimitexceeded", "userratelimitexceeded"})
_QUOTA_REASONS = frozenset({"quotaexceeded", "dailylimitexceeded"})  # retried next round
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_ROOM_CATEGORY = "CONFERENCE_ROOM"  # CalendarResource.resourceCategory of a room
_LEGACY_CATEGORY = "CATEGORY_UNKNOWN"
RETRY_BACKOFF = Backoff(initial=1.0, maximum=64.0)  # the error guide's 1, 2, 4 ... 64 s


@dataclass(frozen=True, slots=True)
class GoogleRoom:
    """A resource calendar from the directory: ``mailbox`` is its ``resourceEmail``."""

    mailbox: str
    display_name: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventsRound:
    """The ``items`` of every page of one events.list chain, in order, and the
    ``nextSyncToken`` of its last page (the next incremental call)."""

    values: list[Any]
    sync_token: str
    pages: int


class GoogleClient:
    """The Google calls the room poller needs, as one impersonated ``subject``. One instance
    serves every room; safe to share between tasks; every method is cancel-safe."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        subject: str,
        customer: str = "my_customer",
        directory_url: str = "https://admin.googleapis.com",
        calendar_url: str = "https://www.googleapis.com/calendar/v3",
        limiter: RequestRateLimiter | None = None,
        max_results: int = 250,
        directory_page_size: int = 500,
        max_pages: int = 500,
        max_body_bytes: int = 8 * 1024 * 1024,
        max_attempts: int = 6,
        request_timeout_s: float = 30.0,
        backoff: Backoff = RETRY_BACKOFF,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.subject = subject
        self._customer = customer
        self.directory_url = directory_url.rstrip("/")
        self.calendar_url = calendar_url.rstrip("/")
        self._limiter = limiter if limiter is not None else RequestRateLimiter()
        self._max_results = max_results
        self._directory_page_size = directory_page_size
        self._max_pages = max_pages
        self._max_body = max_body_bytes
        self._max_attempts = max_attempts
        self._timeout = request_timeout_s
        self._backoff = backoff
        self._sleep = sleep
        self._wall = wall  # only for a Retry-After given as an HTTP-date
        self._rng = rng

    @property
    def limiter(self) -> RequestRateLimiter:
        """The per-subject request limiter every call of this client takes a slot of; share it
        with whatever else calls Google as the same subject (watch channels, bookings)."""
        return self._limiter

    # ------------------------------------------------------------------ public calls

    async def list_rooms(self) -> list[GoogleRoom]:
        """Every room of ``customer`` (all pages): the resource calendars whose
        ``resourceCategory`` is ``CONFERENCE_ROOM``. The Directory lists equipment too
        ("Either CONFERENCE_ROOM or OTHER. Legacy data is set to CATEGORY_UNKNOWN.",
        CalendarResource): ``OTHER`` (projectors, cars) is skipped; ``CATEGORY_UNKNOWN`` or
        a missing category is kept (legacy rooms) and logged."""
        url = (
            f"{self.directory_url}/admin/directory/v1/customer/"
            f"{quote(self._customer, safe='')}/resources/calendars"
        )
        rooms: list[GoogleRoom] = []
        page_token: str | None = None
        pages = 0
        while True:
            pages += 1
            if pages > self._max_pages:
                raise GoogleRequestError(
                    "directory", f"the resource list has more than {self._max_pages} pages; refused"
                )
            params = {"maxResults": str(self._directory_page_size)}
            if page_token is not None:
                params["pageToken"] = page_token
            body = await self._get_json(url, params, subject="directory", kind="directory")
            for obj in _items(body, "directory"):
                mail = obj.get("resourceEmail") if isinstance(obj, dict) else None
                if not isinstance(mail, str) or "@" not in mail:
                    log.warning("resource without a resourceEmail skipped", item=str(obj)[:200])
                    continue
                category = obj.get("resourceCategory")
                if category not in (_ROOM_CATEGORY, _LEGACY_CATEGORY, None):
                    log.debug("resource that is not a room skipped", resource=mail, category=category)
                    continue
                if category != _ROOM_CATEGORY:
                    log.info(
                        "resource without a room category kept as a room (legacy data)",
                        resource=mail,
                        category=category,
                    )
                name = obj.get("resourceName")
                rid = obj.get("resourceId")
                rooms.append(
                    GoogleRoom(
                        mailbox=mail,
                        display_name=name if isinstance(name, str) else None,
                        resource_id=rid if isinstance(rid, str) else None,
                    )
                )
            page_token = _token(body, "nextPageToken", "directory")
            if page_token is None:
                return rooms

    async def list_events(
        self, room_id: str, calendar_id: str, bounds: WindowBounds, sync_token: str | None
    ) -> EventsRound:
        """One whole events.list chain for ``calendar_id``: incremental from ``sync_token``, or
        a full sync over ``bounds`` when it is None. Raises :class:`ResyncRequired` on 410."""
        url = f"{self.calendar_url}/calendars/{quote(calendar_id, safe='@')}/events"
        base = {"singleEvents": "true", "maxResults": str(self._max_results)}
        if sync_token is None:
            window = bounds.to_dict()
            base |= {"timeMin": str(window["start"]), "timeMax": str(window["end"])}
        else:
            base["syncToken"] = sync_token
        values: list[Any] = []
        page_token: str | None = None
        pages = 0
        while True:
            pages += 1
            if pages > self._max_pages:
                raise GoogleRequestError(
                    room_id,
                    f"calendar {calendar_id} gave more than {self._max_pages} pages in one round; "
                    "refused (lower horizon_days?)",
                )
            params = dict(base)
            if page_token is not None:
                params["pageToken"] = page_token
            body = await self._get_json(
                url, params, subject=room_id, kind="calendar", calendar_id=calendar_id
            )
            values.extend(_items(body, room_id))
            page_token = _token(body, "nextPageToken", room_id)
            if page_token is not None:
                continue
            done = _token(body, "nextSyncToken", room_id)
            if done is None:
                raise GoogleRequestError(
                    room_id,
                    f"events page of {calendar_id} has neither nextPageToken nor nextSyncToken; "
                    "the round cannot continue (a proxy rewriting the answer?)",
                )
            return EventsRound(values=values, sync_token=done, pages=pages)

    # ------------------------------------------------------------------ the request loop

    async def _get_json(
        self,
        url: str,
        params: dict[str, str],
        *,
        subject: str,
        kind: str,
        calendar_id: str | None = None,
    ) -> dict[str, Any]:
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire(self.subject)
            token = await self._tokens.token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            try:
                status, resp_headers, body = await bounded_get(
                    self._http,
                    url,
                    headers,
                    timeout_s=self._timeout,
                    max_body=self._max_body,
                    params=params,
                )
            except (httpx.TransportError, TimeoutError) as e:
                # TimeoutError: no whole answer within request_timeout_s (a slow trickle).
                status, resp_headers, body = 0, httpx.Headers(), f"{type(e).__name__}: {e}"
            if status == 200:
                return self._parse(body, subject)
            reason = _error_reason(body)
            low = (reason or "").lower()
            if status == 401:
                if renewed:
                    raise GoogleAuthError(
                        subject,
                        f"Google refused a freshly issued token (HTTP 401, {reason}); check "
                        f"that the service account may act as {self.subject}: {DELEGATION_HINT}",
                    )
                renewed = True
                attempt -= 1  # the renewal is not a retry of a failure
                await self._tokens.token(renew=True)
                continue
            if status == 410 and kind == "calendar":
                raise ResyncRequired(
                    subject,
                    f"Google dropped the sync token of {calendar_id} (HTTP 410, {reason}); "
                    "listing the window in full again",
                )
            throttled = status in (403, 429) and (low in RATE_LIMIT_REASONS or status == 429)
            if status == 403 and low in _QUOTA_REASONS:
                raise GoogleUnavailable(
                    subject,
                    f"Google's {reason} for the project (HTTP 403); retrying next round; raise "
                    "the Calendar API quota in the Google Cloud console if it persists",
                )
            if status == 403 and not throttled:
                raise _permission_error(subject, kind, calendar_id, reason, self.subject)
            if status == 404 and kind == "calendar":
                raise CalendarNotFound(
                    subject,
                    f"no calendar {calendar_id} for {self.subject} (HTTP 404, {reason}); check "
                    "the room's calendar address in config, and that the resource exists",
                )
            if throttled or status == 0 or status in _RETRY_STATUS:
                if attempt >= self._max_attempts:
                    what = (
                        f"rate-limited ({reason or status})"
                        if throttled
                        else (f"unreachable ({body[:200]})" if status == 0 else f"HTTP {status}")
                    )
                    raise GoogleUnavailable(
                        subject, f"Google {what} after {attempt} attempts; retrying next round"
                    )
                retry_after = parse_retry_after(resp_headers.get("retry-after"), self._wall())
                delay = self._backoff.delay_honouring(attempt, retry_after, self._rng)
                log.info(
                    "google retry", room=subject, status=status, reason=reason, delay_s=round(delay)
                )
                await self._sleep(delay)
                continue
            raise GoogleRequestError(
                subject, f"Google answered HTTP {status} ({reason or body[:200]}) to {kind} request"
            )

    def _parse(self, body: str, subject: str) -> dict[str, Any]:
        if body == TOO_LARGE:
            raise GoogleRequestError(
                subject, f"Google answer above {self._max_body} bytes refused (max_body_bytes)"
            )
        try:
            doc = jsoncodec.loads(body)
        except jsoncodec.JSONDecodeError as e:
            raise GoogleRequestError(subject, f"Google answered with invalid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise GoogleRequestError(subject, "Google answered with JSON that is not an object")
        return doc


def _items(body: dict[str, Any], subject: str) -> list[Any]:
    items = body.get("items", [])
    if not isinstance(items, list):
        raise GoogleRequestError(subject, "Google answer has 'items' that is not a list")
    return items


def _token(body: dict[str, Any], key: str, subject: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise GoogleRequestError(subject, f"{key} is not a string")
    return value


def _error_reason(body: str) -> str | None:
    """``error.errors[0].reason`` of Google's error JSON (the error guide's shape), else
    ``error.status``; None for a body that is not that JSON."""
    if not body.startswith("{"):
        return None
    try:
        doc = jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None
    errors = err.get("errors")
    if isinstance(errors, list):
        for e in errors:
            reason = e.get("reason") if isinstance(e, dict) else None
            if isinstance(reason, str):
                return reason
    status = err.get("status")
    return status if isinstance(status, str) else None


def _permission_error(
    subject: str, kind: str, calendar_id: str | None, reason: str | None, admin: str
) -> GooglePermissionError:
    if kind == "directory":
        return GooglePermissionError(
            subject,
            f"Google refused to list resource calendars as {admin} (HTTP 403, {reason}); "
            f"[google] subject must be an admin allowed to read resources, and {DELEGATION_HINT}; "
            "or set discover_rooms = false and list the rooms in [[rooms]]",
            DIRECTORY_SCOPE,
        )
    return GooglePermissionError(
        subject,
        f"Google refused to read calendar {calendar_id} as {admin} (HTTP 403, {reason}); share "
        f"the resource calendar with {admin} (or its domain), and {DELEGATION_HINT}",
        CALENDAR_SCOPE,
    )
