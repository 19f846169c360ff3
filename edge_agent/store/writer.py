"""The group-commit writer: one task owns the write connection and commits in groups.

``commit()`` writes a change and its events in ONE transaction and returns once it is
committed. The writer commits everything that is waiting in one transaction (group commit): a
burst from 1,000 devices costs a handful of commits, not one fsync per event (DESIGN.md: ~4.5k
single-row commits/s through aiosqlite vs ~42k rows/s at 100 rows per commit).

Outbox full policy
------------------
The outbox holds at most ``outbox_max_events`` undelivered events. When a commit pushes it past
the cap, the OLDEST undelivered events are moved, in the same transaction, to the dead letter
with reason ``"outbox full"`` (one dead-letter row per sink that had not delivered them) and
removed from the outbox. New events are always accepted: recent state is worth more to the
cloud than a week-old backlog. A WARNING says how many and how to send them again, and
``edge_agent_outbox_overflow`` counts them.

Dead letter full policy
-----------------------
The dead letter holds at most ``dead_letter_max`` rows, so the disk stays bounded even when a
sink rejects everything for weeks. Past the cap the OLDEST dead letters are deleted in the same
transaction that added the new ones (the newest failures are the ones an operator still
investigates). A WARNING says how many and why, and ``edge_agent_dead_letter_dropped`` counts
them.

Errors
------
A failed write (disk full, I/O error) raises :class:`StoreError` in every ``commit()`` caller of
the failing group; the writer keeps running and later commits succeed once the cause is gone.
Drainer progress of a failed group is not dropped: its futures fail, but the writer keeps the
operations (they are idempotent) and writes them, in order, with the next group or on its own
after a backoff. Otherwise a dead letter lost to a full disk would vanish for good once a later
delivery moved the cursor past it and compaction deleted the row.

If the writer task itself dies (a bug, the connection gone), every waiting and later call fails
with :class:`StoreError` and :attr:`GroupWriter.failed` says why.

Its connection and thread
-------------------------
The writer owns a plain ``sqlite3`` connection, opened on the writer's one dedicated thread (a
queue in, futures out: a single-worker executor). A group (its statements, compaction and the
caps) is one function: one hop and one transaction per group, not one hop per statement.
A small group (at most :data:`INLINE_MAX_CHANGES` changes, no calls) runs on the loop instead,
when nothing is queued on the thread and ``synchronous`` is ``"normal"`` (the default; with
``"full"`` every COMMIT syncs, and every group stays on the thread): in WAL mode its COMMIT
writes pages to the WAL without a sync (the checkpoints, which sync, run on their own thread),
~0.1-0.5 ms, less than what the hop costs both threads (the GIL handed back and forth at every
statement, the loop woken through its self-pipe): 10-12 % less CPU per event under the MQTT
flood, and a lower p99. Groups slow on the loop (a disk throttling writes, SQLite's own
checkpoint inside a COMMIT: :data:`INLINE_SLOW_GROUPS` in a row past :data:`INLINE_SLOW_S`, or
one past :data:`INLINE_STALL_S`) send the groups to the thread for :data:`INLINE_BACKOFF_S`, so
a slow disk stalls the loop for a few commits, not at every one.

Administrative writes (:meth:`GroupWriter.call`: dead-letter
replay, booking requests, occupancy rows) are plain functions of the connection too: those
queued run in the group's transaction, after its changes and progress, each inside its own
SAVEPOINT, so one that fails (a duplicate request id) rolls back alone and the rest commits. A
group that fails as a whole fails its calls with it (their callers retry, as for changes).

Health
------
Every failed write counts in ``edge_agent_store_errors{kind}`` (``full``, ``io``, ``corrupt``,
``readonly``, ``conflict``, ``other``). Writes failing in a row make the store unhealthy
(:class:`~edge_agent.store.base.StoreHealth`; ``edge_agent_store_healthy`` 0): a few of them
in a row, or a failing streak of some seconds (the bounds are in :mod:`~edge_agent.store.base`),
makes ``/readyz`` answer 503 naming the
store, the error and what to do. A successful write that stored changes ends the streak (a
progress-only write does not, when changes are what failed: events are what must get in).

The systemd watchdog: past ``WATCHDOG_AFTER_S`` (60 s) of failing writes the agent stops pinging
(systemd restarts it) unless the disk is FULL. A restart does not free space: the new process
would fail the same way (or not open at all) and lose what the sessions hold in memory and
retry, so on a full disk the agent keeps running, keeps retrying, stays not-ready and says so
in ``STATUS=``. Any other error that lasts (I/O errors, a file turned read-only or damaged
under the agent) is what a restart can clear, and the next start's ``quick_check`` turns a
damaged file into exit 78 (no restart loop).

Compaction
----------
Delivered rows go in ranges of the primary key: every group that moves a cursor deletes the
rows up to the *low-water mark*, the lowest cursor among the streams (per sink) that still
have rows to deliver; every row at or below it is done for every sink. The writer knows those
streams (their tops, ``_pending``) without reading: it inserts every row. One range delete
touches the table's pages in order, where deleting each delivered batch by device touched a
page per row (devices interleave in seq order): with a 100,000-event backlog those scattered
deletes were most of the drain's cost (issue 17).

A stream that stops (a sink backing off for one room) holds the mark back; what the other
streams deliver above it stays until a *sweep*: the per-stream deletes, for the streams whose
cursors moved, in one transaction, once the mark has not moved for :data:`SWEEP_AFTER_S`
(and before the outbox cap counts rows, so the cap counts undelivered rows only). The sweep
also reads the streams' tops again from the table (rows the cap moved away, duplicates not
inserted). Delivered rows kept meanwhile are what ``outbox_total`` counts beyond the depth;
with one sink the writer counts them (:attr:`GroupWriter.kept`: each cursor move counts the
rows it passed, through the stream index), so the depth still needs no scan.

Group size
----------
A group's cost is mostly per group, not per change: the thread hop, BEGIN and COMMIT (the
pages it dirtied, written to the WAL), the compaction and the bookkeeping after it. Under a
flood of 1,500 events/s the writer, faster than the loop that feeds it, took groups of ~2.4
changes as they came (~620 commits a second). Before it takes a group of fewer than
:data:`LINGER_BELOW` changes it lets the loop run :data:`LINGER_TURNS` more turns (each turn
reads what the sockets already hold, without waiting for more): changes from the same burst
of frames join one group (~4.5 changes, 25-30 % less CPU per event in that flood). An idle
loop turns in microseconds, so a lone change is not held back.

Disk space
----------
Group commit is all or nothing: a group from a backlog (up to ``max_group`` changes) can need
more space than was freed. When a group fails with the disk full, its first half is tried on
its own, then the rest, and so on down to one change, so a little freed space stores what fits
at once; the changes that still do not fit fail (their callers retry). The WAL is bounded: a
checkpoint connection on a thread of its own checkpoints it (``PASSIVE``) at most every
:data:`CHECKPOINT_EVERY_S` while commits come in, off the commit path (a checkpoint syncs the
database file; inside a COMMIT it held every waiting event ~100 ms on a busy disk: the p99 of
issue 17). Should it lag, SQLite's own checkpoint in the commit takes over past
:data:`WAL_AUTOCHECKPOINT_PAGES` pages. The WAL is truncated back to
:data:`WAL_SIZE_LIMIT_BYTES` (``journal_size_limit``); after a failing streak ends, and when the
writer goes idle with a WAL past that size (a reader held a checkpoint off), it runs
``wal_checkpoint(TRUNCATE)``, so space taken during a burst is given back to the disk.
Headroom the store needs beyond the database file: the WAL (up to the largest transaction, at
most ``max_group`` changes, plus :data:`WAL_SIZE_LIMIT_BYTES`) and, at checkpoint, room for the
database to grow by the pages the WAL holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import queue
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from edge_agent.backoff import Backoff
from edge_agent.metrics import DEAD_LETTER_DROPPED, EVENTS, OUTBOX_DROPPED
from edge_agent.store import occupancy, schema
from edge_agent.store.base import StoreError, StoreHealth, Synchronous
from edge_agent.store.calendar import write_calendars
from edge_agent.store.health import WriteHealth
from edge_agent.store.plan import PreparedChange, ProgressOp, coalesce

log = structlog.get_logger(__name__)

# Retrying progress a failed group could not write (disk full: a few seconds apart at most).
PROGRESS_RETRY = Backoff(initial=0.5, maximum=30.0)

_T = TypeVar("_T")
Call = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
"""A queued :meth:`GroupWriter.call`: the function and its caller's future."""


WAL_AUTOCHECKPOINT_PAGES = 10_000
"""The commit checkpoints the WAL itself past ~40 MiB of pages (SQLite's default is 1,000): a
fallback, the checkpoint thread does it first (see "Disk space")."""
WRITER_CACHE_KIB = 16 * 1024
"""The write connection's page cache (SQLite's default: 2 MiB). Compaction deletes rows that
are scattered over the table and its indexes (devices interleave in seq order); with 100,000
events queued the indexes alone outgrow 2 MiB and every delete read its pages back."""
SWEEP_AFTER_S = 2.0
"""A sweep runs once the low-water mark has not moved for this long (see "Compaction")."""
CHECKPOINT_EVERY_S = 0.25
"""Most often the checkpoint thread runs while commits come in."""
TRUNCATE_EVERY_S = 5.0
"""Most often an idle writer truncates an oversized WAL. Draining a backlog, the writer goes
idle between every two groups, and the WAL stays past its limit while the deletes go on: a
TRUNCATE (a full checkpoint and a sync) at each of those took 8 % of the drain's samples."""
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
"""The WAL is truncated back to this size after a checkpoint (``journal_size_limit``)."""
LINGER_TURNS = 3
"""Loop turns the writer lets run before it takes a group of fewer than
:data:`LINGER_BELOW` changes (see "Group size")."""
LINGER_BELOW = 16
INLINE_MAX_CHANGES = 32
"""A group of at most this many changes (and no :meth:`GroupWriter.call`) runs on the loop
itself while small groups are fast (see "Its connection and thread")."""
INLINE_SLOW_S = 0.005
"""Groups on the loop that take longer than this, :data:`INLINE_SLOW_GROUPS` in a row, or one
that takes :data:`INLINE_STALL_S`, send the next ones to the thread for
:data:`INLINE_BACKOFF_S` (one slow group alone is a GC pause as often as a slow disk)."""
INLINE_SLOW_GROUPS = 3
INLINE_STALL_S = 0.05
INLINE_BACKOFF_S = 30.0


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of ``edge_agent_store_errors`` for a failed write."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or (
        isinstance(exc, sqlite3.OperationalError) and "full" in text
    ):
        return "full"
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text:
        return "corrupt"
    if primary == sqlite3.SQLITE_READONLY or "readonly" in text:
        return "readonly"
    if primary == sqlite3.SQLITE_IOERR or "disk I/O error" in text:
        return "io"
    if isinstance(exc, sqlite3.IntegrityError):
        return "conflict"
    return "other"


def sqlite_message(path: Path, exc: BaseException) -> str:
    """What a person sees when a write failed, with what to do next."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "outbox.seq" in text:
        return (
            f"outbox seq already taken in {path}: another process wrote to the database; this "
            "commit was not stored (retry it); only one edge-agent may use a database"
        )
    kind = error_kind(exc)
    if kind == "full":
        return (
            f"database or disk is full at {path}: free space; events are kept in memory and retried"
        )
    if kind == "corrupt":
        return (
            f"the database at {path} is damaged ({text}): stop the agent, move the file aside "
            "and restore it from a backup (the next start checks it and refuses a damaged file)"
        )
    if kind == "readonly":
        return f"the database at {path} cannot be written ({text}): check the file and its mount"
    return f"store write failed at {path}: {text}"


class DbThread:
    """One thread that runs functions (of one sqlite3 connection), in order: a queue in,
    futures out. Lighter than a one-worker executor per hop (no concurrent Future to chain,
    no locks on submit): the writer hops once per group."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        # Each written by one thread only (the loop, the thread): idle when equal.
        self._submitted = 0
        self._finished = 0

    @property
    def idle(self) -> bool:
        """Whether nothing queued on the thread is waiting or running (on the loop: nothing
        can be queued meanwhile)."""
        return self._finished == self._submitted

    def run(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``fn(*args)`` on the thread, after what is queued there.

        Raises:
            RuntimeError: the thread was stopped.
        """
        if self._stopped:
            raise RuntimeError(f"{self._thread.name} has stopped")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread.start()
        fut: asyncio.Future[_T] = loop.create_future()
        self._submitted += 1
        self._queue.put((fn, args, fut))
        return fut

    def stop(self) -> None:
        """End the thread once what is queued has run."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        while (item := self._queue.get()) is not None:
            fn, args, fut = item
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - the caller's future gets it
                self._finished += 1
                loop.call_soon_threadsafe(_fail, fut, exc)
            else:
                self._finished += 1
                loop.call_soon_threadsafe(_resolve, fut, result)
            del item, fn, args, fut  # hold nothing while waiting for the next one


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class GroupWriter:
    """Owns the write connection; everything that writes goes through it, in order."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous,
        sinks: tuple[str, ...],
        outbox_max_events: int,
        dead_letter_max: int,
        max_group: int,
        queue_max: int,
        clock: Callable[[], float],
        wal_size_limit: int = WAL_SIZE_LIMIT_BYTES,
    ) -> None:
        self.path = path
        self.sinks = sinks
        self.outbox_max_events = outbox_max_events
        self.dead_letter_max = dead_letter_max
        self._synchronous = synchronous
        # The write connection's thread; small groups run on the loop while it is idle.
        self._thread = DbThread(f"store[{path.name}].writer")
        self._db: sqlite3.Connection | None = None
        self._inline_after = 0.0  # loop time from which small groups may run on the loop
        self._inline_slow = 0  # slow groups on the loop in a row
        # The checkpoints, off the commit path: a connection of their own on a thread of its own.
        self._ckpt_thread = DbThread(f"store[{path.name}].ckpt")
        self._ckpt_db: sqlite3.Connection | None = None
        self._ckpt_running = False
        self._ckpt_at = 0.0  # loop time of the last one started
        self._max_group = max_group
        self._time = clock
        self._log = log.bind(db=str(path))
        # Inputs. Changes are bounded by a semaphore (backpressure on commit()); progress is
        # bounded by the drainers' in-flight limits.
        self._changes: deque[PreparedChange] = deque()
        self._change_slots = asyncio.Semaphore(queue_max)
        self._progress: deque[ProgressOp] = deque()
        self._calls: deque[Call] = deque()
        self._work = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Future[Any]] = set()  # failed all at once if the task dies
        # Progress of a failed group, written again first (in order) with the next group.
        self._held: list[ProgressOp] = []
        self._held_attempts = 0
        self._held_at = 0.0  # loop time of the next try on its own
        self._held_backoff = PROGRESS_RETRY
        self._writing: list[ProgressOp] = []  # the group's progress while its write runs
        self._foreign_after = 0  # foreign_count once the group moving rows for the cap commits
        # The failing streak (see "Health"), kept as the PostgreSQL writer keeps it.
        self._health = WriteHealth(clock, self._log)
        self._checkpoint_due = False
        self._truncated_at = -TRUNCATE_EVERY_S  # loop time of the last idle TRUNCATE
        self._truncate_timer: asyncio.TimerHandle | None = None
        self._wal = Path(f"{path}-wal")
        self._wal_size_limit = wal_size_limit
        self.failed: str | None = None
        """Why nothing can be written any more (the writer task died), else ``None``."""
        # What the database holds, kept in memory (only the writer changes it).
        self.next_seq = 1
        self.outbox_count = 0
        self.foreign_count = 0
        """Outbox rows replayed for sinks no longer configured (never sent, never compacted)."""
        self.dead_count = 0
        self.kept = 0
        """With one sink: outbox rows it is done with, not deleted yet (above the low-water
        mark, see "Compaction"); the depth is ``outbox_count - foreign_count - kept``. 0 with
        several sinks (their depths are scanned)."""
        self._db_cursor: dict[str, dict[str, int]] = {s: {} for s in sinks}
        # Compaction (see "Compaction"), on the writer's thread only: per sink, the streams
        # with rows it has not done (stream -> top seq; more is safe, less would lose rows);
        # the low-water mark deleted up to; the streams whose cursors moved past it.
        self._pending: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self._compacted_upto = 0
        self._deferred: set[str] = set()
        # The deferred streams by their highest cursor (a heap; an entry per cursor move,
        # the stale ones skipped when popped), so a commit settles them in O(moves), not
        # O(streams); rebuilt from _deferred when marked stale or grown past it.
        self._deferred_tops: list[tuple[int, str]] = []
        self._tops_stale = True
        self._mark_moved_at = 0.0  # loop time the mark last moved (or a sweep ran)
        self._compact_sql = schema.COMPACT_UPTO.format(marks=", ".join("?" * len(sinks)))
        # Per sink: streams with events stored since the drainer last looked (stream -> top).
        self.committed: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self.wakeups: dict[str, asyncio.Event] = {s: asyncio.Event() for s in sinks}
        self.on_stored: Callable[[PreparedChange, int | None, float], None] | None = None
        """Called for each committed change with events: (change, its first seq, the commit
        time); on the loop, before the drainers are woken. The seq is ``None`` when the group
        had events already stored (the same ``event_id``: not stored again, so the seqs of
        the change's events are not known here). Must not raise."""
        self.on_overflow: Callable[[], None] | None = None
        """Called when the outbox cap moved rows to the dead letter."""

    async def open(self) -> None:
        """Open the write connection on the writer's thread: WAL, ``synchronous``, the WAL
        bounds; and the checkpoint connection on its own. Raises what ``sqlite3`` raises (the
        store turns it into a StoreError)."""
        await self._run(self._connect)
        await self._ckpt_thread.run(self._connect_checkpointer)

    def _connect_checkpointer(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(f"PRAGMA journal_size_limit={int(self._wal_size_limit)}")
        except BaseException:
            db.close()
            raise
        self._ckpt_db = db

    def _checkpoint_soon(self) -> None:
        """After a commit: start a PASSIVE checkpoint on the checkpoint thread, unless one runs
        or one started less than CHECKPOINT_EVERY_S ago (see "Disk space")."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._ckpt_running or self._ckpt_db is None or now - self._ckpt_at < CHECKPOINT_EVERY_S:
            return
        self._ckpt_running = True
        self._ckpt_at = now
        fut = self._ckpt_thread.run(self._passive_checkpoint)
        fut.add_done_callback(self._checkpointed)

    def _truncate_checkpoint(self) -> None:
        db = self._ckpt_db
        if db is not None:
            _wal_checkpoint(db)

    def _passive_checkpoint(self) -> None:
        db = self._ckpt_db
        if db is not None:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpointed(self, fut: asyncio.Future[None]) -> None:
        self._ckpt_running = False
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:  # the commit's own checkpoint still bounds the WAL
            self._log.info("WAL checkpoint did not complete", error=str(exc))

    def _connect(self, _db: None) -> None:
        # Used on the loop too, never at the same time (_inline_ok: the thread is idle).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={int(self._wal_size_limit)}")
            db.execute(f"PRAGMA cache_size={-WRITER_CACHE_KIB}")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def load(self) -> None:
        """Read what the writer keeps in memory (next seq, counts, cursors); after migration."""
        await self._run(self._load)

    def _load(self, db: sqlite3.Connection) -> None:
        rows = db.execute(schema.LAST_SEQ).fetchall()
        self.next_seq = (int(rows[0][0]) if rows else 0) + 1
        self.outbox_count = int(db.execute(schema.OUTBOX_COUNT).fetchone()[0])
        self.foreign_count = self._count_foreign(db)
        self.dead_count = int(db.execute(schema.DEAD_LETTER_COUNT).fetchone()[0])
        for sink, device, done in db.execute(schema.SELECT_CURSORS).fetchall():
            if sink in self._db_cursor:
                self._db_cursor[sink][device] = done
        self._pending = self._read_pending(db)
        # Rows a sweep may still find (kept above the mark when the last process stopped).
        self._deferred = {d for cursors in self._db_cursor.values() for d in cursors}
        self._tops_stale = True
        if len(self.sinks) == 1:
            self.kept = int(db.execute(schema.DONE_ROWS, (self.sinks[0],) * 2).fetchone()[0])

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(db, *args)`` on the writer's thread, after what is queued there."""
        return await self._thread.run(self._on_db, fn, args)

    def _on_db(self, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        return fn(self._db, *args)

    async def on_connection(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` with the write connection on its thread, outside the groups' transactions
        (a diagnostic hook: tests set PRAGMAs with it)."""
        return await self._run(fn)

    async def execute(self, sql: str) -> list[Any]:
        """Run one statement on the write connection, outside the groups' transactions; its
        rows (a diagnostic hook: tests set PRAGMAs with it)."""
        return await self._run(_fetchall, sql)

    async def release(self) -> None:
        """Close the write connection and end its thread (after :meth:`close`, or when the
        store failed to open)."""

        def close(db: sqlite3.Connection | None) -> None:
            if db is not None:
                db.close()
            self._db = None

        def close_checkpointer() -> None:
            if self._ckpt_db is not None:
                self._ckpt_db.close()
            self._ckpt_db = None

        try:
            await self._run(close)
        except RuntimeError:  # the thread was shut down already
            pass
        self._thread.stop()
        with contextlib.suppress(RuntimeError):
            # After a checkpoint still running: the executor runs them in order.
            await self._ckpt_thread.run(close_checkpointer)
        self._ckpt_thread.stop()

    def start(self) -> None:
        self.health()  # edge_agent_store_healthy starts at 1 for an open store
        self._task = asyncio.create_task(self._write_loop(), name=f"store[{self.path.name}].writer")
        self._task.add_done_callback(self._done)

    async def close(self) -> None:
        """Write what is queued and stop. Cancelling it is not safe (commits left unresolved)."""
        self._closing = True
        self._work.set()
        if self._truncate_timer is not None:
            self._truncate_timer.cancel()
            self._truncate_timer = None
        if self._task is not None:
            await asyncio.wait([self._task])  # a dead writer was reported by _done

    # -- inputs -------------------------------------------------------------------------------

    async def commit(self, prepared: PreparedChange) -> None:
        await self._change_slots.acquire()
        if self.failed is not None or self._closing:
            self._change_slots.release()
            self.check_open()
        self._track(prepared.future)
        self._changes.append(prepared)
        self._work.set()
        await prepared.future

    def progress(self, op: ProgressOp) -> asyncio.Future[None]:
        if op.sink not in self._db_cursor:
            raise KeyError(f"unknown sink {op.sink!r}; configured: {self.sinks}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op.future = fut
        if self.failed is not None or self._closing:
            fut.set_exception(self.closed_error())
            return fut
        self._track(fut)
        self._progress.append(op)
        self._work.set()
        return fut

    def unwritten(self, sink: str) -> list[ProgressOp]:
        """``sink``'s progress queued or held, not yet in the database, in order."""
        ops = (*self._writing, *self._held, *self._progress)
        return [op for op in ops if op.sink == sink]

    async def call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(db)`` on the writer's thread in a transaction (its own SAVEPOINT) after what
        is queued; wakes every drainer. ``fn`` may change ``next_seq``, ``outbox_count`` and
        ``dead_count`` (restored when it raises); it must not touch anything the event loop
        reads meanwhile (``committed``: :meth:`stored` is for after the call)."""
        self.check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._calls.append((fn, fut))
        self._work.set()
        result: _T = await fut
        return result

    def check_open(self) -> None:
        if self.failed is not None or self._closing:
            raise self.closed_error()

    def closed_error(self) -> StoreError:
        return StoreError(self.failed or f"store at {self.path} is closed")

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)

    def health(self) -> StoreHealth:
        """The failing streak now; also sets ``edge_agent_store_healthy``."""
        return self._health.health()

    def _write_failed(self, exc: BaseException, message: str, *, changes: bool) -> None:
        self._health.failed(error_kind(exc), message, changes=changes)

    def _write_succeeded(self, *, changes: bool) -> None:
        if self._health.succeeded(changes=changes):
            self._checkpoint_due = True  # give back the WAL space the streak may have grown

    async def _checkpoint(self) -> None:
        """``wal_checkpoint(TRUNCATE)`` after a failing streak, or with an oversized WAL (at most
        every :data:`TRUNCATE_EVERY_S` for that)."""
        due = self._checkpoint_due
        self._checkpoint_due = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not due:
            wait = self._truncated_at + TRUNCATE_EVERY_S - now
            if wait > 0:
                # Look again then, should the writer stay idle (the space is given back).
                if self._truncate_timer is None and not self._closing:
                    self._truncate_timer = loop.call_later(wait, self._truncate_later)
                return
            try:
                due = os.stat(self._wal).st_size > self._wal_size_limit
            except OSError:
                return
        if not due:
            return
        self._truncated_at = now
        try:
            # Fetched in full (_wal_checkpoint): a cursor left holding the pragma's result row
            # keeps its statement active, and every later COMMIT on this connection fails
            # ("SQL statements in progress") until the cursor is collected.
            # On the checkpoint thread, after a PASSIVE one running there (two checkpoints at
            # once: the second returns "busy" and does nothing).
            await self._ckpt_thread.run(self._truncate_checkpoint)
        except (
            sqlite3.Error,
            RuntimeError,
        ) as exc:  # a reader holds it off, or the disk is still full
            self._log.info("WAL checkpoint did not complete", error=str(exc))

    def _truncate_later(self) -> None:
        self._truncate_timer = None
        self._work.set()

    @property
    def compacted_upto(self) -> int:
        """Every outbox row up to this seq is deleted (committed), the low-water mark's last."""
        return self._compacted_upto

    def note_rows(self, sink: str, device: str, top: int) -> None:
        """On the writer's thread, in a :meth:`call` that inserts outbox rows for ``sink`` only
        (a replay): ``device``'s stream has rows up to ``top`` (compaction must keep them)."""
        pend = self._pending.get(sink)
        if pend is not None and top > pend.get(device, 0):
            pend[device] = top

    def stored(self, sink: str, device: str, seq: int) -> None:
        """Tell ``sink``'s drainer that ``device`` has events up to ``seq``."""
        feed = self.committed[sink]
        feed[device] = max(feed.get(device, 0), seq)

    # -- the loop -------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wake = self._held_at if self._held and not self._closing else None
            if self._deferred and not self._closing:
                sweep_at = self._mark_moved_at + SWEEP_AFTER_S
                wake = sweep_at if wake is None else min(wake, sweep_at)
            if wake is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake - loop.time()):
                        await self._work.wait()
            else:
                await self._work.wait()
            self._work.clear()
            while (
                self._changes
                or self._progress
                or self._calls
                or (self._held and (self._closing or loop.time() >= self._held_at))
            ):
                if len(self._changes) < LINGER_BELOW and not self._closing:
                    for _ in range(LINGER_TURNS):
                        await asyncio.sleep(0)
                changes = [
                    self._changes.popleft() for _ in range(min(self._max_group, len(self._changes)))
                ]
                progress = self._held + list(self._progress)
                self._held = []
                self._progress.clear()
                calls = list(self._calls)
                self._calls.clear()
                if changes or progress or calls:
                    self._writing = progress
                    try:
                        await self._write_group(changes, progress, calls)
                    finally:
                        self._writing = []
                        for _ in changes:
                            self._change_slots.release()
            if self._closing:
                return
            if self._deferred and loop.time() >= self._mark_moved_at + SWEEP_AFTER_S:
                await self._sweep()
            await self._checkpoint()

    def _done(self, task: asyncio.Task[None]) -> None:
        """Fail everyone waiting when the writer ends; mark the store failed if it died."""
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None or not self._closing:
            why = "cancelled" if task.cancelled() else repr(exc) if exc else "ended"
            self.failed = (
                f"the store writer for {self.path} stopped ({why}); nothing can be stored any "
                "more: restart the agent"
            )
            self._log.error("store writer died", error=why, exc_info=exc)
        err = self.closed_error()
        for fut in list(self._waiting):
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        self._held.clear()
        self._progress.clear()
        self._calls.clear()
        for _ in self._changes:  # wake commits waiting for a slot; they see ``failed``
            self._change_slots.release()
        self._changes.clear()

    def _run_calls(self, db: sqlite3.Connection, fns: list[Call]) -> list[tuple[bool, Any]]:
        """The calls inside the group's transaction, each in its own SAVEPOINT: (ok, result or
        exception) each."""
        results: list[tuple[bool, Any]] = []
        for fn, _ in fns:
            counts = self.next_seq, self.outbox_count, self.dead_count
            db.execute("SAVEPOINT call")
            try:
                value = fn(db)
            except Exception as exc:  # noqa: BLE001 - this call's caller gets it
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                self.next_seq, self.outbox_count, self.dead_count = counts
                results.append((False, exc))
                continue
            db.execute("RELEASE call")
            results.append((True, value))
        return results

    def _calls_done(self, calls: list[Call], results: list[tuple[bool, Any]]) -> None:
        for (_, fut), (ok, value) in zip(calls, results, strict=True):
            if ok:
                self._write_succeeded(changes=False)
                if not fut.done():
                    fut.set_result(value)
                continue
            message = sqlite_message(self.path, value)
            self._write_failed(value, message, changes=False)
            if not fut.done():
                fut.set_exception(StoreError(message))
        if calls:
            for ev in self.wakeups.values():
                ev.set()

    def _hold(self, progress: list[ProgressOp]) -> None:
        """Keep the progress of a failed group for the next try (see "Errors" above).

        The drainers' cursors are already past these events; dropping the operations would let
        a later, successful one move the stored cursor past an event that was never
        dead-lettered, and compaction would delete it.
        """
        if not progress:
            return
        if self._closing:
            self._log.error(
                "closing with drainer progress not written; those events are sent again after "
                "the next start",
                progress=len(progress),
            )
            return
        self._held = progress
        self._held_attempts += 1
        delay = self._held_backoff.delay(self._held_attempts)
        self._held_at = asyncio.get_running_loop().time() + delay

    async def _resync_seq(self) -> None:
        # Someone else wrote outbox rows: number ours after theirs so the retry can succeed.
        with contextlib.suppress(sqlite3.Error):
            rows = await self._run(_fetchall, schema.MAX_SEQ_ANYWHERE)
            if rows and rows[0][0] is not None:
                self.next_seq = max(self.next_seq, int(rows[0][0]) + 1)

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._run(_rollback)

    # -- one group --------------------------------------------------------------------------------

    async def _write_group(
        self, changes: list[PreparedChange], progress: list[ProgressOp], calls: list[Call]
    ) -> None:
        """Write the group; on a full disk, store what fits (see "Disk space" above)."""
        parts = [changes]
        while parts:
            part = parts.pop(0)
            exc = await self._try_group(part, progress, calls)
            if exc is not None and calls:
                message = sqlite_message(self.path, exc)
                for _, fut in calls:
                    if not fut.done():
                        fut.set_exception(StoreError(message))
            calls = []  # tried with the first part only
            if exc is None:
                progress = []  # written with this part
                continue
            if len(part) > 1 and error_kind(exc) == "full":
                half = len(part) // 2
                parts[:0] = [part[:half], part[half:]]
                continue
            # Not even one change fits (or it is not about space): fail this part and the rest.
            failed = part + [ch for p in parts for ch in p]
            err = StoreError(sqlite_message(self.path, exc))
            self._write_failed(exc, str(err), changes=bool(failed))
            self._log.error(
                "store write failed", error=str(err), changes=len(failed), progress=len(progress)
            )
            for ch in failed:
                if not ch.future.done():
                    ch.future.set_exception(err)
            for op in progress:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(err)
            self._hold(progress)
            return

    async def _try_group(
        self, changes: list[PreparedChange], progress: list[ProgressOp], calls: list[Call]
    ) -> Exception | None:
        """One transaction; resolves its futures when it committed, else returns the error."""
        counts = self.next_seq, self.outbox_count, self.dead_count, self.kept
        cursors: dict[tuple[str, str], int] = {}
        now = self._time()
        had_deferred = bool(self._deferred)
        try:
            db = self._db if self._inline_ok(changes, calls) else None
            if db is not None:
                t0 = time.perf_counter()
                try:
                    out = self._apply_sync(db, changes, progress, calls, cursors, now)
                finally:
                    self._inline_took(time.perf_counter() - t0)
            else:
                out = await self._run(self._apply_sync, changes, progress, calls, cursors, now)
            added, firsts, exact, overflow, dropped, results, moved = out
        except Exception as exc:  # noqa: BLE001 - the writer survives; the callers get it
            await self._rollback()
            self.next_seq, self.outbox_count, self.dead_count, self.kept = counts
            # The group's streams joined _deferred; their cursors did not move.
            self._tops_stale = True
            if isinstance(exc, sqlite3.IntegrityError):
                await self._resync_seq()
            return exc
        if changes or progress:  # the calls count one by one (_calls_done)
            self._write_succeeded(changes=bool(changes))
        self._held_attempts = 0
        self._checkpoint_soon()
        self.outbox_count += added
        if moved or not had_deferred:
            # The sweep's wait starts when the mark last moved, or when rows were first kept
            # above it: a backlog's first deliveries (the mark still where it stopped) are not
            # swept at once, with a scan of the whole outbox for the streams' tops.
            self._mark_moved_at = asyncio.get_running_loop().time()
        for (s, d), q in cursors.items():
            dbc = self._db_cursor[s]
            dbc[d] = max(dbc.get(d, 0), q)
        if overflow:
            self.foreign_count = self._foreign_after
        if overflow and self.on_overflow is not None:
            self.on_overflow()
        if firsts:
            on_stored = self.on_stored
            new_devices: dict[str, int] = {}
            for ch, first in firsts:
                new_devices[ch.device_id] = first + len(ch.events) - 1
                if on_stored is not None:
                    on_stored(ch, first if exact else None, now)
            for sink in self.sinks:
                for d, top in new_devices.items():
                    self.stored(sink, d, top)
                self.wakeups[sink].set()
        # One labelled-child lookup per type and group, not per event.
        for etype, n in Counter(e.type for ch in changes for e in ch.events).items():
            EVENTS.labels(type=etype).inc(n)
        for ch in changes:
            if not ch.future.done():
                ch.future.set_result(None)
        for op in progress:
            if op.future is not None and not op.future.done():
                op.future.set_result(None)
        self._calls_done(calls, results)
        if overflow:
            OUTBOX_DROPPED.inc(overflow)
            self._log.warning(
                "outbox full: moved the oldest undelivered events to the dead letter "
                "(reason 'outbox full'); replay them with `edge-agent outbox dead-letter "
                "replay` once the sinks have caught up",
                moved=overflow,
                cap=self.outbox_max_events,
            )
        self._report_dead_letter_drop(dropped)
        return None

    def _inline_ok(self, changes: list[PreparedChange], calls: list[Call]) -> bool:
        """Whether this group runs on the loop (see "Its connection and thread")."""
        return (
            len(changes) <= INLINE_MAX_CHANGES
            and not calls
            and self._synchronous == "normal"  # "full" syncs the WAL in every COMMIT
            and self._thread.idle
            and asyncio.get_running_loop().time() >= self._inline_after
        )

    def _inline_took(self, seconds: float) -> None:
        """A group ran on the loop for ``seconds``: slow ones send the next to the thread."""
        self._inline_slow = self._inline_slow + 1 if seconds > INLINE_SLOW_S else 0
        if self._inline_slow >= INLINE_SLOW_GROUPS or seconds > INLINE_STALL_S:
            self._inline_slow = 0
            self._inline_after = asyncio.get_running_loop().time() + INLINE_BACKOFF_S
            self._log.info(
                "store writes are slow: groups go to the writer thread for a while",
                group_ms=round(seconds * 1000, 1),
                for_s=INLINE_BACKOFF_S,
            )

    def _apply_sync(
        self,
        db: sqlite3.Connection,
        changes: list[PreparedChange],
        progress: list[ProgressOp],
        calls: list[Call],
        cursors: dict[tuple[str, str], int],
        now: float,
    ) -> tuple[int, list[tuple[PreparedChange, int]], bool, int, int, list[tuple[bool, Any]], bool]:
        """One transaction: the changes, their events, the progress, compaction, the caps.

        Returns (outbox rows added net, [(change with events, its first seq)], whether every
        event was inserted (none was stored before), events moved by the outbox cap, dead
        letters dropped by the dead-letter cap, the calls' results, whether the low-water mark
        moved).

        The whole transaction is one call on the writer's thread: a group costs one thread
        hop, not one per statement (at ~10 statements per group, hops per statement were the
        writer's main cost under a flood).
        """
        db.execute("BEGIN IMMEDIATE")
        writes = coalesce(changes)
        replaced = [(d,) for d, w in writes.items() if w.replace]
        if replaced:
            db.executemany(schema.DELETE_WINDOW_OF, replaced)
        wdel = [(d, k) for d, w in writes.items() for k, v in w.window.items() if v is None]
        wput = [(d, k, v) for d, w in writes.items() for k, v in w.window.items() if v is not None]
        pdel = [(d, u) for d, w in writes.items() for u, v in w.pending.items() if v is None]
        pput = [
            (d, u, v[0], v[1])
            for d, w in writes.items()
            for u, v in w.pending.items()
            if v is not None
        ]
        states = [(d, w.state) for d, w in writes.items() if w.state is not None]
        if wdel:
            db.executemany(schema.DELETE_WINDOW, wdel)
        if wput:
            db.executemany(schema.PUT_WINDOW, wput)
        if pdel:
            db.executemany(schema.DELETE_PENDING, pdel)
        if pput:
            db.executemany(schema.PUT_PENDING, pput)
        if states:
            db.executemany(schema.PUT_DEVICE_STATE, states)
        write_calendars(db, [ch.calendar for ch in changes if ch.calendar is not None])
        # In commit order: a later open interval replaces an earlier one.
        occupancy.write_all(db, [occ for ch in changes for occ in ch.occupancy])
        rows = []
        firsts: list[tuple[PreparedChange, int]] = []
        exact = True
        for ch in changes:
            if ch.events:
                firsts.append((ch, self.next_seq))
                # Before the rows are written: compaction below must see them (kept if the
                # transaction fails: more pending is safe; a sweep reads the truth again).
                for pend in self._pending.values():
                    pend[ch.device_id] = self.next_seq + len(ch.events) - 1
            for e in ch.events:
                obs = now if e.observed_at is None else e.observed_at
                rows.append((self.next_seq, e.event_id, "", ch.device_id, e.type, e.body, now, obs))
                self.next_seq += 1
        added = 0
        if rows:
            added = db.executemany(schema.INSERT_OUTBOX, rows).rowcount
            exact = added == len(rows)  # else some were stored before: which, the table knows
        resolved = [(st, now, out, u) for ch in changes for u, st, out in ch.request_outcomes]
        if resolved:
            db.executemany(schema.RESOLVE_BOOKING_REQUEST, resolved)
        added -= self._apply_progress(db, progress, now, cursors)
        results = self._run_calls(db, calls)
        mark = self._low_water(cursors) if cursors else self._compacted_upto
        if mark > self._compacted_upto:
            args = (self._compacted_upto, mark, *self.sinks)
            compacted = db.execute(self._compact_sql, args).rowcount
            added -= compacted
            self._forget_kept(compacted)
        overflow = 0
        swept: dict[str, dict[str, int]] | None = None
        if self.outbox_count + added > self.outbox_max_events and self._deferred:
            # The cap counts undelivered rows: delivered ones kept above the mark go first.
            deleted, swept = self._sweep_sync(db, cursors)
            added -= deleted
            self._forget_kept(deleted)
        if self.outbox_count + added > self.outbox_max_events:
            removed, overflow = self._overflow(
                db, self.outbox_count + added - self.outbox_max_events, now
            )
            added -= removed
            # The cap removes the oldest rows whoever they are for: rows of old sinks too.
            self._foreign_after = self._count_foreign(db)
        dropped = self._cap_dead_letters(db)
        db.execute("COMMIT")
        # Committed: what compaction keeps in memory follows the database.
        moved = mark > self._compacted_upto
        self._compacted_upto = max(self._compacted_upto, mark)
        if swept is not None:
            self._pending = swept
            self._deferred.clear()
            self._deferred_tops.clear()
        elif cursors:
            self._settle(cursors)
        if overflow:  # rows went without their cursors moving: read the tops again
            self._pending = self._read_pending(db)
        return added, firsts, exact, overflow, dropped, results, moved

    def _apply_progress(
        self,
        db: sqlite3.Connection,
        progress: list[ProgressOp],
        now: float,
        cursors: dict[tuple[str, str], int],
    ) -> int:
        """Write cursors, retry state and dead letters; delete rows every sink is done with.

        Fills ``cursors`` with the new ``(sink, device) -> done_seq`` (for the caller to take
        into its view of the database once the transaction commits); returns the number of
        outbox rows deleted.
        """
        if not progress:
            return 0
        retries: dict[tuple[str, str], ProgressOp | None] = {}
        dead: list[tuple[Any, ...]] = []
        for op in progress:
            key = (op.sink, op.device_id)
            if op.kind == "retry":
                retries[key] = op
                continue
            cursors[key] = max(cursors.get(key, 0), max(op.seqs))
            retries[key] = None
            if op.kind == "dead":
                dead += [(op.sink, op.error, op.attempts, now, s) for s in op.seqs]
        if dead:
            self.dead_count += db.executemany(schema.DEAD_LETTER_ROW, dead).rowcount
        set_retry = [
            (s, d, op.seqs[0], op.attempts, op.next_attempt_at, op.error)
            for (s, d), op in retries.items()
            if op is not None
        ]
        clear_retry = [(s, d) for (s, d), op in retries.items() if op is None]
        if clear_retry:
            db.executemany(schema.DELETE_RETRY, clear_retry)
        if set_retry:
            db.executemany(schema.PUT_RETRY, set_retry)
        if not cursors:
            return 0
        db.executemany(schema.PUT_CURSOR, [(s, d, q) for (s, d), q in cursors.items()])
        # The rows themselves go with the low-water mark, or in a sweep (see "Compaction").
        self._deferred.update(d for _, d in cursors)
        if len(self.sinks) == 1:
            self._count_kept(db, cursors)
        return 0

    def _count_kept(self, db: sqlite3.Connection, cursors: dict[tuple[str, str], int]) -> None:
        """One sink: add the rows this group's cursor moves passed to :attr:`kept`.

        A count in ``outbox_by_device`` (device, seq): no table page is read, unless rows of
        sinks no longer configured are in the outbox (they are not the sink's, and only the
        table says which rows they are).
        """
        sql = schema.ROWS_PASSED if self.foreign_count == 0 else schema.OWN_ROWS_PASSED
        kept = 0
        for (s, d), q in cursors.items():
            after = max(self._db_cursor[s].get(d, 0), self._compacted_upto)
            if q > after:
                args = (d, after, q) if self.foreign_count == 0 else (d, after, q, s)
                kept += db.execute(sql, args).fetchone()[0]
        self.kept += kept

    def _forget_kept(self, deleted: int) -> None:
        """Rows the sink was done with are gone (compaction, a sweep)."""
        if len(self.sinks) == 1:
            self.kept = max(0, self.kept - deleted)

    def _cursor_of(self, sink: str, device: str, cursors: dict[tuple[str, str], int]) -> int:
        """``sink``'s cursor for ``device`` with this group's progress."""
        return max(self._db_cursor[sink].get(device, 0), cursors.get((sink, device), 0))

    def _low_water(self, cursors: dict[tuple[str, str], int]) -> int:
        """The highest seq every row at or below which every sink is done with: the lowest
        cursor of a stream with rows left for its sink (the last seq when there is none)."""
        mark = self.next_seq - 1
        for sink, pend in self._pending.items():
            dbc = self._db_cursor[sink]
            for d, top in pend.items():
                q = max(dbc.get(d, 0), cursors.get((sink, d), 0))
                if q < top and q < mark:
                    mark = q
        return mark

    def _settle(self, cursors: dict[tuple[str, str], int]) -> None:
        """After a commit: streams now done leave ``_pending``; streams with nothing above the
        mark leave ``_deferred``."""
        for (s, d), q in cursors.items():
            pend = self._pending[s]
            top = pend.get(d)
            if top is not None and q >= top:
                del pend[d]
        mark = self._compacted_upto
        deferred, tops = self._deferred, self._deferred_tops
        if self._tops_stale or len(tops) > 2 * len(deferred) + 1024:
            tops[:] = [(self._top_cursor(d, cursors), d) for d in deferred]
            heapq.heapify(tops)
            self._tops_stale = False
        else:
            for d in {d for _, d in cursors}:
                heapq.heappush(tops, (self._top_cursor(d, cursors), d))
        while tops and tops[0][0] <= mark:
            _, d = heapq.heappop(tops)
            if self._top_cursor(d, cursors) <= mark:  # else a later entry holds its top
                deferred.discard(d)

    def _top_cursor(self, device: str, cursors: dict[tuple[str, str], int]) -> int:
        """``device``'s highest cursor over the sinks, with this group's progress."""
        return max(self._cursor_of(s, device, cursors) for s in self.sinks)

    def _read_pending(self, db: sqlite3.Connection) -> dict[str, dict[str, int]]:
        """Per sink, the streams with rows it has not done, read from the table."""
        pending: dict[str, dict[str, int]] = {s: {} for s in self.sinks}
        for only, d, top in db.execute(schema.OUTBOX_TOPS).fetchall():
            for s in self.sinks if only == "" else (only,) if only in pending else ():
                if self._db_cursor[s].get(d, 0) < top and top > pending[s].get(d, 0):
                    pending[s][d] = top
        return pending

    def _sweep_sync(
        self, db: sqlite3.Connection, cursors: dict[tuple[str, str], int]
    ) -> tuple[int, dict[str, dict[str, int]]]:
        """Inside a transaction: delete every row of the deferred streams that every sink is
        done with. Returns (rows deleted, the pending streams read again)."""
        devices = sorted(self._deferred)
        everyone = [(d, min(self._cursor_of(s, d, cursors) for s in self.sinks)) for d in devices]
        deleted = db.executemany(schema.COMPACT_SHARED, everyone).rowcount
        own = [(d, self._cursor_of(s, d, cursors), s) for d in devices for s in self.sinks]
        deleted += db.executemany(schema.COMPACT_ONE_SINK, own).rowcount
        return deleted, self._read_pending(db)

    def _sweep_round(self, db: sqlite3.Connection) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted, pending = self._sweep_sync(db, {})
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._pending = pending
        self._deferred.clear()
        self._deferred_tops.clear()
        return deleted

    async def _sweep(self) -> None:
        """The delivered rows the low-water mark left behind, in a round of their own."""
        try:
            deleted = await self._run(self._sweep_round)
        except sqlite3.Error as exc:  # rows stay; the next sweep tries again
            self._log.info("outbox sweep did not complete", error=str(exc))
        else:
            self.outbox_count -= deleted
            self._forget_kept(deleted)
        self._mark_moved_at = asyncio.get_running_loop().time()

    def _overflow(self, db: sqlite3.Connection, excess: int, now: float) -> tuple[int, int]:
        """Move the ``excess`` oldest outbox rows to the dead letter. Returns (removed, moved)."""
        rows = db.execute(schema.OLDEST_SEQ_UPTO, (excess,)).fetchall()
        upto = rows[0][0] if rows else None
        if upto is None:
            return 0, 0
        for sink in self.sinks:
            cur = db.execute(schema.DEAD_LETTER_OVERFLOW, (sink, now, sink, upto, sink))
            self.dead_count += cur.rowcount
        cur = db.execute(schema.DELETE_OUTBOX_UPTO, (upto,))
        # Every removed row was undelivered by at least one sink (delivered rows are compacted).
        return cur.rowcount, cur.rowcount

    def _count_foreign(self, db: sqlite3.Connection) -> int:
        marks = ",".join("?" * len(self.sinks))
        sql = schema.FOREIGN_ROWS.format(marks=marks)
        return int(db.execute(sql, self.sinks).fetchone()[0])

    def _cap_dead_letters(self, db: sqlite3.Connection) -> int:
        """Delete the oldest dead letters past ``dead_letter_max``; returns how many."""
        excess = self.dead_count - self.dead_letter_max
        if excess <= 0:
            return 0
        cur = db.execute(schema.DROP_OLDEST_DEAD_LETTERS, (excess,))
        self.dead_count -= cur.rowcount
        return cur.rowcount

    def _report_dead_letter_drop(self, dropped: int) -> None:
        if not dropped:
            return
        DEAD_LETTER_DROPPED.inc(dropped)
        self._log.warning(
            "dead letter full: deleted the oldest dead letters to stay within the cap; "
            "inspect, replay or purge them (`edge-agent outbox dead-letter list`) and fix the "
            "sink that rejects them",
            dropped=dropped,
            cap=self.dead_letter_max,
        )


def _fetchall(db: sqlite3.Connection, sql: str) -> list[Any]:
    return db.execute(sql).fetchall()


def _wal_checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")
