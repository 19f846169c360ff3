"""The PostgreSQL store: the same interface as the SQLite one, shared by a fleet of agents.

Driver: psycopg 3 (async) with psycopg-pool. A small pool (reads, the writer's transactions)
replaces broken connections by itself, so a database restart costs the commits in flight
(they fail with :class:`StoreError`, as a full disk does with SQLite) and nothing else.

Group commits as in SQLite (:mod:`edge_agent.store.writer`): one writer task takes what is
waiting (changes, drainer progress, admin calls) and commits it in one transaction.

Fleet mode (``member_id`` given): a change for a room under a lease (:meth:`PostgresStore.hold`)
is committed only if, in the same transaction, this member still holds that room's lease with
the token it was given (``pgschema.FENCE``); otherwise the commit fails with
:class:`StaleLease` and nothing of it is written. The outbox is shared: every member stores
into it; a member drains only the rooms :attr:`PostgresStore.drains` says are its own, and a
read never starts below the cursor any member stored for that sink and room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.forward.schedule import OutboxEvent, RetryState, SinkProgress
from edge_agent.metrics import (
    DEAD_LETTER_DROPPED,
    DEAD_LETTERS,
    EVENTS,
    OUTBOX_DEPTH,
    OUTBOX_DROPPED,
    OUTBOX_OLDEST_AGE,
    PENDING_REQUESTS,
)
from edge_agent.store import pgschema as q
from edge_agent.store.base import Change, PendingRow, StoreError
from edge_agent.store.plan import PreparedChange, ProgressOp, coalesce, prepare, stream_seqs

log = structlog.get_logger(__name__)

PROGRESS_RETRY = Backoff(initial=0.5, maximum=30.0)
Conn = psycopg.AsyncConnection[Any]


class StaleLease(StoreError):
    """A commit for a room this member no longer holds the lease of (it was not written)."""


def describe(url: str) -> str:
    """``host:port/db`` of a postgresql URL: what logs and errors show."""
    p = urlsplit(url)
    return f"{p.hostname}:{p.port or 5432}{p.path}"


def pg_message(where: str, exc: BaseException) -> str:
    """What a person sees when a database call failed, with what to do next."""
    if isinstance(exc, psycopg.OperationalError):
        return (
            f"PostgreSQL at {where} is unreachable or refused the statement ({exc}); "
            "events are kept in memory and retried; check the database and [store] url"
        )
    return f"store write failed at {where}: {exc}"


async def migrate(conn: Conn, where: str) -> None:
    """Bring the schema to :data:`pgschema.SCHEMA_VERSION` (one transaction, advisory-locked).

    Raises:
        StoreError: the database is newer than this code.
    """
    async with conn.transaction():
        await conn.execute(q.MIGRATION_LOCK)
        await conn.execute(q.VERSION_TABLE)
        row = await (await conn.execute(q.SELECT_VERSION)).fetchone()
        version = 0 if row is None else int(row[0])
        if version > q.SCHEMA_VERSION:
            raise StoreError(
                f"the database at {where} has schema version {version}, newer than this agent "
                f"understands ({q.SCHEMA_VERSION}); upgrade every member of the fleet"
            )
        for target in range(version + 1, q.SCHEMA_VERSION + 1):
            for stmt in q.MIGRATIONS[target - 1].split(";"):
                if stmt.strip():
                    await conn.execute(stmt)
            if row is None:
                await conn.execute(q.INSERT_VERSION, (target,))
                row = (target,)
            else:
                await conn.execute(q.UPDATE_VERSION, (target,))
            log.info("store schema migrated", db=where, version=target)


class PostgresStore:
    """The PostgreSQL store. Create with :meth:`open`.

    Implements :class:`edge_agent.store.base.StoreBackend`.
    """

    def __init__(
        self,
        url: str,
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
        self.url = url
        self.where = describe(url)
        self.path = Path(self.where)
        self.sinks = sinks
        self.outbox_max_events = outbox_max_events
        self.dead_letter_max = dead_letter_max
        self.member_id = member_id
        self.pool = pool
        self._max_group = max_group
        self._time = clock
        self._log = log.bind(db=self.where)
        self._changes: deque[tuple[PreparedChange, int | None]] = deque()
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
        self._failed: str | None = None
        self.outbox_count = 0  # this member's view; other members' rows are counted at the cap
        self.dead_count = 0
        self.committed: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self.wakeups: dict[str, asyncio.Event] = {s: asyncio.Event() for s in sinks}
        # Fleet: the rooms under a lease and the token this member holds for each.
        self._fenced: set[str] = set()
        self._tokens: dict[str, int] = {}
        self.drains: Callable[[str], bool] = lambda stream: True
        """Whether this member drains ``stream`` (the fleet sets it; alone: every stream)."""

    @property
    def failed(self) -> str | None:
        """Why the store cannot write any more (its writer died), else ``None``."""
        return self._failed

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        sslmode: str | None = None,
        ca_file: str | Path | None = None,
        sinks: Sequence[str] = ("webhook",),
        outbox_max_events: int = 1_000_000,
        dead_letter_max: int = 100_000,
        max_group: int = 1000,
        queue_max: int = 10_000,
        member_id: str | None = None,
        connect_timeout_s: float = 10.0,
        idle_in_transaction_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> PostgresStore:
        """Connect (creating or migrating the schema) and start the writer task.

        Args:
            url: ``postgresql://user@host:port/db``; a password in it is refused.
            password: the role's password (from ``password_env`` / ``password_file``).
            sslmode, ca_file: libpq's ``sslmode`` and ``sslrootcert``.
            member_id: this fleet member (enables fencing); ``None`` for a lone agent.
            idle_in_transaction_s: the server ends a transaction left idle this long (a member
                frozen mid-commit must not hold a lease row locked for ever).
            Others: as :meth:`edge_agent.store.sqlite.SqliteStore.open`.

        Raises:
            StoreError: the database cannot be reached, or is newer than this code.
        """
        if urlsplit(url).password is not None:
            raise ValueError("no password in the store URL: use password_env or password_file")
        if len(set(sinks)) != len(sinks) or not sinks:
            raise ValueError(f"sinks must be distinct names, at least one: {sinks!r}")
        if dead_letter_max < 1 or outbox_max_events < 1:
            raise ValueError(
                f"outbox_max_events and dead_letter_max must be at least 1, not "
                f"{outbox_max_events} and {dead_letter_max}"
            )
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout_s)),
            "application_name": f"edge-agent {member_id or ''}".strip(),
            "options": f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)}",
        }
        if password is not None:
            kwargs["password"] = password
        if sslmode is not None:
            kwargs["sslmode"] = sslmode
        if ca_file is not None:
            kwargs["sslrootcert"] = str(ca_file)
        where = describe(url)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=4,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=connect_timeout_s,
            reconnect_timeout=0,  # keep trying for ever: the database comes back
            name=f"edge-store[{where}]",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout_s)
            async with pool.connection() as conn:
                await migrate(conn, where)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error | TimeoutError) or type(exc).__name__ == "PoolTimeout":
                raise StoreError(
                    f"cannot open the PostgreSQL store at {where}: {exc}; check [store] url, "
                    "the password and that the server accepts connections"
                ) from exc
            raise
        store = cls(
            url,
            pool,
            sinks=tuple(sinks),
            outbox_max_events=outbox_max_events,
            dead_letter_max=dead_letter_max,
            max_group=max_group,
            queue_max=queue_max,
            member_id=member_id,
            clock=clock,
        )
        await store._load()
        store._task = asyncio.create_task(store._write_loop(), name=f"store[{where}].writer")
        store._task.add_done_callback(store._writer_done)
        store._log.info("store opened", sinks=sinks, member=member_id)
        return store

    async def _load(self) -> None:
        async with self.pool.connection() as conn:
            self.outbox_count = await _one(conn, q.OUTBOX_COUNT)
            self.dead_count = await _one(conn, q.DEAD_LETTER_COUNT)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the pool.

        Cancelling it is not safe: the queued commits may be left unresolved.
        """
        if self._closing:
            return
        self._closing = True
        self._work.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        await self.pool.close()
        self._log.info("store closed")

    # -- fleet: leases and drain ownership ------------------------------------------------------

    def fence(self, rooms: Sequence[str]) -> None:
        """Commits for these rooms need a lease (:meth:`hold`) from now on."""
        self._fenced = set(rooms)

    def hold(self, room: str, token: int) -> None:
        """This member holds ``room``'s lease with fencing ``token``."""
        self._tokens[room] = token

    def release(self, room: str) -> None:
        """This member no longer holds ``room``'s lease: its commits for it fail from now on."""
        self._tokens.pop(room, None)

    async def refresh_streams(self, streams: Sequence[str]) -> None:
        """Tell the drainers what is stored for ``streams`` (rooms this member just took over,
        or rows another member wrote): their tops, for every sink."""
        if not streams:
            return
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(q.STREAM_TOPS_OF, (list(streams),))).fetchall()
        for device, only_sink, top in rows:
            for sink in self.sinks:
                if only_sink in ("", sink):
                    feed = self.committed[sink]
                    feed[device] = max(feed.get(device, 0), int(top))
        if rows:
            for ev in self.wakeups.values():
                ev.set()

    # -- committing changes -------------------------------------------------------------------

    async def commit(self, change: Change) -> None:
        """Commit ``change`` and its events in one transaction; return once durable.

        Cancelling it while it waits for a slot withdraws the change; once queued, it may
        still be committed after a cancellation.

        Raises:
            StaleLease: fleet mode, and this member does not hold the room's lease (any more).
            StoreError: the group this change was committed with failed.
            ValueError: an event envelope lacks ``type`` or ``data.event_id``.
        """
        self._check_open()
        token: int | None = None
        if change.device_id in self._fenced:
            token = self._tokens.get(change.device_id)
            if token is None:
                raise StaleLease(
                    f"{change.device_id}: this member does not hold the device's lease; "
                    "the change was not stored (the member that holds it stores its own)"
                )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        prepared = prepare(change, fut)
        await self._change_slots.acquire()
        if self._failed is not None or self._closing:
            self._change_slots.release()
            self._check_open()
        self._track(fut)
        self._changes.append((prepared, token))
        self._work.set()
        await fut

    async def flush(self) -> None:
        """Wait until everything queued before this call (changes, progress) is written."""

        async def nothing(conn: Conn) -> None:
            return None

        await self._call(nothing)

    # -- reads --------------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self.pool.connection() as conn:
                return await (await conn.execute(sql, args)).fetchall()
        except psycopg.Error as exc:
            raise StoreError(pg_message(self.where, exc)) from exc

    async def load_window(self, device_id: str) -> dict[str, dict[str, Any]]:
        """The stored window of ``device_id``: ``{key: booking}``."""
        rows = await self._fetch(q.SELECT_WINDOW, (device_id,))
        return {k: jsoncodec.loads(b) for k, b in rows}

    async def load_pending(self, device_id: str | None = None) -> list[PendingRow]:
        """Pending booking requests, of one device or all, by deadline."""
        if device_id is None:
            rows = await self._fetch(q.SELECT_PENDING)
        else:
            rows = await self._fetch(q.SELECT_PENDING_OF, (device_id,))
        return [PendingRow(d, u, dl, jsoncodec.loads(r)) for d, u, dl, r in rows]

    async def load_device_state(self, device_id: str) -> dict[str, Any] | None:
        """The device's stored state document, or ``None``."""
        rows = await self._fetch(q.SELECT_DEVICE_STATE, (device_id,))
        return jsoncodec.loads(rows[0][0]) if rows else None

    async def stats(self) -> dict[str, Any]:
        """``{"outbox_total", "pending", "dead_letters", "sinks": {name: {"depth",
        "oldest_age_s"}}}`` over the whole fleet's outbox; also sets the gauges."""
        now = self._time()
        async with self.pool.connection() as conn:
            total = await _one(conn, q.OUTBOX_COUNT)
            pending = await _one(conn, q.PENDING_COUNT)
            dead = await _one(conn, q.DEAD_LETTER_COUNT)
            per_sink: dict[str, dict[str, Any]] = {}
            for sink in self.sinks:
                row = await (await conn.execute(q.SINK_DEPTH, (sink, sink))).fetchone()
                assert row is not None
                depth, oldest = int(row[0]), row[1]
                age = None if oldest is None else max(0.0, now - oldest)
                per_sink[sink] = {"depth": depth, "oldest_age_s": age}
                OUTBOX_DEPTH.labels(sink=sink).set(depth)
                OUTBOX_OLDEST_AGE.labels(sink=sink).set(age or 0.0)
        DEAD_LETTERS.set(dead)
        PENDING_REQUESTS.set(pending)
        return {"outbox_total": total, "pending": pending, "dead_letters": dead, "sinks": per_sink}

    # -- outbox: the drainer's side -----------------------------------------------------------

    def wakeup(self, sink: str) -> asyncio.Event:
        """The event set whenever ``sink`` may have new work (a commit, a replay, a takeover)."""
        return self.wakeups[sink]

    def take_committed(self, sink: str) -> dict[str, int]:
        """Streams with events stored for ``sink`` since the last call: ``{stream: top seq}``."""
        feed = self.committed[sink]
        self.committed[sink] = {}
        return feed

    async def load_progress(self, sink: str) -> SinkProgress:
        """``sink``'s stored progress (every member's), with what is queued here applied."""
        if sink not in self.sinks:
            raise KeyError(f"unknown sink {sink!r}; configured: {self.sinks}")
        self.take_committed(sink)
        cursors = {d: int(s) for d, s in await self._fetch(q.SELECT_CURSORS, (sink,))}
        retries = {
            d: RetryState(int(seq), attempts, due, err)
            for d, seq, attempts, due, err in await self._fetch(q.SELECT_RETRIES, (sink,))
        }
        tops = {d: int(s) for d, s in await self._fetch(q.STREAM_TOPS, (sink,))}
        for op in (*self._writing, *self._held, *self._progress):
            if op.sink != sink:
                continue
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
        """For each ``(stream, after, limit)`` this member drains: up to ``limit`` of the
        stream's events for ``sink`` past ``after`` and past the stored cursor, in seq order."""
        mine = [r for r in reads if self.drains(r[0])]
        if not mine:
            return []
        rows = await self._fetch(
            q.READ_STREAMS,
            ([r[0] for r in mine], [r[1] for r in mine], [r[2] for r in mine], sink, sink),
        )
        return [
            OutboxEvent(
                seq=int(seq),
                device_id=device,
                event_id=event_id,
                type=etype,
                envelope=jsoncodec.loads(body),
                body=bytes(body),
                created_at=created_at,
                observed_at=observed_at,
            )
            for seq, device, event_id, etype, body, created_at, observed_at in rows
        ]

    def mark_delivered(self, sink: str, events: Sequence[OutboxEvent]) -> asyncio.Future[None]:
        """``sink`` delivered ``events`` (one stream's, the head of its queue, in order)."""
        return self._progress_op(ProgressOp("delivered", sink, *stream_seqs(events)))

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
        return self._progress_op(
            ProgressOp("retry", sink, head.device_id, [head.seq], attempts, next_attempt_at, error)
        )

    def dead_letter(
        self, sink: str, events: Sequence[OutboxEvent], *, reason: str, attempts: int = 0
    ) -> asyncio.Future[None]:
        """Move ``events`` (one stream's, head first) to the dead letter for ``sink``."""
        device, seqs = stream_seqs(events)
        return self._progress_op(
            ProgressOp("dead", sink, device, seqs, attempts=attempts, error=reason)
        )

    # -- dead letter admin ---------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100, sink: str | None = None) -> list[dict[str, Any]]:
        """The oldest dead letters (``id, seq, event_id, sink, device_id, type, reason,
        attempts, created_at, dead_at, envelope``)."""
        if sink is None:
            rows = await self._fetch(q.SELECT_DEAD_LETTERS, (limit,))
        else:
            rows = await self._fetch(q.SELECT_DEAD_LETTERS_OF, (sink, limit))
        keys = (
            "id",
            "seq",
            "event_id",
            "sink",
            "device_id",
            "type",
            "reason",
            "attempts",
            "created_at",
            "dead_at",
        )
        return [
            dict(zip(keys, row[:-1], strict=True)) | {"envelope": jsoncodec.loads(row[-1])}
            for row in rows
        ]

    async def replay_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Put dead letters back in the outbox for their sink (at the end of the stream's
        queue, original ``event_id``, fresh ``created_at``); returns how many."""

        async def replay(conn: Conn) -> int:
            sinks = [s for s in self.sinks if sink is None or s == sink]
            rows = await (await conn.execute(q.SELECT_REPLAYABLE, (sinks,))).fetchall()
            if ids is not None:
                wanted = set(ids)
                rows = [r for r in rows if r[0] in wanted]
            if not rows:
                return 0
            now = self._time()
            inserted = await (
                await conn.execute(
                    q.INSERT_OUTBOX,
                    (
                        [r[1] for r in rows],
                        [r[2] for r in rows],
                        [r[3] for r in rows],
                        [r[4] for r in rows],
                        [bytes(r[5]) for r in rows],
                        [now] * len(rows),
                        [r[6] for r in rows],
                    ),
                )
            ).fetchall()
            await conn.execute(q.DELETE_DEAD_LETTERS, ([r[0] for r in rows],))
            self.outbox_count += len(inserted)
            self.dead_count -= len(rows)
            for seq, device, only_sink in inserted:
                feed = self.committed[only_sink]
                feed[device] = max(feed.get(device, 0), int(seq))
            return len(rows)

        return int(await self._call(replay))

    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Delete dead letters (all, or ``ids``, of every sink or ``sink``); returns how many."""

        async def purge(conn: Conn) -> int:
            if ids is None:
                cur = await conn.execute(q.PURGE_ALL, (sink, sink))
            else:
                cur = await conn.execute(q.PURGE_IDS, (list(ids), sink, sink))
            self.dead_count -= cur.rowcount
            return cur.rowcount

        return int(await self._call(purge))

    async def forget_device(self, device_id: str) -> None:
        """Drop a device removed from the configuration: its window, pending requests and
        state. Its undelivered events stay in the outbox and are still delivered."""

        async def forget(conn: Conn) -> None:
            for stmt in q.FORGET_DEVICE:
                await conn.execute(stmt, (device_id,))

        await self._call(forget)

    # -- the writer: inputs -------------------------------------------------------------------

    def _progress_op(self, op: ProgressOp) -> asyncio.Future[None]:
        if op.sink not in self.committed:
            raise KeyError(f"unknown sink {op.sink!r}; configured: {self.sinks}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op.future = fut
        if self._failed is not None or self._closing:
            fut.set_exception(self._closed_error())
            return fut
        self._track(fut)
        self._progress.append(op)
        self._work.set()
        return fut

    async def _call(self, fn: Callable[[Conn], Awaitable[Any]]) -> Any:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._calls.append((fn, fut))
        self._work.set()
        return await fut

    def _check_open(self) -> None:
        if self._failed is not None or self._closing:
            raise self._closed_error()

    def _closed_error(self) -> StoreError:
        return StoreError(self._failed or f"store at {self.where} is closed")

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)

    # -- the writer: the loop -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), self._held_at - loop.time())
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

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None or not self._closing:
            why = "cancelled" if task.cancelled() else repr(exc) if exc else "ended"
            self._failed = (
                f"the store writer for {self.where} stopped ({why}); nothing can be stored any "
                "more: restart the agent"
            )
            self._log.error("store writer died", error=why, exc_info=exc)
        err = self._closed_error()
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
            if not fut.done():
                fut.set_exception(StoreError(pg_message(self.where, exc)))
            return
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
        self, changes: list[tuple[PreparedChange, int | None]], progress: list[ProgressOp]
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
        self, conn: Conn, changes: list[tuple[PreparedChange, int | None]]
    ) -> list[PreparedChange]:
        """The changes whose lease this member no longer holds with their token.

        The lease rows stay locked (``FOR SHARE``) until this transaction ends, so no member
        can take a lease over between this check and the commit.
        """
        fenced = {ch.device_id: tok for ch, tok in changes if tok is not None}
        if not fenced:
            return []
        rows = await (await conn.execute(q.FENCE, (sorted(fenced), self.member_id))).fetchall()
        current = {d: int(t) for d, t in rows}
        return [ch for ch, tok in changes if tok is not None and current.get(ch.device_id) != tok]

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
        now = self._time()
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
        self.outbox_count = await _one(conn, q.OUTBOX_COUNT)
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
        self.dead_count = await _one(conn, q.DEAD_LETTER_COUNT)
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


async def _one(conn: Conn, sql: str) -> int:
    row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    return int(row[0])


__all__ = ["PostgresStore", "StaleLease", "describe", "migrate"]
