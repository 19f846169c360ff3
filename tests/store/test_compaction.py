"""Compaction in seq ranges (SQLite): the low-water mark, the sweep behind a stuck stream, the
cap counting undelivered rows only, replayed rows, a restart with delivered rows kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.metrics import OUTBOX_DROPPED
from edge_agent.store import Change, Store, writer
from tests.store.outbox import drain_all, env
from tests.store.test_depth import assert_depth_as_scanned, scanned


async def rows(s: Store) -> list[str]:
    """The event ids in the outbox table, delivered or not, in seq order."""
    got = await s._writer.execute("SELECT event_id FROM outbox ORDER BY seq")
    return [r[0] for r in got]


async def settle(s: Store) -> None:
    """Return once the writer has been through its loop twice: a sweep that was due ran.

    The first call may be taken in the same pass as the work before it; the second is queued
    after that pass ended, and so after the sweep that follows it.
    """
    for _ in range(2):
        await s._writer.call(lambda db: None)


async def commit_interleaved(s: Store, devices: str, n: int) -> None:
    for i in range(n):
        for d in devices:
            await s.commit(Change(d, events=[env(d, i)]))


async def deliver(s: Store, device: str, sink: str = "webhook") -> None:
    events = await s.read_outbox(sink, [(device, 0, 1000)])
    await s.mark_delivered(sink, events)


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "SWEEP_AFTER_S", 1e9)


@pytest.fixture
def sweep_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "SWEEP_AFTER_S", 0.0)


async def test_rows_below_the_low_water_mark_go_and_those_above_wait(
    tmp_path: Path, no_sweep: None
) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await commit_interleaved(s, "abc", 3)  # seqs: a-0 b-0 c-0 a-1 b-1 c-1 ...
        await deliver(s, "a")
        await deliver(s, "b")
        assert len(await rows(s)) == 9  # c's cursor (0) is the mark
        await s.mark_delivered("webhook", await s.read_outbox("webhook", [("c", 0, 1)]))
        # c is done up to seq 3: everything up to it went in one range; a's and b's delivered
        # rows above it wait for c.
        assert await rows(s) == ["a-1", "b-1", "c-1", "a-2", "b-2", "c-2"]
        st = await s.stats()
        assert st["sinks"]["webhook"]["depth"] == 2  # the depth counts undelivered rows only
        assert st["outbox_total"] == 6  # delivered rows kept above the mark count here
        assert [e.event_id for e in await drain_all(s)] == ["c-1", "c-2"]
        assert await rows(s) == []  # every stream done: the mark is the last seq
    finally:
        await s.close()


async def test_a_stuck_stream_holds_the_mark_and_a_sweep_takes_the_rest(
    tmp_path: Path, sweep_at_once: None
) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await commit_interleaved(s, "abc", 2)
        head = (await s.read_outbox("webhook", [("c", 0, 1)]))[0]
        await s.mark_retry("webhook", head, attempts=1, next_attempt_at=1e11, error="HTTP 503")
        await deliver(s, "a")
        await deliver(s, "b")
        await settle(s)
        assert await rows(s) == ["c-0", "c-1"]  # still c's to deliver, in order
        assert (await s.stats())["outbox_total"] == 2
        assert [e.event_id for e in await drain_all(s)] == ["c-0", "c-1"]
        assert await rows(s) == []
    finally:
        await s.close()


async def test_streams_leave_the_deferred_set_as_the_mark_passes_them(
    tmp_path: Path, no_sweep: None
) -> None:
    # _deferred (streams with delivered rows kept above the mark) is settled per commit from a
    # heap of the streams' cursors, not by a scan of every stream: it must still empty once
    # the mark passes them, and the heap stay bounded while one stream holds the mark back.
    s = await Store.open(tmp_path / "a.db")
    try:
        w = s._writer
        await commit_interleaved(s, "abc", 3)
        await deliver(s, "a")
        await deliver(s, "b")
        assert w._deferred == {"a", "b"}  # c (nothing delivered) holds the mark at 0
        for i in range(3, 600):  # a and b go on delivering, one commit each
            for d in "ab":
                await s.commit(Change(d, events=[env(d, i)]))
                await deliver(s, d)
        assert w._deferred == {"a", "b"}
        assert len(w._deferred_tops) <= 2 * len(w._deferred) + 1024
        assert [e.event_id for e in await drain_all(s)] == ["c-0", "c-1", "c-2"]
        assert w._deferred == set()  # the mark passed every stream: nothing kept above it
        assert await rows(s) == []
    finally:
        await s.close()


async def test_the_cap_counts_undelivered_rows_not_delivered_ones_kept(
    tmp_path: Path, no_sweep: None
) -> None:
    s = await Store.open(tmp_path / "a.db", outbox_max_events=4)
    try:
        before = OUTBOX_DROPPED._value.get()
        await s.commit(Change("c", events=[env("c", 0)]))  # undelivered, holds the mark at 0
        for i in range(3):
            await s.commit(Change("a", events=[env("a", i)]))
        await deliver(s, "a")
        assert len(await rows(s)) == 4  # a's three are kept above the mark
        await s.commit(Change("a", events=[env("a", 3)]))  # 5 rows, 2 undelivered
        assert await rows(s) == ["c-0", "a-3"]
        assert OUTBOX_DROPPED._value.get() == before
        assert await s.dead_letters() == []
        for i in range(4):  # past the cap with undelivered rows: the oldest still move
            await s.commit(Change("c", events=[env("c", i + 1)]))
        assert OUTBOX_DROPPED._value.get() - before == 2
        assert [d["event_id"] for d in await s.dead_letters()] == ["c-0", "a-3"]
        assert [e.event_id for e in await drain_all(s)] == ["c-1", "c-2", "c-3", "c-4"]
        await s.commit(Change("a", events=[env("a", 4)]))  # the moved rows pin nothing
        assert [e.event_id for e in await drain_all(s)] == ["a-4"]
        assert await rows(s) == []
    finally:
        await s.close()


async def test_a_replayed_event_is_kept_until_its_sink_delivers_it(
    tmp_path: Path, no_sweep: None
) -> None:
    s = await Store.open(tmp_path / "a.db", sinks=("webhook", "mqtt"))
    try:
        await s.commit(Change("a", events=[env("a", 0)]))
        head = await s.read_outbox("webhook", [("a", 0, 1)])
        await s.dead_letter("webhook", head, reason="rejected: HTTP 400", attempts=3)
        await drain_all(s, "mqtt")
        assert await rows(s) == []
        assert await s.replay_dead_letters() == 1  # a-0 again, for webhook only
        await s.commit(Change("b", events=[env("b", 0)]))
        await drain_all(s, "mqtt")  # mqtt is done with everything it has
        await deliver(s, "b")
        # The mark stops below the replayed row (webhook's cursor for a, 1): b-0 waits too.
        assert await rows(s) == ["a-0", "b-0"]
        assert [e.event_id for e in await drain_all(s, "webhook")] == ["a-0"]
        assert await rows(s) == []
    finally:
        await s.close()


async def test_rows_kept_when_the_agent_stopped_are_swept_after_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.db"
    monkeypatch.setattr(writer, "SWEEP_AFTER_S", 1e9)
    s = await Store.open(path)
    try:
        await commit_interleaved(s, "ac", 2)
        await deliver(s, "a")
        assert len(await rows(s)) == 4
    finally:
        await s.close()
    monkeypatch.setattr(writer, "SWEEP_AFTER_S", 0.0)
    s = await Store.open(path)
    try:
        await settle(s)
        assert await rows(s) == ["c-0", "c-1"]
        assert (await s.stats())["outbox_total"] == 2
        assert [e.event_id for e in await drain_all(s)] == ["c-0", "c-1"]
        assert await rows(s) == []
    finally:
        await s.close()


async def test_a_failed_sweep_keeps_the_rows_and_the_next_one_takes_them(
    tmp_path: Path, sweep_at_once: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await Store.open(tmp_path / "a.db")
    try:
        await commit_interleaved(s, "ac", 2)
        head = (await s.read_outbox("webhook", [("c", 0, 1)]))[0]
        await s.mark_retry("webhook", head, attempts=1, next_attempt_at=1e11, error="HTTP 503")
        real = writer.GroupWriter._sweep_sync
        failures = 0

        def failing(self: Any, db: Any, cursors: Any) -> Any:
            nonlocal failures
            got = real(self, db, cursors)
            if failures == 0:  # after its deletes: they are rolled back
                failures += 1
                raise writer.sqlite3.OperationalError("disk I/O error")
            return got

        monkeypatch.setattr(writer.GroupWriter, "_sweep_sync", failing)
        await deliver(s, "a")
        await settle(s)
        assert failures == 1
        await settle(s)
        assert await rows(s) == ["c-0", "c-1"]
        assert s._writer.outbox_count == 2  # the failed sweep counted nothing
        assert [e.event_id for e in await drain_all(s)] == ["c-0", "c-1"]
    finally:
        await s.close()


async def test_the_depth_without_a_scan_leaves_out_the_delivered_rows_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sink: the writer counts the rows kept above the mark (cursor moves, range deletes,
    the count at open), so the depth and the oldest age agree with the scan."""
    path = tmp_path / "a.db"
    monkeypatch.setattr(writer, "SWEEP_AFTER_S", 1e9)

    async def as_scanned(s: Store) -> dict[str, Any]:
        got = await assert_depth_as_scanned(s)
        scan = await scanned(s)
        fast_age = got["sinks"]["webhook"]["oldest_age_s"]
        scan_age = scan["sinks"]["webhook"]["oldest_age_s"]
        assert (fast_age is None) == (scan_age is None)
        if fast_age is not None:
            assert abs(fast_age - scan_age) < 0.5
        return got

    s = await Store.open(path)
    try:
        await commit_interleaved(s, "abc", 4)
        await deliver(s, "a")
        assert (await as_scanned(s))["sinks"]["webhook"]["depth"] == 8
        assert s._writer.kept == 4  # a's rows: c's cursor (0) holds the mark
        await s.mark_delivered("webhook", await s.read_outbox("webhook", [("b", 0, 2)]))
        assert (await as_scanned(s))["sinks"]["webhook"]["depth"] == 6
    finally:
        await s.close()
    s = await Store.open(path)  # the kept rows are counted again at open
    try:
        assert s._writer.kept == 6
        assert (await as_scanned(s))["sinks"]["webhook"]["depth"] == 6
        await s.mark_delivered("webhook", await s.read_outbox("webhook", [("c", 0, 1)]))
        got = await as_scanned(s)  # the mark moved: the range went, the rest is still kept
        assert got["sinks"]["webhook"]["depth"] == 5
        assert [e.event_id for e in await drain_all(s)] == ["b-2", "b-3", "c-1", "c-2", "c-3"]
        assert (await as_scanned(s))["sinks"]["webhook"] == {"depth": 0, "oldest_age_s": None}
        assert s._writer.kept == 0 and await rows(s) == []
    finally:
        await s.close()
