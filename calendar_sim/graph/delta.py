"""calendarView/delta rounds and the state tokens behind ``$skiptoken`` and ``$deltatoken``.

As Graph documents it: the first request names the window (``startDateTime``,
``endDateTime``); every later one is a ``@odata.nextLink`` (``$skiptoken``: the rest of this
round) or a ``@odata.deltaLink`` (``$deltatoken``: changes since the round it ends). The tokens
encode the window, so the client sends nothing else. A round after a delta link holds events
added or changed since, and ``{"id", "@removed": {"reason": "deleted"}}`` for each event the
client was given and that is no longer in the window (deleted, or moved out of it).

State lives here, not in the token, bounded (least recently used go first): a token this store
no longer knows is answered 410 ``SyncStateNotFound``, which tells the client to start over.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from .model import Instance, Mailbox, split_occurrence

MAX_STATES = 200_000


@dataclass(frozen=True)
class Removed:
    id: str
    left_range: bool = False  # the event still exists, outside the round's range


@dataclass(frozen=True)
class SyncState:
    """What a delta link stands for: the window, how far the client is, what it holds."""

    mailbox: str
    start: datetime
    end: datetime
    seq: int
    known: frozenset[str]


@dataclass(frozen=True)
class Round:
    """A round's items, frozen when it began, and the state it ends in."""

    mailbox: str
    items: tuple[Instance | Removed, ...]
    ends_in: SyncState


@dataclass(frozen=True)
class Cursor:
    """What a next link stands for: a round and where the next page starts. Immutable, so a
    client that retries a next link (its answer was lost) gets the same page again."""

    round: Round
    position: int

    @property
    def mailbox(self) -> str:
        return self.round.mailbox


def _exists(box: Mailbox, item_id: str) -> bool:
    """Whether ``item_id`` (an event, or an occurrence of a series) is still in the mailbox."""
    event = box.events.get(item_id)
    if event is not None:
        return not event.is_cancelled
    occurrence = split_occurrence(item_id)
    if occurrence is None:
        return False
    master = box.events.get(occurrence[0])
    if master is None or master.is_cancelled:
        return False
    return occurrence[1] not in master.cancelled_dates


def compute_round(
    box: Mailbox, start: datetime, end: datetime, since: SyncState | None
) -> tuple[list[Instance | Removed], SyncState]:
    """The items of a round over ``[start, end)`` and the state it leaves the client in."""
    current = box.instances(start, end)
    ids = frozenset(i.id for i in current)
    items: list[Instance | Removed]
    if since is None:
        items = [i.snapshot() for i in current]
    else:
        items = [i.snapshot() for i in current if i.version > since.seq or i.id not in since.known]
        items += [Removed(gone, _exists(box, gone)) for gone in sorted(since.known - ids)]
    return items, SyncState(box.address.lower(), start, end, box.seq, ids)


class SyncStates:
    """The tokens handed out, least recently used first out past ``limit``."""

    def __init__(self, limit: int = MAX_STATES) -> None:
        self.limit = limit
        self._states: OrderedDict[str, SyncState | Cursor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def put(self, state: SyncState | Cursor) -> str:
        token = secrets.token_urlsafe(24)
        self._states[token] = state
        while len(self._states) > self.limit:
            self._states.popitem(last=False)
        return token

    def get(self, token: str) -> SyncState | Cursor | None:
        state = self._states.get(token)
        if state is not None:
            self._states.move_to_end(token)
        return state

    def invalidate(self, mailbox: str | None = None) -> int:
        """Forget every token (or those of ``mailbox``): their next use gets 410."""
        box = mailbox.lower() if mailbox else None
        gone = [
            token
            for token, state in self._states.items()
            if box is None
            or state.mailbox == box
            or (isinstance(state, Round) and state.ends_in.mailbox == box)
        ]
        for token in gone:
            del self._states[token]
        return len(gone)
