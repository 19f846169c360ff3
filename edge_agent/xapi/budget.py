"""A bound on the device notifications a process holds, shared by every link on its loop.

Each link's reader hands every notification to its handler at once, and the agent's session
queues it until it is committed. When the fleet sends faster than the store commits (1,000
devices flooding 3,000 events/s into an agent that commits 1,500), each session's queue grows
without a fleet-wide bound: a 25 s flood left ~35,000 notifications queued, ~100 MiB of parsed
JSON (``bench/bench_pipeline.py --devices 1000``, RSS after the burst). The device's socket
buffers can hold them for free; the agent's heap cannot.

:class:`FeedbackBudget` counts the :class:`~.protocol.Feedback` objects alive: the reader stamps
each one it delivers with the budget (:meth:`FeedbackBudget.take`), and the count goes down when
the object is freed (``Feedback.__del__``), which for the session is once its worker has
committed it and let go. No consumer has to say it is done, so one that forgets cannot leak
the budget; one that keeps notifications (a list of them in a test) holds its share until it
lets go. At :attr:`~FeedbackBudget.limit` the budget closes: every reader on the loop finishes
the frame in hand and then reads nothing until the count is down to
:attr:`~FeedbackBudget.resume_at`. Nothing is dropped: the frames wait in the kernel's and the
device's buffers (TCP back-pressure), in order, and are read when there is room. A reader
waiting for room also stops its ping and probe clocks (it could not read their answers) and
starts them again when it resumes.

Fair shares: the budget is the loop's, but one link may hold at most
:attr:`~FeedbackBudget.share_max` of it (:class:`LinkShare`, one per client). Without that, a
device whose session is stuck (its worker waiting on something of its own) kept reading into
the shared budget until it held all of it, and every other reader waited up to
:data:`MAX_WAIT_S`. At its share a link's reader waits alone (its frames wait in its own TCP
buffers, in order) until it is down to 3/4 of its share; the others go on.

The budget is per event loop (:func:`loop_budget`), like the opening-handshake slots of
:mod:`.connect`: every :class:`~.client.XapiClient` on a loop shares it unless given its own.
"""

from __future__ import annotations

import asyncio
import weakref

FEEDBACK_LIMIT = 2048
"""Notifications alive at once per loop before the readers wait: ~3 KiB each once parsed and
queued (measured: ~100 MiB for 35,500), so ~6 MiB; 2 per device at 1,000 devices, and a
top-of-hour burst (2 per device) fits."""
RESUME_FRACTION = 0.75
"""The readers resume once the count is down to this fraction of the limit (hysteresis: they
do not wake for each notification freed)."""
SHARE_DIVISOR = 8
"""A link may hold at most 1/8 of the budget (256 of 2,048): ~85 s of a device flooding at
3 events/s, far more than a session that keeps up ever holds."""
SHARE_MIN = 64
"""...but never less than this (or the whole limit, if smaller): a small budget (tests, a
one-device agent) is not cut into shares that stall a link that merely bursts."""
MAX_WAIT_S = 30.0
"""Longest a reader waits for room before it reads one frame anyway: a notification caught in
a reference cycle is freed only by the garbage collector, so the budget can only be slow to
open, never stuck shut."""


class LinkShare:
    """What one link holds of its budget, and the gate its reader waits at past its share."""

    __slots__ = ("_room", "held")

    def __init__(self) -> None:
        self.held = 0
        self._room: asyncio.Future[None] | None = None


class FeedbackBudget:
    """The count of notifications alive and the gate readers wait at when it is full.

    Args:
        limit: notifications alive at which readers wait.
        resume_at: count at which they are let go again (default ``RESUME_FRACTION`` of limit).
        share_max: notifications one link may hold (default: 1/:data:`SHARE_DIVISOR` of the
            limit, at least :data:`SHARE_MIN` or the limit if smaller).
    """

    __slots__ = (
        "__weakref__",
        "_room",
        "held",
        "limit",
        "resume_at",
        "share_max",
        "share_resume_at",
        "waits",
    )

    def __init__(
        self,
        limit: int = FEEDBACK_LIMIT,
        resume_at: int | None = None,
        share_max: int | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a feedback budget needs a limit of at least 1, not {limit!r}")
        resume = int(limit * RESUME_FRACTION) if resume_at is None else resume_at
        if not 0 <= resume < limit:
            raise ValueError(f"resume_at must be in 0..{limit - 1}, not {resume_at!r}")
        share = share_max
        if share is None:
            share = max(min(limit, SHARE_MIN), limit // SHARE_DIVISOR)
        if not 1 <= share <= limit:
            raise ValueError(f"share_max must be in 1..{limit}, not {share_max!r}")
        self.limit = limit
        self.resume_at = resume
        self.share_max = share
        self.share_resume_at = int(share * RESUME_FRACTION)
        self.held = 0
        """Notifications delivered and not yet freed."""
        self.waits = 0
        """Times a reader found the budget full and waited (for the counters)."""
        self._room: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return self.held >= self.limit

    def full_for(self, share: LinkShare | None) -> bool:
        """Whether the budget is full, or ``share`` holds as much as one link may."""
        return self.held >= self.limit or share is not None and share.held >= self.share_max

    def take(self, share: LinkShare | None = None) -> None:
        """One notification delivered (its ``Feedback`` calls :meth:`release` when freed), by
        the link of ``share``."""
        self.held += 1
        if share is not None:
            share.held += 1

    def release(self, share: LinkShare | None = None) -> None:
        """One notification freed; opens the gate once the count is down to ``resume_at`` (and
        ``share``'s once it is down to ``share_resume_at``)."""
        self.held -= 1
        room = self._room
        if room is not None and self.held <= self.resume_at:
            self._room = None
            _open(room)
        if share is not None:
            share.held -= 1
            room = share._room
            if room is not None and share.held <= self.share_resume_at:
                share._room = None
                _open(room)

    def room(self) -> asyncio.Future[None] | None:
        """``None`` while there is room; else a future done when there is (shared, never
        cancel it: shield it)."""
        if self.held < self.limit:
            return None
        self.waits += 1
        return _gate(self)

    def room_for(self, share: LinkShare | None) -> asyncio.Future[None] | None:
        """:meth:`room`, and for ``share`` past its share a future of its own, done when it is
        down to ``share_resume_at``."""
        room = self.room()
        if room is not None or share is None or share.held < self.share_max:
            return room
        self.waits += 1
        return _gate(share)


def _gate(holder: FeedbackBudget | LinkShare) -> asyncio.Future[None]:
    """The future ``holder``'s readers wait on, made by the first one to wait."""
    room = holder._room
    if room is None:
        room = holder._room = asyncio.get_running_loop().create_future()
    return room


def _open(room: asyncio.Future[None]) -> None:
    if not room.done() and not room.get_loop().is_closed():
        room.set_result(None)


_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FeedbackBudget] = (
    weakref.WeakKeyDictionary()
)


def loop_budget() -> FeedbackBudget:
    """The running loop's shared budget (made on first use)."""
    loop = asyncio.get_running_loop()
    budget = _budgets.get(loop)
    if budget is None:
        budget = _budgets[loop] = FeedbackBudget()
    return budget
