"""One process per database: the lock file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.store import Change, Store, StoreError
from tests.store.outbox import drain_all, env


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
