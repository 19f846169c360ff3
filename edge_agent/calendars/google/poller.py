"""Google behind the one calendar poller (:mod:`edge_agent.calendars.poller`): the
:class:`GoogleSource` adapter (resource calendars, one events.list chain per round; the stored
"delta link" of a room is its ``nextSyncToken``) and :class:`GooglePoller`, the poller over it.
Pacing, failures and the store are the shared poller's; the request quota is planned here and
guarded by the client's rate limiter.

The quota plan: every request runs as one impersonated subject, so all rooms share Google's
600 requests/min per user (the limiter sends at most 500/min by default). A poller whose rooms
would need more -- 2,000 rooms every 60 s are 2,000/min -- polls each room at
:func:`~edge_agent.calendars.ratelimit.quota_poll_interval_s` instead (267 s for 2,000 rooms),
and says so once in the log. Without the plan the limiter still held the rate, but every
round queued behind the others, and a fetch after a push notification waited minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import structlog

from edge_agent.calendars.google.client import GoogleClient, GoogleRoom
from edge_agent.calendars.google.events import to_delta_items
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.poller import CalendarPoller, CalendarRoom, CalendarStore, FetchedRound
from edge_agent.calendars.ratelimit import quota_poll_interval_s
from edge_agent.calendars.sync import RoundPlan

__all__ = ["GooglePoller", "GoogleSource", "QuotaPlan"]

log = structlog.get_logger(__name__)


class GoogleSource:
    """:class:`~edge_agent.calendars.poller.CalendarSource` over a :class:`GoogleClient`."""

    name = "google"
    source: Literal["google"] = "google"

    def __init__(self, client: GoogleClient) -> None:
        self._client = client

    async def list_rooms(self) -> list[GoogleRoom]:
        return await self._client.list_rooms()

    async def fetch_round(
        self, room: CalendarRoom, plan: RoundPlan, stored: Mapping[str, CalendarBooking]
    ) -> FetchedRound:
        del stored  # Google items are whole events: nothing to lay over the stored copy
        got = await self._client.list_events(
            room.room_id, room.mailbox, plan.bounds, plan.delta_link
        )
        items, notes = to_delta_items(got.values, room.time_zone)
        return FetchedRound(items, got.sync_token, notes)

    def forget_mailbox(self, mailbox: str) -> None:
        del mailbox  # no per-calendar state: the quota is per subject, not per room


class QuotaPlan:
    """The poll interval the rooms of one subject fit in: ``interval_s(base)`` is the larger of
    ``base`` and what the limiter's rate allows for the running rooms (``rooms(n)``)."""

    def __init__(self, per_minute: float, poll_interval_s: float, subject: str) -> None:
        self.per_minute = per_minute
        self.poll_interval_s = poll_interval_s
        self.subject = subject
        self.rooms = 0
        self.floor_s = 0.0

    def set_rooms(self, n: int) -> None:
        before = self.floor_s
        self.rooms = n
        self.floor_s = quota_poll_interval_s(n, self.per_minute)
        if self.floor_s > self.poll_interval_s and round(self.floor_s) != round(before):
            log.warning(
                "google request quota: polling stretched",
                rooms=n,
                subject=self.subject,
                asked_s=self.poll_interval_s,
                polling_every_s=round(self.floor_s, 1),
                wanted_per_min=round(n * 60.0 / self.poll_interval_s),
                limiter_per_min=self.per_minute,
                why=f"every request runs as {self.subject}, and Google allows 600 a minute per "
                f"user; {n} rooms every {self.poll_interval_s:g} s would need more. Set "
                "notification_url (push) for changes in seconds, or raise the project's "
                "per-user quota and the limiter together",
            )
        elif before > self.poll_interval_s >= self.floor_s:
            log.info("google request quota: polling back to poll_interval_s", rooms=n)

    def interval_s(self, base_s: float) -> float:
        return max(base_s, self.floor_s)


class GooglePoller(CalendarPoller):
    """Every Google room: :class:`CalendarPoller` over :class:`GoogleSource` (same keywords),
    paced by a :class:`QuotaPlan` over the client's limiter (``interval_for`` and
    ``on_rooms`` given by the caller still apply: push stretches a room's interval further)."""

    def __init__(self, client: GoogleClient, store: CalendarStore, **options: Any) -> None:
        self.limiter = client.limiter  # for whatever else calls as the subject (bookings)
        self.quota_plan = plan = QuotaPlan(
            client.limiter.per_minute, float(options.get("poll_interval_s", 60.0)), client.subject
        )
        interval_for: Callable[[str, float], float] | None = options.pop("interval_for", None)
        on_rooms: Callable[[Mapping[str, CalendarRoom]], None] | None = options.pop(
            "on_rooms", None
        )

        def planned_interval(room_id: str, base_s: float) -> float:
            wanted = interval_for(room_id, base_s) if interval_for is not None else base_s
            return plan.interval_s(wanted)

        def rooms_changed(rooms: Mapping[str, CalendarRoom]) -> None:
            plan.set_rooms(len(rooms))
            if on_rooms is not None:
                on_rooms(rooms)

        super().__init__(
            GoogleSource(client),
            store,
            interval_for=planned_interval,
            on_rooms=rooms_changed,
            **options,
        )
