"""Committed events served to the drainers from memory: the same answer as the database."""

from __future__ import annotations

from pathlib import Path

from edge_agent.forward.schedule import OutboxEvent
from edge_agent.store import Change, Store
from edge_agent.store.recent import RecentEvents
from tests.store.outbox import drain_all, env


def ev(stream: str, seq: int) -> OutboxEvent:
    return OutboxEvent(seq, stream, f"{stream}-{seq}", "t", {}, b"{}", 0.0)


def test_a_read_is_answered_only_when_every_later_event_is_held() -> None:
    r = RecentEvents(max_events=10)
    assert r.read("a", 0, 5) is None  # nothing known of a: the database answers
    r.add(ev("a", 5))
    r.add(ev("a", 7))
    assert r.read("a", 3, 5) is None  # seq 4 may be in the database
    assert [e.seq for e in r.read("a", 4, 5) or []] == [5, 7]
    assert [e.seq for e in r.read("a", 5, 1) or []] == [7]  # 5 is done: dropped
    assert len(r) == 1
    r.done("a", 7)
    assert r.read("a", 7, 5) == [] and len(r) == 0
    r.forget("a")
    assert r.read("a", 7, 5) is None


def test_a_stream_done_with_holds_no_queue_and_stays_exact() -> None:
    r = RecentEvents(max_events=10)
    for seq in (3, 4):
        r.add(ev("a", seq))
    r.done("a", 4)
    assert r._streams == {}  # one empty queue per device was ~0.7 KiB each, for good
    assert r.read("a", 4, 5) == []  # still exact: nothing after 4 exists
    assert r.read("a", 2, 5) is None  # 3 and 4 are the database's now
    r.add(ev("a", 9))
    assert [e.seq for e in r.read("a", 4, 5) or []] == [9]
    assert r.read("a", 9, 5) == [] and r._streams == {}  # read up to the top: dropped again


def test_past_the_bound_everything_goes_to_the_database() -> None:
    r = RecentEvents(max_events=3)
    for seq in range(1, 5):
        r.add(ev("a", seq))
    assert len(r) == 0 and r.read("a", 0, 10) is None
    r.add(ev("a", 5))
    assert r.read("a", 3, 10) is None  # 4 is in the database only
    assert [e.seq for e in r.read("a", 4, 10) or []] == [5]


def fields(events: list[OutboxEvent]) -> list[tuple[object, ...]]:
    return [
        (e.seq, e.device_id, e.event_id, e.type, e.envelope, e.body, e.created_at, e.observed_at)
        for e in events
    ]


async def test_what_memory_gives_is_what_the_database_gives(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", sinks=("webhook", "mqtt"))
    try:
        for i in range(5):
            d = f"d{i % 2}"
            await s.commit(Change(d, events=[env(d, i), env(d, 9 + i)]))
        reads = [("d0", 0, 10), ("d1", 0, 10)]
        from_memory = await s.read_outbox("webhook", reads)
        assert len(from_memory) == 10
        s._recent["webhook"].clear()  # the same read, from the table
        assert fields(await s.read_outbox("webhook", reads)) == fields(from_memory)
        assert [e.event_id for e in await drain_all(s, "mqtt")] == [e.event_id for e in from_memory]
    finally:
        await s.close()


async def test_an_event_stored_before_is_not_held_twice(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await s.commit(Change("d", events=[env("d", 1)]))
        await s.commit(Change("d", events=[env("d", 1), env("d", 2)]))  # d-1 again: ignored
        assert [e.event_id for e in await drain_all(s)] == ["d-1", "d-2"]
    finally:
        await s.close()


async def test_replayed_dead_letters_are_read_from_the_database(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await s.commit(Change("d", events=[env("d", 1)]))
        [head] = await s.read_outbox("webhook", [("d", 0, 10)])
        await s.dead_letter("webhook", [head], reason="rejected: HTTP 400", attempts=3)
        await s.commit(Change("d", events=[env("d", 2)]))
        assert await s.replay_dead_letters() == 1
        await s.commit(Change("d", events=[env("d", 3)]))
        after = head.seq
        got = await s.read_outbox("webhook", [("d", after, 10)])
        assert [e.event_id for e in got] == ["d-2", "d-1", "d-3"]  # the replay went last
    finally:
        await s.close()
