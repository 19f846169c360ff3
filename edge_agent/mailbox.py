"""The two synchronisation primitives a device session needs, sized for a fleet.

``asyncio.Queue`` holds three deques and an ``Event``, and every deque allocates a 64-slot block
up front: 3.2 KiB per queue, 0.8 KiB per ``Event``. A session has one queue and two events, so
with 1,000 devices that was 5 MiB of empty containers. :class:`Inbox` and :class:`Flag` do the
same jobs for the session's one consumer (its worker, its lister, its clock loop) in a few
hundred bytes.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A bounded FIFO for one consumer: the part of ``asyncio.Queue`` a session uses.

    ``put_nowait`` raises ``asyncio.QueueFull`` when full, unless told ``past_bound`` (for the
    rare items that must not be refused); ``put`` waits for room (several producers may wait);
    ``get`` waits for an item (one consumer at a time); ``task_done`` and ``join`` count the
    items taken but not yet handled, as ``asyncio.Queue`` does.
    """

    __slots__ = ("_items", "_maxsize", "_unfinished", "_getter", "_putters", "_joiners")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an Inbox needs room for at least one item")
        # A list, not a deque: the inbox is almost always empty, and popping the head of a
        # short list costs less than a deque's fixed block.
        self._items: list[T] = []
        self._maxsize = maxsize
        self._unfinished = 0
        self._getter: asyncio.Future[None] | None = None
        self._putters: list[asyncio.Future[None]] = []
        self._joiners: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    def put_nowait(self, item: T, *, past_bound: bool = False) -> None:
        if len(self._items) >= self._maxsize and not past_bound:
            raise asyncio.QueueFull
        self._items.append(item)
        self._unfinished += 1
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def put(self, item: T) -> None:
        while len(self._items) >= self._maxsize:
            room = asyncio.get_running_loop().create_future()
            self._putters.append(room)
            try:
                await room
            except asyncio.CancelledError:
                if room in self._putters:
                    self._putters.remove(room)
                elif len(self._items) < self._maxsize:
                    self._wake_putter()  # the room it was woken for goes to the next one
                raise
        self.put_nowait(item)

    async def get(self) -> T:
        while not self._items:
            if self._getter is not None:
                raise RuntimeError("Inbox.get() is already waiting: an inbox has one consumer")
            self._getter = ready = asyncio.get_running_loop().create_future()
            try:
                await ready
            finally:
                self._getter = None
        item = self._items.pop(0)
        self._wake_putter()
        return item

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called more times than there were items")
        self._unfinished -= 1
        if self._unfinished == 0:
            joiners, self._joiners = self._joiners, []
            for fut in joiners:
                if not fut.done():
                    fut.set_result(None)

    async def join(self) -> None:
        """Wait until every item put has been taken and marked done."""
        if self._unfinished:
            done = asyncio.get_running_loop().create_future()
            self._joiners.append(done)
            try:
                await done
            finally:
                if done in self._joiners:
                    self._joiners.remove(done)

    def _wake_putter(self) -> None:
        while self._putters:
            room = self._putters.pop(0)
            if not room.done():
                room.set_result(None)
                return


class Flag:
    """``asyncio.Event`` for a single waiter: ``set``, ``clear``, ``is_set``, ``wait``."""

    __slots__ = ("_value", "_waiter")

    def __init__(self) -> None:
        self._value = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> None:
        if self._value:
            return
        if self._waiter is not None:
            raise RuntimeError("Flag.wait() is already waiting: a flag has one waiter")
        self._waiter = fut = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._waiter = None
