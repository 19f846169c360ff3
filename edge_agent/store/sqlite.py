"""The SQLite store: one file (WAL), a read connection, and the group-commit writer.

Durability: ``synchronous = "normal"`` (the default) in WAL mode never loses a committed
transaction when the *process* dies (kill -9, OOM, crash: DESIGN.md measured 0 of 40 kills
losing an acknowledged commit); only a power cut or kernel crash can lose the last commits
before the WAL is synced at checkpoint. ``"full"`` syncs the WAL on every commit and closes
that window too, at roughly half the single-commit rate; choose it where the host has no UPS.

An outbox row is deleted once every configured sink (``sinks=``) is past it, so the file does
not grow without bound while the sinks keep up.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from edge_agent import jsoncodec
from edge_agent.forward.schedule import OutboxEvent, RetryState, SinkProgress
from edge_agent.metrics import DEAD_LETTERS, OUTBOX_DEPTH, OUTBOX_OLDEST_AGE, PENDING_REQUESTS
from edge_agent.store import deadletter, occupancy, schema
from edge_agent.store.base import (
    Change,
    PendingRow,
    StoreCorrupt,
    StoreError,
    StoreHealth,
    Synchronous,
)
from edge_agent.store.lock import lock_database
from edge_agent.store.plan import PreparedChange, ProgressOp, prepare, stream_seqs
from edge_agent.store.recent import RecentEvents
from edge_agent.store.requests import KEEP_S, BookingRequestRow, row_from_db
from edge_agent.store.stats import store_stats
from edge_agent.store.writer import WAL_SIZE_LIMIT_BYTES, GroupWriter

log = structlog.get_logger(__name__)


QUICK_CHECK_LINES = 20
"""Most problems ``PRAGMA quick_check`` reports (the first few are named in the error)."""


def is_corruption(exc: BaseException) -> bool:
    """Whether SQLite says the file is damaged (``SQLITE_CORRUPT``) or not a database at all."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if is_corruption(exc):
        return StoreCorrupt(path, [str(exc)])
    return StoreError(f"cannot open the database at {path}: {exc}")


async def check_integrity(conn: aiosqlite.Connection, path: Path) -> None:
    """``PRAGMA quick_check`` before anything reads the tables.

    A file with garbage inside its pages otherwise opens fine and fails later, in whichever
    session or drainer reads the damaged page, over and over ("database disk image is
    malformed"), while the agent looks ready. quick_check reads every page once (0.27 s for a
    237 MB file in the page cache; a cold disk adds its read time) but skips the index-vs-table
    comparison of ``integrity_check``.

    Raises:
        StoreCorrupt: it found problems (the first few are named).
    """
    rows = list(await conn.execute_fetchall(f"PRAGMA quick_check({QUICK_CHECK_LINES})"))
    # One row per problem, though SQLite packs several into one row at times (newlines).
    lines = [line.strip() for r in rows for line in str(r[0]).splitlines()]
    problems = [p for p in lines if p and not p.startswith("*** in database")]
    if problems != ["ok"]:
        raise StoreCorrupt(path, problems)


class SqliteStore:
    """The SQLite buffer. Create with :meth:`open`; one instance per database file.

    Implements :class:`edge_agent.store.base.StoreBackend`.
    """

    def __init__(
        self,
        path: Path,
        writer: GroupWriter,
        rconn: aiosqlite.Connection,
        oconn: aiosqlite.Connection,
        lock_fd: int,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.sinks = writer.sinks
        self.outbox_max_events = writer.outbox_max_events
        self.dead_letter_max = writer.dead_letter_max
        self._writer = writer
        self._rconn = rconn
        # The drainers' reads of the outbox on a connection (and thread) of their own: a local
        # API client polling /v1/outbox (a scan of the undelivered rows, ~0.1 s at 100,000
        # rows) queued every delivery read behind it and slowed a backlog's drain ~4x.
        self._oconn = oconn
        self._lock_fd: int | None = lock_fd
        self._time = clock
        self._closing = False
        self._log = log.bind(db=str(path))
        # Committed events in memory for the drainers (edge_agent.store.recent), one per sink;
        # the envelopes of the changes in the writer's queue, by id() of the prepared change.
        self._recent = {s: RecentEvents() for s in self.sinks}
        self._envelopes: dict[int, list[dict[str, Any]]] = {}
        writer.on_stored = self._stored
        writer.on_overflow = self._forget_recent
        self.on_committed: list[Callable[[Sequence[dict[str, Any]]], None]] = []
        """Called with each change's events once they are durable (``/v1/events/stream``);
        a listener must not block or raise."""

    @property
    def failed(self) -> str | None:
        """Why the store cannot write any more (its writer died), else ``None``."""
        return self._writer.failed

    def health(self) -> StoreHealth:
        """Whether writes get in now (see "Health" in :mod:`edge_agent.store.writer`)."""
        return self._writer.health()

    @property
    def unhealthy(self) -> str | None:
        """Why writes are not getting in (``/readyz``, ``STATUS=``), else ``None``."""
        return self._writer.health().problem

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        sinks: Sequence[str] = ("webhook",),
        outbox_max_events: int = 1_000_000,
        dead_letter_max: int = 100_000,
        synchronous: Synchronous = "normal",
        max_group: int = 1000,
        queue_max: int = 10_000,
        wal_size_limit: int = WAL_SIZE_LIMIT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        """Open (creating or migrating) the database at ``path`` and start the writer task.

        Args:
            path: the SQLite file (its directory must exist). ``":memory:"`` is refused: the
                store needs two connections to one file.
            sinks: the configured sink names; outbox rows are deleted once all of them are done.
            outbox_max_events: the outbox cap (see "Outbox full policy" in
                :mod:`edge_agent.store.writer`).
            dead_letter_max: the dead-letter cap (oldest dropped past it; same module).
            synchronous: ``"normal"`` (default; safe against process death) or ``"full"``
                (also against power loss, slower).
            max_group: most changes committed in one transaction.
            queue_max: most changes waiting for the writer; ``commit()`` waits beyond that.
            wal_size_limit: bytes the WAL file is truncated back to after a checkpoint.
            clock: unix-seconds wall clock (``created_at``, ages, how long writes have failed).

        Raises:
            StoreCorrupt: ``PRAGMA quick_check`` found damage, or the file is not a database.
            StoreTooNew: the database is newer than this code.
            StoreError: the database cannot be opened (permissions, I/O error, disk full).
            StoreLocked: another process has it open.
        """
        if str(path) == ":memory:":
            raise ValueError("Store needs a file path, not ':memory:'")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        if len(set(sinks)) != len(sinks) or not sinks:
            raise ValueError(f"sinks must be distinct names, at least one: {sinks!r}")
        if dead_letter_max < 1 or outbox_max_events < 1:
            raise ValueError(
                f"outbox_max_events and dead_letter_max must be at least 1, not "
                f"{outbox_max_events} and {dead_letter_max}"
            )
        p = Path(path)
        lock_fd = lock_database(p)
        # The writer's own connection (on its own thread) comes first: it turns WAL on.
        writer = GroupWriter(
            p,
            synchronous=synchronous,
            sinks=tuple(sinks),
            outbox_max_events=outbox_max_events,
            dead_letter_max=dead_letter_max,
            max_group=max_group,
            queue_max=queue_max,
            wal_size_limit=wal_size_limit,
            clock=clock,
        )
        rconn: aiosqlite.Connection | None = None
        oconn: aiosqlite.Connection | None = None
        try:
            await writer.open()
            rconn = await aiosqlite.connect(p, isolation_level=None)
            await rconn.execute("PRAGMA busy_timeout=5000")
            await check_integrity(rconn, p)
            await schema.migrate(rconn, p)
            oconn = await aiosqlite.connect(p, isolation_level=None)
            await oconn.execute("PRAGMA busy_timeout=5000")
            await writer.load()
        except BaseException as exc:
            await writer.release()
            for conn in (rconn, oconn):
                if conn is not None:
                    await conn.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise open_error(p, exc) from exc
            raise
        store = cls(p, writer, rconn, oconn, lock_fd, clock)
        writer.start()
        store._log.info(
            "store opened", synchronous=synchronous, outbox=writer.outbox_count, sinks=sinks
        )
        return store

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the database.

        Cancelling it is not safe: the queued commits may be left unresolved.
        """
        if self._closing:
            return
        self._closing = True
        await self._writer.close()
        try:
            await self._writer.release()
            await self._rconn.close()
            await self._oconn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        self._log.info("store closed")

    # -- committing changes -------------------------------------------------------------------

    async def commit(self, change: Change) -> None:
        """Commit ``change`` and its events in one transaction; return once durable.

        Waits while ``queue_max`` changes are already queued (backpressure). Cancelling it
        while it waits for a slot withdraws the change; once queued, the change may still be
        committed after a cancellation.

        Raises:
            StoreError: the group this change was committed with failed (e.g. disk full).
            ValueError: an event envelope lacks ``type`` or ``data.event_id``.
        """
        self._writer.check_open()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        prepared = prepare(change, fut)
        key = id(prepared)
        if change.events:
            self._envelopes[key] = change.events
        try:
            await self._writer.commit(prepared)
        finally:
            self._envelopes.pop(key, None)
        if change.events:
            for listener in self.on_committed:
                listener(change.events)

    async def flush(self) -> None:
        """Wait until everything queued before this call (changes, progress) is written."""

        def nothing(_db: sqlite3.Connection) -> None:
            return None

        await self._writer.call(nothing)

    def _stored(self, change: PreparedChange, first: int | None, now: float) -> None:
        """The writer committed ``change``'s events as seqs ``first``...: keep them for the
        drainers, with the envelopes the session built (as the database would give them)."""
        envelopes = self._envelopes.get(id(change))
        recent = self._recent.values()
        if first is None or envelopes is None or len(envelopes) != len(change.events):
            # Some were stored before (their seqs are the table's), or its commit() was
            # cancelled meanwhile: these events are only in the database.
            for r in recent:
                r.forget(change.device_id)
            return
        for i, (env, e) in enumerate(zip(envelopes, change.events, strict=True)):
            event = OutboxEvent(
                seq=first + i,
                device_id=change.device_id,
                event_id=e.event_id,
                type=e.type,
                envelope=env,
                body=e.body,
                created_at=now,
                observed_at=now if e.observed_at is None else e.observed_at,
            )
            for r in recent:
                r.add(event)

    def _forget_recent(self) -> None:
        for r in self._recent.values():
            r.clear()

    # -- reads --------------------------------------------------------------------------------

    async def load_window(self, device_id: str) -> dict[str, dict[str, Any]]:
        """The stored window of ``device_id``: ``{key: booking}``."""
        rows = await self._rconn.execute_fetchall(schema.SELECT_WINDOW, (device_id,))
        return {k: jsoncodec.loads(b) for k, b in rows}

    async def load_pending(self, device_id: str | None = None) -> list[PendingRow]:
        """Pending booking requests, of one device or all, by deadline."""
        if device_id is None:
            rows = await self._rconn.execute_fetchall(schema.SELECT_PENDING)
        else:
            rows = await self._rconn.execute_fetchall(schema.SELECT_PENDING_OF, (device_id,))
        return [PendingRow(d, u, dl, jsoncodec.loads(r)) for d, u, dl, r in rows]

    async def load_device_state(self, device_id: str) -> dict[str, Any] | None:
        """The device's stored state document, or ``None``."""
        rows = list(await self._rconn.execute_fetchall(schema.SELECT_DEVICE_STATE, (device_id,)))
        return jsoncodec.loads(rows[0][0]) if rows else None

    async def stats(self) -> dict[str, Any]:
        """Counts for the local API and metrics (see :func:`edge_agent.store.stats.store_stats`).

        With one sink (the usual agent) without a scan: the depth is the writer's row count
        less the rows replayed for sinks no longer configured and the delivered rows not
        compacted yet (both counted by the writer), and the oldest is the first row above the
        low-water mark that the sink is not done with. ``/v1/outbox``, which a client may
        poll often, scanned the undelivered rows with a join per row (~20 ms at 100,000
        rows, on the read thread while a backlog drained).
        """
        if len(self.sinks) != 1:
            return await store_stats(self._rconn, self.sinks, self._time())
        (sink,) = self.sinks
        w = self._writer
        depth = max(0, w.outbox_count - w.foreign_count - w.kept)
        age = None
        if depth:
            args = (sink, w.compacted_upto, sink)
            rows = list(await self._rconn.execute_fetchall(schema.OLDEST_OF_SINK, args))
            if rows:
                age = max(0.0, self._time() - rows[0][0])
        pending = list(await self._rconn.execute_fetchall(schema.PENDING_COUNT))[0][0]
        dead = w.dead_count
        OUTBOX_DEPTH.labels(sink=sink).set(depth)
        OUTBOX_OLDEST_AGE.labels(sink=sink).set(age or 0.0)
        DEAD_LETTERS.set(dead)
        PENDING_REQUESTS.set(pending)
        return {
            "outbox_total": w.outbox_count,
            "pending": pending,
            "dead_letters": dead,
            "sinks": {sink: {"depth": depth, "oldest_age_s": age}},
        }

    # -- outbox: the drainer's side -----------------------------------------------------------
    #
    # The drainer owns the delivery schedule (edge_agent.forward.schedule). It loads the sink's
    # progress once (load_progress), learns of new events from take_committed() (after the
    # wakeup event is set), reads rows with read_outbox(), and reports outcomes with
    # mark_delivered / mark_retry / dead_letter, which are written behind (group commit).

    def wakeup(self, sink: str) -> asyncio.Event:
        """The event set whenever ``sink`` may have new work (a commit, a replay)."""
        return self._writer.wakeups[sink]

    def take_committed(self, sink: str) -> dict[str, int]:
        """Streams with events stored for ``sink`` since the last call: ``{stream: top seq}``."""
        feed = self._writer.committed[sink]
        self._writer.committed[sink] = {}
        return feed

    async def load_progress(self, sink: str) -> SinkProgress:
        """``sink``'s stored progress, with what is queued but not yet written applied."""
        if sink not in self.sinks:
            raise KeyError(f"unknown sink {sink!r}; configured: {self.sinks}")
        r = self._oconn
        self.take_committed(sink)  # everything stored so far is in the tops read below
        cursors = {d: q for s, d, q in await r.execute_fetchall(schema.SELECT_CURSORS) if s == sink}
        retries = {
            d: RetryState(seq, attempts, due, err)
            for d, seq, attempts, due, err in await r.execute_fetchall(
                schema.SELECT_RETRIES, (sink,)
            )
        }
        tops = {d: q for d, q in await r.execute_fetchall(schema.STREAM_TOPS, (sink,))}
        for op in self._writer.unwritten(sink):
            if op.kind == "retry":
                retries[op.device_id] = RetryState(
                    op.seqs[0], op.attempts, op.next_attempt_at, op.error
                )
            else:
                cursors[op.device_id] = max(cursors.get(op.device_id, 0), max(op.seqs))
                retries.pop(op.device_id, None)
        return SinkProgress(cursors, retries, tops)

    async def read_outbox(
        self, sink: str, reads: Sequence[tuple[str, int, int]]
    ) -> list[OutboxEvent]:
        """For each ``(stream, after, limit)``: up to ``limit`` of the stream's events for
        ``sink`` with ``seq > after``, in seq order (``attempts`` is 0; the schedule knows)."""
        if not reads:
            return []
        recent = self._recent.get(sink)
        held: list[OutboxEvent] = []
        misses: list[tuple[str, int, int]] = []
        for stream, after, limit in reads:
            got = None if recent is None else recent.read(stream, after, limit)
            if got is None:
                misses.append((stream, after, limit))
            else:
                held += got
        if not misses:
            return held
        args: list[Any] = []
        for stream, after, limit in misses:
            args += [stream, after, sink, limit]
        rows = await self._oconn.execute_fetchall(
            " UNION ALL ".join([schema.READ_STREAM] * len(misses)), args
        )
        return held + [
            OutboxEvent(
                seq=seq,
                device_id=device,
                event_id=event_id,
                type=etype,
                envelope=None,  # parsed only if the sink asks (a webhook sends the bytes)
                body=body,
                created_at=created_at,
                observed_at=observed_at,
            )
            for seq, device, event_id, etype, body, created_at, observed_at in rows
        ]

    def mark_delivered(self, sink: str, events: Sequence[OutboxEvent]) -> asyncio.Future[None]:
        """``sink`` delivered ``events`` (one stream's, the head of its queue, in order)."""
        op = ProgressOp("delivered", sink, *stream_seqs(events))
        if sink in self._recent:
            self._recent[sink].done(op.device_id, max(op.seqs))
        return self._writer.progress(op)

    def mark_retry(
        self,
        sink: str,
        head: OutboxEvent,
        *,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
    ) -> asyncio.Future[None]:
        """Back off ``head``'s stream for ``sink`` until ``next_attempt_at`` (unix seconds)."""
        return self._writer.progress(
            ProgressOp("retry", sink, head.device_id, [head.seq], attempts, next_attempt_at, error)
        )

    def dead_letter(
        self, sink: str, events: Sequence[OutboxEvent], *, reason: str, attempts: int = 0
    ) -> asyncio.Future[None]:
        """Move ``events`` (one stream's, head first) to the dead letter for ``sink``."""
        device, seqs = stream_seqs(events)
        return self._writer.progress(
            ProgressOp("dead", sink, device, seqs, attempts=attempts, error=reason)
        )

    # -- dead letter admin ---------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100, sink: str | None = None) -> list[dict[str, Any]]:
        """The oldest dead letters (``id, seq, event_id, sink, device_id, type, reason,
        attempts, created_at, dead_at, envelope``)."""
        sql, args = deadletter.query(limit, sink)
        return deadletter.rows_to_dicts(await self._rconn.execute_fetchall(sql, args))

    async def replay_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Put dead letters (all, or ``ids``, of every sink or ``sink``) back in the outbox for
        their sink; returns how many.

        A replayed event goes to the END of its stream's queue, for the sink that dead-lettered
        it only, with its original ``event_id`` (receivers that already have it drop it) and
        a fresh ``created_at`` (its TTL starts again). Dead letters of sinks no longer
        configured stay where they are.
        """
        w = self._writer
        sinks = [s for s in self.sinks if sink is None or s == sink]
        now = self._time()

        def replay(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            found = deadletter.replayable(db, sinks, ids)
            inserts = []
            for event_id, row_sink, device, etype, body, observed in found.rows:
                inserts.append((w.next_seq, event_id, row_sink, device, etype, body, now, observed))
                w.note_rows(row_sink, device, w.next_seq)
                w.next_seq += 1
            cur = db.executemany(schema.INSERT_OUTBOX, inserts)
            db.executemany(schema.DELETE_DEAD_LETTER, [(i,) for i in found.ids])
            w.outbox_count += cur.rowcount
            w.dead_count -= len(found.ids)
            return inserts

        inserts = await w.call(replay)
        # Told to the drainers here, on the loop (the call ran on the writer's thread). The
        # replayed rows are for one sink and come before what the drainers hold in memory.
        for ins in inserts:
            self._recent[ins[2]].forget(ins[3])
            w.stored(ins[2], ins[3], ins[0])
        for ev in w.wakeups.values():
            ev.set()
        return len(inserts)

    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Delete dead letters (all, or ``ids``, of every sink or ``sink``); returns how many."""

        def purge(db: sqlite3.Connection) -> int:
            n = deadletter.purge(db, ids, sink)
            self._writer.dead_count -= n
            return n

        return int(await self._writer.call(purge))

    async def forget_device(self, device_id: str) -> None:
        """Drop a device removed from the configuration: its window, pending requests and state.

        Its undelivered events stay in the outbox and are still delivered.
        """

        def forget(db: sqlite3.Connection) -> None:
            for stmt in schema.FORGET_DEVICE:
                db.execute(stmt, (device_id,))

        await self._writer.call(forget)

    # -- booking requests made through the agent (edge_agent.store.requests) ----------------

    async def record_request(self, uuid: str, room_id: str, request: dict[str, Any]) -> None:
        """Store a new pending request (before it is sent); requests older than a day go.

        Raises:
            StoreError: the write failed, or ``uuid`` is already taken.
        """
        now = self._time()
        body = jsoncodec.dumpb(request)

        def put(db: sqlite3.Connection) -> None:
            db.execute(schema.PRUNE_BOOKING_REQUESTS, (now - KEEP_S,))
            try:
                db.execute(schema.PUT_BOOKING_REQUEST, (uuid, room_id, now, now, body))
            except sqlite3.IntegrityError:
                raise StoreError(f"booking request {uuid} already exists") from None

        await self._writer.call(put)

    async def resolve_request(self, uuid: str, status: str, outcome: dict[str, Any]) -> None:
        """Close a pending request that no device event will close (the send failed)."""
        args = (status, self._time(), jsoncodec.dumpb(outcome), uuid)

        def resolve(db: sqlite3.Connection) -> None:
            db.execute(schema.RESOLVE_BOOKING_REQUEST, args)

        await self._writer.call(resolve)

    async def load_request(self, uuid: str) -> BookingRequestRow | None:
        """The stored request ``uuid`` (kept a day), or ``None``."""
        rows = list(await self._rconn.execute_fetchall(schema.SELECT_BOOKING_REQUEST, (uuid,)))
        return row_from_db(uuid, tuple(rows[0])) if rows else None

    # -- occupancy (edge_agent.store.occupancy) -------------------------------------------------

    async def save_occupancy(self, change: occupancy.OccupancyWrite) -> None:
        """Write one device's occupancy rows in their own transaction; return once durable."""

        def save(db: sqlite3.Connection) -> None:
            occupancy.write(db, change)

        await self._writer.call(save)

    async def load_occupancy(
        self, device_id: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The open occupancy interval and the unfinished booking tracks of ``device_id``."""
        return await occupancy.load(self._rconn, device_id)
