"""The SQLite store's outbox depth with one sink (no scan) against the scan it replaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.store import Change, Store
from edge_agent.store.stats import store_stats
from tests.store.outbox import drain_all, env, next_batches


async def scanned(store: Any) -> dict[str, Any]:
    """What the scan (SINK_DEPTH through the cursors, every count by query) says."""
    return await store_stats(store._rconn, store.sinks, store._time())


async def assert_depth_as_scanned(store: Any) -> dict[str, Any]:
    fast, scan = await store.stats(), await scanned(store)
    assert fast["outbox_total"] == scan["outbox_total"]
    assert fast["dead_letters"] == scan["dead_letters"]
    assert fast["pending"] == scan["pending"]
    (sink,) = store.sinks
    assert fast["sinks"][sink]["depth"] == scan["sinks"][sink]["depth"]
    assert (fast["sinks"][sink]["oldest_age_s"] is None) == (
        scan["sinks"][sink]["oldest_age_s"] is None
    )
    return fast


async def test_depth_follows_commits_deliveries_dead_letters_and_replays(tmp_path: Path) -> None:
    store: Any = await Store.open(tmp_path / "a.db")
    try:
        assert (await assert_depth_as_scanned(store))["sinks"]["webhook"]["depth"] == 0
        for n in range(5):
            for d in ("a", "b", "c"):
                await store.commit(Change(d, events=[env(d, n)]))
        got = await assert_depth_as_scanned(store)
        assert got["sinks"]["webhook"]["depth"] == 15
        assert got["sinks"]["webhook"]["oldest_age_s"] is not None
        (first, *_) = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=2)
        await store.mark_delivered("webhook", first)
        assert (await assert_depth_as_scanned(store))["sinks"]["webhook"]["depth"] == 13
        (dead, *_) = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=3)
        await store.dead_letter("webhook", dead, reason="rejected: HTTP 400")
        got = await assert_depth_as_scanned(store)
        assert got["sinks"]["webhook"]["depth"] == 10 and got["dead_letters"] == 3
        assert await store.replay_dead_letters() == 3
        assert (await assert_depth_as_scanned(store))["sinks"]["webhook"]["depth"] == 13
        await drain_all(store)
        got = await assert_depth_as_scanned(store)
        assert got["sinks"]["webhook"] == {"depth": 0, "oldest_age_s": None}
    finally:
        await store.close()


async def test_rows_replayed_for_a_sink_no_longer_configured_are_not_depth(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    two: Any = await Store.open(path, sinks=("webhook", "mqtt"))
    try:
        await two.commit(Change("a", events=[env("a", 1), env("a", 2)]))
        (batch,) = await next_batches(two, "mqtt", now=0, max_devices=1, max_batch=5)
        await two.dead_letter("mqtt", batch, reason="rejected")
        await drain_all(two, "webhook")
        assert await two.replay_dead_letters(sink="mqtt") == 2  # rows for mqtt only
    finally:
        await two.close()
    one: Any = await Store.open(path, sinks=("webhook",))
    try:
        got = await assert_depth_as_scanned(one)
        assert got["outbox_total"] == 2 and got["sinks"]["webhook"]["depth"] == 0
        await one.commit(Change("a", events=[env("a", 3)]))
        assert (await assert_depth_as_scanned(one))["sinks"]["webhook"]["depth"] == 1
    finally:
        await one.close()


async def test_depth_after_the_outbox_cap_moved_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    two: Any = await Store.open(path, sinks=("webhook", "mqtt"))
    try:
        await two.commit(Change("a", events=[env("a", 1)]))
        (batch,) = await next_batches(two, "mqtt", now=0, max_devices=1, max_batch=5)
        await two.dead_letter("mqtt", batch, reason="rejected")
        await drain_all(two, "webhook")
        assert await two.replay_dead_letters(sink="mqtt") == 1
    finally:
        await two.close()
    one: Any = await Store.open(path, sinks=("webhook",), outbox_max_events=4)
    try:
        for n in range(2, 8):  # past the cap: the oldest go, the old sink's row first
            await one.commit(Change("a", events=[env("a", n)]))
        got = await assert_depth_as_scanned(one)
        assert got["outbox_total"] == 4 and got["sinks"]["webhook"]["depth"] == 4
    finally:
        await one.close()


async def test_depth_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store: Any = await Store.open(path)
    try:
        await store.commit(Change("a", events=[env("a", n) for n in range(4)]))
        (batch,) = await next_batches(store, "webhook", now=0, max_devices=1, max_batch=1)
        await store.mark_delivered("webhook", batch)
    finally:
        await store.close()
    store = await Store.open(path)
    try:
        assert (await assert_depth_as_scanned(store))["sinks"]["webhook"]["depth"] == 3
    finally:
        await store.close()
