"""The PostgreSQL store: the same interface as the SQLite one, shared by a fleet of agents.

Driver: psycopg 3 (async) with psycopg-pool. A small pool (reads, the writer's transactions)
replaces broken connections by itself, so a database restart costs the commits in flight
(they fail with :class:`StoreError`, as a full disk does with SQLite) and nothing else.

Group commits as in SQLite (:mod:`edge_agent.store.pgwriter`): one writer task takes what is
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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from edge_agent import jsoncodec
from edge_agent.config.models import postgres_url_secret
from edge_agent.forward.schedule import OutboxEvent, RetryState, SinkProgress
from edge_agent.metrics import DEAD_LETTERS, OUTBOX_DEPTH, OUTBOX_OLDEST_AGE, PENDING_REQUESTS
from edge_agent.store import occupancy
from edge_agent.store import pgschema as q
from edge_agent.store.base import Change, PendingRow, StoreError, StoreHealth
from edge_agent.store.pgwriter import PgGroupWriter, StaleLease, one, pg_message, write_occupancy
from edge_agent.store.plan import ProgressOp, prepare, stream_seqs
from edge_agent.store.requests import KEEP_S, BookingRequestRow, row_from_db

if TYPE_CHECKING:
    # psycopg and its pool (~13 MiB of RSS) are imported where a connection is made or its
    # errors are told apart, so naming PostgresStore (an isinstance check, the CLI) never
    # loads them.
    from psycopg_pool import AsyncConnectionPool

    from edge_agent.store.pgwriter import Conn

log = structlog.get_logger(__name__)


def describe(url: str) -> str:
    """``host:port/db`` of a postgresql URL: what logs and errors show."""
    p = urlsplit(url)
    return f"{p.hostname}:{p.port or 5432}{p.path}"


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
        self._time = clock
        self._log = log.bind(db=self.where)
        self._writer = PgGroupWriter(
            self.where,
            pool,
            sinks=sinks,
            outbox_max_events=outbox_max_events,
            dead_letter_max=dead_letter_max,
            max_group=max_group,
            queue_max=queue_max,
            member_id=member_id,
            clock=clock,
        )
        self._closing = False
        # Fleet: the rooms under a lease (room -> lease key) and the token held for each.
        self._fenced: dict[str, str] = {}
        self._tokens: dict[str, int] = {}
        self.drains: Callable[[str], bool] = lambda stream: True
        """Whether this member drains ``stream`` (the fleet sets it; alone: every stream)."""
        self.connect_kwargs: dict[str, Any] = {}
        """libpq options a connection of this store's is made with (password included: for
        the fleet's own extra connections, never to log)."""
        self.on_committed: list[Callable[[Sequence[dict[str, Any]]], None]] = []
        """Called with each change's events once they are durable (``/v1/events/stream``);
        a listener must not block or raise. This member's own commits only: what the other
        members of the fleet commit is streamed by their own agents."""

    @property
    def failed(self) -> str | None:
        """Why the store cannot write any more (its writer died), else ``None``."""
        return self._writer.failed

    def health(self) -> StoreHealth:
        """Whether writes get in now (the rules of "Health" in :mod:`edge_agent.store.writer`)."""
        return self._writer.health()

    @property
    def unhealthy(self) -> str | None:
        """Why writes are not getting in (``/readyz``, ``STATUS=``), else ``None``."""
        return self._writer.health().problem

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
        lock_timeout_s: float = 15.0,
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
            lock_timeout_s: the longest any statement waits for a row lock.
            Others: as :meth:`edge_agent.store.sqlite.SqliteStore.open`.

        Raises:
            StoreError: the database cannot be reached, or is newer than this code.
        """
        if (why := postgres_url_secret(url)) is not None:
            raise ValueError(why)
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
            # A frozen member must not hold rows for ever, nor stall our writer behind its locks:
            # its idle transaction is ended by the server, and no statement of ours waits for
            # a lock longer than lock_timeout_s (the group fails and is retried).
            "options": (
                f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)} "
                f"-c lock_timeout={int(lock_timeout_s * 1000)}"
            ),
        }
        if password is not None:
            kwargs["password"] = password
        if sslmode is not None:
            kwargs["sslmode"] = sslmode
        if ca_file is not None:
            kwargs["sslrootcert"] = str(ca_file)
        import psycopg
        from psycopg_pool import AsyncConnectionPool

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
        store.connect_kwargs = dict(kwargs)
        await store._writer.load()
        store._writer.start()
        store._log.info("store opened", sinks=sinks, member=member_id)
        return store

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the pool.

        Cancelling it is not safe: the queued commits may be left unresolved.
        """
        if self._closing:
            return
        self._closing = True
        await self._writer.close()
        await self.pool.close()
        self._log.info("store closed")

    # -- fleet: leases and drain ownership ------------------------------------------------------

    def fence(self, rooms: Sequence[str], lease_keys: Mapping[str, str] | None = None) -> None:
        """Commits for these rooms need a lease (:meth:`hold`) from now on. ``lease_keys``:
        the lease key of a room whose lease row is not under its own id (a calendar-only
        room's ``room:<id>``, :mod:`edge_agent.fleet.keys`)."""
        keys = lease_keys or {}
        self._fenced = {room: keys.get(room, room) for room in rooms}

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
                    feed = self._writer.committed[sink]
                    feed[device] = max(feed.get(device, 0), int(top))
        if rows:
            for ev in self._writer.wakeups.values():
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
        self._writer.check_open()
        lease: tuple[str, int] | None = None
        key = self._fenced.get(change.device_id)
        if key is not None:
            token = self._tokens.get(change.device_id)
            if token is None:
                raise StaleLease(
                    f"{change.device_id}: this member does not hold the room's lease; "
                    "the change was not stored (the member that holds it stores its own)"
                )
            lease = (key, token)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._writer.commit(prepare(change, fut), lease)
        if change.events:
            for listener in self.on_committed:
                listener(change.events)

    async def flush(self) -> None:
        """Wait until everything queued before this call (changes, progress) is written."""

        async def nothing(conn: Conn) -> None:
            return None

        await self._writer.call(nothing)

    # -- reads --------------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

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
            total = await one(conn, q.OUTBOX_COUNT)
            pending = await one(conn, q.PENDING_COUNT)
            dead = await one(conn, q.DEAD_LETTER_COUNT)
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

    # -- calendar rooms (edge_agent.store.calendar) ----------------------------------------------

    async def load_calendar_sync(self, room_id: str, source: str) -> bytes | None:
        """The room's stored sync state JSON (window range, delta link), or ``None``."""
        rows = await self._fetch(q.SELECT_CALENDAR_SYNC, (room_id, source))
        return bytes(rows[0][0]) if rows else None

    async def calendar_syncs(self) -> list[tuple[str, str, bytes]]:
        """Every stored calendar room: ``(room_id, source, state JSON)``."""
        rows = await self._fetch(q.SELECT_CALENDAR_SYNCS)
        return [(str(r), str(s), bytes(st)) for r, s, st in rows]

    # -- outbox: the drainer's side -----------------------------------------------------------

    def wakeup(self, sink: str) -> asyncio.Event:
        """The event set whenever ``sink`` may have new work (a commit, a replay, a takeover)."""
        return self._writer.wakeups[sink]

    def take_committed(self, sink: str) -> dict[str, int]:
        """Streams with events stored for ``sink`` since the last call: ``{stream: top seq}``."""
        feed = self._writer.committed[sink]
        self._writer.committed[sink] = {}
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
        return self._writer.progress(ProgressOp("delivered", sink, *stream_seqs(events)))

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
        if sink is None:
            rows = await self._fetch(q.SELECT_DEAD_LETTERS, (limit,))
        else:
            rows = await self._fetch(q.SELECT_DEAD_LETTERS_OF, (sink, limit))
        return _dead_letter_dicts(rows)

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
            self._writer.outbox_count += len(inserted)
            self._writer.dead_count -= len(rows)
            for seq, device, only_sink in inserted:
                feed = self._writer.committed[only_sink]
                feed[device] = max(feed.get(device, 0), int(seq))
            return len(rows)

        return int(await self._writer.call(replay))

    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Delete dead letters (all, or ``ids``, of every sink or ``sink``); returns how many."""

        async def purge(conn: Conn) -> int:
            if ids is None:
                cur = await conn.execute(q.PURGE_ALL, (sink, sink))
            else:
                cur = await conn.execute(q.PURGE_IDS, (list(ids), sink, sink))
            self._writer.dead_count -= cur.rowcount
            return cur.rowcount

        return int(await self._writer.call(purge))

    async def forget_device(self, device_id: str) -> None:
        """Drop a device removed from the configuration: its window, pending requests and
        state. Its undelivered events stay in the outbox and are still delivered."""

        async def forget(conn: Conn) -> None:
            for stmt in q.FORGET_DEVICE:
                await conn.execute(stmt, (device_id,))

        await self._writer.call(forget)

    # -- booking requests made through the agent (edge_agent.store.requests) ----------------

    async def record_request(self, uuid: str, room_id: str, request: dict[str, Any]) -> None:
        """Store a new pending request (before it is sent); requests older than a day go.

        Raises:
            StoreError: the write failed, or ``uuid`` is already taken.
        """
        now = self._time()
        body = jsoncodec.dumpb(request)

        async def put(conn: Conn) -> None:
            import psycopg

            await conn.execute(q.PRUNE_BOOKING_REQUESTS, (now - KEEP_S,))
            try:
                await conn.execute(q.PUT_BOOKING_REQUEST, (uuid, room_id, now, now, body))
            except psycopg.errors.UniqueViolation:
                raise StoreError(f"booking request {uuid} already exists") from None

        await self._writer.call(put)

    async def resolve_request(self, uuid: str, status: str, outcome: dict[str, Any]) -> None:
        """Close a pending request that no device event will close (the send failed)."""
        args = (status, self._time(), jsoncodec.dumpb(outcome), uuid)

        async def resolve(conn: Conn) -> None:
            await conn.execute(q.RESOLVE_BOOKING_REQUEST, args)

        await self._writer.call(resolve)

    async def load_request(self, uuid: str) -> BookingRequestRow | None:
        """The stored request ``uuid`` (kept a day), or ``None``."""
        rows = await self._fetch(q.SELECT_BOOKING_REQUEST, (uuid,))
        return row_from_db(uuid, tuple(rows[0])) if rows else None

    # -- occupancy (edge_agent.store.occupancy) -------------------------------------------------

    async def save_occupancy(self, change: occupancy.OccupancyWrite) -> None:
        """Write one device's occupancy rows in their own transaction; return once durable."""

        async def save(conn: Conn) -> None:
            async with conn.cursor() as cur:
                await write_occupancy(cur, change)

        await self._writer.call(save)

    async def load_occupancy(
        self, device_id: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The open occupancy interval and the unfinished booking tracks of ``device_id``."""
        rows = await self._fetch(q.SELECT_OPEN, (device_id,))
        open_row = None
        if rows:
            start, end, state, people_max = rows[0]
            open_row = {"start": start, "end": end, "state": state, "people_max": people_max}
        found = await self._fetch(q.SELECT_UNFINISHED, (device_id,))
        return open_row, [jsoncodec.loads(r[0]) for r in found]


_DEAD_LETTER_KEYS = (
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


def _dead_letter_dicts(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [
        dict(zip(_DEAD_LETTER_KEYS, row[:-1], strict=True))
        | {"envelope": jsoncodec.loads(bytes(row[-1]))}
        for row in rows
    ]


# -- reading beside the fleet (the CLI: ``outbox dead-letter list``, ``report``) ----------------


@contextlib.asynccontextmanager
async def read_only(
    url: str,
    *,
    password: str | None = None,
    sslmode: str | None = None,
    ca_file: str | Path | None = None,
    connect_timeout_s: float = 10.0,
    require_schema: bool = True,
) -> AsyncIterator[Conn]:
    """One connection in read-only transactions, for a command run beside the fleet: it
    migrates nothing, takes no lease and no lock a member waits for.

    Raises:
        StoreError: the database cannot be reached, or (``require_schema``) has no
            edge-agent schema.
    """
    import psycopg

    where = describe(url)
    if (why := postgres_url_secret(url)) is not None:
        raise StoreError(why)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(connect_timeout_s)),
        "application_name": "edge-agent cli",
        "options": "-c default_transaction_read_only=on",
    }
    if password is not None:
        kwargs["password"] = password
    if sslmode is not None:
        kwargs["sslmode"] = sslmode
    if ca_file is not None:
        kwargs["sslrootcert"] = str(ca_file)
    try:
        conn = await psycopg.AsyncConnection.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot reach the PostgreSQL store at {where}: {exc}; check [store] url, the "
            "password and that the server accepts connections"
        ) from exc
    try:
        try:
            row = await (await conn.execute("SELECT to_regclass('edge_schema')")).fetchone()
        except psycopg.Error as exc:
            raise StoreError(pg_message(where, exc)) from exc
        if require_schema and (row is None or row[0] is None):
            raise StoreError(
                f"no edge-agent store at {where} (has an agent run with this [store] url?)"
            )
        yield conn
    finally:
        await conn.close()


async def read_dead_letters(
    conn: Conn, *, limit: int = 100, sink: str | None = None
) -> list[dict[str, Any]]:
    """``PostgresStore.dead_letters`` on a :func:`read_only` connection."""
    if sink is None:
        cur = await conn.execute(q.SELECT_DEAD_LETTERS, (limit,))
    else:
        cur = await conn.execute(q.SELECT_DEAD_LETTERS_OF, (sink, limit))
    return _dead_letter_dicts(await cur.fetchall())


async def read_occupancy(conn: Conn, since: float) -> occupancy.OccupancyHistory:
    """``store.occupancy.read_occupancy`` on a :func:`read_only` connection: intervals and
    booking tracks reaching past ``since`` (unix s), per device."""
    intervals: dict[str, list[dict[str, Any]]] = {}
    for dev, start, end, state, people in await (
        await conn.execute(q.SELECT_INTERVALS_SINCE, (since,))
    ).fetchall():
        intervals.setdefault(dev, []).append(
            {"start": start, "end": end, "state": state, "people_max": people}
        )
    bookings: dict[str, list[dict[str, Any]]] = {}
    for dev, row in await (await conn.execute(q.SELECT_BOOKINGS_SINCE, (since,))).fetchall():
        bookings.setdefault(dev, []).append(jsoncodec.loads(bytes(row)))
    return occupancy.OccupancyHistory(intervals, bookings)


__all__ = [
    "PostgresStore",
    "StaleLease",
    "describe",
    "migrate",
    "read_dead_letters",
    "read_occupancy",
    "read_only",
]
