"""The group-commit writer: grouping, write errors, held progress, a dead writer, the caps."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge_agent.backoff import Backoff
from edge_agent.forward.schedule import OutboxEvent
from edge_agent.metrics import DEAD_LETTER_DROPPED, OUTBOX_DROPPED
from edge_agent.store import Change, Store, StoreError, writer
from tests.store.outbox import drain_all, env, next_batches


async def dead_letter_all(s: Store, device: str, n: int) -> None:
    for i in range(n):
        await s.commit(Change(device, events=[env(device, i)]))
    batch = await s.read_outbox("webhook", [(device, 0, n)])
    for e in batch:  # one progress mark each: several groups, the cap holds after each
        await s.dead_letter("webhook", [e], reason="rejected: HTTP 400", attempts=3)


async def test_dead_letter_cap_drops_the_oldest_counts_and_warns(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", dead_letter_max=3)
    try:
        before = DEAD_LETTER_DROPPED._value.get()
        with capture_logs() as logs:
            await dead_letter_all(s, "d", 5)
        dead = await s.dead_letters()
        assert [d["event_id"] for d in dead] == ["d-2", "d-3", "d-4"]  # the newest are kept
        assert (await s.stats())["dead_letters"] == 3
        assert DEAD_LETTER_DROPPED._value.get() - before == 2
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert sum(e["dropped"] for e in warnings) == 2
        assert all("dead letter full" in e["event"] and e["cap"] == 3 for e in warnings)
    finally:
        await s.close()


async def test_dead_letter_cap_holds_for_the_outbox_overflow_and_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    s = await Store.open(path, outbox_max_events=2, dead_letter_max=4)
    try:
        for i in range(10):  # 8 move to the dead letter as "outbox full"; 4 of them stay
            await s.commit(Change("d", events=[env("d", i)]))
        assert [d["event_id"] for d in await s.dead_letters()] == [f"d-{i}" for i in range(4, 8)]
    finally:
        await s.close()
    s = await Store.open(path, outbox_max_events=2, dead_letter_max=2)  # the count was reloaded
    try:
        await s.commit(Change("d", events=[env("d", 10)]))
        assert [d["event_id"] for d in await s.dead_letters()] == ["d-7", "d-8"]
        assert await s.purge_dead_letters() == 2
        await dead_letter_all(s, "e", 2)  # the purge was counted: nothing dropped
        assert len(await s.dead_letters()) == 2
    finally:
        await s.close()


async def test_a_cap_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dead_letter_max"):
        await Store.open(tmp_path / "a.db", dead_letter_max=0)


# -- group commit, errors ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def traced_commits(store: Store) -> AsyncIterator[list[int]]:
    """The thread each COMMIT of the write connection runs on, in order, while inside."""
    threads: list[int] = []

    def trace(sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            threads.append(threading.get_ident())

    await store._writer.on_connection(lambda db: db.set_trace_callback(trace))
    try:
        yield threads
    finally:
        await store._writer.on_connection(lambda db: db.set_trace_callback(None))


async def test_concurrent_commits_are_grouped(store: Store) -> None:
    async with traced_commits(store) as commits:
        await asyncio.gather(
            *(
                store.commit(
                    Change(
                        f"dev{i % 50}",
                        window_upsert={f"k{i}": {"i": i}},
                        events=[env(f"dev{i % 50}", i)],
                    )
                )
                for i in range(1000)
            )
        )
    assert len(commits) < 100, commits  # one transaction per waiting group, not per commit
    events = await drain_all(store)
    assert len(events) == 1000
    for dev in range(50):
        ns = [e.envelope["data"]["n"] for e in events if e.device_id == f"dev{dev}"]
        assert ns == sorted(ns)  # commit order is seq order per device


async def test_commits_a_loop_turn_apart_share_a_group(store: Store) -> None:
    # The writer lets the loop turn a few times before it takes a small group (writer.py,
    # "Group size"): a change that comes a turn after another joins its transaction.
    async def later(i: int) -> None:
        for _ in range(i):
            await asyncio.sleep(0)
        await store.commit(Change("dev", events=[env("dev", i)]))

    async with traced_commits(store) as commits:
        await asyncio.gather(*(later(i) for i in range(writer.LINGER_TURNS)))
    assert len(commits) == 1, commits
    assert [e.envelope["data"]["n"] for e in await drain_all(store)] == list(
        range(writer.LINGER_TURNS)
    )


async def commit_threads(store: Store, n: int) -> list[int]:
    """Commit ``n`` changes one by one; the thread each COMMIT ran on."""
    async with traced_commits(store) as threads:
        for i in range(n):
            await store.commit(Change("dev", events=[env("dev", i)]))
    return threads


async def test_small_groups_commit_on_the_loop(store: Store) -> None:
    assert await commit_threads(store, 3) == [threading.get_ident()] * 3
    assert [e.envelope["data"]["n"] for e in await drain_all(store)] == [0, 1, 2]


async def test_with_synchronous_full_every_group_stays_on_the_thread(tmp_path: Path) -> None:
    # Each COMMIT syncs the WAL then: not on the loop.
    store = await Store.open(tmp_path / "full.db", synchronous="full")
    try:
        assert threading.get_ident() not in await commit_threads(store, 3)
    finally:
        await store.close()


async def test_slow_groups_on_the_loop_send_the_next_ones_to_the_thread(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "INLINE_SLOW_S", 0.0)  # every group is slow
    with capture_logs() as logs:
        threads = await commit_threads(store, writer.INLINE_SLOW_GROUPS + 2)
    loop_thread = threading.get_ident()
    slow = writer.INLINE_SLOW_GROUPS
    assert threads[:slow] == [loop_thread] * slow
    assert loop_thread not in threads[slow:]  # the writer thread's, for INLINE_BACKOFF_S
    assert [e["event"] for e in logs].count(
        "store writes are slow: groups go to the writer thread for a while"
    ) == 1
    assert len(await drain_all(store)) == slow + 2


async def test_one_stalled_group_on_the_loop_sends_the_next_ones_to_the_thread(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "INLINE_STALL_S", 0.0)  # every group is a stall
    threads = await commit_threads(store, 3)
    assert threads[0] == threading.get_ident()  # no streak needed: the next go to the thread
    assert threading.get_ident() not in threads[1:]


async def test_full_disk_raises_store_error_and_writer_survives(store: Store) -> None:
    await store.commit(Change("d", events=[env("d", 0)]))
    pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
    await store._writer.execute(f"PRAGMA max_page_count={pages}")
    big = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}
    with pytest.raises(StoreError, match=r"database or disk is full at .*agent\.db: free space"):
        await store.commit(Change("d", window_upsert={"k": {"v": 1}}, events=[big]))
    assert await store.load_window("d") == {}  # the failed group left nothing behind
    await store._writer.execute("PRAGMA max_page_count=1073741823")
    await store.commit(Change("d", window_upsert={"k": {"v": 1}}, events=[big]))
    assert await store.load_window("d") == {"k": {"v": 1}}
    assert [e.event_id for e in await drain_all(store)] == ["d-0", "big"]


async def test_a_seq_conflict_fails_the_commit_instead_of_dropping_the_event(store: Store) -> None:
    await store.commit(Change("d", events=[env("d", 0)]))
    # Another writer (before the lock: a second Store in the CLI) took the next seq.
    with sqlite3.connect(store.path) as c:
        c.execute(
            "INSERT INTO outbox (seq, event_id, only_sink, device_id, type, body, created_at) "
            "VALUES (?, 'intruder', 'webhook', 'x', 't', x'7b7d', 0)",
            (store._writer.next_seq,),
        )
    with pytest.raises(StoreError, match="seq"):
        await store.commit(Change("d", events=[env("d", 1)]))
    await store.commit(Change("d", events=[env("d", 1)]))  # the retry gets a free seq
    assert [e.event_id for e in await drain_all(store) if e.device_id == "d"] == ["d-0", "d-1"]


# -- outbox cap --------------------------------------------------------------------------------


async def test_outbox_cap_moves_oldest_to_dead_letter(tmp_path: Path, caplog: Any) -> None:
    s = await Store.open(tmp_path / "a.db", outbox_max_events=10)
    try:
        before = OUTBOX_DROPPED._value.get()
        for i in range(15):
            await s.commit(Change("d", events=[env("d", i)]))
        stats = await s.stats()
        assert stats["outbox_total"] == 10 and stats["dead_letters"] == 5
        dead = await s.dead_letters()
        assert [d["event_id"] for d in dead] == [f"d-{i}" for i in range(5)]
        assert {d["reason"] for d in dead} == {"outbox full"}
        assert OUTBOX_DROPPED._value.get() - before == 5
        delivered = await drain_all(s)
        assert [e.event_id for e in delivered] == [f"d-{i}" for i in range(5, 15)]
        assert await s.replay_dead_letters() == 5
        assert [e.event_id for e in await drain_all(s)] == [f"d-{i}" for i in range(5)]
        assert (await s.stats())["dead_letters"] == 0
    finally:
        await s.close()


# -- progress that could not be written --------------------------------------------------------


def _fill_disk(store: Store) -> Any:
    async def fill() -> None:
        pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
        await store._writer.execute(f"PRAGMA max_page_count={pages}")

    return fill()


async def test_a_dead_letter_whose_write_failed_is_not_lost(store: Store) -> None:
    """The cursor moved in memory at once; when the dead-letter write failed (disk full), the
    next delivery wrote a higher cursor and compaction deleted the event: it was in neither
    the outbox nor the dead letter."""
    big = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}
    await store.commit(Change("d", events=[big, env("d", 1)]))
    [b] = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=1)
    assert b[0].event_id == "big"
    await _fill_disk(store)
    with pytest.raises(StoreError, match="full"):
        await store.dead_letter("webhook", b, reason="rejected: HTTP 400", attempts=3)
    await store._writer.execute("PRAGMA max_page_count=1073741823")
    [b] = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=1)
    assert b[0].event_id == "d-1"
    await store.mark_delivered("webhook", b)
    assert [d["event_id"] for d in await store.dead_letters()] == ["big"]
    assert (await store.stats())["outbox_total"] == 0


async def test_failed_progress_is_retried_without_new_work(store: Store) -> None:
    store._writer._held_backoff = Backoff(initial=0.01, maximum=0.01, jitter=0)
    big = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}
    await store.commit(Change("d", events=[big]))
    [b] = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=1)
    await _fill_disk(store)
    with pytest.raises(StoreError):
        await store.dead_letter("webhook", b, reason="rejected: HTTP 400")
    await store._writer.execute("PRAGMA max_page_count=1073741823")
    for _ in range(200):
        if await store.dead_letters():
            break
        await asyncio.sleep(0.01)
    assert [d["event_id"] for d in await store.dead_letters()] == ["big"]


# -- a dead writer -----------------------------------------------------------------------------


async def test_a_dead_writer_fails_every_waiter_and_marks_the_store_failed(
    tmp_path: Path,
) -> None:
    """The writer ran unsupervised: an error outside sqlite3.Error (here the connection and its
    thread are gone, so even the rollback raises) ended it, and every commit() waited forever."""
    s = await Store.open(tmp_path / "a.db")
    await s._writer.release()
    with pytest.raises(StoreError, match="writer"):
        await asyncio.wait_for(s.commit(Change("d", events=[env("d", 1)])), 2)
    assert s.failed is not None and "restart" in s.failed
    with pytest.raises(StoreError, match="writer"):
        await asyncio.wait_for(s.commit(Change("d", events=[env("d", 2)])), 2)
    with pytest.raises(StoreError):
        await asyncio.wait_for(s.flush(), 2)
    # a drainer's mark fails at once too
    fut = s.mark_retry("webhook", _event("d"), attempts=1, next_attempt_at=0.0, error="x")
    with pytest.raises(StoreError):
        await asyncio.wait_for(fut, 2)
    await s.close()


def _event(device: str) -> OutboxEvent:
    return OutboxEvent(
        seq=1, device_id=device, event_id="e", type="t", envelope={}, body=b"{}", created_at=0.0
    )


# -- administrative calls share the group's transaction, each in its own SAVEPOINT ------------


async def test_a_failing_call_rolls_back_alone_and_its_group_commits(store: Store) -> None:
    await store.record_request("u1", "room-1", {"title": "x"})
    commits = 0

    def trace(sql: str) -> None:
        nonlocal commits
        commits += sql.strip().upper() == "COMMIT"

    await store._writer.on_connection(lambda db: db.set_trace_callback(trace))
    results = await asyncio.gather(
        store.record_request("u1", "room-1", {"title": "again"}),  # taken: refused
        store.record_request("u2", "room-1", {"title": "y"}),
        store.commit(Change("d", events=[env("d", 0)])),
        return_exceptions=True,
    )
    await store._writer.on_connection(lambda db: db.set_trace_callback(None))
    assert isinstance(results[0], StoreError) and "u1 already exists" in str(results[0])
    assert results[1:] == [None, None]
    assert commits == 1  # one transaction for the change and both calls
    u1, u2 = await store.load_request("u1"), await store.load_request("u2")
    assert u1 is not None and u2 is not None
    assert [e.event_id for e in await drain_all(store)] == ["d-0"]


async def test_calls_of_a_failed_group_fail_with_it(store: Store) -> None:
    pages = (await store._writer.execute("PRAGMA page_count"))[0][0]
    await store._writer.execute(f"PRAGMA max_page_count={pages}")  # the disk is "full"
    big = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}
    results = await asyncio.gather(
        store.commit(Change("d", events=[big])),
        store.record_request("u3", "room-1", {"pad": "y" * 200_000}),
        return_exceptions=True,
    )
    await store._writer.execute("PRAGMA max_page_count=1073741823")
    assert all(isinstance(r, StoreError) and "full" in str(r) for r in results), results
    assert await store.load_request("u3") is None
    await store.record_request("u3", "room-1", {"title": "retried"})  # the caller's retry
    assert await store.load_request("u3") is not None
