"""The PostgreSQL tables, their migrations, and every statement the Postgres store runs.

The same tables as the SQLite store (:mod:`edge_agent.store.schema`), prefixed ``edge_`` (the
database is often shared with other software), plus what a fleet needs:

- ``edge_member``: one row per fleet member, ``last_seen`` is its heartbeat (database clock).
- ``edge_lease``: who owns a room (a device) until ``expires_at``, with a fencing ``token``
  that grows by one every time the lease changes hands: a commit for a room checks, in its own
  transaction, that the committing member still holds the token it connected with. The key
  (column ``device_id``) is the device id, or ``room:<room id>`` for a calendar-only room
  (:func:`edge_agent.fleet.keys.room_key`; ``:`` is never in a device id); a linked room goes
  with its device's lease.

Lease times are the database's clock (``clock_timestamp()``), never a member's: members run on
different hosts whose clocks may disagree, and the one clock they share is the database's.

Outbox ``seq`` is an identity column. Within one room only the lease holder inserts, one
transaction at a time (the fence takes the lease row ``FOR SHARE``, so a takeover waits for an
insert in progress to commit), so a room's seqs are committed in ascending order and a reader
never sees seq n+1 before seq n of the same room.
"""

from __future__ import annotations

# Each step moves the schema from version i to i+1; append, never edit a released step.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE edge_window (
        device_id text NOT NULL, key text NOT NULL, booking bytea NOT NULL,
        PRIMARY KEY (device_id, key));
    CREATE TABLE edge_pending (
        device_id text NOT NULL, booking_request_uuid text NOT NULL,
        deadline double precision NOT NULL, row bytea NOT NULL,
        PRIMARY KEY (device_id, booking_request_uuid));
    CREATE TABLE edge_device_state (device_id text PRIMARY KEY, state bytea NOT NULL);
    CREATE TABLE edge_outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL,
        only_sink text NOT NULL DEFAULT '',
        device_id text NOT NULL, type text NOT NULL, body bytea NOT NULL,
        created_at double precision NOT NULL, observed_at double precision,
        UNIQUE (event_id, only_sink));
    CREATE INDEX edge_outbox_by_device ON edge_outbox (device_id, seq);
    CREATE TABLE edge_sink_cursor (
        sink text NOT NULL, device_id text NOT NULL, done_seq bigint NOT NULL,
        PRIMARY KEY (sink, device_id));
    CREATE TABLE edge_retry_state (
        sink text NOT NULL, device_id text NOT NULL, seq bigint NOT NULL,
        attempts integer NOT NULL, next_attempt_at double precision NOT NULL, last_error text,
        PRIMARY KEY (sink, device_id));
    CREATE TABLE edge_dead_letter (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        seq bigint NOT NULL, event_id text NOT NULL, sink text NOT NULL,
        device_id text NOT NULL, type text NOT NULL, body bytea NOT NULL,
        created_at double precision NOT NULL, observed_at double precision,
        reason text NOT NULL, attempts integer NOT NULL, dead_at double precision NOT NULL);
    CREATE INDEX edge_dead_letter_by_sink ON edge_dead_letter (sink, id);
    CREATE TABLE edge_member (
        member_id text PRIMARY KEY,
        started_at timestamptz NOT NULL, last_seen timestamptz NOT NULL,
        info jsonb NOT NULL DEFAULT '{}');
    CREATE TABLE edge_lease (
        device_id text PRIMARY KEY, member_id text, token bigint NOT NULL,
        acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
    """,
    # 2: booking requests made through the agent (SQLite schema 3), kept a day: what
    # GET /v1/requests/{uuid} answers. Resolved in the transaction that stores the outcome event.
    """
    CREATE TABLE edge_booking_request (
        uuid text PRIMARY KEY, room_id text NOT NULL, status text NOT NULL,
        created_at double precision NOT NULL, updated_at double precision NOT NULL,
        request bytea NOT NULL, outcome bytea);
    CREATE INDEX edge_booking_request_by_age ON edge_booking_request (created_at);
    """,
    # 3: what each room saw (SQLite schema 4, edge_agent.store.occupancy). ``start_at`` and
    # ``end_at`` are SQLite's ``start`` and ``end`` (``end`` is reserved in PostgreSQL).
    """
    CREATE TABLE edge_occupancy_interval (
        device_id text NOT NULL, start_at double precision NOT NULL,
        end_at double precision, state text NOT NULL, people_max integer NOT NULL,
        PRIMARY KEY (device_id, start_at));
    CREATE TABLE edge_occupancy_booking (
        device_id text NOT NULL, booking_id text NOT NULL,
        started_at double precision NOT NULL, ended_at double precision, row bytea NOT NULL,
        PRIMARY KEY (device_id, booking_id, started_at));
    CREATE INDEX edge_occupancy_booking_open ON edge_occupancy_booking (device_id, ended_at);
    """,
    # 4: calendar rooms' sync state (SQLite schema 5, edge_agent.store.calendar): the window
    # range and delta link / sync token per room and source; the window rows are in
    # ``edge_window`` under ``calendar_window_owner(room, source)``. Written in the transaction
    # of the round's outbox rows, behind the room's lease (the fence), like a device's events.
    """
    CREATE TABLE edge_calendar_sync (
        room_id text NOT NULL, source text NOT NULL, state bytea NOT NULL,
        PRIMARY KEY (room_id, source));
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS edge_schema (version integer NOT NULL)"
# Two members starting at once: one migrates, the other waits and finds it done.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(7261536390417)"
SELECT_VERSION = "SELECT version FROM edge_schema"
INSERT_VERSION = "INSERT INTO edge_schema (version) VALUES (%s)"
UPDATE_VERSION = "UPDATE edge_schema SET version = %s"

# -- state ---------------------------------------------------------------------------------------

SELECT_WINDOW = "SELECT key, booking FROM edge_window WHERE device_id = %s"
_PENDING = "SELECT device_id, booking_request_uuid, deadline, row FROM edge_pending"
SELECT_PENDING = _PENDING + " ORDER BY deadline"
SELECT_PENDING_OF = _PENDING + " WHERE device_id = %s ORDER BY deadline"
SELECT_DEVICE_STATE = "SELECT state FROM edge_device_state WHERE device_id = %s"
DELETE_WINDOW_OF = "DELETE FROM edge_window WHERE device_id = %s"
DELETE_WINDOW = "DELETE FROM edge_window WHERE device_id = %s AND key = %s"
PUT_WINDOW = (
    "INSERT INTO edge_window (device_id, key, booking) VALUES (%s, %s, %s) "
    "ON CONFLICT (device_id, key) DO UPDATE SET booking = excluded.booking"
)
DELETE_PENDING = "DELETE FROM edge_pending WHERE device_id = %s AND booking_request_uuid = %s"
PUT_PENDING = (
    "INSERT INTO edge_pending (device_id, booking_request_uuid, deadline, row) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (device_id, booking_request_uuid) "
    "DO UPDATE SET deadline = excluded.deadline, row = excluded.row"
)
PUT_DEVICE_STATE = (
    "INSERT INTO edge_device_state (device_id, state) VALUES (%s, %s) "
    "ON CONFLICT (device_id) DO UPDATE SET state = excluded.state"
)
FORGET_DEVICE = tuple(
    f"DELETE FROM {t} WHERE device_id = %s"
    for t in ("edge_window", "edge_pending", "edge_device_state")
)

# -- calendar rooms (edge_agent.store.calendar) ---------------------------------------------------

SELECT_CALENDAR_SYNC = "SELECT state FROM edge_calendar_sync WHERE room_id = %s AND source = %s"
SELECT_CALENDAR_SYNCS = "SELECT room_id, source, state FROM edge_calendar_sync ORDER BY room_id"
PUT_CALENDAR_SYNC = (
    "INSERT INTO edge_calendar_sync (room_id, source, state) VALUES (%s, %s, %s) "
    "ON CONFLICT (room_id, source) DO UPDATE SET state = excluded.state"
)
DELETE_CALENDAR_SYNC = "DELETE FROM edge_calendar_sync WHERE room_id = %s AND source = %s"

# -- fencing -------------------------------------------------------------------------------------

# The leases this member still holds, locked until the commit ends (a takeover waits for it).
FENCE = (
    "SELECT device_id, token FROM edge_lease WHERE device_id = ANY(%s) AND member_id = %s "
    "AND expires_at > clock_timestamp() FOR SHARE"
)

# -- outbox --------------------------------------------------------------------------------------

# Rows in commit order (ORDER BY n: identities are drawn in that order); an event_id already
# there (for the same sink) is skipped.
INSERT_OUTBOX = (
    "INSERT INTO edge_outbox (event_id, only_sink, device_id, type, body, created_at, "
    "observed_at) SELECT e, s, d, t, b, c, o FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::bytea[], %s::float8[], %s::float8[]) WITH ORDINALITY AS u(e, s, d, t, b, c, "
    "o, n) ORDER BY n ON CONFLICT (event_id, only_sink) DO NOTHING RETURNING seq, device_id, "
    "only_sink"
)
OUTBOX_COUNT = "SELECT count(*) FROM edge_outbox"
# Each (stream, after, limit): the stream's next events for a sink, never below what any member
# already did for that sink (its stored cursor): a member taking a room over starts there.
READ_STREAMS = (
    "SELECT o.seq, o.device_id, o.event_id, o.type, o.body, o.created_at, o.observed_at "
    "FROM unnest(%s::text[], %s::bigint[], %s::int[]) AS r(stream, after, lim) "
    "CROSS JOIN LATERAL (SELECT * FROM edge_outbox x WHERE x.device_id = r.stream "
    "AND x.seq > greatest(r.after, coalesce((SELECT c.done_seq FROM edge_sink_cursor c "
    "WHERE c.sink = %s AND c.device_id = r.stream), 0)) AND x.only_sink IN ('', %s) "
    "ORDER BY x.seq LIMIT r.lim) o ORDER BY o.device_id, o.seq"
)
STREAM_TOPS = (
    "SELECT device_id, max(seq) FROM edge_outbox WHERE only_sink IN ('', %s) GROUP BY device_id"
)
STREAM_TOPS_OF = (
    "SELECT device_id, only_sink, max(seq) FROM edge_outbox WHERE device_id = ANY(%s) "
    "GROUP BY device_id, only_sink"
)
SELECT_CURSORS = "SELECT device_id, done_seq FROM edge_sink_cursor WHERE sink = %s"
SELECT_RETRIES = (
    "SELECT device_id, seq, attempts, next_attempt_at, last_error FROM edge_retry_state "
    "WHERE sink = %s"
)
PUT_CURSOR = (
    "INSERT INTO edge_sink_cursor (sink, device_id, done_seq) VALUES (%s, %s, %s) "
    "ON CONFLICT (sink, device_id) DO UPDATE "
    "SET done_seq = greatest(edge_sink_cursor.done_seq, excluded.done_seq)"
)
DELETE_RETRY = "DELETE FROM edge_retry_state WHERE sink = %s AND device_id = %s"
PUT_RETRY = (
    "INSERT INTO edge_retry_state (sink, device_id, seq, attempts, next_attempt_at, last_error) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sink, device_id) DO UPDATE SET "
    "seq = excluded.seq, attempts = excluded.attempts, "
    "next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error"
)
# Shared rows every configured sink is done with: (devices, sinks, number of sinks).
COMPACT_SHARED = (
    "DELETE FROM edge_outbox o USING (SELECT device_id, min(done_seq) AS m, count(*) AS n "
    "FROM edge_sink_cursor WHERE device_id = ANY(%s) AND sink = ANY(%s) GROUP BY device_id) c "
    "WHERE o.device_id = c.device_id AND c.n = %s AND o.seq <= c.m AND o.only_sink = ''"
)
# Replayed rows their one sink is done with.
COMPACT_ONE_SINK = (
    "DELETE FROM edge_outbox o USING edge_sink_cursor c WHERE o.device_id = ANY(%s) "
    "AND o.only_sink <> '' AND c.sink = o.only_sink AND c.device_id = o.device_id "
    "AND o.seq <= c.done_seq"
)
# The outbox cap: the highest seq among the ``excess`` oldest rows, then what goes.
OLDEST_SEQ_UPTO = "SELECT max(seq) FROM (SELECT seq FROM edge_outbox ORDER BY seq LIMIT %s) o"
DELETE_OUTBOX_UPTO = "DELETE FROM edge_outbox WHERE seq <= %s"
SINK_DEPTH = (
    "SELECT count(*), min(o.created_at) FROM edge_outbox o "
    "LEFT JOIN edge_sink_cursor c ON c.sink = %s AND c.device_id = o.device_id "
    "WHERE o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', %s)"
)

# -- dead letter ---------------------------------------------------------------------------------

_DEAD_LETTERS = (
    "SELECT id, seq, event_id, sink, device_id, type, reason, attempts, created_at, dead_at, "
    "body FROM edge_dead_letter"
)
SELECT_DEAD_LETTERS = _DEAD_LETTERS + " ORDER BY id LIMIT %s"
SELECT_DEAD_LETTERS_OF = _DEAD_LETTERS + " WHERE sink = %s ORDER BY id LIMIT %s"
DEAD_LETTER_COUNT = "SELECT count(*) FROM edge_dead_letter"
PENDING_COUNT = "SELECT count(*) FROM edge_pending"
# A sink gave up on outbox rows: (sink, reason, attempts, dead_at, seqs).
DEAD_LETTER_ROWS = (
    "INSERT INTO edge_dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
    "observed_at, reason, attempts, dead_at) SELECT seq, event_id, %s, device_id, type, body, "
    "created_at, observed_at, %s, %s, %s FROM edge_outbox WHERE seq = ANY(%s) ORDER BY seq"
)
# The outbox cap: every row up to a seq that ``sink`` has not done: (sink, now, sink, upto, sink).
DEAD_LETTER_OVERFLOW = (
    "INSERT INTO edge_dead_letter (seq, event_id, sink, device_id, type, body, created_at, "
    "observed_at, reason, attempts, dead_at) SELECT o.seq, o.event_id, %s, o.device_id, o.type, "
    "o.body, o.created_at, o.observed_at, 'outbox full', 0, %s FROM edge_outbox o "
    "LEFT JOIN edge_sink_cursor c ON c.sink = %s AND c.device_id = o.device_id "
    "WHERE o.seq <= %s AND o.seq > coalesce(c.done_seq, 0) AND o.only_sink IN ('', %s) "
    "ORDER BY o.seq"
)
# Replay: the dead letters of some sinks, oldest first, locked until the replay commits.
SELECT_REPLAYABLE = (
    "SELECT id, event_id, sink, device_id, type, body, observed_at FROM edge_dead_letter "
    "WHERE sink = ANY(%s) ORDER BY id FOR UPDATE"
)
DELETE_DEAD_LETTERS = "DELETE FROM edge_dead_letter WHERE id = ANY(%s)"
PURGE_ALL = "DELETE FROM edge_dead_letter WHERE (%s::text IS NULL OR sink = %s)"
PURGE_IDS = "DELETE FROM edge_dead_letter WHERE id = ANY(%s) AND (%s::text IS NULL OR sink = %s)"
DROP_OLDEST_DEAD_LETTERS = (
    "DELETE FROM edge_dead_letter WHERE id IN "
    "(SELECT id FROM edge_dead_letter ORDER BY id LIMIT %s)"
)

# -- booking requests (edge_agent.store.requests) ------------------------------------------------

PUT_BOOKING_REQUEST = (
    "INSERT INTO edge_booking_request (uuid, room_id, status, created_at, updated_at, request, "
    "outcome) VALUES (%s, %s, 'pending', %s, %s, %s, NULL)"
)
SELECT_BOOKING_REQUEST = (
    "SELECT room_id, status, created_at, updated_at, request, outcome FROM edge_booking_request "
    "WHERE uuid = %s"
)
# (status, updated_at, outcome, uuid): only a pending request changes; the first outcome wins.
RESOLVE_BOOKING_REQUEST = (
    "UPDATE edge_booking_request SET status = %s, updated_at = %s, outcome = %s "
    "WHERE uuid = %s AND status = 'pending'"
)
PRUNE_BOOKING_REQUESTS = "DELETE FROM edge_booking_request WHERE created_at < %s"

# -- occupancy (edge_agent.store.occupancy) ------------------------------------------------------

PUT_INTERVAL = (
    "INSERT INTO edge_occupancy_interval (device_id, start_at, end_at, state, people_max) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id, start_at) DO UPDATE SET "
    "end_at = excluded.end_at, state = excluded.state, people_max = excluded.people_max"
)
# One open interval per device: a new one closes nothing by itself (the closed row comes first).
DELETE_OPEN = "DELETE FROM edge_occupancy_interval WHERE device_id = %s AND end_at IS NULL"
SELECT_OPEN = (
    "SELECT start_at, end_at, state, people_max FROM edge_occupancy_interval "
    "WHERE device_id = %s AND end_at IS NULL ORDER BY start_at DESC LIMIT 1"
)
PUT_BOOKING = (
    "INSERT INTO edge_occupancy_booking (device_id, booking_id, started_at, ended_at, row) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id, booking_id, started_at) DO UPDATE SET "
    "ended_at = excluded.ended_at, row = excluded.row"
)
SELECT_UNFINISHED = (
    "SELECT row FROM edge_occupancy_booking WHERE device_id = %s AND ended_at IS NULL"
)
# The report's history (``edge-agent report``): what reaches past a time (unix s).
SELECT_INTERVALS_SINCE = (
    "SELECT device_id, start_at, end_at, state, people_max FROM edge_occupancy_interval "
    "WHERE coalesce(end_at, 1e18) >= %s ORDER BY device_id, start_at"
)
SELECT_BOOKINGS_SINCE = (
    "SELECT device_id, row FROM edge_occupancy_booking WHERE coalesce(ended_at, 1e18) >= %s "
    "ORDER BY device_id, started_at"
)
