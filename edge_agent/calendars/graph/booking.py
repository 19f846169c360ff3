"""Booking a calendar-only Microsoft 365 room: create and delete events in its mailbox.

What the docs fix, and this module honours:

- ``POST /users/{mailbox}/events`` creates the event; ``transactionId`` ("a custom identifier
  specified by a client app for the server to avoid redundant POST operations in case of client
  retries to create the same event") is the booking request's UUID, so a create that timed out
  is simply sent again: Graph answers with the event the first one made, never a second one.
- Times are sent as ``dateTimeTimeZone`` in UTC; the organizer, when given, is a required
  attendee (with an address) and named in the body either way.
- ``DELETE /users/{mailbox}/events/{id}`` -> 204. Both need the application permission
  ``Calendars.ReadWrite`` (the poller's ``Calendars.Read`` is not enough): a 403 names it.
- 401: the token is renewed once. 429, 5xx, a transport error or no answer within
  :data:`REQUEST_TIMEOUT_S`: sent again (``Retry-After`` honoured, bounded), then
  :class:`GraphUnavailable`. Any other 4xx is the caller's :class:`GraphRequestError`.
- Every request takes a slot of the mailbox's gate (:mod:`.gate`, the poller's: Outlook allows
  4 concurrent requests per mailbox, polls and bookings together); a mailbox held back by a 429
  for longer than :data:`RETRY_AFTER_MAX_S` fails at once (:class:`GraphUnavailable`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.calendars.auth import TokenSource
from edge_agent.calendars.graph.errors import (
    GraphAuthError,
    GraphPermissionError,
    GraphRequestError,
    GraphUnavailable,
    MailboxNotFound,
)
from edge_agent.calendars.graph.gate import MailboxBusy, MailboxGates
from edge_agent.calendars.http import bounded_request
from edge_agent.calendars.refusals import BookingNotSupported, CalendarUnavailable
from edge_agent.forward.webhook import parse_retry_after

__all__ = [
    "REQUEST_TIMEOUT_S",
    "BookingNotSupported",
    "CalendarUnavailable",
    "GraphBooking",
    "event_body",
]

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT_S = 10.0
"""One create or delete must be answered within this; else it is sent again (idempotent)."""
MAX_ATTEMPTS = 4
MAX_BODY = 256 * 1024  # an event answer is a few KiB; past it the answer is refused
RETRY_BACKOFF = Backoff(initial=0.5, maximum=5.0)
RETRY_AFTER_MAX_S = 10.0  # a booking waits at most this for one throttled answer
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def _graph_time(at: datetime) -> dict[str, str]:
    return {"dateTime": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def event_body(
    *,
    request_uuid: str,
    title: str,
    start: datetime,
    end: datetime,
    organizer: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The create-event body (Graph ``event`` resource names)."""
    body: dict[str, Any] = {
        "subject": title,
        "start": _graph_time(start),
        "end": _graph_time(end),
        "transactionId": request_uuid,
        "showAs": "busy",
    }
    if organizer:
        who = organizer.get("name") or organizer.get("email") or organizer.get("id") or ""
        email = organizer.get("email")
        body["body"] = {
            "contentType": "text",
            "content": f"Booked through the room's edge agent for {who}"
            + (f" <{email}>" if email and email != who else ""),
        }
        if email:
            address: dict[str, str] = {"address": email}
            if organizer.get("name"):
                address["name"] = organizer["name"]
            body["attendees"] = [{"emailAddress": address, "type": "required"}]
    return body


def _error_code(text: str) -> str | None:
    try:
        doc = jsoncodec.loads(text)
    except ValueError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


class GraphBooking:
    """Creates and deletes events in room mailboxes, on the agent's Graph HTTP client and token
    source (the poller's). Safe to share between tasks."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        graph_url: str = "https://graph.microsoft.com/v1.0",
        backoff: Backoff = RETRY_BACKOFF,
        gates: MailboxGates | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.graph_url = graph_url.rstrip("/")
        self._backoff = backoff
        # The poller's gates (GraphClient.gates) when given: one 4-slot limit per mailbox.
        self._gates = gates if gates is not None else MailboxGates()
        self._sleep = sleep
        self._wall = wall  # only for a Retry-After given as an HTTP-date

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
        """The created event (Graph's answer: ``id``, ``iCalUId``...). Raises the
        :class:`~edge_agent.calendars.graph.errors.GraphError` subclasses (module docstring)."""
        url = f"{self.graph_url}/users/{quote(mailbox, safe='@')}/events"
        body = event_body(
            request_uuid=request_uuid, title=title, start=start, end=end, organizer=organizer
        )
        status, text = await self._call("POST", url, room_id, mailbox, body)
        try:
            doc = jsoncodec.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise GraphRequestError(
                room_id, f"Graph answered the event create with HTTP {status} but no event id"
            )
        return doc

    async def delete_event(self, room_id: str, mailbox: str, event_id: str) -> None:
        """Delete ``event_id`` from ``mailbox``. Raises :class:`LookupError` when Graph does not
        know it (404), else as :meth:`create_event`."""
        url = f"{self.graph_url}/users/{quote(mailbox, safe='@')}/events/{quote(event_id, safe='')}"
        await self._call("DELETE", url, room_id, mailbox, None)

    async def _call(
        self, method: str, url: str, room_id: str, mailbox: str, body: dict[str, Any] | None
    ) -> tuple[int, str]:
        renewed = False
        attempt = 0
        what = "create an event in" if method == "POST" else "delete an event from"
        while True:
            attempt += 1
            token = await self._tokens.token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            retry_after: float | None = None
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    async with self._gates.slot(mailbox, max_wait_s=RETRY_AFTER_MAX_S):
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
            except MailboxBusy as exc:
                raise GraphUnavailable(room_id, f"Graph did not {what} {mailbox}: {exc}") from None
            except (httpx.TransportError, TimeoutError) as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            if status == 429:
                hold = retry_after if retry_after is not None else self._backoff.delay(attempt)
                self._gates.throttled(mailbox, hold)
            if 200 <= status < 300:
                return status, text
            code = _error_code(text)
            if status == 401 and not renewed:
                renewed = True
                attempt -= 1
                await self._tokens.token(renew=True)
                continue
            if status == 401:
                raise GraphAuthError(
                    room_id, f"Graph refused a freshly issued token (HTTP 401) to {what} {mailbox}"
                )
            if status == 403:
                raise GraphPermissionError(
                    room_id,
                    f"Graph refused to {what} the calendar of {mailbox} (HTTP 403, {code}); "
                    "grant the app the application permission Calendars.ReadWrite with admin "
                    "consent, and check that an Exchange application access policy includes "
                    "this room mailbox",
                    "Calendars.ReadWrite",
                )
            if status == 404 and method == "DELETE":
                raise LookupError(f"{room_id}: no event {url.rsplit('/', 1)[-1]!r} in {mailbox}")
            if status == 404:
                raise MailboxNotFound(room_id, f"no calendar for {mailbox} (HTTP 404, {code})")
            if status == 0 or status in _RETRY_STATUS:
                if attempt >= MAX_ATTEMPTS:
                    why = f"HTTP {status}" if status else text[:200]
                    raise GraphUnavailable(
                        room_id, f"Graph did not {what} {mailbox} after {attempt} attempts ({why})"
                    )
                delay = min(
                    RETRY_AFTER_MAX_S, self._backoff.delay_honouring(attempt, retry_after, None)
                )
                log.info("graph booking retry", room=room_id, status=status, delay_s=delay)
                await self._sleep(delay)
                continue
            raise GraphRequestError(
                room_id, f"Graph refused to {what} {mailbox}: HTTP {status} ({code or text[:200]})"
            )
