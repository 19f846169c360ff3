"""Dead-letter admin: list, replay, purge, by sink; the read-only listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.store import Change, Store, StoreError
from tests.store.outbox import drain_all, env, next_batches


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
