"""Google push: one ``events.watch`` channel per room, and the notification route.

Per the push guide: ``POST {calendar_url}/calendars/{id}/events/watch`` with ``{id, type:
"web_hook", address, token, params: {ttl}}`` opens a channel; Google answers its
``resourceId`` and ``expiration`` (ms since the epoch). A channel is not renewed: a new one (a
new id) is opened before the old one's ``expiration``, and the old one stopped
(``POST {calendar_url}/channels/stop`` with ``{id, resourceId}``); both may notify meanwhile
(overlap tolerated). Notifications have no body: ``X-Goog-Channel-ID``,
``X-Goog-Channel-Token`` and ``X-Goog-Resource-State`` (``sync`` on open, ``exists`` on a
change). A notification only pokes the room's incremental fetch; one for an unknown or stopped
channel, or with a wrong token, is ignored. Channels are stopped on shutdown (bounded).

A watch and a stop are Calendar API requests like any other, counted against the same 600 a
minute per user: each takes a slot of the subject's
:class:`~edge_agent.calendars.ratelimit.RequestRateLimiter` first -- the poller's own (pass
``GoogleClient.limiter``), or 2,000 rooms opening channels at start would send their watches on
top of the full syncs and meet ``rateLimitExceeded``. At shutdown the stops that do not get a
slot within ``stop_timeout_s`` are left to expire on their own (at 2,000 rooms most of them:
the quota has no room for 2,000 stops in ten seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.calendars.auth import TokenSource
from edge_agent.calendars.http import TOO_LARGE, bounded_request
from edge_agent.calendars.ratelimit import RequestRateLimiter
from edge_agent.clock import Clock, system_clock

__all__ = ["NOTIFY_PATH", "WatchChannel", "WatchManager"]

log = structlog.get_logger(__name__)

NOTIFY_PATH = "/v1/notifications/google"
HEALTHY_POLL_FACTOR = 10.0  # polling stays the safety net, 10x slower while a channel is open
RETRY_S = 60.0  # a failed watch is tried again this much later
REQUEST_TIMEOUT_S = 30.0  # one watch or stop call, answered in full
MAX_BODY = 64 * 1024  # a channel answer is a few hundred bytes; past it the answer is refused


@dataclass(frozen=True, slots=True)
class WatchChannel:
    room_id: str
    id: str
    resource_id: str
    token: str
    expires_at: datetime


class WatchManager:
    """Keeps one open channel per room (``set_rooms``) and matches notifications to rooms."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        *,
        calendar_url: str,
        notification_url: str,
        poke: Callable[[str], bool],
        ttl_s: float = 7 * 86400.0,
        renew_before_s: float = 3600.0,
        clock: Clock = system_clock,
        stop_timeout_s: float = 10.0,
        limiter: RequestRateLimiter | None = None,
        subject: str = "",
    ) -> None:
        """``limiter``/``subject``: the request quota the calls count against (share the
        poller's: ``GoogleClient.limiter`` and ``[google] subject``); None: one of its own."""
        self._http = http
        self._tokens = tokens
        self._limiter = limiter if limiter is not None else RequestRateLimiter()
        self._subject = subject
        self._calendar_url = calendar_url.rstrip("/")
        self.address = notification_url.rstrip("/") + NOTIFY_PATH
        self._poke = poke
        self._ttl_s = ttl_s
        self._renew_before = timedelta(seconds=renew_before_s)
        self._clock = clock
        self._stop_timeout_s = stop_timeout_s
        self._rooms: dict[str, str] = {}
        self._current: dict[str, WatchChannel] = {}  # room -> its newest channel
        self._live: dict[str, WatchChannel] = {}  # channel id -> channel (overlap included)
        self._retry_at: dict[str, datetime] = {}
        self._errors: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.counters = {"notifications": 0, "pokes": 0, "ignored": 0}

    # ------------------------------------------------------------------ rooms and status

    def set_rooms(self, rooms: Mapping[str, str]) -> None:
        """The rooms to keep watched: room id -> calendar id (the poller's current set)."""
        self._rooms = dict(rooms)
        self._wake.set()

    def healthy(self, room_id: str) -> bool:
        ch = self._current.get(room_id)
        return ch is not None and ch.expires_at > self._clock.now()

    def poll_interval_s(self, room_id: str, base_s: float) -> float:
        return base_s * HEALTHY_POLL_FACTOR if self.healthy(room_id) else base_s

    def status(self, room_id: str) -> dict[str, Any]:
        ch = self._current.get(room_id)
        return {
            "push": self.healthy(room_id),
            "subscription_expires": ch.expires_at.isoformat() if ch else None,
            "push_error": self._errors.get(room_id),
        }

    # ------------------------------------------------------------------ notifications

    def notification(self, headers: Mapping[str, str]) -> bool:
        """One push message; True when it poked a room."""
        self.counters["notifications"] += 1
        ch = self._live.get(headers.get("X-Goog-Channel-ID", ""))
        token = headers.get("X-Goog-Channel-Token", "")
        if ch is None or not hmac.compare_digest(ch.token.encode(), token.encode()):
            self.counters["ignored"] += 1
            return False
        if headers.get("X-Goog-Resource-State") == "sync":
            return False  # the channel's first message: nothing changed
        self.counters["pokes"] += 1
        return self._poke(ch.room_id)

    def routes(self) -> list[web.RouteDef]:
        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()  # no body is expected; drain whatever came
            self.notification(request.headers)
            # 200 even when ignored: Google retries errors, and an unknown channel must not
            # learn which ids exist.
            return web.Response(status=200)

        return [web.post(NOTIFY_PATH, handler)]

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Open and renew channels until cancelled (then :meth:`stop`)."""
        while True:
            now = self._clock.now()
            for room_id in [r for r in self._current if r not in self._rooms]:
                old = self._current.pop(room_id)
                await self._stop_channel(old)
            for room_id, calendar in list(self._rooms.items()):
                ch = self._current.get(room_id)
                due = ch is None or ch.expires_at - self._renew_before <= now
                if due and self._retry_at.get(room_id, now) <= now:
                    await self._open(room_id, calendar)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wait_s())

    def _next_wait_s(self) -> float:
        now = self._clock.now()
        times = [ch.expires_at - self._renew_before for ch in self._current.values()]
        times += list(self._retry_at.values())
        if not times:
            return 3600.0
        return max(1.0, min(3600.0, (min(times) - now).total_seconds()))

    async def _open(self, room_id: str, calendar: str) -> None:
        body = {
            "id": str(uuid.uuid4()),  # a new id each time: a channel cannot be renewed
            "type": "web_hook",
            "address": self.address,
            "token": secrets.token_urlsafe(24),
            "params": {"ttl": str(int(self._ttl_s))},
        }
        url = f"{self._calendar_url}/calendars/{quote(calendar, safe='@')}/events/watch"
        try:
            doc = await self._post(url, body)
            expires_ms = int(str(doc.get("expiration") or 0))
            ch = WatchChannel(
                room_id,
                str(body["id"]),
                str(doc["resourceId"]),
                str(body["token"]),
                datetime.fromtimestamp(expires_ms / 1000, UTC)
                if expires_ms
                else self._clock.now() + timedelta(seconds=self._ttl_s),
            )
        except (httpx.HTTPError, KeyError, ValueError, TypeError, OSError) as exc:
            self._errors[room_id] = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._retry_at[room_id] = self._clock.now() + timedelta(seconds=RETRY_S)
            log.warning("google watch failed; polling continues", room=room_id, error=str(exc))
            return
        old = self._current.get(room_id)
        self._current[room_id] = ch
        self._live[ch.id] = ch
        self._errors.pop(room_id, None)
        self._retry_at.pop(room_id, None)
        log.info("google watch channel open", room=room_id, expires=ch.expires_at.isoformat())
        if old is not None:
            await self._stop_channel(old)  # after the new one is open: overlap, no gap

    async def _stop_channel(self, ch: WatchChannel) -> None:
        self._live.pop(ch.id, None)  # from now on its notifications are ignored
        try:
            await self._post(
                f"{self._calendar_url}/channels/stop", {"id": ch.id, "resourceId": ch.resource_id}
            )
        except (httpx.HTTPError, KeyError, ValueError, TypeError, OSError) as exc:
            log.info("google channel stop failed; it expires on its own", error=str(exc))

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._limiter.acquire(self._subject)
        token = await self._tokens.token()
        status, _, text = await bounded_request(
            self._http,
            "POST",
            url,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout_s=REQUEST_TIMEOUT_S,
            max_body=MAX_BODY,
            content=jsoncodec.dumpb(body),
        )
        if status >= 400:
            raise ValueError(f"HTTP {status}: {text[:200]}")
        if text == TOO_LARGE:
            raise ValueError(f"HTTP {status}: an answer above {MAX_BODY} bytes refused")
        if not text:
            return {}
        doc = jsoncodec.loads(text)
        if not isinstance(doc, dict):
            raise TypeError("the answer is not a JSON object")
        return doc

    async def stop(self) -> None:
        """Stop every channel (bounded by ``stop_timeout_s``)."""
        channels = list(self._live.values())
        self._current.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._stop_timeout_s):
                await asyncio.gather(*(self._stop_channel(ch) for ch in channels))
