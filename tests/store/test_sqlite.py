"""The SQLite store end to end: atomic commits, per-sink progress, compaction, restarts, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.forward.schedule import DeliverySchedule
from edge_agent.store import Change, PendingRow, Store
from tests.store.outbox import drain_all, env, next_batches

ROOT = Path(__file__).resolve().parents[2]


# -- schema ------------------------------------------------------------------------------------


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
