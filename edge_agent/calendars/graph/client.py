"""Microsoft Graph calls for room calendars, on a caller's ``httpx.AsyncClient``.

What the docs fix, and this module honours:

- ``GET /places/microsoft.graph.room`` lists the tenant's rooms; every ``@odata.nextLink`` is
  followed (needs ``Place.Read.All``). "By default, this operation returns 100 places per page"
  (List places), and tenants report pages without the ``@odata.nextLink`` (Microsoft Q&A 1021419),
  so the first request asks for ``$top`` = :data:`PLACES_TOP` (the docs name no maximum; 999 is
  Graph's usual directory maximum) and a full page without a nextLink is logged as a warning: the
  listing may be cut short. Rooms "Hidden from GAL" are never listed.
- ``GET /users/{mailbox}/calendarView/delta?startDateTime&endDateTime`` starts a round; its
  pages are followed by ``@odata.nextLink`` until the ``@odata.deltaLink`` that resumes the round
  later. Links are used as given (they carry the state token) and are only accepted on the
  configured Graph origin, so a bearer token never leaves for another host. Behind a reverse
  proxy (``graph_url`` not a Graph host) Graph still names its own host in them ("simply copy
  and apply the @odata.nextLink or @odata.deltaLink URL", delta query overview): a link on a
  known Graph host (:data:`GRAPH_HOSTS`) whose path starts with ``graph_url``'s version is
  rewritten onto ``graph_url``, so it is sent, with the token, only to ``graph_url``.
- ``Prefer: outlook.timezone="UTC"`` (times in UTC) and ``odata.maxpagesize``, on every call of
  the chain.
- Throttling: Outlook allows four concurrent requests per mailbox, so each mailbox has a gate
  of 4 slots (:mod:`.gate`, shared with bookings and subscriptions through
  :attr:`GraphClient.gates`); a 429 makes the whole mailbox wait ``Retry-After`` seconds; 503
  and friends are retried with the one :class:`~edge_agent.backoff.Backoff`, still honouring
  ``Retry-After``.
- 401: the token is renewed once, then :class:`GraphAuthError`. 403 names the permission.
  410, or an error code ``SyncStateNotFound``/``resyncRequired``: :class:`ResyncRequired`.

Bounded: a response body above ``max_body_bytes`` and a chain above ``max_pages`` are refused
(an error, never a silently truncated listing, which would read as deletions).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.bookings.window import WindowBounds
from edge_agent.calendars.auth import TokenSource
from edge_agent.calendars.graph.errors import (
    GraphAuthError,
    GraphPermissionError,
    GraphRequestError,
    GraphUnavailable,
    MailboxNotFound,
    ResyncRequired,
)
from edge_agent.calendars.graph.gate import MAILBOX_CONCURRENCY, MailboxGates
from edge_agent.calendars.http import TOO_LARGE, bounded_get
from edge_agent.forward.webhook import parse_retry_after

__all__ = [
    "GRAPH_HOSTS",
    "graph_link",
    "MAILBOX_CONCURRENCY",
    "PLACES_TOP",
    "DeltaRound",
    "GraphClient",
    "GraphRoom",
]

log = structlog.get_logger(__name__)

# Microsoft Graph's own hosts (national cloud deployments): global, US Gov L4, US Gov L5 (DoD),
# China (21Vianet). A link on one of them is rewritten onto graph_url (a reverse proxy).
GRAPH_HOSTS = frozenset(
    {
        "graph.microsoft.com",
        "graph.microsoft.us",
        "dod-graph.microsoft.us",
        "microsoftgraph.chinacloudapi.cn",
    }
)
PLACES_TOP = 999  # $top of the room list's first request (Graph's default page is 100)
_PLACES_DEFAULT_PAGE = 100
_RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
_RETRY_STATUS = frozenset({500, 502, 503, 504})
RETRY_BACKOFF = Backoff(initial=1.0, maximum=60.0)  # 503s inside one request


@dataclass(frozen=True, slots=True)
class GraphRoom:
    """A room from the places directory."""

    mailbox: str
    display_name: str | None = None
    place_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeltaRound:
    """The ``value`` entries of every page of one chain, in order, and the delta link it ended
    with (the next call of this round)."""

    values: list[Any]
    delta_link: str
    pages: int


class GraphClient:
    """The Graph calls the room poller needs. One instance serves every room; safe to share
    between tasks. Every method is cancel-safe (a cancelled call leaves nothing behind but its
    unfinished HTTP request, which httpx closes)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        graph_url: str = "https://graph.microsoft.com/v1.0",
        max_page_size: int = 100,
        max_pages: int = 500,
        max_body_bytes: int = 8 * 1024 * 1024,
        max_attempts: int = 5,
        request_timeout_s: float = 30.0,
        backoff: Backoff = RETRY_BACKOFF,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        gates: MailboxGates | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.graph_url = graph_url.rstrip("/")
        origin = urlsplit(self.graph_url)
        self._origin = (origin.scheme, origin.netloc.lower())
        self._version = "/" + origin.path.rstrip("/").rsplit("/", 1)[-1]  # "/v1.0", "/beta"
        self._max_page_size = max_page_size
        self._max_pages = max_pages
        self._max_body = max_body_bytes
        self._max_attempts = max_attempts
        self._timeout = request_timeout_s
        self._backoff = backoff
        self._sleep = sleep
        self._wall = wall  # only for a Retry-After given as an HTTP-date
        self._rng = rng
        self._gates = (
            gates if gates is not None else MailboxGates(monotonic=monotonic, sleep=sleep)
        )

    # ------------------------------------------------------------------ public calls

    async def list_rooms(self) -> list[GraphRoom]:
        """Every room of the places directory (all pages). Needs ``Place.Read.All``."""
        url: str | None = f"{self.graph_url}/places/microsoft.graph.room?$top={PLACES_TOP}"
        rooms: list[GraphRoom] = []
        pages = 0
        while url is not None:
            pages += 1
            if pages > self._max_pages:
                raise GraphRequestError(
                    "directory", f"the room list has more than {self._max_pages} pages; refused"
                )
            body = await self._get_json(url, subject="directory", gate_key="places", kind="places")
            page = _values(body, "directory")
            for obj in page:
                mail = obj.get("emailAddress") if isinstance(obj, dict) else None
                if not isinstance(mail, str) or "@" not in mail:
                    log.warning("place without a usable emailAddress skipped", place=str(obj)[:200])
                    continue
                name = obj.get("displayName")
                pid = obj.get("id")
                rooms.append(
                    GraphRoom(
                        mailbox=mail,
                        display_name=name if isinstance(name, str) else None,
                        place_id=pid if isinstance(pid, str) else None,
                    )
                )
            url = self._link(body, "@odata.nextLink", "directory")
            if url is None and len(page) in (_PLACES_DEFAULT_PAGE, PLACES_TOP):
                log.warning(
                    "the room list's last page is full but has no @odata.nextLink: Graph may "
                    "have cut the listing short (rooms beyond it are not discovered)",
                    page_rooms=len(page),
                    pages=pages,
                    rooms=len(rooms),
                )
        return rooms

    async def calendar_delta(
        self, room_id: str, mailbox: str, bounds: WindowBounds, delta_link: str | None
    ) -> DeltaRound:
        """One whole chain of ``calendarView/delta`` for ``mailbox``: from ``delta_link``, or a
        new round over ``bounds`` when it is None. Raises :class:`ResyncRequired` when Graph has
        lost the round, other :class:`GraphError` subclasses as their docstrings say."""
        if delta_link is None:
            start, end = bounds.to_dict()["start"], bounds.to_dict()["end"]
            url = (
                f"{self.graph_url}/users/{quote(mailbox, safe='@')}/calendarView/delta"
                f"?startDateTime={quote(start)}&endDateTime={quote(end)}"
            )
        else:
            url = delta_link
        headers = {
            "Prefer": f'outlook.timezone="UTC", odata.maxpagesize={self._max_page_size}',
        }
        values: list[Any] = []
        pages = 0
        while True:
            pages += 1
            if pages > self._max_pages:
                raise GraphRequestError(
                    room_id,
                    f"calendar of {mailbox} gave more than {self._max_pages} pages in one round; "
                    "refused (lower horizon_days?)",
                )
            body = await self._get_json(
                url,
                subject=room_id,
                gate_key=mailbox.lower(),
                kind="calendar",
                mailbox=mailbox,
                headers=headers,
            )
            values.extend(_values(body, room_id))
            nxt = self._link(body, "@odata.nextLink", room_id)
            if nxt is not None:
                url = nxt
                continue
            done = self._link(body, "@odata.deltaLink", room_id)
            if done is None:
                raise GraphRequestError(
                    room_id,
                    f"calendar delta page of {mailbox} has neither @odata.nextLink nor "
                    "@odata.deltaLink; the round cannot continue (a proxy rewriting the answer?)",
                )
            return DeltaRound(values=values, delta_link=done, pages=pages)

    @property
    def gates(self) -> MailboxGates:
        """The per-mailbox gates every call of this client takes a slot of; share them with
        whatever else calls the same mailboxes (bookings, subscriptions)."""
        return self._gates

    def forget_mailbox(self, mailbox: str) -> None:
        """Drop a removed room's throttling state (the gate map stays bounded by the rooms)."""
        self._gates.forget(mailbox)

    # ------------------------------------------------------------------ the request loop

    async def _get_json(
        self,
        url: str,
        *,
        subject: str,
        gate_key: str,
        kind: str,
        mailbox: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            async with self._gates.slot(gate_key):
                token = await self._tokens.token()
                try:
                    status, resp_headers, body = await self._send(url, token, headers)
                except (httpx.TransportError, TimeoutError) as e:
                    # TimeoutError: no whole answer within request_timeout_s (a slow trickle).
                    status, resp_headers, body = 0, httpx.Headers(), f"{type(e).__name__}: {e}"
                if status == 200:
                    return self._parse(body, subject)
                retry_after = parse_retry_after(resp_headers.get("retry-after"), self._wall())
                if status == 429:
                    ra = retry_after if retry_after is not None else self._backoff.delay(attempt)
                    self._gates.throttled(gate_key, ra)
            # Decide outside the semaphore: the other requests of this mailbox may proceed.
            code = _error_code(body)
            if status == 401:
                if renewed:
                    raise GraphAuthError(
                        subject,
                        "Graph refused a freshly issued token (HTTP 401); check that the app "
                        "registration's client_id/tenant_id are right and admin consent was "
                        "granted",
                    )
                renewed = True
                attempt -= 1  # the renewal is not a retry of a failure
                await self._tokens.token(renew=True)
                continue
            if status == 403:
                raise _permission_error(subject, kind, mailbox, code)
            if status == 410 or (code is not None and code.lower() in _RESYNC_CODES):
                raise ResyncRequired(
                    subject,
                    f"Graph lost the delta round of {mailbox} (HTTP {status}, {code}); "
                    "listing the window in full again",
                )
            if status == 404 and kind == "calendar":
                raise MailboxNotFound(
                    subject,
                    f"no calendar for {mailbox} (HTTP 404, {code}); check the room's mailbox "
                    "address in config ([[rooms]] calendar / [[devices]] calendar)",
                )
            if status == 429 or status == 0 or status in _RETRY_STATUS:
                if attempt >= self._max_attempts:
                    what = (
                        "throttled (HTTP 429)"
                        if status == 429
                        else (f"unreachable ({body[:200]})" if status == 0 else f"HTTP {status}")
                    )
                    raise GraphUnavailable(
                        subject, f"Graph {what} after {attempt} attempts; retrying next round"
                    )
                if status != 429:
                    delay = self._backoff.delay_honouring(attempt, retry_after, self._rng)
                    log.info("graph retry", room=subject, status=status, delay_s=round(delay, 2))
                    await self._sleep(delay)
                continue
            raise GraphRequestError(
                subject, f"Graph answered HTTP {status} ({code or body[:200]}) to {kind} request"
            )

    async def _send(
        self, url: str, token: str, headers: dict[str, str] | None
    ) -> tuple[int, httpx.Headers, str]:
        hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if headers:
            hdrs.update(headers)
        return await bounded_get(
            self._http, url, hdrs, timeout_s=self._timeout, max_body=self._max_body
        )

    def _parse(self, body: str, subject: str) -> dict[str, Any]:
        if body == TOO_LARGE:
            raise GraphRequestError(
                subject, f"Graph answer above {self._max_body} bytes refused (max_body_bytes)"
            )
        try:
            doc = jsoncodec.loads(body)
        except jsoncodec.JSONDecodeError as e:
            raise GraphRequestError(subject, f"Graph answered with invalid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise GraphRequestError(subject, "Graph answered with JSON that is not an object")
        return doc

    def _link(self, body: dict[str, Any], key: str, subject: str) -> str | None:
        link = body.get(key)
        if link is None:
            return None
        if not isinstance(link, str):
            raise GraphRequestError(subject, f"{key} is not a string")
        usable = graph_link(link, self.graph_url)
        if usable is None:
            parts = urlsplit(link)
            raise GraphRequestError(
                subject,
                f"{key} points to {parts.scheme}://{parts.netloc}{parts.path[:40]}, neither "
                f"graph_url {self.graph_url} nor a Microsoft Graph host under {self._version}; "
                "refused so the token is not sent there",
            )
        return usable


def graph_link(link: str, graph_url: str) -> str | None:
    """The URL to send a Graph ``@odata.nextLink``/``deltaLink`` to: ``link`` itself on
    ``graph_url``'s origin; on a Graph host (:data:`GRAPH_HOSTS`, https, under ``graph_url``'s
    version) the same path and query on ``graph_url`` (a reverse proxy); None otherwise (the
    token must not go there)."""
    base = urlsplit(graph_url)
    parts = urlsplit(link)
    if (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower()):
        return link
    version = "/" + base.path.rstrip("/").rsplit("/", 1)[-1]  # "/v1.0", "/beta"
    if (
        parts.scheme == "https"
        and (parts.hostname or "").lower() in GRAPH_HOSTS
        and parts.port is None
        and (parts.path == version or parts.path.startswith(version + "/"))
    ):
        query = f"?{parts.query}" if parts.query else ""
        return f"{graph_url.rstrip('/')}{parts.path[len(version) :]}{query}"
    return None


def _values(body: dict[str, Any], subject: str) -> list[Any]:
    values = body.get("value", [])
    if not isinstance(values, list):
        raise GraphRequestError(subject, "Graph answer has a 'value' that is not a list")
    return values


def _error_code(body: str) -> str | None:
    if not body.startswith("{"):
        return None
    try:
        doc = jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def _permission_error(
    subject: str, kind: str, mailbox: str | None, code: str | None
) -> GraphPermissionError:
    if kind == "places":
        return GraphPermissionError(
            subject,
            f"Graph refused to list rooms (HTTP 403, {code}); grant the app the application "
            "permission Place.Read.All with admin consent, or set discover_rooms = false and "
            "list the rooms in [[rooms]]",
            "Place.Read.All",
        )
    return GraphPermissionError(
        subject,
        f"Graph refused to read the calendar of {mailbox} (HTTP 403, {code}); grant the app the "
        "application permission Calendars.Read with admin consent, and check that an Exchange "
        "application access policy (or RBAC for Applications scope) includes this room mailbox",
        "Calendars.Read",
    )
