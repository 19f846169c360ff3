"""The PostgreSQL store's group-commit writer: one task, one transaction per group.

As :mod:`edge_agent.store.writer` for SQLite: the changes waiting (up to ``max_group``), the
drainers' progress and admin calls are committed together; a failed group fails its callers
with :class:`StoreError` and its progress is kept and written again (it is idempotent). In
fleet mode each change carries the fencing token it was queued with, checked against the lease
rows in the group's own transaction (:meth:`PgGroupWriter._fence`). Failed writes count
against the store's health by the same rules (:class:`~edge_agent.store.health.WriteHealth`,
"Health" in :mod:`edge_agent.store.writer`), with psycopg's errors as kinds
(:func:`pg_error_kind`). Booking requests the group's events close are resolved in its
transaction (:mod:`edge_agent.store.requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog

from edge_agent.backoff import Backoff
from edge_agent.metrics import DEAD_LETTER_DROPPED, EVENTS, OUTBOX_DROPPED
from edge_agent.store import pgschema as q
from edge_agent.store.base import StoreError, StoreHealth
from edge_agent.store.calendar import calendar_window_owner
from edge_agent.store.health import WriteHealth
from edge_agent.store.occupancy import OccupancyWrite, booking_rows, interval_rows, replaces_open
from edge_agent.store.plan import PreparedChange, ProgressOp, coalesce

if TYPE_CHECKING:
    # psycopg and its pool (~13 MiB of RSS) are imported where they are used at run time, so
    # naming the PostgreSQL store (an isinstance check, the CLI) never loads them.
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    Conn: TypeAlias = psycopg.AsyncConnection[Any]

log = structlog.get_logger(__name__)

PROGRESS_RETRY = Backoff(initial=0.5, maximum=30.0)


class StaleLease(StoreError):
    """A commit for a room this member no longer holds the lease of (it was not written)."""


def pg_error_kind(exc: BaseException) -> str:
    """The ``kind`` label of ``edge_agent_store_errors`` for a failed write (as SQLite's)."""
    import psycopg

    if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
        return "full"
    if isinstance(exc, psycopg.errors.DataCorrupted | psycopg.errors.IndexCorrupted):
        return "corrupt"
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return "readonly"
    if isinstance(exc, psycopg.errors.IntegrityError):
        return "conflict"
    # The server unreachable, a broken connection, no connection from the pool in time.
    if isinstance(exc, psycopg.OperationalError) or type(exc).__name__ == "PoolTimeout":
        return "io"
    return "other"


def pg_message(where: str, exc: BaseException) -> str:
    """What a person sees when a database call failed, with what to do next."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return (
            f"PostgreSQL at {where} is unreachable or refused the statement ({exc}); "
            "events are kept in memory and retried; check the database and [store] url"
        )
    return f"store write failed at {where}: {exc}"


class PgGroupWriter:
    """Owns the writes; everything that writes goes through it, in order."""

    def __init__(
        self,
        where: str,
        pool: AsyncConnectionPool[Conn],
        *,
        sinks: tuple[str, ...],
        outbox_max_events: int,
        dead_letter_max: int,
        max_group: int,
        queue_max: int,
        member_id: str | None,
        clock: Callable[[], float],
    ) -> None:
        self.where = where
        self.pool = pool
        self.sinks = sinks
        self.outbox_max_events = outbox_max_events
        self.dead_letter_max = dead_letter_max
        self.member_id = member_id
        self._max_group = max_group
        self._time = clock
        self._log = log.bind(db=where)
        self._changes: deque[tuple[PreparedChange, tuple[str, int] | None]] = deque()
        self._change_slots = asyncio.Semaphore(queue_max)
        self._progress: deque[ProgressOp] = deque()
        self._calls: deque[tuple[Callable[[Conn], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._work = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Future[Any]] = set()
        self._held: list[ProgressOp] = []
        self._held_attempts = 0
        self._held_at = 0.0
        self._writing: list[ProgressOp] = []
        self._health = WriteHealth(clock, self._log)  # see "Health" in edge_agent.store.writer
        self.failed: str | None = None
        """Why nothing can be written any more (the writer task died), else ``None``."""
        self.outbox_count = 0  # this member's view; the whole fleet's rows are counted at the cap
        self.dead_count = 0
        self.committed: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self.wakeups: dict[str, asyncio.Event] = {s: asyncio.Event() for s in sinks}

    async def load(self) -> None:
        async with self.pool.connection() as conn:
            self.outbox_count = await one(conn, q.OUTBOX_COUNT)
            self.dead_count = await one(conn, q.DEAD_LETTER_COUNT)

    def start(self) -> None:
        self.health()  # edge_agent_store_healthy starts at 1 for an open store
        self._task = asyncio.create_task(self._write_loop(), name=f"store[{self.where}].writer")
        self._task.add_done_callback(self._done)

    async def close(self) -> None:
        """Write what is queued and stop. Cancelling it is not safe (commits left unresolved)."""
        self._closing = True
        self._work.set()
        if self._task is not None:
            await asyncio.wait([self._task])

    async def commit(self, prepared: PreparedChange, lease: tuple[str, int] | None) -> None:
        """Queue ``prepared`` (checked against ``lease`` = (lease key, token) when not
        ``None``); wait until it is committed. Waits for a slot while ``queue_max`` changes are
        queued (backpressure)."""
        await self._change_slots.acquire()
        if self.failed is not None or self._closing:
            self._change_slots.release()
            self.check_open()
        self._track(prepared.future)
        self._changes.append((prepared, lease))
        self._work.set()
        await prepared.future

    def unwritten(self, sink: str) -> list[ProgressOp]:
        """``sink``'s progress queued or held, not yet in the database, in order."""
        return [op for op in (*self._writing, *self._held, *self._progress) if op.sink == sink]

    def stored(self, sink: str, device: str, seq: int) -> None:
        """Tell ``sink``'s drainer that ``device`` has events up to ``seq``."""
        feed = self.committed[sink]
        feed[device] = max(feed.get(device, 0), seq)

    # -- inputs --------------------------------------------------------------------------------

    def progress(self, op: ProgressOp) -> asyncio.Future[None]:
        if op.sink not in self.committed:
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

    async def call(self, fn: Callable[[Conn], Awaitable[Any]]) -> Any:
        self.check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._calls.append((fn, fut))
        self._work.set()
        return await fut

    def check_open(self) -> None:
        if self.failed is not None or self._closing:
            raise self.closed_error()

    def closed_error(self) -> StoreError:
        return StoreError(self.failed or f"store at {self.where} is closed")

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)

    def health(self) -> StoreHealth:
        """The failing streak now; also sets ``edge_agent_store_healthy``."""
        return self._health.health()

    # -- the loop ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._held_at - loop.time()):
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
                n = min(self._max_group, len(self._changes))
                changes = [self._changes.popleft() for _ in range(n)]
                progress = self._held + list(self._progress)
                self._held = []
                self._progress.clear()
                if changes or progress:
                    self._writing = progress
                    try:
                        await self._write_group(changes, progress)
                    finally:
                        self._writing = []
                        for _ in changes:
                            self._change_slots.release()
                while self._calls:
                    fn, fut = self._calls.popleft()
                    await self._write_call(fn, fut)
            if self._closing:
                return

    def _done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None or not self._closing:
            why = "cancelled" if task.cancelled() else repr(exc) if exc else "ended"
            self.failed = (
                f"the store writer for {self.where} stopped ({why}); nothing can be stored any "
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
        for _ in self._changes:
            self._change_slots.release()
        self._changes.clear()

    async def _write_call(
        self, fn: Callable[[Conn], Awaitable[Any]], fut: asyncio.Future[Any]
    ) -> None:
        counts = self.outbox_count, self.dead_count
        try:
            async with self.pool.connection() as conn, conn.transaction():
                result = await fn(conn)
                dropped = await self._cap_dead_letters(conn)
        except Exception as exc:  # noqa: BLE001 - the writer survives; the caller gets it
            self.outbox_count, self.dead_count = counts
            message = pg_message(self.where, exc)
            self._health.failed(pg_error_kind(exc), message, changes=False)
            if not fut.done():
                fut.set_exception(StoreError(message))
            return
        self._health.succeeded(changes=False)
        self._report_dead_letter_drop(dropped)
        for ev in self.wakeups.values():
            ev.set()
        if not fut.done():
            fut.set_result(result)

    def _hold(self, progress: list[ProgressOp]) -> None:
        """Keep a failed group's progress for the next try (see edge_agent.store.writer)."""
        if not progress:
            return
        if self._closing:
            self._log.error(
                "closing with drainer progress not written; those events are sent again by "
                "whichever member drains them next",
                progress=len(progress),
            )
            return
        self._held = progress
        self._held_attempts += 1
        delay = PROGRESS_RETRY.delay(self._held_attempts)
        self._held_at = asyncio.get_running_loop().time() + delay

    async def _write_group(
        self,
        changes: list[tuple[PreparedChange, tuple[str, int] | None]],
        progress: list[ProgressOp],
    ) -> None:
        counts = self.outbox_count, self.dead_count
        try:
            async with self.pool.connection() as conn, conn.transaction():
                stale = {id(ch) for ch in await self._fence(conn, changes)}
                kept = [ch for ch, _ in changes if id(ch) not in stale]
                stored = await self._apply_changes(conn, kept)
                await self._apply_progress(conn, progress)
                overflow = await self._cap_outbox(conn, bool(stored))
                dropped = await self._cap_dead_letters(conn)
        except Exception as exc:  # noqa: BLE001 - the writer survives; the callers get it
            self.outbox_count, self.dead_count = counts
            err = StoreError(pg_message(self.where, exc))
            self._health.failed(pg_error_kind(exc), str(err), changes=bool(changes))
            self._log.error(
                "store write failed", error=str(err), changes=len(changes), progress=len(progress)
            )
            for ch, _ in changes:
                if not ch.future.done():
                    ch.future.set_exception(err)
            for op in progress:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(err)
            self._hold(progress)
            return
        self._health.succeeded(changes=bool(changes))
        self._held_attempts = 0
        if stored:
            for seq, device, only_sink in stored:
                for sink in self.sinks if only_sink == "" else (only_sink,):
                    feed = self.committed[sink]
                    feed[device] = max(feed.get(device, 0), int(seq))
            for ev in self.wakeups.values():
                ev.set()
        for ch, _ in changes:
            if id(ch) in stale:
                if not ch.future.done():
                    ch.future.set_exception(
                        StaleLease(
                            f"{ch.device_id}: this member lost the device's lease before the "
                            "change was stored; it was not stored (the new owner re-reads the "
                            "device)"
                        )
                    )
                continue
            for e in ch.events:
                EVENTS.labels(type=e.type).inc()
            if not ch.future.done():
                ch.future.set_result(None)
        for op in progress:
            if op.future is not None and not op.future.done():
                op.future.set_result(None)
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

    async def _fence(
        self, conn: Conn, changes: list[tuple[PreparedChange, tuple[str, int] | None]]
    ) -> list[PreparedChange]:
        """The changes whose lease this member no longer holds with their token.

        The lease rows stay locked (``FOR SHARE``) until this transaction ends, so no member
        can take a lease over between this check and the commit. A change's lease key is its
        device's id, or ``room:<id>`` for a calendar-only room (:mod:`edge_agent.fleet.keys`).
        """
        keys = {lease[0] for _, lease in changes if lease is not None}
        if not keys:
            return []
        rows = await (await conn.execute(q.FENCE, (sorted(keys), self.member_id))).fetchall()
        current = {d: int(t) for d, t in rows}
        return [
            ch
            for ch, lease in changes
            if lease is not None and current.get(lease[0]) != lease[1]
        ]

    async def _apply_changes(
        self, conn: Conn, changes: list[PreparedChange]
    ) -> list[tuple[int, str, str]]:
        """The changes' state and events; returns the outbox rows stored (seq, device, sink)."""
        if not changes:
            return []
        writes = coalesce(changes)
        async with conn.cursor() as cur:
            replaced = [(d,) for d, w in writes.items() if w.replace]
            if replaced:
                await cur.executemany(q.DELETE_WINDOW_OF, replaced)
            wdel = [(d, k) for d, w in writes.items() for k, v in w.window.items() if v is None]
            wput = [
                (d, k, v) for d, w in writes.items() for k, v in w.window.items() if v is not None
            ]
            pdel = [(d, u) for d, w in writes.items() for u, v in w.pending.items() if v is None]
            pput = [
                (d, u, v[0], v[1])
                for d, w in writes.items()
                for u, v in w.pending.items()
                if v is not None
            ]
            states = [(d, w.state) for d, w in writes.items() if w.state is not None]
            for sql, rows in (
                (q.DELETE_WINDOW, wdel),
                (q.PUT_WINDOW, wput),
                (q.DELETE_PENDING, pdel),
                (q.PUT_PENDING, pput),
                (q.PUT_DEVICE_STATE, states),
            ):
                if rows:
                    await cur.executemany(sql, rows)
            # Calendar rooms: the sync row and window rows, in the transaction of the round's
            # events (edge_agent.store.calendar), so the delta link is never ahead of them.
            for w in (ch.calendar for ch in changes if ch.calendar is not None):
                owner = calendar_window_owner(w.room_id, w.source)
                await cur.execute(q.DELETE_WINDOW_OF, (owner,))
                if w.state is None:
                    await cur.execute(q.DELETE_CALENDAR_SYNC, (w.room_id, w.source))
                    continue
                await cur.execute(q.PUT_CALENDAR_SYNC, (w.room_id, w.source, w.state))
                if w.window:
                    await cur.executemany(
                        q.PUT_WINDOW, [(owner, k, v) for k, v in w.window.items()]
                    )
            for ch in changes:  # in commit order: a later open interval replaces an earlier one
                for occ in ch.occupancy:
                    await write_occupancy(cur, occ)
        now = self._time()
        # Booking requests these events close, in the transaction that stores the events.
        resolved = [(st, now, out, u) for ch in changes for u, st, out in ch.request_outcomes]
        if resolved:
            async with conn.cursor() as cur:
                await cur.executemany(q.RESOLVE_BOOKING_REQUEST, resolved)
        events = [(ch.device_id, e) for ch in changes for e in ch.events]
        if not events:
            return []
        stored = await (
            await conn.execute(
                q.INSERT_OUTBOX,
                (
                    [e.event_id for _, e in events],
                    [""] * len(events),
                    [d for d, _ in events],
                    [e.type for _, e in events],
                    [e.body for _, e in events],
                    [now] * len(events),
                    [now if e.observed_at is None else e.observed_at for _, e in events],
                ),
            )
        ).fetchall()
        self.outbox_count += len(stored)
        return [(int(r[0]), str(r[1]), str(r[2])) for r in stored]

    async def _apply_progress(self, conn: Conn, progress: list[ProgressOp]) -> None:
        if not progress:
            return
        now = self._time()
        cursors: dict[tuple[str, str], int] = {}
        retries: dict[tuple[str, str], ProgressOp | None] = {}
        async with conn.cursor() as cur:
            for op in progress:
                key = (op.sink, op.device_id)
                if op.kind == "retry":
                    retries[key] = op
                    continue
                cursors[key] = max(cursors.get(key, 0), max(op.seqs))
                retries[key] = None
                if op.kind == "dead":
                    await cur.execute(
                        q.DEAD_LETTER_ROWS, (op.sink, op.error, op.attempts, now, op.seqs)
                    )
                    self.dead_count += cur.rowcount
            clear = [(s, d) for (s, d), op in retries.items() if op is None]
            put = [
                (s, d, op.seqs[0], op.attempts, op.next_attempt_at, op.error)
                for (s, d), op in retries.items()
                if op is not None
            ]
            if clear:
                await cur.executemany(q.DELETE_RETRY, clear)
            if put:
                await cur.executemany(q.PUT_RETRY, put)
            if not cursors:
                return
            await cur.executemany(q.PUT_CURSOR, [(s, d, n) for (s, d), n in cursors.items()])
            devices = sorted({d for _, d in cursors})
            await cur.execute(q.COMPACT_SHARED, (devices, list(self.sinks), len(self.sinks)))
            deleted = cur.rowcount
            await cur.execute(q.COMPACT_ONE_SINK, (devices,))
            self.outbox_count = max(0, self.outbox_count - deleted - cur.rowcount)

    async def _cap_outbox(self, conn: Conn, inserted: bool) -> int:
        """Past ``outbox_max_events`` (the whole fleet's rows), move the oldest to the dead
        letter; returns how many. Counted only when this member's view says it may be past."""
        if not inserted or self.outbox_count <= self.outbox_max_events:
            return 0
        self.outbox_count = await one(conn, q.OUTBOX_COUNT)
        excess = self.outbox_count - self.outbox_max_events
        if excess <= 0:
            return 0
        row = await (await conn.execute(q.OLDEST_SEQ_UPTO, (excess,))).fetchone()
        upto = None if row is None else row[0]
        if upto is None:
            return 0
        now = self._time()
        for sink in self.sinks:
            cur = await conn.execute(q.DEAD_LETTER_OVERFLOW, (sink, now, sink, upto, sink))
            self.dead_count += cur.rowcount
        cur = await conn.execute(q.DELETE_OUTBOX_UPTO, (upto,))
        self.outbox_count -= cur.rowcount
        return cur.rowcount

    async def _cap_dead_letters(self, conn: Conn) -> int:
        if self.dead_count <= self.dead_letter_max:
            return 0
        self.dead_count = await one(conn, q.DEAD_LETTER_COUNT)
        excess = self.dead_count - self.dead_letter_max
        if excess <= 0:
            return 0
        cur = await conn.execute(q.DROP_OLDEST_DEAD_LETTERS, (excess,))
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


async def one(conn: Conn, sql: str) -> int:
    row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    return int(row[0])


async def write_occupancy(cur: psycopg.AsyncCursor[Any], w: OccupancyWrite) -> None:
    """Apply ``w`` inside the caller's transaction (``cur``: a cursor of the writer's
    connection); as :func:`edge_agent.store.occupancy.write` does on SQLite."""
    if replaces_open(w):
        await cur.execute(q.DELETE_OPEN, (w.device_id,))
    for sql, rows in ((q.PUT_INTERVAL, interval_rows(w)), (q.PUT_BOOKING, booking_rows(w))):
        if rows:
            await cur.executemany(sql, rows)
