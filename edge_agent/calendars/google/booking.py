"""Booking a calendar-only Google Workspace room: insert and delete events in its calendar.

What Google's docs fix, and this module honours:

- ``POST {calendar_url}/calendars/{calendarId}/events`` inserts the event. A client may give
  its ``id`` ("characters allowed are those used in base32hex encoding, i.e. lowercase letters
  a-v and digits 0-9 ... the length of the ID must be between 5 and 1024 characters"): it is
  the booking request's UUID in lower-case hex (:func:`event_id`), so an insert sent again
  after a timeout is answered 409 ``duplicate``; the event the first one made is then read
  (``GET .../events/{eventId}``) and taken as the answer: never a second event.
- Times are ``dateTime`` in UTC with ``timeZone: "UTC"``; the organizer, when given with an
  address, is an attendee, and named in the description either way.
- ``DELETE .../events/{eventId}`` -> 204 (410 ``deleted``: it was already). Both need the
  scope :data:`BOOKING_SCOPE` delegated to the service account (the poller's
  ``calendar.readonly`` is not enough): a 403 names it.
- Every attempt first takes a slot of the subject's request limiter (pass the poller's,
  ``GoogleClient.limiter``): an insert counts against the same 600 a minute per user.
- 401: the token is renewed once. 429/403 rate limits, 5xx, a transport error or no answer
  within :data:`REQUEST_TIMEOUT_S`: sent again (``Retry-After`` honoured, bounded), then
  :class:`GoogleUnavailable`. Any other 4xx is the caller's :class:`GoogleRequestError`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.calendars.auth import TokenSource
from edge_agent.calendars.google.auth import CALENDAR_WRITE_SCOPE, DELEGATION_PAGE
from edge_agent.calendars.google.client import RATE_LIMIT_REASONS, _error_reason
from edge_agent.calendars.google.errors import (
    CalendarNotFound,
    GoogleAuthError,
    GooglePermissionError,
    GoogleRequestError,
    GoogleUnavailable,
)
from edge_agent.calendars.http import bounded_request
from edge_agent.calendars.ratelimit import RequestRateLimiter
from edge_agent.forward.webhook import parse_retry_after

__all__ = ["BOOKING_SCOPE", "REQUEST_TIMEOUT_S", "GoogleBooking", "event_body", "event_id"]

log = structlog.get_logger(__name__)

BOOKING_SCOPE = CALENDAR_WRITE_SCOPE
"""The scope an insert or delete needs (delegated domain-wide to the service account)."""
REQUEST_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 4
MAX_BODY = 256 * 1024  # an event answer is a few KiB
RETRY_BACKOFF = Backoff(initial=0.5, maximum=5.0)
RETRY_AFTER_MAX_S = 10.0
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def event_id(request_uuid: str) -> str:
    """The event id for a booking request: the UUID's 32 hex digits, lower-case (0-9a-f is a
    subset of base32hex's 0-9a-v). Raises ValueError for a request id that is not a UUID."""
    return uuid.UUID(request_uuid).hex


def _google_time(at: datetime) -> dict[str, str]:
    return {"dateTime": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "timeZone": "UTC"}


def event_body(
    *,
    request_uuid: str,
    title: str,
    start: datetime,
    end: datetime,
    organizer: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The events.insert body (Google ``Event`` resource names)."""
    body: dict[str, Any] = {
        "id": event_id(request_uuid),
        "summary": title,
        "start": _google_time(start),
        "end": _google_time(end),
    }
    if organizer:
        who = organizer.get("name") or organizer.get("email") or organizer.get("id") or ""
        email = organizer.get("email")
        body["description"] = f"Booked through the room's edge agent for {who}" + (
            f" <{email}>" if email and email != who else ""
        )
        if email:
            attendee: dict[str, str] = {"email": email}
            if organizer.get("name"):
                attendee["displayName"] = organizer["name"]
            body["attendees"] = [attendee]
    return body


class GoogleBooking:
    """Inserts and deletes events in resource calendars as the impersonated subject, on the
    agent's Google HTTP client and a token source holding :data:`BOOKING_SCOPE`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        calendar_url: str = "https://www.googleapis.com/calendar/v3",
        backoff: Backoff = RETRY_BACKOFF,
        limiter: RequestRateLimiter | None = None,
        subject: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self._limiter = limiter if limiter is not None else RequestRateLimiter()
        self._subject = subject
        self.calendar_url = calendar_url.rstrip("/")
        self._backoff = backoff
        self._sleep = sleep
        self._wall = wall  # only for a Retry-After given as an HTTP-date

    def _events_url(self, calendar_id: str) -> str:
        return f"{self.calendar_url}/calendars/{quote(calendar_id, safe='@')}/events"

    async def create_event(
        self,
        room_id: str,
        mailbox: str,
        *,
        request_uuid: str,
        title: str,
        start: datetime,
        end: datetime,
        organizer: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The created event (Google's answer: ``id``, ``iCalUID``...); on 409 ``duplicate``
        the one an earlier attempt made. Raises the :class:`GoogleError` subclasses."""
        body = event_body(
            request_uuid=request_uuid, title=title, start=start, end=end, organizer=organizer
        )
        url = self._events_url(mailbox)
        status, text = await self._call("POST", url, room_id, mailbox, body)
        if status == 409:  # this id exists: an earlier attempt of this request made it
            log.info("google booking: event exists; reading it", room=room_id, id=body["id"])
            status, text = await self._call("GET", f"{url}/{body['id']}", room_id, mailbox, None)
        try:
            doc = jsoncodec.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise GoogleRequestError(
                room_id, f"Google answered the event insert with HTTP {status} but no event id"
            )
        return doc

    async def delete_event(self, room_id: str, mailbox: str, event_id: str) -> None:
        """Delete ``event_id``. Raises :class:`LookupError` when Google does not know it
        (404) or it is deleted already (410), else as :meth:`create_event`."""
        url = f"{self._events_url(mailbox)}/{quote(event_id, safe='')}"
        await self._call("DELETE", url, room_id, mailbox, None)

    async def _call(
        self, method: str, url: str, room_id: str, mailbox: str, body: dict[str, Any] | None
    ) -> tuple[int, str]:
        renewed = False
        attempt = 0
        what = {"POST": "create an event in", "GET": "read an event of"}.get(
            method, "delete an event from"
        )
        while True:
            attempt += 1
            await self._limiter.acquire(self._subject)
            token = await self._tokens.token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            retry_after: float | None = None
            try:
                status, resp_headers, text = await bounded_request(
                    self._http,
                    method,
                    url,
                    headers,
                    timeout_s=REQUEST_TIMEOUT_S,
                    max_body=MAX_BODY,
                    content=None if body is None else jsoncodec.dumpb(body),
                )
                retry_after = parse_retry_after(resp_headers.get("retry-after"), self._wall())
            except (httpx.TransportError, TimeoutError) as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                return status, text
            reason = _error_reason(text)
            low = (reason or "").lower()
            if status == 409 and method == "POST" and low == "duplicate":
                return status, text
            if status == 401 and not renewed:
                renewed = True
                attempt -= 1
                await self._tokens.token(renew=True)
                continue
            if status == 401:
                raise GoogleAuthError(
                    room_id, f"Google refused a freshly issued token (HTTP 401) to {what} {mailbox}"
                )
            throttled = status == 429 or (status == 403 and low in RATE_LIMIT_REASONS)
            if status == 403 and not throttled:
                raise GooglePermissionError(
                    room_id,
                    f"Google refused to {what} the calendar of {mailbox} (HTTP 403, {reason}); "
                    f"in the Google Admin console ({DELEGATION_PAGE}) give the service account's "
                    f"client ID the scope {BOOKING_SCOPE}, and let the [google] subject change "
                    "this resource calendar",
                    BOOKING_SCOPE,
                )
            if status in (404, 410) and method != "POST":
                raise LookupError(f"{room_id}: no event {url.rsplit('/', 1)[-1]!r} in {mailbox}")
            if status == 404:
                raise CalendarNotFound(room_id, f"no calendar {mailbox} (HTTP 404, {reason})")
            if status == 0 or status in _RETRY_STATUS or throttled:
                if attempt >= MAX_ATTEMPTS:
                    why = f"HTTP {status}" if status else text[:200]
                    raise GoogleUnavailable(
                        room_id, f"Google did not {what} {mailbox} after {attempt} attempts ({why})"
                    )
                delay = min(
                    RETRY_AFTER_MAX_S, self._backoff.delay_honouring(attempt, retry_after, None)
                )
                log.info("google booking retry", room=room_id, status=status, delay_s=delay)
                await self._sleep(delay)
                continue
            why = reason or text[:200]
            raise GoogleRequestError(
                room_id, f"Google refused to {what} {mailbox}: HTTP {status} ({why})"
            )
