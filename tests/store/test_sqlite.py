"""The SQLite store: migrations, atomic commits, group commit, full disk, outbox cap, progress."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.backoff import Backoff
from edge_agent.forward.schedule import DeliverySchedule, OutboxEvent
from edge_agent.metrics import OUTBOX_DROPPED
from edge_agent.store import (
    SCHEMA_VERSION,
    Change,
    PendingRow,
    Store,
    StoreError,
)
from edge_agent.store.plan import coalesce, prepare

ROOT = Path(__file__).resolve().parents[2]


def env(device: str, n: int | None = None, type_: str = "booking.created") -> dict[str, Any]:
    eid = f"{device}-{n}" if n is not None else str(uuid.uuid4())
    return {
        "type": type_,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": eid, "device_id": device, "n": n},
    }


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store.open(tmp_path / "agent.db")
    yield s
    await s.close()


async def next_batches(
    store: Store,
    sink: str,
    *,
    now: float,
    max_devices: int,
    max_batch: int,
    exclude: set[str] | None = None,
) -> list[list[OutboxEvent]]:
    """What a drainer starting now would send first: the stored progress, through the schedule."""
    schedule = DeliverySchedule(await store.load_progress(sink))
    skip = set(exclude or ())
    out: list[list[OutboxEvent]] = []
    while len(out) < max_devices:
        reads = schedule.choose(
            now, max_streams=max_devices - len(out), max_batch=max_batch, exclude=skip
        )
        if not reads:
            return out
        out += schedule.batches(reads, await store.read_outbox(sink, reads))
        skip.update(r.stream for r in reads)
    return out


async def drain_all(store: Store, sink: str = "webhook") -> list[Any]:
    """Deliver everything for ``sink`` through the drainer API; returns the events in order."""
    out: list[Any] = []
    while True:
        batches = await next_batches(store, sink, now=1e12, max_devices=100, max_batch=1000)
        if not batches:
            return out
        for b in batches:
            out += b
            await store.mark_delivered(sink, b)


# -- schema ------------------------------------------------------------------------------------


async def test_migrations_set_user_version_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = await Store.open(path)
    await s.close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "window",
        "pending",
        "device_state",
        "outbox",
        "sink_cursor",
        "retry_state",
        "dead_letter",
    } <= tables
    s = await Store.open(path, synchronous="full")  # reopening migrates nothing
    await s.close()


async def test_database_newer_than_code_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this agent"):
        await Store.open(path)


async def test_memory_path_is_refused() -> None:
    with pytest.raises(ValueError):
        await Store.open(":memory:")


# -- commits -----------------------------------------------------------------------------------


async def test_commit_writes_state_and_events_together(store: Store) -> None:
    await store.commit(
        Change(
            "room-1",
            window_replace={"b1": {"id": "b1"}, "b2": {"id": "b2"}},
            pending_upsert=[PendingRow("room-1", "u1", 100.0, {"title": "x"})],
            device_state={"tz": "Europe/Oslo"},
            events=[env("room-1", 1), env("room-1", 2)],
        )
    )
    await store.commit(
        Change(
            "room-1",
            window_upsert={"b3": {"id": "b3"}},
            window_delete=["b1"],
            pending_delete=["u1"],
            pending_upsert=[PendingRow("room-1", "u2", 50.0, {})],
            events=[env("room-1", 3)],
        )
    )
    assert await store.load_window("room-1") == {"b2": {"id": "b2"}, "b3": {"id": "b3"}}
    assert await store.load_window("other") == {}
    assert [p.booking_request_uuid for p in await store.load_pending()] == ["u2"]
    assert await store.load_pending("other") == []
    assert await store.load_device_state("room-1") == {"tz": "Europe/Oslo"}
    assert await store.load_device_state("other") is None
    events = await drain_all(store)
    assert [e.event_id for e in events] == ["room-1-1", "room-1-2", "room-1-3"]
    assert events[0].envelope == env("room-1", 1)
    assert (
        events[0].body == b'{"type":"booking.created","timestamp":"2026-11-23T09:00:00.000Z",'
        b'"data":{"event_id":"room-1-1","device_id":"room-1","n":1}}'
    )


async def test_same_event_id_twice_is_stored_once(store: Store) -> None:
    await store.commit(Change("d", events=[env("d", 1)]))
    await store.commit(Change("d", events=[env("d", 1)]))
    assert len(await drain_all(store)) == 1


async def test_event_without_id_is_refused_in_the_caller(store: Store) -> None:
    with pytest.raises(ValueError, match="event_id"):
        await store.commit(Change("d", events=[{"type": "x", "data": {}}]))
    await store.commit(Change("d", events=[env("d", 1)]))  # the writer is fine


def test_coalescing_equals_sequential_application() -> None:
    loop = asyncio.new_event_loop()
    try:
        f = loop.create_future()
        changes = [
            Change("d", window_upsert={"a": {"v": 1}, "b": {"v": 1}}),
            Change("d", window_delete=["a"]),
            Change("d", window_replace={"c": {"v": 1}}),
            Change(
                "d", window_upsert={"a": {"v": 2}}, pending_upsert=[PendingRow("d", "u", 1, {})]
            ),
            Change("d", pending_delete=["u"], device_state={"s": 1}),
            Change("e", window_delete=["zz"]),
        ]
        w = coalesce(prepare(c, f) for c in changes)
    finally:
        loop.close()
    assert w["d"].replace is True
    assert set(w["d"].window) == {"c", "a"}
    assert w["d"].pending == {"u": None}
    assert w["d"].state == b'{"s":1}'
    assert w["e"].window == {"zz": None} and not w["e"].replace


async def test_concurrent_commits_are_grouped(store: Store) -> None:
    commits = 0

    def trace(sql: str) -> None:
        nonlocal commits
        commits += sql.strip().upper() == "COMMIT"

    await store._wconn.set_trace_callback(trace)
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
    await store._wconn.set_trace_callback(None)  # type: ignore[arg-type]
    assert commits < 100, commits  # one transaction per waiting group, not per commit
    events = await drain_all(store)
    assert len(events) == 1000
    for dev in range(50):
        ns = [e.envelope["data"]["n"] for e in events if e.device_id == f"dev{dev}"]
        assert ns == sorted(ns)  # commit order is seq order per device


async def test_full_disk_raises_store_error_and_writer_survives(store: Store) -> None:
    await store.commit(Change("d", events=[env("d", 0)]))
    pages = next(iter(await store._wconn.execute_fetchall("PRAGMA page_count")))[0]
    await store._wconn.execute(f"PRAGMA max_page_count={pages}")
    big = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}
    with pytest.raises(StoreError, match=r"database or disk is full at .*agent\.db: free space"):
        await store.commit(Change("d", window_upsert={"k": {"v": 1}}, events=[big]))
    assert await store.load_window("d") == {}  # the failed group left nothing behind
    await store._wconn.execute("PRAGMA max_page_count=1073741823")
    await store.commit(Change("d", window_upsert={"k": {"v": 1}}, events=[big]))
    assert await store.load_window("d") == {"k": {"v": 1}}
    assert [e.event_id for e in await drain_all(store)] == ["d-0", "big"]


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


# -- per-sink progress, compaction, restart ------------------------------------------------------


async def test_each_sink_has_its_own_progress(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", sinks=("webhook", "mqtt"))
    try:
        for i in range(5):
            await s.commit(Change("d", events=[env("d", i)]))
        assert len(await drain_all(s, "webhook")) == 5
        st = await s.stats()
        assert st["sinks"]["webhook"]["depth"] == 0 and st["sinks"]["mqtt"]["depth"] == 5
        assert st["outbox_total"] == 5  # mqtt still needs them
        assert len(await drain_all(s, "mqtt")) == 5
        assert (await s.stats())["outbox_total"] == 0  # compacted once both are done
    finally:
        await s.close()


async def test_head_of_line_retry_blocks_only_its_device(store: Store) -> None:
    for d in ("a", "b"):
        for i in range(3):
            await store.commit(Change(d, events=[env(d, i)]))
    batches = await next_batches(store, "webhook", now=1000.0, max_devices=10, max_batch=10)
    a = next(b for b in batches if b[0].device_id == "a")
    await store.mark_retry("webhook", a[0], attempts=1, next_attempt_at=2000.0, error="HTTP 503")
    batches = await next_batches(store, "webhook", now=1000.0, max_devices=10, max_batch=10)
    assert [b[0].device_id for b in batches] == ["b"]
    assert DeliverySchedule(await store.load_progress("webhook")).next_due() == 2000.0
    batches = await next_batches(
        store, "webhook", now=2000.0, max_devices=10, max_batch=10, exclude={"b"}
    )
    assert len(batches) == 1 and len(batches[0]) == 1  # a retrying head goes alone
    assert batches[0][0].event_id == "a-0" and batches[0][0].attempts == 1


async def test_restart_keeps_undelivered_and_retry_state(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = await Store.open(path)
    for i in range(4):
        await s.commit(Change("d", events=[env("d", i)]))
    [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=2)
    await s.mark_delivered("webhook", b)
    [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=2)
    await s.mark_retry("webhook", b[0], attempts=2, next_attempt_at=500.0, error="boom")
    await s.close()

    s = await Store.open(path)
    try:
        assert await next_batches(s, "webhook", now=499.0, max_devices=1, max_batch=9) == []
        assert (await s.load_progress("webhook")).retries["d"].attempts == 2
        [b] = await next_batches(s, "webhook", now=500.0, max_devices=1, max_batch=9)
        assert [(e.event_id, e.attempts) for e in b] == [("d-2", 2)]
        await s.mark_delivered("webhook", b)
        assert [e.event_id for e in await drain_all(s)] == ["d-3"]
    finally:
        await s.close()


async def test_seq_never_goes_back_after_the_outbox_empties(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = await Store.open(path)
    await s.commit(Change("d", events=[env("d", 1)]))
    assert len(await drain_all(s)) == 1
    await s.close()
    s = await Store.open(path)  # the outbox is empty; the cursor of "d" is at seq 1
    try:
        await s.commit(Change("d", events=[env("d", 2)]))
        assert [e.event_id for e in await drain_all(s)] == ["d-2"]
    finally:
        await s.close()


async def test_dead_letter_admin(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", sinks=("webhook", "mqtt"))
    try:
        for i in range(3):
            await s.commit(Change("d", events=[env("d", i)]))
        [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=1)
        await s.dead_letter("webhook", b, reason="rejected: HTTP 400", attempts=3)
        [dl] = await s.dead_letters(sink="webhook")
        assert dl["event_id"] == "d-0" and dl["attempts"] == 3 and dl["envelope"]["data"]["n"] == 0
        assert await s.dead_letters(sink="mqtt") == []
        assert await s.replay_dead_letters([dl["id"]]) == 1
        # replayed for webhook only, at the end of the device's queue
        assert [e.event_id for e in await drain_all(s, "webhook")] == ["d-1", "d-2", "d-0"]
        assert [e.event_id for e in await drain_all(s, "mqtt")] == ["d-0", "d-1", "d-2"]
        assert (await s.stats())["outbox_total"] == 0
        await s.commit(Change("d", events=[env("d", 9)]))
        [b] = await next_batches(s, "mqtt", now=0, max_devices=1, max_batch=1)
        await s.dead_letter("mqtt", b, reason="ttl expired")
        assert await s.purge_dead_letters() == 1
        assert await s.dead_letters() == []
    finally:
        await s.close()


async def test_forget_device(store: Store) -> None:
    await store.commit(
        Change(
            "d",
            window_upsert={"k": {}},
            device_state={"a": 1},
            pending_upsert=[PendingRow("d", "u", 1.0, {})],
            events=[env("d", 1)],
        )
    )
    await store.forget_device("d")
    assert await store.load_window("d") == {}
    assert await store.load_device_state("d") is None
    assert await store.load_pending("d") == []
    assert len(await drain_all(store)) == 1  # its events are still delivered


# -- kill -9 -----------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import asyncio, sys
    from edge_agent.store import Store, Change

    async def main():
        store = await Store.open(sys.argv[1], synchronous=sys.argv[2])
        i = 0
        while True:
            batch = [Change(f"d{j % 7}", window_upsert={str(i + j): {"i": i + j}},
                            events=[{"type": "t", "data": {"event_id": f"e{i + j}"}}])
                     for j in range(5)]
            await asyncio.gather(*(store.commit(c) for c in batch))
            print("ACK", i + 4, flush=True)   # all of e{i}..e{i+4} acknowledged
            i += 5

    asyncio.run(main())
""")


@pytest.mark.parametrize("mode", ["normal", "full"])
async def test_kill9_loses_no_acknowledged_commit(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "k.db"
    for _round in range(3):
        proc = subprocess.Popen(  # noqa: ASYNC220 - the child is killed, never awaited
            [sys.executable, str(script), str(path), mode],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            text=True,
        )
        assert proc.stdout is not None
        acked = -1
        n = 0
        while n < 200 + 37 * _round:
            line = proc.stdout.readline()
            assert line, "writer died"
            if line.startswith("ACK "):  # other lines are the store's logs
                acked = int(line.split()[1])
                n += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        s = await Store.open(path)
        try:
            ids = {e.event_id for e in await drain_all(s)}
            missing = [i for i in range(acked + 1) if f"e{i}" not in ids]
            assert not missing, f"{len(missing)} acknowledged events lost"
        finally:
            await s.close()


async def test_idle_devices_never_hide_a_device_with_work(store: Store) -> None:
    """Devices delivered up to date stay 'ready' until a query finds them empty; with fewer
    slots than such devices, the one with new work must still be served (it was stranded
    until an unrelated wake-up, costing seconds of latency)."""
    for d in range(10):
        await store.commit(Change(f"d{d}", events=[env(f"d{d}", 0)]))
    batches = await next_batches(store, "webhook", now=1e12, max_devices=10, max_batch=10)
    for b in batches:
        await store.mark_delivered("webhook", b)
    await store.commit(Change("z", events=[env("z", 0)]))
    batches = await next_batches(store, "webhook", now=1e12, max_devices=2, max_batch=10)
    assert [[e.event_id for e in b] for b in batches] == [["z-0"]]


# -- one process per database, no silent seq conflicts --------------------------------------------


async def test_a_second_store_on_the_same_database_is_refused(store: Store) -> None:
    """Two writers numbered outbox rows from their own in-memory seq: the agent's next events
    collided with a CLI replay and were dropped while commit() reported success."""
    with pytest.raises(
        StoreError, match=rf"another edge-agent is using .*agent\.db \(pid {os.getpid()}\?\)"
    ):
        await Store.open(store.path)
    await store.commit(Change("d", events=[env("d", 1)]))  # the first store is unharmed
    assert [e.event_id for e in await drain_all(store)] == ["d-1"]


async def test_the_lock_is_released_on_close(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db")
    await s.close()
    s = await Store.open(tmp_path / "a.db")
    await s.close()


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


# -- progress that could not be written ----------------------------------------------------------


def _fill_disk(store: Store) -> Any:
    async def fill() -> None:
        pages = next(iter(await store._wconn.execute_fetchall("PRAGMA page_count")))[0]
        await store._wconn.execute(f"PRAGMA max_page_count={pages}")

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
    await store._wconn.execute("PRAGMA max_page_count=1073741823")
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
    await store._wconn.execute("PRAGMA max_page_count=1073741823")
    for _ in range(200):
        if await store.dead_letters():
            break
        await asyncio.sleep(0.01)
    assert [d["event_id"] for d in await store.dead_letters()] == ["big"]


# -- a dead writer -----------------------------------------------------------------------------


async def test_a_dead_writer_fails_every_waiter_and_marks_the_store_failed(
    tmp_path: Path,
) -> None:
    """The writer ran unsupervised: an error outside sqlite3.Error (here the connection is
    gone, so even the rollback raises) ended it, and every commit() waited forever."""
    s = await Store.open(tmp_path / "a.db")
    await s._wconn.close()
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


def _event(device: str) -> Any:
    from edge_agent.forward.schedule import OutboxEvent

    return OutboxEvent(
        seq=1, device_id=device, event_id="e", type="t", envelope={}, body=b"{}", created_at=0.0
    )


# -- dead letters by sink, read-only listing ----------------------------------------------------


async def test_replay_and_purge_by_sink(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", sinks=("webhook", "mqtt"))
    try:
        await s.commit(Change("d", events=[env("d", 0), env("d", 1)]))
        for sink in ("webhook", "mqtt"):
            [b] = await next_batches(s, sink, now=0, max_devices=1, max_batch=1)
            await s.dead_letter(sink, b, reason="rejected")
        assert await s.replay_dead_letters(sink="mqtt") == 1
        assert [d["sink"] for d in await s.dead_letters()] == ["webhook"]
        [dl] = await s.dead_letters()
        assert await s.purge_dead_letters([dl["id"]], sink="mqtt") == 0  # not that sink's
        assert await s.purge_dead_letters(sink="webhook") == 1
        assert await s.dead_letters() == []
    finally:
        await s.close()


async def test_read_dead_letters_beside_the_running_store(store: Store) -> None:
    await store.commit(Change("d", events=[env("d", 0)]))
    [b] = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=1)
    await store.dead_letter("webhook", b, reason="rejected: HTTP 400", attempts=3)
    from edge_agent.store import read_dead_letters

    rows = read_dead_letters(store.path, limit=10)
    assert rows == await store.dead_letters(limit=10)
    assert rows[0]["event_id"] == "d-0" and rows[0]["envelope"]["data"]["n"] == 0
    assert read_dead_letters(store.path, sink="mqtt") == []
    with pytest.raises(StoreError, match="no store"):
        read_dead_letters(store.path.with_name("nope.db"))
