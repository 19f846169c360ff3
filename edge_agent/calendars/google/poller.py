"""Google behind the one calendar poller (:mod:`edge_agent.calendars.poller`): the
:class:`GoogleSource` adapter (resource calendars, one events.list chain per round; the stored
"delta link" of a room is its ``nextSyncToken``) and :class:`GooglePoller`, the poller over it.
Pacing, failures and the store are the shared poller's; the request quota is the client's
rate limiter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from edge_agent.calendars.google.client import GoogleClient, GoogleRoom
from edge_agent.calendars.google.events import to_delta_items
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.poller import CalendarPoller, CalendarRoom, CalendarStore, FetchedRound
from edge_agent.calendars.sync import RoundPlan

__all__ = ["GooglePoller", "GoogleSource"]


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


class GooglePoller(CalendarPoller):
    """Every Google room: :class:`CalendarPoller` over :class:`GoogleSource` (same keywords)."""

    def __init__(self, client: GoogleClient, store: CalendarStore, **options: Any) -> None:
        super().__init__(GoogleSource(client), store, **options)
