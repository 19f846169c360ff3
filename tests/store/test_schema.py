"""Migrations: a database made by an older agent opens, keeps its events, gains observed_at."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent import jsoncodec
from edge_agent.forward.schedule import DeliverySchedule
from edge_agent.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError


def make_v1(path: Path) -> None:
    """A schema-1 database holding two undelivered events and a dead letter."""
    with sqlite3.connect(path) as c:
        c.executescript(MIGRATIONS[0])
        c.execute("PRAGMA user_version=1")
        with_obs = {
            "type": "booking.created",
            "data": {"event_id": "e1", "observed_at": "2026-11-23T09:00:00.250Z"},
        }
        without = {"type": "booking.deleted", "data": {"event_id": "e2"}}
        for seq, env in ((1, with_obs), (2, without)):
            c.execute(
                "INSERT INTO outbox (seq, event_id, device_id, type, body, created_at) "
                "VALUES (?,?,?,?,?,?)",
                (seq, env["data"]["event_id"], "room-1", env["type"], jsoncodec.dumpb(env), 5e9),
            )
        c.execute(
            "INSERT INTO dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
            "reason, attempts, dead_at) VALUES (0, 'e0', 'webhook', 'room-1', 't', ?, 7.0, "
            "'rejected', 3, 8.0)",
            (jsoncodec.dumpb({"type": "t", "data": {"event_id": "e0"}}),),
        )


async def test_a_v1_database_with_undelivered_events_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1(path)
    s = await Store.open(path)
    try:
        progress = await s.load_progress("webhook")
        assert progress.tops == {"room-1": 2} and progress.cursors == {}
        schedule = DeliverySchedule(progress)
        reads = schedule.choose(0.0, max_streams=10, max_batch=10)
        [batch] = schedule.batches(reads, await s.read_outbox("webhook", reads))
        assert [e.event_id for e in batch] == ["e1", "e2"]
        # Taken from the envelope once, at migration; the commit time when it had none.
        assert batch[0].observed_at is not None
        assert abs(batch[0].observed_at - 1795424400.25) < 1e-3
        assert batch[1].observed_at == 5e9
        await s.mark_delivered("webhook", batch)
        assert (await s.stats())["outbox_total"] == 0
        # A dead letter migrates too (no observed_at in its envelope: its created_at).
        assert await s.replay_dead_letters() == 1
        [again] = await s.read_outbox("webhook", [("room-1", 2, 10)])
        assert again.event_id == "e0" and again.observed_at == 7.0
    finally:
        await s.close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 4


async def test_new_events_store_observed_at_from_the_envelope(tmp_path: Path) -> None:
    from edge_agent.store import Change

    s = await Store.open(tmp_path / "a.db", clock=lambda: 2e9)
    try:
        obs = {"event_id": "a", "observed_at": "2026-11-23T09:00:00Z"}
        await s.commit(Change("d", events=[{"type": "t", "data": obs}]))
        bad = {"event_id": "b", "observed_at": "yesterday"}
        await s.commit(Change("d", events=[{"type": "t", "data": bad}]))
        a, b = await s.read_outbox("webhook", [("d", 0, 10)])
        assert a.observed_at == 1795424400.0
        assert b.observed_at == 2e9  # unreadable: the commit time
    finally:
        await s.close()


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
