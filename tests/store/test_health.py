"""The store does not fail blind: a damaged or too-new file is refused at open, failing writes
make it unhealthy (and count), a little freed space unsticks it, and the WAL stays bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_agent.metrics import STORE_ERRORS, STORE_HEALTHY
from edge_agent.store import (
    SCHEMA_VERSION,
    Change,
    Store,
    StoreCorrupt,
    StoreError,
    StoreHealth,
    StoreTooNew,
    StoreUnusable,
)
from edge_agent.store.base import UNREADY_AFTER_FAILURES, UNREADY_AFTER_S, WATCHDOG_AFTER_S
from tests.store.outbox import drain_all, env

NO_LIMIT = 1073741823


class FakeClock:
    """Unix seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def damaged_database(path: Path) -> None:
    """A real store file with garbage written into the middle of one of its window pages.

    The outbox (read at open) is intact; the window (read by the sessions) is not: before
    ``quick_check`` such a file opened "ready" and every session failed on "database disk
    image is malformed".
    """
    s = await Store.open(path)
    await s.commit(Change("room-1", events=[env("room-1", 0)]))
    window = {f"k{i}": {"pad": "x" * 300, "i": i} for i in range(2000)}
    await s.commit(Change("room-1", window_replace=window))
    await s.close()
    pages = path.stat().st_size // 4096
    with path.open("r+b") as f:
        f.seek((pages * 3 // 4) * 4096 + 1024)  # a window page, its cells half overwritten
        f.write(b"\xde\xad\xbe\xef" * 512)


def errors(kind: str) -> float:
    return float(STORE_ERRORS.labels(kind=kind)._value.get())


def healthy_gauge() -> float:
    return float(STORE_HEALTHY._value.get())


async def fill_disk(store: Store, spare_pages: int = 0) -> int:
    pages = int((await store._writer.execute("PRAGMA page_count"))[0][0])
    await store._writer.execute(f"PRAGMA max_page_count={pages + spare_pages}")
    return pages


BIG: dict[str, Any] = {"type": "x", "data": {"event_id": "big", "pad": "x" * 200_000}}


# -- refused at open ---------------------------------------------------------------------------


async def test_a_damaged_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    await damaged_database(path)
    with pytest.raises(StoreCorrupt) as info:
        await Store.open(path)
    text = str(info.value)
    assert f"the database at {path} is damaged (" in text
    assert "invalid page number" in text or "malformed" in text  # what quick_check found
    assert "move agent.db and its -wal/-shm files aside" in text and "backup" in text
    assert "\n" not in text  # one line
    assert isinstance(info.value, StoreUnusable) and info.value.problems
    # The lock was released: once the file is moved aside, a store opens there again.
    path.rename(tmp_path / "agent.db.damaged")
    s = await Store.open(path)
    await s.close()


async def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(b"this is not sqlite" * 1000)
    with pytest.raises(StoreCorrupt, match=r"is damaged \(file is not a database\)"):
        await Store.open(path)


async def test_a_newer_schema_is_store_too_new(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer") as info:
        await Store.open(path)
    assert isinstance(info.value, StoreUnusable)
    assert "upgrade the agent" in str(info.value)


# -- failing writes count against health --------------------------------------------------------


def test_health_rules() -> None:
    assert StoreHealth().healthy and StoreHealth().problem is None
    few = StoreHealth(UNREADY_AFTER_FAILURES - 1, UNREADY_AFTER_S - 1, "full", "disk full at x")
    assert few.healthy  # one failed write may be a hiccup
    many = StoreHealth(UNREADY_AFTER_FAILURES, 0.0, "full", "disk full at x")
    long = StoreHealth(1, UNREADY_AFTER_S, "full", "disk full at x")
    assert not many.healthy and not long.healthy
    assert long.problem == "store writes failing for 10 s (1 in a row): disk full at x"
    # The watchdog: withheld only past the bound, and never on a full disk.
    assert not StoreHealth(9, WATCHDOG_AFTER_S - 1, "io", "e").restart_helps
    assert StoreHealth(9, WATCHDOG_AFTER_S, "io", "e").restart_helps
    assert not StoreHealth(9, 10 * WATCHDOG_AFTER_S, "full", "e").restart_helps


async def test_failing_commits_make_the_store_unhealthy_until_one_gets_in(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    s = await Store.open(tmp_path / "agent.db", clock=clock)
    try:
        before = errors("full")
        await s.commit(Change("d", events=[env("d", 0)]))
        assert s.unhealthy is None and s.health() == StoreHealth()
        await fill_disk(s)
        for i in range(UNREADY_AFTER_FAILURES):
            assert s.unhealthy is None  # not yet: fewer than the bound
            with pytest.raises(StoreError, match="full"):
                await s.commit(Change("d", events=[{**BIG, "data": {**BIG["data"], "n": i}}]))
            clock.now += 1
        problem = s.unhealthy
        assert problem is not None
        assert problem.startswith("store writes failing for 3 s (3 in a row): ")
        assert f"database or disk is full at {s.path}: free space" in problem
        assert healthy_gauge() == 0
        assert errors("full") - before == UNREADY_AFTER_FAILURES
        clock.now += 10 * WATCHDOG_AFTER_S
        assert not s.health().restart_helps  # a full disk: a restart frees nothing
        await s._writer.execute(f"PRAGMA max_page_count={NO_LIMIT}")  # space is back
        await s.commit(Change("d", events=[BIG]))
        assert s.unhealthy is None and healthy_gauge() == 1
    finally:
        await s.close()


async def test_a_long_streak_of_another_error_withholds_the_watchdog(tmp_path: Path) -> None:
    clock = FakeClock()
    s = await Store.open(tmp_path / "agent.db", clock=clock)
    try:
        before = errors("readonly")
        await s._writer.execute("PRAGMA query_only=1")  # every write: SQLITE_READONLY
        with pytest.raises(StoreError, match="cannot be written"):
            await s.commit(Change("d", events=[env("d", 0)]))
        assert errors("readonly") - before == 1
        clock.now += UNREADY_AFTER_S
        assert "cannot be written" in (s.unhealthy or "")
        assert not s.health().restart_helps
        clock.now += WATCHDOG_AFTER_S
        assert s.health().restart_helps
        await s._writer.execute("PRAGMA query_only=0")
        await s.commit(Change("d", events=[env("d", 0)]))
        assert s.health() == StoreHealth()
    finally:
        await s.close()


async def test_progress_alone_does_not_end_a_streak_of_failed_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    s = await Store.open(tmp_path / "agent.db", clock=clock)
    try:
        await s.commit(Change("d", events=[env("d", i) for i in range(3)]))
        [first, *_] = await s.read_outbox("webhook", [("d", 0, 3)])
        await fill_disk(s)
        for _ in range(UNREADY_AFTER_FAILURES):
            with pytest.raises(StoreError):
                await s.commit(Change("d", events=[BIG]))
        await s.mark_delivered("webhook", [first])  # a small delete still fits
        assert s.unhealthy is not None  # events still do not get in
    finally:
        await s.close()


# -- a little freed space unsticks it ------------------------------------------------------------


def event(i: int) -> dict[str, Any]:
    return {"type": "x", "data": {"event_id": f"e-{i}", "pad": "y" * 3000}}


async def test_a_little_freed_space_stores_what_fits(tmp_path: Path) -> None:
    """Before: the 40 waiting commits went in one all-or-nothing group, which needed more
    than the 12 pages freed: 0 of 40 stored until much more space was freed. Now the group is
    split down to what fits: some are stored at once, the rest when there is room."""
    s = await Store.open(tmp_path / "agent.db")
    try:
        await s.commit(Change("d", events=[env("d", 0)]))
        await fill_disk(s)
        for n in range(1, 100):  # use the room left in the last pages: the disk is full
            try:
                await s.commit(Change("d", events=[{**event(-n), "type": "filler"}]))
            except StoreError:
                break
        first = await asyncio.gather(
            *(s.commit(Change(f"dev{i}", events=[event(i)])) for i in range(40)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in first)  # the disk is full
        await fill_disk(s, spare_pages=12)  # a little space comes back
        second = await asyncio.gather(
            *(s.commit(Change(f"dev{i}", events=[event(i)])) for i in range(40)),
            return_exceptions=True,
        )
        stored = [i for i, r in enumerate(second) if r is None]
        assert 0 < len(stored) < 40, second
        assert all(isinstance(second[i], StoreError) for i in set(range(40)) - set(stored))
        await s._writer.execute(f"PRAGMA max_page_count={NO_LIMIT}")  # the rest fits now
        for i in sorted(set(range(40)) - set(stored)):  # the callers retry what failed
            await s.commit(Change(f"dev{i}", events=[event(i)]))
        ids = sorted(e.event_id for e in await drain_all(s) if e.type == "x")
        assert ids == sorted(f"e-{i}" for i in range(40))  # every held event, once
        assert s.unhealthy is None
    finally:
        await s.close()


async def test_the_wal_gives_back_space_after_a_burst(tmp_path: Path) -> None:
    """Before: the WAL kept the size of the largest burst for good (no journal_size_limit, no
    truncating checkpoint): ~2.4 MiB here, space a full disk needs back."""
    limit = 256 * 1024
    s = await Store.open(tmp_path / "agent.db", wal_size_limit=limit)
    wal = Path(f"{s.path}-wal")
    try:
        burst = [event(i) for i in range(600)]  # ~2 MiB in one transaction
        await s.commit(Change("d", events=burst))
        assert wal.stat().st_size > limit  # the burst went through the WAL
        await s.commit(Change("d", events=[env("d", 1)]))
        await s.flush()
        await s.flush()  # the writer checkpoints when it goes idle, before taking this one
        assert wal.stat().st_size <= limit
        assert len(await drain_all(s)) == 601
    finally:
        await s.close()


async def test_the_wal_is_truncated_once_a_full_disk_streak_ends(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "agent.db")  # the default limit: a few MiB
    wal = Path(f"{s.path}-wal")
    try:
        await s.commit(Change("d", events=[env("d", 0)]))
        await fill_disk(s)
        with pytest.raises(StoreError):
            await s.commit(Change("d", events=[BIG]))
        await s._writer.execute(f"PRAGMA max_page_count={NO_LIMIT}")
        await s.commit(Change("d", events=[BIG]))
        await s.flush()
        await s.flush()
        assert wal.stat().st_size == 0  # TRUNCATE: the space is the disk's again
    finally:
        await s.close()



async def test_an_idle_truncate_that_came_too_soon_happens_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Draining a backlog the writer goes idle between every two groups: it truncates the WAL
    at most every TRUNCATE_EVERY_S, and once idle for good it still gives the space back."""
    from edge_agent.store import writer

    monkeypatch.setattr(writer, "TRUNCATE_EVERY_S", 0.2)
    limit = 256 * 1024
    s = await Store.open(tmp_path / "agent.db", wal_size_limit=limit)
    wal = Path(f"{s.path}-wal")
    try:
        for burst in range(2):  # the second one lands within TRUNCATE_EVERY_S of the first
            await s.commit(Change("d", events=[event(burst * 1000 + i) for i in range(600)]))
        async with asyncio.timeout(10):
            while wal.stat().st_size > limit:
                await asyncio.sleep(0.01)
        assert len(await drain_all(s)) == 1200
    finally:
        await s.close()
