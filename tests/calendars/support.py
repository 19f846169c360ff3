"""What the poller tests of every source share: an in-memory CalendarStore and a pinned clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

from edge_agent.calendars.poller import RoomUpdate
from edge_agent.calendars.sync import SyncState


class PinnedClock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return time.monotonic()


class MemoryStore:
    def __init__(self) -> None:
        self.states: dict[str, SyncState] = {}
        self.updates: list[RoomUpdate] = []
        self.fail_saves = 0  # the next N saves raise, as a full disk would
        self.failed = 0
        self._changed = asyncio.Condition()

    async def load_sync_state(self, room_id: str) -> SyncState | None:
        return self.states.get(room_id)

    async def save_sync_state(
        self, room_id: str, state: SyncState, update: RoomUpdate | None
    ) -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            self.failed += 1
            raise OSError("database or disk is full")
        if state == SyncState():
            self.states.pop(room_id, None)
        else:
            self.states[room_id] = state
        if update is not None:
            self.updates.append(update)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(pred)

    def changes(self, room_id: str) -> list[tuple[str, str]]:
        return [
            (c.type, c.booking.id) for u in self.updates if u.room_id == room_id for c in u.changes
        ]

    def snapshots(self, room_id: str) -> list[list[str]]:
        return [
            [b.id for b in u.snapshot]
            for u in self.updates
            if u.room_id == room_id and u.snapshot is not None
        ]
