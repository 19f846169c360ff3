"""Events just committed, kept in memory for one sink's drainer (bounded).

A drainer that keeps up reads back, a few milliseconds after the commit, the very rows the
writer just wrote: a thread hop, a query and a JSON parse per event for what the process had in
hand. The writer hands each committed event to every sink's :class:`RecentEvents`, and the
store serves a drainer's read from it when it holds the whole answer; otherwise (a restart, a
backlog past the bound, a replay) the read goes to the database as before. Nothing changes for
durability: only committed events get here, and the outbox rows stay until delivered.

Exactness: per stream, ``_since[stream]`` is a seq such that every event of that stream with a
seq at or above it is held (events are added in seq order). A read ``(after, limit)`` is served
only when ``after + 1 >= _since[stream]``; a stream that gets rows some other way (a dead-letter
replay inserts rows for one sink only) is forgotten, so its next reads go to the database.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from edge_agent.forward.schedule import OutboxEvent

RECENT_MAX_EVENTS = 2000
"""Events held per sink. A drainer that keeps up needs a few hundred at most; past the bound
(the receiver is down) everything is dropped and reads go to the database until it catches up."""


class RecentEvents:
    """One sink's recently committed events, per stream in seq order."""

    def __init__(self, max_events: int = RECENT_MAX_EVENTS) -> None:
        self._max = max(1, max_events)
        self._streams: dict[str, deque[OutboxEvent]] = {}
        self._since: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, event: OutboxEvent) -> None:
        """``event`` is committed (for every sink), with a seq above all held for its stream."""
        stream = event.device_id
        q = self._streams.get(stream)
        if q is None:
            q = self._streams[stream] = deque()
            self._since.setdefault(stream, event.seq)
        q.append(event)
        self._count += 1
        if self._count > self._max:
            self.clear()

    def read(self, stream: str, after: int, limit: int) -> list[OutboxEvent] | None:
        """The stream's first ``limit`` events after ``after``, or ``None`` when the database
        may hold some that are not here. Events up to ``after`` are dropped (the sink is done
        with them)."""
        since = self._since.get(stream)
        if since is None or after + 1 < since:
            return None
        q = self._streams.get(stream)
        if q is None:  # all it had was done with, and nothing came since
            return []
        self._drop_upto(stream, q, after)
        return list(islice(q, limit))

    def done(self, stream: str, upto: int) -> None:
        """The sink is done with ``stream`` up to ``upto`` (delivered or dead-lettered)."""
        q = self._streams.get(stream)
        if q is not None:
            self._drop_upto(stream, q, upto)

    def _drop_upto(self, stream: str, q: deque[OutboxEvent], upto: int) -> None:
        while q and q[0].seq <= upto:
            q.popleft()
            self._count -= 1
        if not q:
            # Every later event of the stream still comes through add(): exact from here on.
            # The empty deque goes (~0.7 KiB each, one per device once its events are sent).
            self._since[stream] = max(self._since[stream], upto + 1)
            del self._streams[stream]

    def forget(self, stream: str) -> None:
        """``stream`` got rows that did not come through :meth:`add` (a replay)."""
        q = self._streams.pop(stream, None)
        self._since.pop(stream, None)
        if q is not None:
            self._count -= len(q)

    def clear(self) -> None:
        """Hold nothing (past the bound, or the outbox cap moved rows away)."""
        self._streams.clear()
        self._since.clear()
        self._count = 0
