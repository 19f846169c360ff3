"""Graph behind the one calendar poller (:mod:`edge_agent.calendars.poller`): the
:class:`GraphSource` adapter (places directory, one ``calendarView/delta`` chain per round) and
:class:`GraphPoller`, the poller over it. Pacing, failures and the store are the shared poller's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from edge_agent.calendars.graph.client import GraphClient, GraphRoom
from edge_agent.calendars.graph.events import to_delta_items
from edge_agent.calendars.model import CalendarBooking
from edge_agent.calendars.poller import (
    CalendarPoller,
    CalendarRoom,
    CalendarStore,
    FetchedRound,
    RoomStatus,
    RoomUpdate,
    first_poll_delay,
    next_poll_delay,
)
from edge_agent.calendars.sync import RoundPlan

__all__ = [
    "CalendarRoom",
    "CalendarStore",
    "GraphPoller",
    "GraphSource",
    "RoomStatus",
    "RoomUpdate",
    "first_poll_delay",
    "next_poll_delay",
]


class GraphSource:
    """:class:`~edge_agent.calendars.poller.CalendarSource` over a :class:`GraphClient`."""

    name = "graph"
    source: Literal["microsoft"] = "microsoft"

    def __init__(self, client: GraphClient) -> None:
        self._client = client

    async def list_rooms(self) -> list[GraphRoom]:
        return await self._client.list_rooms()

    async def fetch_round(
        self, room: CalendarRoom, plan: RoundPlan, stored: Mapping[str, CalendarBooking]
    ) -> FetchedRound:
        got = await self._client.calendar_delta(
            room.room_id, room.mailbox, plan.bounds, plan.delta_link
        )
        items, notes = to_delta_items(got.values, stored, room.time_zone)
        return FetchedRound(items, got.delta_link, notes)

    def forget_mailbox(self, mailbox: str) -> None:
        self._client.forget_mailbox(mailbox)


class GraphPoller(CalendarPoller):
    """Every Graph room: :class:`CalendarPoller` over :class:`GraphSource` (same keywords)."""

    def __init__(self, client: GraphClient, store: CalendarStore, **options: Any) -> None:
        super().__init__(GraphSource(client), store, **options)
