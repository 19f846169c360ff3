"""Write planning (pure): serializing a change, coalescing a group."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.store import Change, PendingRow, Store
from edge_agent.store.plan import coalesce, prepare
from tests.store.outbox import env


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
