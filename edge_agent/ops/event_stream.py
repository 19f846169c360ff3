"""``GET /v1/events/stream``: the events the store commits, as they are committed (NDJSON).

What ``edge-agent tail`` reads. The outbox itself cannot serve this: a delivered event's row is
deleted in the very transaction that records its delivery, often milliseconds after it was
stored, so a reader polling the table would miss most events. The store calls
:meth:`EventFeed.publish` with each change's events once they are durable
(``Store.on_committed``; in a fleet ``PostgresStore.on_committed``: this member's own commits,
so ``tail`` against a member shows the devices and rooms that member holds).

Bounded: at most :data:`MAX_SUBSCRIBERS` streams at once (the next gets 503), each with a
queue of :data:`QUEUE_MAX` events. A subscriber that falls that far behind is not waited for
(the agent never slows down for a terminal): its stream ends with one line
``{"error": "...", "dropped": n}``. A blank line is sent every :data:`KEEPALIVE_S` so a client
and any proxy see the stream is alive.

Filters (query): ``room=ID`` (repeatable; by ``data.room_id``, so calendar-only rooms too;
``device=ID`` is the same), ``type=PATTERN`` (repeatable; shell-style, so ``booking.*``).
Private bookings in ``data.booking`` / ``data.bookings`` lose title and organizer unless
``[api] show_private`` (:func:`edge_agent.ops.status_page.booking_view`).
An event committed twice (the store ignores a repeated ``event_id``) may show twice.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from edge_agent import jsoncodec
from edge_agent.ops.status_page import booking_view

__all__ = ["EventFeed", "EventFilter", "Subscription", "stream_response"]

MAX_SUBSCRIBERS = 8
QUEUE_MAX = 1000
KEEPALIVE_S = 15.0


@dataclass(frozen=True, slots=True)
class EventFilter:
    devices: frozenset[str] = frozenset()
    """Room ids (``?room=``, or its older name ``?device=``): an event matches by its
    ``data.room_id`` (every room event has one, a calendar-only room's too) or, for an event
    about a device, by ``data.device_id``."""
    types: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: MultiMapping[str]) -> EventFilter:
        """``?room=ID`` / ``?device=ID`` (repeatable, the same thing), ``?type=PATTERN``."""
        rooms = [*query.getall("room", []), *query.getall("device", [])]
        return cls(devices=frozenset(rooms), types=tuple(query.getall("type", [])))

    def matches(self, envelope: Mapping[str, Any]) -> bool:
        data = envelope.get("data")
        data = data if isinstance(data, Mapping) else {}
        if self.devices and not (
            data.get("room_id") in self.devices or data.get("device_id") in self.devices
        ):
            return False
        etype = str(envelope.get("type", ""))
        return not self.types or any(fnmatch.fnmatchcase(etype, t) for t in self.types)


@dataclass(eq=False, slots=True)
class Subscription:
    """One open stream: its filter and queue (``None`` in the queue: the feed closed)."""

    only: EventFilter
    queue: asyncio.Queue[Mapping[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_MAX + 1)  # + room for the closing None
    )
    dropped: int = 0
    """Events not queued since the queue was full (the stream then ends)."""


class EventFeed:
    """Fans committed events out to the open streams; never blocks the committer."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Offer ``events`` to every stream (called by the store after each commit)."""
        for sub in self._subscriptions:
            for envelope in events:
                if not sub.only.matches(envelope):
                    continue
                if sub.dropped or sub.queue.qsize() >= QUEUE_MAX:
                    sub.dropped += 1
                    continue
                sub.queue.put_nowait(envelope)

    def subscribe(self, only: EventFilter) -> Subscription | None:
        """A new stream, or ``None`` when :data:`MAX_SUBSCRIBERS` are open or the feed closed."""
        if self._closed or len(self._subscriptions) >= MAX_SUBSCRIBERS:
            return None
        sub = Subscription(only)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def close(self) -> None:
        """End every stream (the agent is stopping: the server waits for open handlers)."""
        self._closed = True
        for sub in self._subscriptions:
            sub.queue.put_nowait(None)


def _redacted(envelope: Mapping[str, Any], show_private: bool) -> Mapping[str, Any]:
    data = envelope.get("data")
    if show_private or not isinstance(data, Mapping):
        return envelope
    changed: dict[str, Any] = {}
    booking = data.get("booking")
    if isinstance(booking, Mapping):
        changed["booking"] = booking_view(booking, False)
    bookings = data.get("bookings")
    if isinstance(bookings, list):
        changed["bookings"] = [
            booking_view(b, False) if isinstance(b, Mapping) else b for b in bookings
        ]
    return {**envelope, "data": {**data, **changed}} if changed else envelope


async def stream_response(
    request: web.Request, feed: EventFeed, *, show_private: bool, keepalive_s: float = KEEPALIVE_S
) -> web.StreamResponse:
    """Serve one stream until the client goes away (or falls too far behind).

    Cancelling it (the client disconnected, the server stopping) is safe: it unsubscribes.
    """
    only = EventFilter.from_query(request.query)
    sub = feed.subscribe(only)
    if sub is None:
        raise web.HTTPServiceUnavailable(
            reason=f"no stream: {MAX_SUBSCRIBERS} are open already, or the agent is stopping"
        )
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        while True:
            if sub.dropped and sub.queue.empty():
                line = {
                    "error": f"this stream fell {QUEUE_MAX} events behind; reconnect",
                    "dropped": sub.dropped,
                }
                await resp.write(jsoncodec.dumpb(line) + b"\n")
                break
            try:
                async with asyncio.timeout(keepalive_s):
                    envelope = await sub.queue.get()
            except TimeoutError:
                await resp.write(b"\n")
                continue
            if envelope is None:
                break
            await resp.write(jsoncodec.dumpb(_redacted(envelope, show_private)) + b"\n")
        await resp.write_eof()
        return resp
    finally:
        feed.unsubscribe(sub)
