"""Inbox and Flag: the session's lean stand-ins for asyncio.Queue and asyncio.Event."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge_agent.mailbox import Flag, Inbox


async def test_inbox_is_fifo_and_bounded() -> None:
    box: Inbox[int] = Inbox(3)
    for i in range(3):
        box.put_nowait(i)
    assert box.full() and box.qsize() == 3
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(3)
    assert [await box.get() for _ in range(3)] == [0, 1, 2]
    assert box.qsize() == 0 and not box.full()


async def test_past_bound_items_are_never_refused_and_keep_their_place() -> None:
    box: Inbox[str] = Inbox(1)
    box.put_nowait("feedback")
    box.put_nowait("offline", past_bound=True)
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait("more feedback")
    box.put_nowait("online", past_bound=True)
    assert box.qsize() == 3
    assert [await box.get() for _ in range(3)] == ["feedback", "offline", "online"]


async def test_get_waits_for_an_item_and_has_one_consumer() -> None:
    box: Inbox[str] = Inbox(2)
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer"):
        await box.get()
    box.put_nowait("a")
    assert await getter == "a"
    # A cancelled get leaves the inbox usable.
    cancelled = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    box.put_nowait("b")
    assert await box.get() == "b"


async def test_put_waits_for_room_in_order() -> None:
    box: Inbox[int] = Inbox(1)
    box.put_nowait(0)
    first = asyncio.create_task(box.put(1))
    second = asyncio.create_task(box.put(2))
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    assert await box.get() == 0
    await first
    assert not second.done()
    assert await box.get() == 1
    await second
    assert await box.get() == 2


async def test_a_cancelled_putter_passes_its_room_on() -> None:
    box: Inbox[int] = Inbox(1)
    box.put_nowait(0)
    first = asyncio.create_task(box.put(1))
    second = asyncio.create_task(box.put(2))
    await asyncio.sleep(0)
    assert await box.get() == 0  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` gets the room
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1.0)
    assert await box.get() == 2
    # A putter cancelled while still waiting is simply forgotten.
    box.put_nowait(3)
    waiting = asyncio.create_task(box.put(4))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await box.get() == 3
    assert box.qsize() == 0


async def test_join_waits_for_task_done() -> None:
    box: Inbox[int] = Inbox(5)
    await box.join()  # nothing put: returns at once
    box.put_nowait(1)
    box.put_nowait(2)
    joined = asyncio.create_task(box.join())
    await box.get()
    box.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    await box.get()
    box.task_done()
    await asyncio.wait_for(joined, 1.0)
    with pytest.raises(ValueError):
        box.task_done()


def test_inbox_needs_room() -> None:
    with pytest.raises(ValueError):
        Inbox(0)


async def test_flag_wakes_its_waiter_and_stays_set_until_cleared() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one waiter"):
        await flag.wait()
    flag.set()
    await asyncio.wait_for(waiter, 1.0)
    await flag.wait()  # still set: returns at once
    flag.clear()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await flag.wait()
    # The timed-out wait left no waiter behind.
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    flag.set()
    await asyncio.wait_for(late, 1.0)


async def test_they_are_smaller_than_what_they_replace() -> None:
    # The point of them (see the module's docstring); the containers are counted shallowly.
    box: Inbox[int] = Inbox(10_000)
    queue: asyncio.Queue[int] = asyncio.Queue(10_000)
    size_box = sys.getsizeof(box) + sys.getsizeof(box._items) + 2 * sys.getsizeof([])
    size_queue = sum(
        sys.getsizeof(x)
        for x in (queue._getters, queue._putters, queue._queue)  # type: ignore[attr-defined]
    )
    assert size_box * 4 < size_queue
    event_waiters = asyncio.Event()._waiters  # type: ignore[attr-defined]
    assert sys.getsizeof(Flag()) * 4 < sys.getsizeof(event_waiters)
