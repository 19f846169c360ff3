"""The store interface (StoreBackend), run against both implementations: SQLite and PostgreSQL.

Tests of one implementation's internals (SQLite pragmas, the lock file, kill -9 of a writer)
stay in that implementation's test modules.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_agent.forward.schedule import DeliverySchedule
from edge_agent.store import Change, PendingRow, StoreError, StoreHealth
from edge_agent.store.base import UNREADY_AFTER_FAILURES, UNREADY_AFTER_S
from edge_agent.store.occupancy import OccupancyWrite
from edge_agent.store.requests import KEEP_S
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


# -- health: failing writes count against readiness, with the same rule on both -----------------


class FakeClock:
    """Unix seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_failing_writes_make_the_store_unhealthy_until_one_gets_in(
    backend: Backend,
) -> None:
    clock = FakeClock()
    store = await backend.open(clock=clock)
    assert store.health() == StoreHealth() and store.unhealthy is None
    await store.record_request("u1", "room-1", {"title": "x"})
    # A write the database refuses (the uuid is taken) is a failed write, on either backend.
    for i in range(UNREADY_AFTER_FAILURES):
        assert store.unhealthy is None  # fewer than the bound: may be a hiccup
        with pytest.raises(StoreError, match="already exists"):
            await store.record_request("u1", "room-1", {"title": "again"})
        clock.now += 1
    h = store.health()
    assert (h.failures, h.failing_for_s, h.kind) == (UNREADY_AFTER_FAILURES, 3.0, "other")
    problem = store.unhealthy
    assert problem is not None and problem.startswith("store writes failing for 3 s (3 in a row)")
    assert "booking request u1 already exists" in problem
    assert not h.restart_helps  # not yet WATCHDOG_AFTER_S
    await store.commit(Change("d", events=[env("d", 1)]))  # a write that gets in ends it
    assert store.health() == StoreHealth() and store.unhealthy is None


async def test_one_failure_lasting_long_enough_is_unhealthy(backend: Backend) -> None:
    clock = FakeClock()
    store = await backend.open(clock=clock)
    await store.record_request("u1", "room-1", {})
    with pytest.raises(StoreError):
        await store.record_request("u1", "room-1", {})
    assert store.unhealthy is None
    clock.now += UNREADY_AFTER_S
    assert store.unhealthy is not None
    await store.flush()  # a write without changes ends a streak of failed calls too
    assert store.unhealthy is None


# -- booking requests made through the agent -----------------------------------------------------


def closing(device: str, n: int, type_: str, uuid: str) -> dict[str, Any]:
    e = env(device, n, type_)
    if type_ == "booking.created":
        e["data"]["booking"] = {"id": f"b{n}", "meeting_id": "m1", "booking_request_uuid": uuid}
    else:
        e["data"] |= {"booking_request_uuid": uuid, "cause": "conflict"}
    return e


async def test_a_request_is_resolved_with_the_event_that_closes_it(backend: Backend) -> None:
    clock = FakeClock()
    store = await backend.open(clock=clock)
    t0 = clock.now
    await store.record_request("u1", "room-1", {"title": "standup"})
    row = await store.load_request("u1")
    assert row is not None
    assert (row.uuid, row.room_id, row.status, row.created_at, row.updated_at) == (
        "u1",
        "room-1",
        "pending",
        t0,
        t0,
    )
    assert row.request == {"title": "standup"} and row.outcome is None
    assert await store.load_request("nope") is None
    clock.now += 5
    await store.commit(Change("room-1", events=[closing("room-1", 1, "booking.created", "u1")]))
    row = await store.load_request("u1")
    assert row is not None and row.status == "created" and row.updated_at == t0 + 5
    assert row.outcome is not None
    assert (row.outcome["event_id"], row.outcome["booking_id"]) == ("room-1-1", "b1")
    # The first outcome wins: a later failure (or a resolve) changes nothing.
    await store.commit(Change("room-1", events=[closing("room-1", 2, "booking.failed", "u1")]))
    await store.resolve_request("u1", "failed", {"cause": "send failed"})
    row = await store.load_request("u1")
    assert row is not None and row.status == "created"
    # The outcome event itself was stored with it.
    events = await drain_all(store)  # type: ignore[arg-type]
    assert [e.event_id for e in events] == ["room-1-1", "room-1-2"]


async def test_a_request_no_event_closes_is_resolved_by_hand(backend: Backend) -> None:
    store = await backend.open()
    await store.record_request("u2", "room-1", {})
    await store.resolve_request("u2", "failed", {"cause": "device unreachable"})
    row = await store.load_request("u2")
    assert row is not None and row.status == "failed"
    assert row.outcome == {"cause": "device unreachable"}


async def test_a_refused_commit_resolves_no_request(backend: Backend) -> None:
    store = await backend.open()
    await store.record_request("u3", "room-1", {})
    bad = closing("room-1", 1, "booking.failed", "u3")
    with pytest.raises(ValueError):
        await store.commit(Change("room-1", events=[bad, {"type": "x", "data": {}}]))
    row = await store.load_request("u3")
    assert row is not None and row.status == "pending"


async def test_requests_older_than_a_day_are_pruned(backend: Backend) -> None:
    clock = FakeClock()
    store = await backend.open(clock=clock)
    await store.record_request("old", "room-1", {})
    clock.now += KEEP_S / 2
    await store.record_request("mid", "room-1", {})
    clock.now += KEEP_S / 2 + 1  # "old" is past a day now, "mid" is not
    await store.record_request("new", "room-1", {})
    assert await store.load_request("old") is None
    assert await store.load_request("mid") is not None
    assert await store.load_request("new") is not None


async def test_requests_survive_a_restart(backend: Backend) -> None:
    store = await backend.open()
    await store.record_request("u4", "room-1", {"title": "kept"})
    await store.close()
    again = await backend.open()
    row = await again.load_request("u4")
    assert row is not None and row.request == {"title": "kept"}


# -- occupancy intervals -------------------------------------------------------------------------


async def test_occupancy_save_and_load(backend: Backend) -> None:
    store = await backend.open()
    assert await store.load_occupancy("room-1") == (None, [])
    track = {"booking_id": "b1", "started_at": 100.0, "ended_at": None, "people": 3}
    await store.save_occupancy(
        OccupancyWrite(
            "room-1",
            closed=[{"start": 0.0, "end": 50.0, "state": "empty", "people_max": 0}],
            open={"start": 50.0, "end": None, "state": "occupied", "people_max": 2},
            bookings=[track, {"booking_id": "b0", "started_at": 0.0, "ended_at": 40.0}],
        )
    )
    opened, tracks = await store.load_occupancy("room-1")
    assert opened == {"start": 50.0, "end": None, "state": "occupied", "people_max": 2}
    assert tracks == [track]  # finished tracks are not loaded
    assert await store.load_occupancy("room-2") == (None, [])
    # The open interval closes and a new one opens; the track ends.
    await store.save_occupancy(
        OccupancyWrite(
            "room-1",
            closed=[{"start": 50.0, "end": 80.0, "state": "occupied", "people_max": 4}],
            open={"start": 80.0, "end": None, "state": "empty", "people_max": 0},
            bookings=[{**track, "ended_at": 90.0}],
        )
    )
    await store.close()
    again = await backend.open()
    assert await again.load_occupancy("room-1") == (
        {"start": 80.0, "end": None, "state": "empty", "people_max": 0},
        [],
    )
    # Bookings alone leave the open interval where it is.
    b2 = {"booking_id": "b2", "started_at": 85.0, "ended_at": None}
    await again.save_occupancy(OccupancyWrite("room-1", bookings=[b2]))
    opened, tracks = await again.load_occupancy("room-1")
    assert opened is not None and opened["start"] == 80.0
    assert [t["booking_id"] for t in tracks] == ["b2"]


async def test_occupancy_rows_ride_in_the_change_that_starts_the_booking(backend: Backend) -> None:
    """A booking's start and its occupancy track are durable together: one commit, in the
    change's order (the later open interval of a group replaces the earlier one), and a change
    refused in the caller's task writes neither."""
    store = await backend.open()
    track = {"booking_id": "b1", "started_at": 100.0, "ended_at": None}
    await store.commit(
        Change(
            "room-1",
            events=[env("room-1", 1)],
            occupancy=[
                OccupancyWrite(
                    "room-1",
                    open={"start": 50.0, "end": None, "state": "occupied", "people_max": 2},
                ),
                OccupancyWrite(
                    "room-1",
                    closed=[{"start": 50.0, "end": 100.0, "state": "occupied", "people_max": 2}],
                    open={"start": 100.0, "end": None, "state": "empty", "people_max": 0},
                    bookings=[track],
                ),
            ],
        )
    )
    assert await store.load_occupancy("room-1") == (
        {"start": 100.0, "end": None, "state": "empty", "people_max": 0},
        [track],
    )
    assert [e.event_id for e in await drain_all(store)] == ["room-1-1"]  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.commit(
            Change(
                "room-2",
                events=[{"type": "x", "data": {}}],
                occupancy=[OccupancyWrite("room-2", bookings=[track])],
            )
        )
    assert await store.load_occupancy("room-2") == (None, [])
    await store.close()
    again = await backend.open()
    assert (await again.load_occupancy("room-1"))[1] == [track]
