"""The store interface (StoreBackend), run against both implementations: SQLite and PostgreSQL.

Tests of one implementation's internals (SQLite pragmas, the lock file, kill -9 of a writer)
stay in that implementation's test modules.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.forward.schedule import DeliverySchedule
from edge_agent.store import Change, PendingRow, StoreError
from tests.store.backends import Backend
from tests.store.outbox import drain_all, env, next_batches


async def test_commit_writes_state_and_events_together(backend: Backend) -> None:
    store = await backend.open()
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
    events = await drain_all(store)  # type: ignore[arg-type]
    assert [e.event_id for e in events] == ["room-1-1", "room-1-2", "room-1-3"]
    assert events[0].envelope == env("room-1", 1)
    assert (
        events[0].body == b'{"type":"booking.created","timestamp":"2026-11-23T09:00:00.000Z",'
        b'"data":{"event_id":"room-1-1","device_id":"room-1","n":1}}'
    )


async def test_a_group_of_concurrent_commits_keeps_each_devices_order(backend: Backend) -> None:
    store = await backend.open()
    await asyncio.gather(
        *(store.commit(Change(f"d{i % 3}", events=[env(f"d{i % 3}", i)])) for i in range(30))
    )
    events = await drain_all(store)  # type: ignore[arg-type]
    for d in range(3):
        ns = [e.envelope["data"]["n"] for e in events if e.device_id == f"d{d}"]
        assert ns == sorted(ns) and len(ns) == 10


async def test_same_event_id_twice_is_stored_once(backend: Backend) -> None:
    store = await backend.open()
    await store.commit(Change("d", events=[env("d", 1)]))
    await store.commit(Change("d", events=[env("d", 1)]))
    assert len(await drain_all(store)) == 1  # type: ignore[arg-type]


async def test_a_bad_envelope_is_refused_in_the_callers_task(backend: Backend) -> None:
    store = await backend.open()
    with pytest.raises(ValueError, match="event_id"):
        await store.commit(Change("d", events=[{"type": "x", "data": {}}]))
    await store.commit(Change("d", events=[env("d", 1)]))  # the store goes on
    assert len(await drain_all(store)) == 1  # type: ignore[arg-type]


async def test_each_sink_has_its_own_progress(backend: Backend) -> None:
    s = await backend.open(sinks=("webhook", "mqtt"))
    for i in range(5):
        await s.commit(Change("d", events=[env("d", i)]))
    assert len(await drain_all(s, "webhook")) == 5  # type: ignore[arg-type]
    st = await s.stats()
    assert st["sinks"]["webhook"]["depth"] == 0 and st["sinks"]["mqtt"]["depth"] == 5
    assert st["outbox_total"] == 5  # mqtt still needs them
    assert len(await drain_all(s, "mqtt")) == 5  # type: ignore[arg-type]
    assert (await s.stats())["outbox_total"] == 0  # compacted once both are done


async def test_unknown_sink_is_refused(backend: Backend) -> None:
    s = await backend.open()
    with pytest.raises(KeyError, match="unknown sink"):
        await s.load_progress("nope")


async def test_head_of_line_retry_blocks_only_its_device(backend: Backend) -> None:
    store = await backend.open()
    for d in ("a", "b"):
        for i in range(3):
            await store.commit(Change(d, events=[env(d, i)]))
    batches = await next_batches(store, "webhook", now=1000.0, max_devices=10, max_batch=10)  # type: ignore[arg-type]
    a = next(b for b in batches if b[0].device_id == "a")
    await store.mark_retry("webhook", a[0], attempts=1, next_attempt_at=2000.0, error="HTTP 503")
    batches = await next_batches(store, "webhook", now=1000.0, max_devices=10, max_batch=10)  # type: ignore[arg-type]
    assert [b[0].device_id for b in batches] == ["b"]
    assert DeliverySchedule(await store.load_progress("webhook")).next_due() == 2000.0
    batches = await next_batches(
        store,
        "webhook",
        now=2000.0,
        max_devices=10,
        max_batch=10,
        exclude={"b"},  # type: ignore[arg-type]
    )
    assert len(batches) == 1 and len(batches[0]) == 1  # a retrying head goes alone
    assert batches[0][0].event_id == "a-0" and batches[0][0].attempts == 1


async def test_restart_keeps_undelivered_and_retry_state(backend: Backend) -> None:
    s = await backend.open()
    for i in range(4):
        await s.commit(Change("d", events=[env("d", i)]))
    [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=2)  # type: ignore[arg-type]
    await s.mark_delivered("webhook", b)
    [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=2)  # type: ignore[arg-type]
    await s.mark_retry("webhook", b[0], attempts=2, next_attempt_at=500.0, error="boom")
    await s.close()

    s = await backend.open()
    assert await next_batches(s, "webhook", now=499.0, max_devices=1, max_batch=9) == []  # type: ignore[arg-type]
    assert (await s.load_progress("webhook")).retries["d"].attempts == 2
    [b] = await next_batches(s, "webhook", now=500.0, max_devices=1, max_batch=9)  # type: ignore[arg-type]
    assert [(e.event_id, e.attempts) for e in b] == [("d-2", 2)]
    await s.mark_delivered("webhook", b)
    assert [e.event_id for e in await drain_all(s)] == ["d-3"]  # type: ignore[arg-type]


async def test_seq_never_goes_back_after_the_outbox_empties(backend: Backend) -> None:
    s = await backend.open()
    await s.commit(Change("d", events=[env("d", 1)]))
    assert len(await drain_all(s)) == 1  # type: ignore[arg-type]
    await s.close()
    s = await backend.open()  # the outbox is empty; the cursor of "d" is at seq 1
    await s.commit(Change("d", events=[env("d", 2)]))
    assert [e.event_id for e in await drain_all(s)] == ["d-2"]  # type: ignore[arg-type]


async def test_forget_device(backend: Backend) -> None:
    store = await backend.open()
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
    assert len(await drain_all(store)) == 1  # type: ignore[arg-type] - still delivered


async def test_idle_devices_never_hide_a_device_with_work(backend: Backend) -> None:
    store = await backend.open()
    for d in range(10):
        await store.commit(Change(f"d{d}", events=[env(f"d{d}", 0)]))
    batches = await next_batches(store, "webhook", now=1e12, max_devices=10, max_batch=10)  # type: ignore[arg-type]
    for b in batches:
        await store.mark_delivered("webhook", b)
    await store.commit(Change("z", events=[env("z", 0)]))
    batches = await next_batches(store, "webhook", now=1e12, max_devices=2, max_batch=10)  # type: ignore[arg-type]
    assert [[e.event_id for e in b] for b in batches] == [["z-0"]]


async def test_wakeup_and_take_committed_tell_the_drainer(backend: Backend) -> None:
    store = await backend.open()
    wake = store.wakeup("webhook")
    wake.clear()
    await store.commit(Change("d", events=[env("d", 0), env("d", 1)]))
    assert wake.is_set()
    feed = store.take_committed("webhook")
    assert list(feed) == ["d"] and feed["d"] > 0
    assert store.take_committed("webhook") == {}


# -- dead letter -------------------------------------------------------------------------------


async def test_dead_letter_admin(backend: Backend) -> None:
    s = await backend.open(sinks=("webhook", "mqtt"))
    for i in range(3):
        await s.commit(Change("d", events=[env("d", i)]))
    [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=1)  # type: ignore[arg-type]
    await s.dead_letter("webhook", b, reason="rejected: HTTP 400", attempts=3)
    [dl] = await s.dead_letters(sink="webhook")
    assert dl["event_id"] == "d-0" and dl["attempts"] == 3 and dl["envelope"]["data"]["n"] == 0
    assert dl["reason"] == "rejected: HTTP 400" and dl["sink"] == "webhook"
    assert await s.dead_letters(sink="mqtt") == []
    assert await s.replay_dead_letters([dl["id"]]) == 1
    # replayed for webhook only, at the end of the device's queue
    assert [e.event_id for e in await drain_all(s, "webhook")] == ["d-1", "d-2", "d-0"]  # type: ignore[arg-type]
    assert [e.event_id for e in await drain_all(s, "mqtt")] == ["d-0", "d-1", "d-2"]  # type: ignore[arg-type]
    assert (await s.stats())["outbox_total"] == 0
    await s.commit(Change("d", events=[env("d", 9)]))
    [b] = await next_batches(s, "mqtt", now=0, max_devices=1, max_batch=1)  # type: ignore[arg-type]
    await s.dead_letter("mqtt", b, reason="ttl expired")
    assert (await s.stats())["dead_letters"] == 1
    assert await s.purge_dead_letters() == 1
    assert await s.dead_letters() == []


async def test_replay_and_purge_by_sink(backend: Backend) -> None:
    s = await backend.open(sinks=("webhook", "mqtt"))
    await s.commit(Change("d", events=[env("d", 0), env("d", 1)]))
    for sink in ("webhook", "mqtt"):
        [b] = await next_batches(s, sink, now=0, max_devices=1, max_batch=1)  # type: ignore[arg-type]
        await s.dead_letter(sink, b, reason="rejected")
    assert await s.replay_dead_letters(sink="mqtt") == 1
    assert [d["sink"] for d in await s.dead_letters()] == ["webhook"]
    [dl] = await s.dead_letters()
    assert await s.purge_dead_letters([dl["id"]], sink="mqtt") == 0  # not that sink's
    assert await s.purge_dead_letters(sink="webhook") == 1
    assert await s.dead_letters() == []


async def test_dead_letter_cap_drops_the_oldest(backend: Backend) -> None:
    s = await backend.open(dead_letter_max=2)
    await s.commit(Change("d", events=[env("d", i) for i in range(4)]))
    for _ in range(4):
        [b] = await next_batches(s, "webhook", now=0, max_devices=1, max_batch=1)  # type: ignore[arg-type]
        await s.dead_letter("webhook", b, reason="rejected")
    assert [d["event_id"] for d in await s.dead_letters()] == ["d-2", "d-3"]


async def test_outbox_cap_moves_the_oldest_to_the_dead_letter(backend: Backend) -> None:
    s = await backend.open(outbox_max_events=3)
    for i in range(5):
        await s.commit(Change("d", events=[env("d", i)]))
    assert [d["reason"] for d in await s.dead_letters()] == ["outbox full"] * 2
    assert [e.event_id for e in await drain_all(s)] == ["d-2", "d-3", "d-4"]  # type: ignore[arg-type]


async def test_closed_store_refuses_work(backend: Backend) -> None:
    s = await backend.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.commit(Change("d", events=[env("d", 0)]))
    await s.close()  # twice is harmless
