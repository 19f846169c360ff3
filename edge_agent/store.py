"""The agent's durable state: one SQLite file (WAL) and the only code that knows its tables.

What is stored
--------------
- ``window``: each device's calendar window, ``(device_id, key) -> booking JSON``.
- ``pending``: booking requests awaiting an answer, ``(device_id, booking_request_uuid)``.
- ``device_state``: one JSON document per device (availability, time zone, booking timeout...).
- ``outbox``: every event to forward, ``seq`` ascending; ``body`` is the envelope serialized
  once (orjson) at commit and sent byte for byte.
- ``sink_cursor``: per sink and device, the highest ``seq`` that sink is done with (delivered or
  dead-lettered). Delivery is strictly in order per device, so one integer per (sink, device)
  is the whole progress record: marking thousands of events delivered is a few row updates.
- ``retry_state``: per sink and device, the attempts and next due time of the device's
  head-of-line event (only devices that are backing off have a row). It survives restarts.
- ``dead_letter``: events a sink gave up on, with the reason, for the operator to replay or
  purge.

An outbox row is deleted once every configured sink (``Store.open(..., sinks=...)``) is past
it, so the file does not grow without bound while the sinks keep up.

Durability
----------
``commit()`` writes the window/pending/state change and its events in ONE transaction and
returns once it is committed. One writer task owns the write connection and commits
everything that is waiting in one transaction (group commit): a burst from 1,000 devices costs
a handful of commits, not one fsync per event (DESIGN.md: ~4.5k single-row commits/s through
aiosqlite vs ~42k rows/s at 100 rows per commit).

``synchronous = "normal"`` (the default) in WAL mode never loses a committed transaction when
the *process* dies (kill -9, OOM, crash: DESIGN.md measured 0 of 40 kills losing an
acknowledged commit); only a power cut or kernel crash can lose the last commits before the
WAL is synced at checkpoint. ``"full"`` syncs the WAL on every commit and closes that window
too, at roughly half the single-commit rate; choose it where the host has no UPS.

Outbox full policy
------------------
The outbox holds at most ``outbox_max_events`` undelivered events (default 1,000,000). When a
commit pushes it past the cap, the OLDEST undelivered events are moved, in the same
transaction, to the dead letter with reason ``"outbox full"`` (one dead-letter row per sink
that had not delivered them) and removed from the outbox. New events are always accepted:
recent state is worth more to the cloud than a week-old backlog. Nothing is lost silently: a
WARNING says how many events were moved and how to send them again
(``edge-agent outbox dead-letter replay``), and the ``edge_agent_outbox_overflow`` counter
counts them.

One process per database
------------------------
``Store.open`` takes an exclusive lock (``flock`` on ``<path>.lock``, which holds the owner's
pid) for the store's lifetime: a second store on the same file fails at once with
:class:`StoreLocked`. Only the owner numbers outbox rows, so a tool that wants to change the
database while the agent runs goes through the agent's local API (``edge-agent outbox
dead-letter replay`` does); :func:`read_dead_letters` reads beside it without the lock. An
outbox insert that still meets a taken ``seq`` fails its commit loudly (only an ``event_id``
already stored is skipped).

Errors
------
A failed write (disk full, I/O error) raises :class:`StoreError` in every ``commit()`` caller of
the failing group; the writer keeps running and later commits succeed once the cause is gone.
Drainer progress of a failed group is not dropped: its futures fail, but the writer keeps the
operations (they are idempotent) and writes them, in order, with the next group or on its own
after a backoff. Otherwise a dead letter lost to a full disk would vanish for good once a later
delivery moved the cursor past it and compaction deleted the row.

If the writer task itself dies (a bug, the connection gone), every waiting and later call fails
with :class:`StoreError` and :attr:`Store.failed` says why; readiness and health read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import structlog

from edge_agent import jsoncodec
from edge_agent.backoff import Backoff
from edge_agent.forward.base import OutboxEvent
from edge_agent.metrics import (
    DEAD_LETTERS,
    EVENTS,
    OUTBOX_DEPTH,
    OUTBOX_DROPPED,
    OUTBOX_OLDEST_AGE,
    PENDING_REQUESTS,
)

log = structlog.get_logger(__name__)

Synchronous = Literal["normal", "full"]

# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


class StoreError(Exception):
    """A write could not be made durable (disk full, I/O error, database newer than the code)."""


class StoreLocked(StoreError):
    """Another store (another agent, another CLI command) has the database open."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(
            f"another edge-agent is using {path} (pid {pid}?); stop it first, or give this one "
            "its own [store] path"
        )
        self.path = path
        self.pid = pid


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A booking request awaiting ``BookingCreated`` / ``BookingFailed`` until ``deadline``."""

    device_id: str
    booking_request_uuid: str
    deadline: float  # unix seconds
    row: dict[str, Any]


@dataclass(slots=True)
class Change:
    """One device's state change and the events it produced, committed atomically.

    Applied in this order: ``window_replace`` (the whole window, when not ``None``), then
    ``window_delete``, then ``window_upsert``; ``pending_delete`` then ``pending_upsert``;
    ``device_state`` replaces the stored document when not ``None``. ``events`` are full
    envelope dicts carrying ``type`` and ``data.event_id``; an ``event_id`` already in the
    outbox is ignored (committing the same event twice is harmless).
    """

    device_id: str
    window_replace: dict[str, dict[str, Any]] | None = None
    window_upsert: dict[str, dict[str, Any]] = field(default_factory=dict)
    window_delete: list[str] = field(default_factory=list)
    pending_upsert: list[PendingRow] = field(default_factory=list)
    pending_delete: list[str] = field(default_factory=list)
    device_state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------------------------

# Each step moves the schema from version i to i+1; append, never edit a released step.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE window (
        device_id TEXT NOT NULL, key TEXT NOT NULL, booking BLOB NOT NULL,
        PRIMARY KEY (device_id, key)) WITHOUT ROWID;
    CREATE TABLE pending (
        device_id TEXT NOT NULL, booking_request_uuid TEXT NOT NULL,
        deadline REAL NOT NULL, row BLOB NOT NULL,
        PRIMARY KEY (device_id, booking_request_uuid)) WITHOUT ROWID;
    CREATE TABLE device_state (device_id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        only_sink TEXT NOT NULL DEFAULT '',
        device_id TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (event_id, only_sink));
    CREATE INDEX outbox_by_device ON outbox (device_id, seq);
    CREATE TABLE sink_cursor (
        sink TEXT NOT NULL, device_id TEXT NOT NULL, done_seq INTEGER NOT NULL,
        PRIMARY KEY (sink, device_id)) WITHOUT ROWID;
    CREATE TABLE retry_state (
        sink TEXT NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, last_error TEXT,
        PRIMARY KEY (sink, device_id)) WITHOUT ROWID;
    CREATE TABLE dead_letter (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL, event_id TEXT NOT NULL, sink TEXT NOT NULL,
        device_id TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL,
        created_at REAL NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
        dead_at REAL NOT NULL);
    CREATE INDEX dead_letter_by_sink ON dead_letter (sink, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_OUTBOX_COLS = "seq, device_id, event_id, type, body, created_at"

# An event_id already in the outbox (for the same sink) is skipped; a taken seq is an error.
_INSERT_OUTBOX = (
    "INSERT INTO outbox (seq, event_id, only_sink, device_id, type, body, created_at) "
    "VALUES (?,?,?,?,?,?,?) ON CONFLICT (event_id, only_sink) DO NOTHING"
)

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
_DEAD_LETTER_SQL = f"SELECT {', '.join(_DEAD_LETTER_KEYS)}, body FROM dead_letter"

# Retrying progress a failed group could not write (disk full: a few seconds apart at most).
PROGRESS_RETRY = Backoff(initial=0.5, maximum=30.0)


# ---------------------------------------------------------------------------------------------
# Write planning (pure): coalesce a group of changes into per-device final writes
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Prepared:
    """A Change serialized in the caller's task (JSON errors surface there, not in the writer)."""

    device_id: str
    window_replace: dict[str, bytes] | None
    window_upsert: dict[str, bytes]
    window_delete: list[str]
    pending_upsert: list[tuple[str, float, bytes]]
    pending_delete: list[str]
    device_state: bytes | None
    events: list[tuple[str, str, bytes]]  # event_id, type, body
    future: asyncio.Future[None]


@dataclass(slots=True)
class _DeviceWrite:
    replace: bool = False
    window: dict[str, bytes | None] = field(default_factory=dict)  # None: delete
    pending: dict[str, tuple[float, bytes] | None] = field(default_factory=dict)
    state: bytes | None = None


def _prepare(change: Change, future: asyncio.Future[None]) -> _Prepared:
    dumpb = jsoncodec.dumpb
    events: list[tuple[str, str, bytes]] = []
    for env in change.events:
        try:
            event_id = str(env["data"]["event_id"])
            etype = str(env["type"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{change.device_id}: event envelope without type or data.event_id: {exc!r}"
            ) from exc
        events.append((event_id, etype, dumpb(env)))
    return _Prepared(
        device_id=change.device_id,
        window_replace=(
            None
            if change.window_replace is None
            else {k: dumpb(v) for k, v in change.window_replace.items()}
        ),
        window_upsert={k: dumpb(v) for k, v in change.window_upsert.items()},
        window_delete=list(change.window_delete),
        pending_upsert=[
            (p.booking_request_uuid, float(p.deadline), dumpb(p.row)) for p in change.pending_upsert
        ],
        pending_delete=list(change.pending_delete),
        device_state=None if change.device_state is None else dumpb(change.device_state),
        events=events,
        future=future,
    )


def _coalesce(changes: Iterable[_Prepared]) -> dict[str, _DeviceWrite]:
    """Fold changes (in commit order) into one final write per device.

    Statements are then batched per table with ``executemany``; folding first keeps the result
    equal to applying the changes one by one (a later ``window_replace`` discards earlier
    upserts of the same device, a later upsert revives an earlier delete...).
    """
    out: dict[str, _DeviceWrite] = {}
    for ch in changes:
        w = out.setdefault(ch.device_id, _DeviceWrite())
        if ch.window_replace is not None:
            w.replace = True
            w.window = dict(ch.window_replace)
        for k in ch.window_delete:
            w.window[k] = None
        w.window.update(ch.window_upsert)
        for u in ch.pending_delete:
            w.pending[u] = None
        for u, deadline, row in ch.pending_upsert:
            w.pending[u] = (deadline, row)
        if ch.device_state is not None:
            w.state = ch.device_state
    return out


@dataclass(slots=True)
class _Progress:
    """A drainer's outcome for one device's events, queued for the writer."""

    kind: Literal["delivered", "retry", "dead"]
    sink: str
    device_id: str
    seqs: list[int]
    attempts: int = 0
    next_attempt_at: float = 0.0
    error: str | None = None
    future: asyncio.Future[None] | None = None


@dataclass(slots=True)
class _Retry:
    seq: int
    attempts: int
    next_attempt_at: float
    error: str | None


def _sqlite_message(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "outbox.seq" in text:
        return (
            f"outbox seq already taken in {path}: another process wrote to the database; this "
            "commit was not stored (retry it); only one edge-agent may use a database"
        )
    if isinstance(exc, sqlite3.OperationalError) and (
        "full" in text or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    ):
        return (
            f"database or disk is full at {path}: free space; events are kept in memory and retried"
        )
    return f"store write failed at {path}: {text}"


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class Store:
    """The SQLite buffer. Create with :meth:`open`; one instance per database file."""

    def __init__(
        self,
        path: Path,
        wconn: aiosqlite.Connection,
        rconn: aiosqlite.Connection,
        *,
        sinks: tuple[str, ...],
        outbox_max_events: int,
        max_group: int,
        queue_max: int,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.sinks = sinks
        self.outbox_max_events = outbox_max_events
        self._wconn = wconn
        self._rconn = rconn
        self._max_group = max_group
        self._time = clock
        self._log = log.bind(db=str(path))
        # Writer inputs. Changes are bounded by a semaphore (backpressure on commit());
        # progress is bounded by the drainers' in-flight limits.
        self._changes: deque[_Prepared] = deque()
        self._change_slots = asyncio.Semaphore(queue_max)
        self._progress: deque[_Progress] = deque()
        self._calls: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._work = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._waiting: set[asyncio.Future[Any]] = set()  # failed all at once if the writer dies
        # Progress of a failed group, written again first (in order) with the next group.
        self._held: list[_Progress] = []
        self._held_attempts = 0
        self._held_at = 0.0  # loop time of the next try on its own
        self._held_backoff = PROGRESS_RETRY
        self.failed: str | None = None
        """Why the store cannot write any more (its writer died), else ``None``."""
        # In-memory outbox index (the writer is the only one who adds rows, the drainers the
        # only ones who move progress): what the drainer's hot path reads instead of scanning.
        self._next_seq = 1
        self._outbox_count = 0
        self._cursor: dict[str, dict[str, int]] = {s: {} for s in sinks}  # may run ahead of DB
        self._db_cursor: dict[str, dict[str, int]] = {s: {} for s in sinks}
        self._ready: dict[str, dict[str, None]] = {s: {} for s in sinks}  # ordered: fairness
        self._top: dict[str, int] = {}  # device -> highest seq committed for it
        self._retry: dict[str, dict[str, _Retry]] = {s: {} for s in sinks}
        self._wakeups: dict[str, asyncio.Event] = {s: asyncio.Event() for s in sinks}

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        sinks: Sequence[str] = ("webhook",),
        outbox_max_events: int = 1_000_000,
        synchronous: Synchronous = "normal",
        max_group: int = 1000,
        queue_max: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Open (creating or migrating) the database at ``path`` and start the writer task.

        Args:
            path: the SQLite file (its directory must exist). ``":memory:"`` is refused: the
                store needs two connections to one file.
            sinks: the configured sink names; outbox rows are deleted once all of them are done.
            outbox_max_events: the outbox cap (see "Outbox full policy" in the module doc).
            synchronous: ``"normal"`` (default; safe against process death) or ``"full"``
                (also against power loss, slower).
            max_group: most changes committed in one transaction.
            queue_max: most changes waiting for the writer; ``commit()`` waits beyond that.
            clock: unix-seconds wall clock (``created_at``, ages).

        Raises:
            StoreError: the database is newer than this code, or cannot be opened.
        """
        if str(path) == ":memory:":
            raise ValueError("Store needs a file path, not ':memory:'")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        if len(set(sinks)) != len(sinks) or not sinks:
            raise ValueError(f"sinks must be distinct names, at least one: {sinks!r}")
        p = Path(path)
        lock_fd = _lock(p)
        try:
            wconn = await aiosqlite.connect(p, isolation_level=None)
        except BaseException as exc:
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the database at {p}: {exc}") from exc
            raise
        rconn: aiosqlite.Connection | None = None
        try:
            await wconn.execute("PRAGMA journal_mode=WAL")
            await wconn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            await wconn.execute("PRAGMA busy_timeout=5000")
            await _migrate(wconn, p)
            rconn = await aiosqlite.connect(p, isolation_level=None)
            await rconn.execute("PRAGMA busy_timeout=5000")
            store = cls(
                p,
                wconn,
                rconn,
                sinks=tuple(sinks),
                outbox_max_events=outbox_max_events,
                max_group=max_group,
                queue_max=queue_max,
                clock=clock,
            )
            store._lock_fd = lock_fd
            await store._load_index()
        except BaseException as exc:
            await wconn.close()
            if rconn is not None:
                await rconn.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the database at {p}: {exc}") from exc
            raise
        store._writer = asyncio.create_task(store._write_loop(), name=f"store[{p.name}].writer")
        store._writer.add_done_callback(store._writer_done)
        store._log.info(
            "store opened", synchronous=synchronous, outbox=store._outbox_count, sinks=sinks
        )
        return store

    async def _load_index(self) -> None:
        r = self._rconn
        rows = list(await r.execute_fetchall("SELECT seq FROM sqlite_sequence WHERE name='outbox'"))
        self._next_seq = (int(rows[0][0]) if rows else 0) + 1
        self._outbox_count = int((await _one(r, "SELECT count(*) FROM outbox"))[0])
        for sink, device, done in await r.execute_fetchall(
            "SELECT sink, device_id, done_seq FROM sink_cursor"
        ):
            if sink in self._cursor:
                self._cursor[sink][device] = done
                self._db_cursor[sink][device] = done
        for sink, device, seq, attempts, due, err in await r.execute_fetchall(
            "SELECT sink, device_id, seq, attempts, next_attempt_at, last_error FROM retry_state"
        ):
            if sink in self._retry:
                self._retry[sink][device] = _Retry(seq, attempts, due, err)
        for device, top in await r.execute_fetchall(
            "SELECT device_id, max(seq) FROM outbox GROUP BY device_id"
        ):
            self._top[device] = top
            for sink in self.sinks:
                if top > self._cursor[sink].get(device, 0):
                    self._ready[sink][device] = None

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the database.

        Cancelling it is not safe: the queued commits may be left unresolved.
        """
        if self._closing:
            return
        self._closing = True
        self._work.set()
        if self._writer is not None:
            await asyncio.wait([self._writer])  # a dead writer was reported by _writer_done
        try:
            await self._rconn.close()
            await self._wconn.close()
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
        self._check_open()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        prepared = _prepare(change, fut)
        await self._change_slots.acquire()
        if self.failed is not None or self._closing:
            self._change_slots.release()
            self._check_open()
        self._track(fut)
        self._changes.append(prepared)
        self._work.set()
        await fut

    async def flush(self) -> None:
        """Wait until everything queued before this call (changes, progress) is written."""

        async def nothing() -> None:
            return None

        await self._call(nothing)

    # -- reads --------------------------------------------------------------------------------

    async def load_window(self, device_id: str) -> dict[str, dict[str, Any]]:
        """The stored window of ``device_id``: ``{key: booking}``."""
        rows = await self._rconn.execute_fetchall(
            "SELECT key, booking FROM window WHERE device_id=?", (device_id,)
        )
        return {k: jsoncodec.loads(b) for k, b in rows}

    async def load_pending(self, device_id: str | None = None) -> list[PendingRow]:
        """Pending booking requests, of one device or all, by deadline."""
        sql = "SELECT device_id, booking_request_uuid, deadline, row FROM pending"
        args: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id=?"
            args = (device_id,)
        rows = await self._rconn.execute_fetchall(sql + " ORDER BY deadline", args)
        return [PendingRow(d, u, dl, jsoncodec.loads(r)) for d, u, dl, r in rows]

    async def load_device_state(self, device_id: str) -> dict[str, Any] | None:
        """The device's stored state document, or ``None``."""
        rows = list(
            await self._rconn.execute_fetchall(
                "SELECT state FROM device_state WHERE device_id=?", (device_id,)
            )
        )
        return jsoncodec.loads(rows[0][0]) if rows else None

    async def stats(self) -> dict[str, Any]:
        """Counts for the local API and metrics; also sets the outbox/dead-letter gauges.

        ``{"outbox_total", "pending", "dead_letters", "sinks": {name: {"depth",
        "oldest_age_s"}}}``. It scans the undelivered part of the outbox (tens of ms at a
        million rows): call it from a sampler, not per event.
        """
        r = self._rconn
        now = self._time()
        total = (await _one(r, "SELECT count(*) FROM outbox"))[0]
        pending = (await _one(r, "SELECT count(*) FROM pending"))[0]
        dead = (await _one(r, "SELECT count(*) FROM dead_letter"))[0]
        sinks: dict[str, dict[str, Any]] = {}
        for sink in self.sinks:
            depth, oldest = await _one(
                r,
                "SELECT count(*), min(o.created_at) FROM outbox o "
                "LEFT JOIN sink_cursor c ON c.sink=? AND c.device_id=o.device_id "
                "WHERE o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', ?)",
                (sink, sink),
            )
            age = None if oldest is None else max(0.0, now - oldest)
            sinks[sink] = {"depth": depth, "oldest_age_s": age}
            OUTBOX_DEPTH.labels(sink=sink).set(depth)
            OUTBOX_OLDEST_AGE.labels(sink=sink).set(age or 0.0)
        DEAD_LETTERS.set(dead)
        PENDING_REQUESTS.set(pending)
        return {"outbox_total": total, "pending": pending, "dead_letters": dead, "sinks": sinks}

    # -- outbox: the drainer's side -----------------------------------------------------------
    #
    # A drainer per sink calls next_batches() for work, sends each batch, then reports the
    # outcome with mark_delivered / mark_retry / dead_letter. Those three move the in-memory
    # progress AT ONCE (so the next next_batches() already sees it) and return a future that
    # resolves when the progress is durable, or fails with StoreError when its group failed
    # (the writer keeps the progress and writes it later all the same). Progress lost in a
    # crash only means the events are delivered (or dead-lettered) again: delivery is at least
    # once, receivers dedupe by event_id.

    def wakeup(self, sink: str) -> asyncio.Event:
        """The event set whenever ``sink`` may have new work (a commit, a replay)."""
        return self._wakeups[sink]

    async def next_batches(
        self,
        sink: str,
        *,
        now: float,
        max_devices: int,
        max_batch: int,
        exclude: Iterable[str] = (),
    ) -> list[list[OutboxEvent]]:
        """Up to ``max_devices`` batches of work for ``sink``, one per device.

        Each batch is the device's next undelivered events in ``seq`` order (at most
        ``max_batch``; just the head while the head is being retried, so a poison event is
        isolated). A device whose head is backing off (``next_attempt_at > now``) is skipped:
        it blocks only itself. ``exclude`` are the devices the caller has in flight. Devices
        are served round robin. The head event carries its ``attempts`` so far.
        """
        skip = set(exclude)
        out: list[list[OutboxEvent]] = []
        # Devices left in ``ready`` may turn out to have nothing left (they are dropped only
        # when a query finds nothing): keep choosing until the slots are filled or every ready
        # device was tried, so idle devices never hide the ones with work.
        while len(out) < max_devices:
            got, tried = await self._next_batches_once(
                sink,
                now=now,
                max_devices=max_devices - len(out),
                max_batch=max_batch,
                skip=skip,
            )
            out.extend(got)
            if not tried:
                break
            skip.update(tried)
        return out

    async def _next_batches_once(
        self, sink: str, *, now: float, max_devices: int, max_batch: int, skip: set[str]
    ) -> tuple[list[list[OutboxEvent]], list[str]]:
        ready = self._ready[sink]
        retry = self._retry[sink]
        cursor = self._cursor[sink]
        chosen: list[tuple[str, int, int]] = []
        for device in list(ready):
            if device in skip:
                continue
            if cursor.get(device, 0) >= self._top.get(device, 0):
                # Delivered up to its last committed event: idle until a commit brings more.
                del ready[device]
                continue
            r = retry.get(device)
            if r is not None and r.next_attempt_at > now:
                continue
            chosen.append((device, cursor.get(device, 0), 1 if r is not None else max_batch))
            if len(chosen) >= max_devices:
                break
        if not chosen:
            return [], []
        for device, _, _ in chosen:  # round robin: served devices go to the back
            del ready[device]
            ready[device] = None
        tops = {device: self._top.get(device, 0) for device, _, _ in chosen}
        sub = (
            f"SELECT * FROM (SELECT {_OUTBOX_COLS} FROM outbox WHERE device_id=? AND seq>? "
            "AND only_sink IN ('', ?) ORDER BY seq LIMIT ?)"
        )
        args: list[Any] = []
        for device, after, limit in chosen:
            args += [device, after, sink, limit]
        rows = await self._rconn.execute_fetchall(" UNION ALL ".join([sub] * len(chosen)), args)
        by_device: dict[str, list[OutboxEvent]] = {}
        for seq, device, event_id, etype, body, created_at in rows:
            r = retry.get(device)
            attempts = r.attempts if r is not None and r.seq == seq else 0
            by_device.setdefault(device, []).append(
                OutboxEvent(
                    seq=seq,
                    device_id=device,
                    event_id=event_id,
                    type=etype,
                    envelope=jsoncodec.loads(body),
                    body=body,
                    created_at=created_at,
                    attempts=attempts,
                )
            )
        for device, after, _ in chosen:
            # Nothing left for this sink: idle until a commit or replay brings more; unless a
            # commit or a mark landed while the query ran.
            if (
                device not in by_device
                and cursor.get(device, 0) == after
                and self._top.get(device, 0) == tops[device]
            ):
                ready.pop(device, None)
                retry.pop(device, None)
        return list(by_device.values()), [d for d, _, _ in chosen]

    def next_due(self, sink: str, exclude: Iterable[str] = ()) -> float | None:
        """The earliest ``next_attempt_at`` among backing-off devices with work, or ``None``."""
        skip = set(exclude)
        ready = self._ready[sink]
        due = [
            r.next_attempt_at for d, r in self._retry[sink].items() if d in ready and d not in skip
        ]
        return min(due) if due else None

    def retrying(self, sink: str) -> dict[str, dict[str, Any]]:
        """Devices backing off for ``sink``: ``{device: {seq, attempts, next_attempt_at, error}}``."""
        return {
            d: {
                "seq": r.seq,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "error": r.error,
            }
            for d, r in self._retry[sink].items()
        }

    def mark_delivered(self, sink: str, events: Sequence[OutboxEvent]) -> asyncio.Future[None]:
        """``sink`` delivered ``events`` (one device's, the head of its queue, in order)."""
        return self._progress_op(_Progress("delivered", sink, *_device_seqs(events)))

    def mark_retry(
        self,
        sink: str,
        head: OutboxEvent,
        *,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
    ) -> asyncio.Future[None]:
        """Back off ``head``'s device for ``sink`` until ``next_attempt_at`` (unix seconds)."""
        return self._progress_op(
            _Progress("retry", sink, head.device_id, [head.seq], attempts, next_attempt_at, error)
        )

    def dead_letter(
        self, sink: str, events: Sequence[OutboxEvent], *, reason: str, attempts: int = 0
    ) -> asyncio.Future[None]:
        """Move ``events`` (one device's, head first) to the dead letter for ``sink``."""
        device, seqs = _device_seqs(events)
        return self._progress_op(
            _Progress("dead", sink, device, seqs, attempts=attempts, error=reason)
        )

    def _progress_op(self, op: _Progress) -> asyncio.Future[None]:
        if op.sink not in self._cursor:
            raise KeyError(f"unknown sink {op.sink!r}; configured: {self.sinks}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op.future = fut
        if self.failed is not None or self._closing:
            fut.set_exception(self._closed_error())
            return fut
        if op.kind == "retry":
            self._retry[op.sink][op.device_id] = _Retry(
                op.seqs[0], op.attempts, op.next_attempt_at, op.error
            )
        else:
            cur = self._cursor[op.sink]
            cur[op.device_id] = max(cur.get(op.device_id, 0), max(op.seqs))
            self._retry[op.sink].pop(op.device_id, None)
        self._track(fut)
        self._progress.append(op)
        self._work.set()
        return fut

    # -- dead letter admin ---------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100, sink: str | None = None) -> list[dict[str, Any]]:
        """The oldest dead letters (``id, seq, event_id, sink, device_id, type, reason,
        attempts, created_at, dead_at, envelope``)."""
        sql, args = _dead_letter_query(limit, sink)
        return _dead_letter_rows(await self._rconn.execute_fetchall(sql, args))

    async def replay_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Put dead letters (all, or ``ids``, of every sink or ``sink``) back in the outbox for
        their sink; returns how many.

        A replayed event goes to the END of its device's queue, for the sink that dead-lettered
        it only, with its original ``event_id`` (receivers that already have it drop it) and
        a fresh ``created_at`` (its TTL starts again).
        Dead letters of sinks no longer configured stay where they are.
        """
        return int(await self._call(lambda: self._replay(ids, sink)))

    async def purge_dead_letters(
        self, ids: Sequence[int] | None = None, sink: str | None = None
    ) -> int:
        """Delete dead letters (all, or ``ids``, of every sink or ``sink``); returns how many."""

        async def purge() -> int:
            where, args = "1", []
            if sink is not None:
                where, args = "sink=?", [sink]
            if ids is None:
                cur = await self._wconn.execute(f"DELETE FROM dead_letter WHERE {where}", args)
            else:
                cur = await self._wconn.executemany(
                    f"DELETE FROM dead_letter WHERE id=? AND {where}", [(i, *args) for i in ids]
                )
            return cur.rowcount

        return int(await self._call(purge))

    async def forget_device(self, device_id: str) -> None:
        """Drop a device removed from the configuration: its window, pending requests and state.

        Its undelivered events stay in the outbox and are still delivered.
        """

        async def forget() -> None:
            for table in ("window", "pending", "device_state"):
                await self._wconn.execute(f"DELETE FROM {table} WHERE device_id=?", (device_id,))

        await self._call(forget)

    async def _replay(self, ids: Sequence[int] | None, sink: str | None) -> int:
        c = self._wconn
        sinks = [s for s in self.sinks if sink is None or s == sink]
        if not sinks:
            return 0
        marks = ",".join("?" * len(sinks))
        sql = (
            "SELECT id, event_id, sink, device_id, type, body, created_at FROM dead_letter "
            f"WHERE sink IN ({marks})"
        )
        rows = list(await c.execute_fetchall(sql + " ORDER BY id", sinks))
        if ids is not None:
            wanted = set(ids)
            rows = [row for row in rows if row[0] in wanted]
        inserts = []
        added: list[tuple[str, str]] = []
        now = self._time()
        for _id, event_id, row_sink, device, etype, body, _created_at in rows:
            seq = self._next_seq
            self._next_seq += 1
            inserts.append((seq, event_id, row_sink, device, etype, body, now))
            added.append((row_sink, device))
        cur = await c.executemany(_INSERT_OUTBOX, inserts)
        await c.executemany("DELETE FROM dead_letter WHERE id=?", [(row[0],) for row in rows])
        # Counted before COMMIT: a failed commit leaves the count a little high until restart.
        self._outbox_count += cur.rowcount
        for (row_sink, device), ins in zip(added, inserts, strict=True):
            self._ready[row_sink][device] = None
            self._top[device] = max(self._top.get(device, 0), ins[0])
        return len(rows)

    def _notify_after_call(self) -> None:
        for ev in self._wakeups.values():
            ev.set()

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._calls.append((fn, fut))
        self._work.set()
        return await fut

    def _check_open(self) -> None:
        if self.failed is not None or self._closing:
            raise self._closed_error()

    def _closed_error(self) -> StoreError:
        return StoreError(self.failed or f"store at {self.path} is closed")

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)

    # -- the writer ----------------------------------------------------------------------------

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
                changes = [
                    self._changes.popleft() for _ in range(min(self._max_group, len(self._changes)))
                ]
                progress = self._held + list(self._progress)
                self._held = []
                self._progress.clear()
                if changes or progress:
                    try:
                        await self._write_group(changes, progress)
                    finally:
                        for _ in changes:
                            self._change_slots.release()
                while self._calls:
                    fn, fut = self._calls.popleft()
                    await self._write_call(fn, fut)
            if self._closing:
                return

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """Fail everyone waiting when the writer ends; mark the store failed if it died."""
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None or not self._closing:
            why = "cancelled" if task.cancelled() else repr(exc) if exc else "ended"
            self.failed = (
                f"the store writer for {self.path} stopped ({why}); nothing can be stored any "
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
        for _ in self._changes:  # wake commits waiting for a slot; they see ``failed``
            self._change_slots.release()
        self._changes.clear()

    async def _write_call(self, fn: Callable[[], Awaitable[Any]], fut: asyncio.Future[Any]) -> None:
        c = self._wconn
        try:
            await c.execute("BEGIN IMMEDIATE")
            result = await fn()
            await c.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the writer survives; the caller gets it
            await self._rollback()
            if not fut.done():
                fut.set_exception(StoreError(_sqlite_message(self.path, exc)))
            return
        self._notify_after_call()
        if not fut.done():
            fut.set_result(result)

    def _hold(self, progress: list[_Progress]) -> None:
        """Keep the progress of a failed group for the next try (see "Errors" in the module doc).

        The in-memory cursors are already past these events; dropping the operations would let
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
            rows = list(
                await self._wconn.execute_fetchall(
                    "SELECT max(seq) FROM (SELECT max(seq) AS seq FROM outbox UNION ALL "
                    "SELECT seq FROM sqlite_sequence WHERE name='outbox')"
                )
            )
            if rows and rows[0][0] is not None:
                self._next_seq = max(self._next_seq, int(rows[0][0]) + 1)

    async def _rollback(self) -> None:
        try:
            if self._wconn.in_transaction:
                await self._wconn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    async def _write_group(self, changes: list[_Prepared], progress: list[_Progress]) -> None:
        seq0 = self._next_seq
        cursors: dict[tuple[str, str], int] = {}
        try:
            added, new_devices, dropped = await self._apply(changes, progress, cursors)
        except Exception as exc:  # noqa: BLE001 - the writer survives; the callers get it
            await self._rollback()
            self._next_seq = seq0
            if isinstance(exc, sqlite3.IntegrityError):
                await self._resync_seq()
            err = StoreError(_sqlite_message(self.path, exc))
            self._log.error(
                "store write failed", error=str(err), changes=len(changes), progress=len(progress)
            )
            for ch in changes:
                if not ch.future.done():
                    ch.future.set_exception(err)
            for op in progress:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(err)
            self._hold(progress)
            return
        self._held_attempts = 0
        self._outbox_count += added
        for (s, d), q in cursors.items():
            dbc = self._db_cursor[s]
            dbc[d] = max(dbc.get(d, 0), q)
        if new_devices:
            self._top.update(new_devices)
            for sink in self.sinks:
                ready = self._ready[sink]
                for d in new_devices:
                    ready[d] = None
                self._wakeups[sink].set()
        for ch in changes:
            for _eid, etype, _b in ch.events:
                EVENTS.labels(type=etype).inc()
            if not ch.future.done():
                ch.future.set_result(None)
        for op in progress:
            if op.future is not None and not op.future.done():
                op.future.set_result(None)
        if dropped:
            OUTBOX_DROPPED.inc(dropped)
            self._log.warning(
                "outbox full: moved the oldest undelivered events to the dead letter "
                "(reason 'outbox full'); replay them with `edge-agent outbox dead-letter "
                "replay` once the sinks have caught up",
                moved=dropped,
                cap=self.outbox_max_events,
            )

    async def _apply(
        self,
        changes: list[_Prepared],
        progress: list[_Progress],
        cursors: dict[tuple[str, str], int],
    ) -> tuple[int, dict[str, int], int]:
        """One transaction: the changes, their events, the progress, compaction, the cap.

        Returns (outbox rows added net, {device: highest new seq}, events moved by the cap).
        """
        c = self._wconn
        await c.execute("BEGIN IMMEDIATE")
        writes = _coalesce(changes)
        replaced = [(d,) for d, w in writes.items() if w.replace]
        if replaced:
            await c.executemany("DELETE FROM window WHERE device_id=?", replaced)
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
            await c.executemany("DELETE FROM window WHERE device_id=? AND key=?", wdel)
        if wput:
            await c.executemany(
                "INSERT OR REPLACE INTO window (device_id, key, booking) VALUES (?,?,?)", wput
            )
        if pdel:
            await c.executemany(
                "DELETE FROM pending WHERE device_id=? AND booking_request_uuid=?", pdel
            )
        if pput:
            await c.executemany(
                "INSERT OR REPLACE INTO pending (device_id, booking_request_uuid, deadline, row) "
                "VALUES (?,?,?,?)",
                pput,
            )
        if states:
            await c.executemany(
                "INSERT OR REPLACE INTO device_state (device_id, state) VALUES (?,?)", states
            )
        now = self._time()
        rows = []
        new_devices: dict[str, int] = {}
        for ch in changes:
            for event_id, etype, body in ch.events:
                rows.append((self._next_seq, event_id, "", ch.device_id, etype, body, now))
                new_devices[ch.device_id] = self._next_seq
                self._next_seq += 1
        added = 0
        if rows:
            cur = await c.executemany(_INSERT_OUTBOX, rows)
            added = cur.rowcount
        added -= await self._apply_progress(progress, now, cursors)
        dropped = 0
        if self._outbox_count + added > self.outbox_max_events:
            removed, dropped = await self._overflow(
                self._outbox_count + added - self.outbox_max_events, now
            )
            added -= removed
        await c.execute("COMMIT")
        return added, new_devices, dropped

    async def _apply_progress(
        self, progress: list[_Progress], now: float, cursors: dict[tuple[str, str], int]
    ) -> int:
        """Write cursors, retry state and dead letters; delete rows every sink is done with.

        Fills ``cursors`` with the new ``(sink, device) -> done_seq`` (for the caller to take
        into its view of the database once the transaction commits); returns the number of
        outbox rows deleted.
        """
        if not progress:
            return 0
        c = self._wconn
        retries: dict[tuple[str, str], _Progress | None] = {}
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
            await c.executemany(
                "INSERT INTO dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
                "reason, attempts, dead_at) SELECT seq, event_id, ?, device_id, type, body, "
                "created_at, ?, ?, ? FROM outbox WHERE seq=?",
                dead,
            )
        set_retry = [
            (s, d, op.seqs[0], op.attempts, op.next_attempt_at, op.error)
            for (s, d), op in retries.items()
            if op is not None
        ]
        clear_retry = [(s, d) for (s, d), op in retries.items() if op is None]
        if clear_retry:
            await c.executemany("DELETE FROM retry_state WHERE sink=? AND device_id=?", clear_retry)
        if set_retry:
            await c.executemany(
                "INSERT OR REPLACE INTO retry_state (sink, device_id, seq, attempts, "
                "next_attempt_at, last_error) VALUES (?,?,?,?,?,?)",
                set_retry,
            )
        if not cursors:
            return 0
        await c.executemany(
            "INSERT INTO sink_cursor (sink, device_id, done_seq) VALUES (?,?,?) "
            "ON CONFLICT (sink, device_id) DO UPDATE SET done_seq=max(done_seq, excluded.done_seq)",
            [(s, d, q) for (s, d), q in cursors.items()],
        )

        def done(s: str, d: str) -> int:
            return max(self._db_cursor[s].get(d, 0), cursors.get((s, d), 0))

        devices = {d for _, d in cursors}
        everyone = [(d, min(done(s, d) for s in self.sinks)) for d in devices]
        cur = await c.executemany(
            "DELETE FROM outbox WHERE device_id=? AND seq<=? AND only_sink=''", everyone
        )
        deleted = cur.rowcount
        cur = await c.executemany(
            "DELETE FROM outbox WHERE device_id=? AND seq<=? AND only_sink=?",
            [(d, q, s) for (s, d), q in cursors.items()],
        )
        return deleted + cur.rowcount

    async def _overflow(self, excess: int, now: float) -> tuple[int, int]:
        """Move the ``excess`` oldest outbox rows to the dead letter. Returns (removed, moved)."""
        c = self._wconn
        rows = list(
            await c.execute_fetchall(
                "SELECT max(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,)
            )
        )
        upto = rows[0][0] if rows else None
        if upto is None:
            return 0, 0
        for sink in self.sinks:
            await c.execute(
                "INSERT INTO dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
                "reason, attempts, dead_at) SELECT o.seq, o.event_id, ?, o.device_id, o.type, "
                "o.body, o.created_at, 'outbox full', 0, ? FROM outbox o "
                "LEFT JOIN sink_cursor c ON c.sink=? AND c.device_id=o.device_id "
                "WHERE o.seq<=? AND o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', ?)",
                (sink, now, sink, upto, sink),
            )
        cur = await c.execute("DELETE FROM outbox WHERE seq<=?", (upto,))
        # Every removed row was undelivered by at least one sink (delivered rows are compacted).
        return cur.rowcount, cur.rowcount


def _lock(path: Path) -> int:
    """Take the database's lock file (``<path>.lock``) and write our pid in it; returns the fd."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {lock_path}: {exc.strerror or exc}; the agent needs "
            "write access to the store's directory"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise StoreLocked(path, holder) from None
        raise StoreError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def read_dead_letters(
    path: str | Path, *, limit: int = 100, sink: str | None = None
) -> list[dict[str, Any]]:
    """:meth:`Store.dead_letters` from a read-only connection: safe beside a running agent.

    Raises:
        StoreError: there is no database at ``path`` or it cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no store at {p}")
    sql, args = _dead_letter_query(limit, sink)
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return _dead_letter_rows(conn.execute(sql, args).fetchall())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the dead letters in {p}: {exc}") from exc


def _dead_letter_query(limit: int, sink: str | None) -> tuple[str, tuple[Any, ...]]:
    if sink is None:
        return _DEAD_LETTER_SQL + " ORDER BY id LIMIT ?", (limit,)
    return _DEAD_LETTER_SQL + " WHERE sink=? ORDER BY id LIMIT ?", (sink, limit)


def _dead_letter_rows(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    return [
        dict(zip(_DEAD_LETTER_KEYS, row[:-1], strict=True)) | {"envelope": jsoncodec.loads(row[-1])}
        for row in rows
    ]


async def _one(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, args))
    return rows[0]


def _device_seqs(events: Sequence[OutboxEvent]) -> tuple[str, list[int]]:
    if not events:
        raise ValueError("no events")
    device = events[0].device_id
    if any(e.device_id != device for e in events):
        raise ValueError("events of several devices in one progress mark")
    return device, [e.seq for e in events]


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database at {path} has schema version {version}, newer than this agent "
            f"understands ({SCHEMA_VERSION}); upgrade the agent or move the file aside"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[target - 1].split(";"):
                if stmt.strip():
                    await conn.execute(stmt)
            await conn.execute(f"PRAGMA user_version={target}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        log.info("store schema migrated", db=str(path), version=target)
