"""Push channels of ``events.watch``: a ``sync`` message at once, ``exists`` on each change.

Google posts no body: the headers say it all (``X-Goog-Channel-ID``, ``X-Goog-Channel-Token``,
``X-Goog-Resource-ID``, ``X-Goog-Resource-State``, ``X-Goog-Message-Number``, ...). A channel
lives until its ``expiration`` (simulated clock; ``params.ttl`` seconds, default 7 days) or
``channels.stop``; an id already in use is refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from device_sim.clock import SimClock

from .model import GoogleError, ResourceCalendar

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 7 * 86400
QUEUE_LIMIT = 10_000


@dataclass
class Channel:
    id: str
    resource_id: str
    calendar: str
    address: str
    token: str | None
    expiration: datetime
    messages: int = 0

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "api#channel",
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": f"https://www.googleapis.com/calendar/v3/calendars/{self.calendar}"
            "/events?alt=json",
            "expiration": str(int(self.expiration.timestamp() * 1000)),
        }
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass
class Push:
    channel_id: str
    state: str
    status: int | None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Channels:
    def __init__(
        self, clock: SimClock, ssl_context: ssl.SSLContext | None, allow_http: bool
    ) -> None:
        self.clock = clock
        self.ssl_context = ssl_context
        self.allow_http = allow_http
        self.items: dict[str, Channel] = {}
        self.pushes: deque[Push] = deque(maxlen=QUEUE_LIMIT)
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Channel, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Post queued messages until cancelled (safe to cancel)."""
        self._session = aiohttp.ClientSession()
        try:
            while True:
                channel, state = await self._queue.get()
                await self._post(channel, state)
        finally:
            await self._session.close()
            self._session = None

    async def _post(self, channel: Channel, state: str) -> None:
        channel.messages += 1
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": channel.expiration.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.json()["resourceUri"],
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(channel.messages),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        status: int | None = None
        error: str | None = None
        assert self._session is not None
        tls: ssl.SSLContext | bool = False
        if channel.address.startswith("https:"):
            tls = self.ssl_context if self.ssl_context is not None else True
        try:
            async with self._session.post(
                channel.address,
                data=b"",
                headers=headers,
                ssl=tls,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("google-sim: push to %s failed: %s", channel.address, error)
        self.pushes.append(Push(channel.id, state, status, error, headers))

    def _enqueue(self, channel: Channel, state: str) -> None:
        try:
            self._queue.put_nowait((channel, state))
        except asyncio.QueueFull:
            self.dropped += 1

    async def open(self, cal: ResourceCalendar, body: dict[str, Any]) -> Channel:
        channel_id = body.get("id")
        address = body.get("address")
        if not isinstance(channel_id, str) or not channel_id:
            raise GoogleError(400, "required", "Required: channel id.")
        if body.get("type") not in ("web_hook", "webhook"):
            raise GoogleError(400, "invalid", "Invalid value for type: must be web_hook.")
        scheme = urlsplit(str(address)).scheme
        if scheme != "https" and not (self.allow_http and scheme == "http"):
            raise GoogleError(400, "push.webhookUrlNotHttps", "WebHook callback must be HTTPS.")
        if channel_id in self.items:
            raise GoogleError(400, "channelIdNotUnique", f"Channel id {channel_id} not unique.")
        try:
            ttl = float((body.get("params") or {}).get("ttl", DEFAULT_TTL_S))
        except (TypeError, ValueError):
            raise GoogleError(400, "invalid", "Invalid value for params.ttl.") from None
        token = body.get("token")
        channel = Channel(
            id=channel_id,
            resource_id=f"res-{cal.resource_id}",
            calendar=cal.email.lower(),
            address=str(address),
            token=None if token is None else str(token),
            expiration=self.clock.now() + timedelta(seconds=ttl),
        )
        self.items[channel_id] = channel
        self._enqueue(channel, "sync")
        return channel

    def stop(self, channel_id: str, resource_id: str) -> None:
        channel = self.items.get(channel_id)
        if channel is None or channel.resource_id != resource_id:
            raise GoogleError(404, "notFound", f"Channel '{channel_id}' not found for project.")
        del self.items[channel_id]

    def changed(self, calendar: str) -> None:
        now = self.clock.now()
        for channel in list(self.items.values()):
            if channel.expiration <= now:
                del self.items[channel.id]
            elif channel.calendar == calendar.lower():
                self._enqueue(channel, "exists")
