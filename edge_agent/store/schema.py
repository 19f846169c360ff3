"""The SQLite tables, their migrations, and every statement that touches them.

No other module writes SQL against these tables: they compose the statements below.

Tables
------
- ``window``: each device's calendar window, ``(device_id, key) -> booking JSON``.
- ``pending``: booking requests awaiting an answer, ``(device_id, booking_request_uuid)``.
- ``device_state``: one JSON document per device (availability, time zone, booking timeout...).
- ``outbox``: every event to forward, ``seq`` ascending; ``body`` is the envelope serialized
  once (orjson) at commit and sent byte for byte; ``observed_at`` is when the fact happened
  (schema 2). ``device_id`` is the event's ordering stream; ``only_sink`` is set on a replayed
  event (one sink's) and empty otherwise.
- ``sink_cursor``: per sink and stream, the highest ``seq`` that sink is done with (delivered
  or dead-lettered). Delivery is in order per stream, so one integer is the whole record.
- ``retry_state``: per sink and stream, the attempts and next due time of the stream's
  head-of-line event (only streams that are backing off have a row). It survives restarts.
- ``booking_request``: booking requests made through the agent (schema 3), ``uuid -> status``
  (``pending``, ``created``, ``failed``, ``expired``) with the request and its outcome as JSON;
  kept a day (see :mod:`edge_agent.store.requests`).
- ``calendar_sync`` (schema 5): per calendar room and source, the sync state JSON (window range,
  delta link); the room's window rows are in ``window`` under ``calendar_window_owner``.
- ``dead_letter``: events a sink gave up on, with the reason, for the operator to replay or
  purge. Bounded (oldest dropped first; see :mod:`edge_agent.store.writer`).
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import structlog

from edge_agent.store.base import StoreTooNew

log = structlog.get_logger(__name__)

# The envelope's data.observed_at as unix seconds, or the commit time (schema 2 backfill).
_OBSERVED_AT_OF_BODY = (
    "coalesce(CASE WHEN json_valid(CAST(body AS TEXT)) THEN (julianday(json_extract("
    "CAST(body AS TEXT), '$.data.observed_at')) - 2440587.5) * 86400.0 END, created_at)"
)

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
    # 2: observed_at in a column of its own, so delivery latency needs no JSON parsing.
    f"""
    ALTER TABLE outbox ADD COLUMN observed_at REAL;
    UPDATE outbox SET observed_at = {_OBSERVED_AT_OF_BODY};
    ALTER TABLE dead_letter ADD COLUMN observed_at REAL;
    UPDATE dead_letter SET observed_at = {_OBSERVED_AT_OF_BODY};
    """,
    # 3: booking requests made through the agent (local API, MQTT), kept a day: what
    # GET /v1/requests/{uuid} answers. Resolved in the transaction that stores the outcome event.
    """
    CREATE TABLE booking_request (
        uuid TEXT PRIMARY KEY, room_id TEXT NOT NULL, status TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, request BLOB NOT NULL, outcome BLOB
        ) WITHOUT ROWID;
    CREATE INDEX booking_request_by_age ON booking_request (created_at);
    """,
    # 4: what each room saw (edge_agent.store.occupancy): intervals of one state and the
    # bookings measured against them, kept for `edge-agent report` (pruned by age there).
    """
    CREATE TABLE occupancy_interval (
        device_id TEXT NOT NULL, start REAL NOT NULL, end REAL,
        state TEXT NOT NULL, people_max INTEGER NOT NULL,
        PRIMARY KEY (device_id, start)) WITHOUT ROWID;
    CREATE TABLE occupancy_booking (
        device_id TEXT NOT NULL, booking_id TEXT NOT NULL, started_at REAL NOT NULL,
        ended_at REAL, row BLOB NOT NULL,
        PRIMARY KEY (device_id, booking_id, started_at)) WITHOUT ROWID;
    CREATE INDEX occupancy_booking_open ON occupancy_booking (device_id, ended_at);
    """,
    # 5: calendar rooms' sync state (window range, delta link) per room and source; their
    # window rows live in ``window`` under the owner ``calendar_window_owner(room, source)``.
    """
    CREATE TABLE calendar_sync (
        room_id TEXT NOT NULL, source TEXT NOT NULL, state BLOB NOT NULL,
        PRIMARY KEY (room_id, source)) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Bring the database at ``path`` to :data:`SCHEMA_VERSION`, one transaction per step.

    Raises:
        StoreTooNew: the database is newer than this code.
    """
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version > SCHEMA_VERSION:
        raise StoreTooNew(path, version, SCHEMA_VERSION)
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


# -- state ---------------------------------------------------------------------------------------

SELECT_WINDOW = "SELECT key, booking FROM window WHERE device_id=?"
_PENDING = "SELECT device_id, booking_request_uuid, deadline, row FROM pending"
SELECT_PENDING = _PENDING + " ORDER BY deadline"
SELECT_PENDING_OF = _PENDING + " WHERE device_id=? ORDER BY deadline"
SELECT_DEVICE_STATE = "SELECT state FROM device_state WHERE device_id=?"
DELETE_WINDOW_OF = "DELETE FROM window WHERE device_id=?"
DELETE_WINDOW = "DELETE FROM window WHERE device_id=? AND key=?"
PUT_WINDOW = "INSERT OR REPLACE INTO window (device_id, key, booking) VALUES (?,?,?)"
DELETE_PENDING = "DELETE FROM pending WHERE device_id=? AND booking_request_uuid=?"
PUT_PENDING = (
    "INSERT OR REPLACE INTO pending (device_id, booking_request_uuid, deadline, row) "
    "VALUES (?,?,?,?)"
)
PUT_DEVICE_STATE = "INSERT OR REPLACE INTO device_state (device_id, state) VALUES (?,?)"
FORGET_DEVICE = tuple(
    f"DELETE FROM {table} WHERE device_id=?" for table in ("window", "pending", "device_state")
)

# -- calendar rooms ------------------------------------------------------------------------------

SELECT_CALENDAR_SYNC = "SELECT state FROM calendar_sync WHERE room_id=? AND source=?"
SELECT_CALENDAR_SYNCS = "SELECT room_id, source, state FROM calendar_sync"
PUT_CALENDAR_SYNC = "INSERT OR REPLACE INTO calendar_sync (room_id, source, state) VALUES (?,?,?)"
DELETE_CALENDAR_SYNC = "DELETE FROM calendar_sync WHERE room_id=? AND source=?"


def calendar_window_owner(room_id: str, source: str) -> str:
    """The ``window.device_id`` of a calendar room's rows: apart from a linked device's own
    window (same room id), and not a valid device id (``:`` is not allowed in one)."""
    return f"{source}:{room_id}"


# -- outbox --------------------------------------------------------------------------------------

# An event_id already in the outbox (for the same sink) is skipped; a taken seq is an error.
INSERT_OUTBOX = (
    "INSERT INTO outbox (seq, event_id, only_sink, device_id, type, body, created_at, "
    "observed_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (event_id, only_sink) DO NOTHING"
)
OUTBOX_COUNT = "SELECT count(*) FROM outbox"
LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name='outbox'"
MAX_SEQ_ANYWHERE = (
    "SELECT max(seq) FROM (SELECT max(seq) AS seq FROM outbox UNION ALL "
    "SELECT seq FROM sqlite_sequence WHERE name='outbox')"
)
# One stream's undelivered events for a sink; a read is several of these joined by UNION ALL.
READ_STREAM = (
    "SELECT * FROM (SELECT seq, device_id, event_id, type, body, created_at, observed_at "
    "FROM outbox WHERE device_id=? AND seq>? AND only_sink IN ('', ?) ORDER BY seq LIMIT ?)"
)
STREAM_TOPS = "SELECT device_id, max(seq) FROM outbox WHERE only_sink IN ('', ?) GROUP BY device_id"
SELECT_CURSORS = "SELECT sink, device_id, done_seq FROM sink_cursor"
SELECT_RETRIES = (
    "SELECT device_id, seq, attempts, next_attempt_at, last_error FROM retry_state WHERE sink=?"
)
PUT_CURSOR = (
    "INSERT INTO sink_cursor (sink, device_id, done_seq) VALUES (?,?,?) "
    "ON CONFLICT (sink, device_id) DO UPDATE SET done_seq=max(done_seq, excluded.done_seq)"
)
DELETE_RETRY = "DELETE FROM retry_state WHERE sink=? AND device_id=?"
PUT_RETRY = (
    "INSERT OR REPLACE INTO retry_state (sink, device_id, seq, attempts, next_attempt_at, "
    "last_error) VALUES (?,?,?,?,?,?)"
)
# Every row above the last mark and up to a low-water mark that every sink is done with (its
# stream's and sink's cursors are all at or past it), in one range of the primary key:
# ``{marks}`` are the configured sinks (a replayed row of a sink no longer configured stays).
COMPACT_UPTO = "DELETE FROM outbox WHERE seq>? AND seq<=? AND only_sink IN ('', {marks})"
# The tops of every stream and sink: (only_sink, device_id, max(seq)).
OUTBOX_TOPS = "SELECT only_sink, device_id, max(seq) FROM outbox GROUP BY only_sink, device_id"
SHARED_TOP_OF = "SELECT max(seq) FROM outbox WHERE device_id=? AND only_sink=''"
# One sink: the rows a cursor move passed, (device, from, to), through outbox_by_device alone
# (every row is the sink's when no rows of old sinks are left); else its own, (..., sink).
ROWS_PASSED = "SELECT count(*) FROM outbox WHERE device_id=? AND seq>? AND seq<=?"
OWN_ROWS_PASSED = ROWS_PASSED + " AND only_sink IN ('', ?)"
# One sink: every row its cursors are past, (sink, sink): what compaction has not deleted yet.
DONE_ROWS = (
    "SELECT count(*) FROM outbox o JOIN sink_cursor c ON c.sink=? AND c.device_id=o.device_id "
    "WHERE o.seq<=c.done_seq AND o.only_sink IN ('', ?)"
)
# Rows every sink is done with (shared rows), and one sink's replayed rows it is done with.
COMPACT_SHARED = "DELETE FROM outbox WHERE device_id=? AND seq<=? AND only_sink=''"
COMPACT_ONE_SINK = "DELETE FROM outbox WHERE device_id=? AND seq<=? AND only_sink=?"
# The outbox cap: the highest seq among the ``excess`` oldest rows, then what goes.
OLDEST_SEQ_UPTO = "SELECT max(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?)"
DELETE_OUTBOX_UPTO = "DELETE FROM outbox WHERE seq<=?"
# With ONE sink every outbox row of it is undelivered (a cursor move deletes what it passed, in
# its transaction): the depth is the writer's row count less the rows of sinks no longer
# configured (replayed for them), and the oldest is the first row in seq order.
FOREIGN_ROWS = "SELECT count(*) FROM outbox WHERE only_sink NOT IN ('', {marks})"
# The oldest row above the low-water mark that the sink is not done with: (mark, sink, sink).
# Rows it is done with above the mark are skipped (a few hundred at most in a round robin).
OLDEST_OF_SINK = (
    "SELECT o.created_at FROM outbox o LEFT JOIN sink_cursor c ON c.sink=? AND "
    "c.device_id=o.device_id WHERE o.seq>? AND o.seq > coalesce(c.done_seq, 0) AND "
    "o.only_sink IN ('', ?) ORDER BY o.seq LIMIT 1"
)
SINK_DEPTH = (
    "SELECT count(*), min(o.created_at) FROM outbox o "
    "LEFT JOIN sink_cursor c ON c.sink=? AND c.device_id=o.device_id "
    "WHERE o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', ?)"
)

# -- dead letter ---------------------------------------------------------------------------------

DEAD_LETTER_KEYS = (
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
_DEAD_LETTERS = f"SELECT {', '.join(DEAD_LETTER_KEYS)}, body FROM dead_letter"
SELECT_DEAD_LETTERS = _DEAD_LETTERS + " ORDER BY id LIMIT ?"
SELECT_DEAD_LETTERS_OF = _DEAD_LETTERS + " WHERE sink=? ORDER BY id LIMIT ?"
DEAD_LETTER_COUNT = "SELECT count(*) FROM dead_letter"
PENDING_COUNT = "SELECT count(*) FROM pending"
# A sink gave up on an outbox row: (sink, reason, attempts, dead_at, seq).
DEAD_LETTER_ROW = (
    "INSERT INTO dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
    "observed_at, reason, attempts, dead_at) SELECT seq, event_id, ?, device_id, type, body, "
    "created_at, observed_at, ?, ?, ? FROM outbox WHERE seq=?"
)
# The outbox cap: every row up to a seq that ``sink`` has not done: (sink, now, sink, upto, sink).
DEAD_LETTER_OVERFLOW = (
    "INSERT INTO dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
    "observed_at, reason, attempts, dead_at) SELECT o.seq, o.event_id, ?, o.device_id, o.type, "
    "o.body, o.created_at, o.observed_at, 'outbox full', 0, ? FROM outbox o "
    "LEFT JOIN sink_cursor c ON c.sink=? AND c.device_id=o.device_id "
    "WHERE o.seq<=? AND o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', ?)"
)
SELECT_REPLAYABLE = (
    "SELECT id, event_id, sink, device_id, type, body, observed_at FROM dead_letter "
    "WHERE sink IN ({marks}) ORDER BY id"
)
DELETE_DEAD_LETTER = "DELETE FROM dead_letter WHERE id=?"
PURGE_DEAD_LETTERS = "DELETE FROM dead_letter WHERE {where}"
PURGE_DEAD_LETTER = "DELETE FROM dead_letter WHERE id=? AND {where}"
# The dead-letter cap: the ``excess`` oldest go.
DROP_OLDEST_DEAD_LETTERS = (
    "DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id LIMIT ?)"
)

# -- booking requests ----------------------------------------------------------------------------

PUT_BOOKING_REQUEST = (
    "INSERT INTO booking_request (uuid, room_id, status, created_at, updated_at, request, "
    "outcome) VALUES (?,?,'pending',?,?,?,NULL)"
)
SELECT_BOOKING_REQUEST = (
    "SELECT room_id, status, created_at, updated_at, request, outcome FROM booking_request "
    "WHERE uuid=?"
)
# (status, updated_at, outcome, uuid): only a pending request changes; the first outcome wins.
RESOLVE_BOOKING_REQUEST = (
    "UPDATE booking_request SET status=?, updated_at=?, outcome=? WHERE uuid=? AND status='pending'"
)
PRUNE_BOOKING_REQUESTS = "DELETE FROM booking_request WHERE created_at<?"
