"""The hot path's shortcuts keep the semantics they replace (issue 17).

- ``plan.observed_at`` reads ``data.observed_at`` without ``parse_utc``: same seconds, same
  ``None`` for what it cannot read.
- The drainer makes devices backing off from a ``Retry`` due once another device got through
  after retries (the receiver is back), never earlier than their ``Retry-After``; a ``Reject``
  keeps its backoff.
- The group writer runs a whole transaction in one call on the connection's thread: a group
  is still all or nothing (a failing group stores none of its rows and the writer goes on),
  and the event counter still counts every event, by type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from edge_agent.backoff import Backoff
from edge_agent.clock import parse_utc
from edge_agent.forward.base import Delivered, Outcome, OutboxEvent, Reject, Retry
from edge_agent.forward.drainer import Drainer
from edge_agent.metrics import EVENTS
from edge_agent.store import Change, Store, StoreError
from edge_agent.store.plan import observed_at
from tests.store.outbox import drain_all, env


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T09:00:00.123Z",
        "2026-11-23T09:00:00Z",
        "2026-11-23T10:00:00.5+01:00",
        "2026-11-23T09:00:00",  # naive: read as UTC, as parse_utc does
        "2026-03-29T01:59:59.999-07:00",
    ],
)
def test_observed_at_matches_parse_utc(text: str) -> None:
    assert observed_at({"data": {"observed_at": text}}) == parse_utc(text).timestamp()


@pytest.mark.parametrize("value", ["", "yesterday", "2026-13-01T00:00:00Z", 12.5, None])
def test_observed_at_is_none_for_what_it_cannot_read(value: object) -> None:
    assert observed_at({"data": {"observed_at": value}}) is None
    assert observed_at({"data": "not a dict"}) is None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db")
    yield s
    await s.close()


def counted(etype: str) -> float:
    return float(EVENTS.labels(type=etype)._value.get())


async def test_grouped_commits_count_every_event_by_type(store: Store) -> None:
    before = counted("booking.started"), counted("booking.ended")
    await asyncio.gather(
        *(
            store.commit(
                Change(
                    f"d{i % 7}",
                    events=[
                        env(f"d{i % 7}", 2 * i, "booking.started"),
                        env(f"d{i % 7}", 2 * i + 1, "booking.ended"),
                    ],
                )
            )
            for i in range(300)
        )
    )
    assert counted("booking.started") - before[0] == 300
    assert counted("booking.ended") - before[1] == 300
    events = await drain_all(store)
    assert len(events) == 600
    for d in range(7):  # in commit order per device
        ns = [e.envelope["data"]["n"] for e in events if e.device_id == f"d{d}"]
        assert ns == sorted(ns)


async def test_a_failed_group_stores_none_of_its_rows_and_the_next_one_lands(
    tmp_path: Path,
) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await s.commit(Change("d", events=[env("d", 0)]))
        pages = (await s._writer.execute("PRAGMA page_count"))[0][0]
        await s._writer.execute(f"PRAGMA max_page_count={pages}")  # the disk is "full"
        big = {f"k{i}": {"blob": "x" * 2000} for i in range(50)}
        with pytest.raises(StoreError, match="full"):
            await s.commit(Change("d", window_upsert=big, events=[env("d", 1)]))
        await s._writer.execute("PRAGMA max_page_count=1073741823")
        assert await s.load_window("d") == {}  # nothing of the failed group
        await s.commit(Change("d", events=[env("d", 2)]))
        ns = [e.envelope["data"]["n"] for e in await drain_all(s)]
        assert ns == [0, 2]
    finally:
        await s.close()


# -- the drainer: a receiver that is back makes the devices backing off due -------------------


class ScriptedSink:
    """Answers each device's sends from its script (then Delivered); records what it saw."""

    name = "webhook"
    max_batch = 20

    def __init__(self, script: dict[str, list[Outcome]]) -> None:
        self.script = script
        self.sent: list[tuple[str, float]] = []  # (device, fake time)
        self.clock = 1000.0

    async def run(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        device = events[0].device_id
        self.sent.append((device, self.clock))
        todo = self.script.get(device, [])
        return todo.pop(0) if todo else Delivered()

    async def close(self) -> None:
        return None


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.005)


async def run_drainer(
    store: Store, sink: ScriptedSink, probe_every_s: float | None = None
) -> AsyncIterator[Drainer]:
    slow = Backoff(initial=30.0, maximum=300.0, factor=2.0, jitter=0.0)
    drainer = Drainer(
        store, sink, backoff=slow, clock=lambda: sink.clock, probe_every_s=probe_every_s
    )
    task = asyncio.create_task(drainer.run(), name="test.drainer")
    try:
        yield drainer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("retry_after", [None, 100.0])
async def test_a_device_through_after_retries_makes_the_others_due(
    store: Store, retry_after: float | None
) -> None:
    sink = ScriptedSink(
        {"a": [Retry("503")], "b": [Retry("503", retry_after=retry_after)]}
    )
    async with contextlib.asynccontextmanager(run_drainer)(store, sink) as drainer:
        await store.commit(Change("a", events=[env("a", 0)]))
        await until(lambda: "a" in drainer.retrying())  # a: due at 1030
        sink.clock = 1020.0
        await store.commit(Change("b", events=[env("b", 0)]))
        await until(lambda: "b" in drainer.retrying())  # b: due at 1050 (1120: Retry-After)
        assert drainer.retrying()["b"]["next_attempt_at"] == 1020.0 + (retry_after or 30.0)
        sink.clock = 1031.0
        await store.commit(Change("c", events=[env("c", 0)]))  # wakes the drainer
        await until(lambda: drainer.stats().delivered >= 2)  # c, and a (due) got through
        if retry_after is None:
            await until(lambda: drainer.stats().delivered == 3)
            assert ("b", 1031.0) in sink.sent  # at once, not at 1050
            assert drainer.retrying() == {}
        else:
            await until(lambda: ("a", 1031.0) in sink.sent)
            # The receiver's Retry-After still holds: b is due at 1120, no earlier.
            assert drainer.retrying()["b"]["next_attempt_at"] == 1120.0


async def test_a_rejected_device_is_not_made_due_by_another_ones_recovery(store: Store) -> None:
    # A rejected single event is dead-lettered at once; a rejected batch backs off to be split.
    sink = ScriptedSink({"a": [Retry("503")], "b": [Reject("400 bad", status=400)]})
    async with contextlib.asynccontextmanager(run_drainer)(store, sink) as drainer:
        await store.commit(Change("a", events=[env("a", 0)]))
        await until(lambda: "a" in drainer.retrying())
        sink.clock = 1020.0
        await store.commit(Change("b", events=[env("b", 0), env("b", 1)]))
        await until(lambda: "b" in drainer.retrying())  # b: due at 1050
        due_b = drainer.retrying()["b"]["next_attempt_at"]
        sink.clock = 1031.0
        await store.commit(Change("c", events=[env("c", 0)]))
        await until(lambda: ("a", 1031.0) in sink.sent)
        await until(lambda: drainer.stats().delivered >= 2)
        assert drainer.retrying()["b"]["next_attempt_at"] == due_b  # a 4xx keeps its backoff


async def test_an_outage_is_probed_by_one_device_and_its_return_drains_everyone(
    store: Store,
) -> None:
    sink = ScriptedSink({"a": [Retry("503")], "b": [Retry("503")]})
    drainer_cm = contextlib.asynccontextmanager(run_drainer)(store, sink, probe_every_s=5.0)
    async with drainer_cm as drainer:
        await store.commit(Change("a", events=[env("a", 0)]))
        await until(lambda: "a" in drainer.retrying())  # a: due at 1030
        sink.clock = 1002.0
        await store.commit(Change("b", events=[env("b", 0)]))
        await until(lambda: "b" in drainer.retrying())  # b: due at 1032
        sink.clock = 1004.0  # 2 s since the last try: no probe yet
        await store.commit(Change("c", events=[env("c", 0)]))
        await until(lambda: ("c", 1004.0) in sink.sent)
        await store.flush()
        assert [d for d, _ in sink.sent] == ["a", "b", "c"]
        sink.clock = 1008.0  # 6 s: the device due soonest tries now, and gets through
        await store.commit(Change("c", events=[env("c", 1)]))
        await until(lambda: drainer.stats().delivered == 4)
        assert ("a", 1008.0) in sink.sent and ("b", 1008.0) in sink.sent  # not at 1030/1032
        assert drainer.retrying() == {}
