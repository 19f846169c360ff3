"""The occupancy tables (schema 3): intervals of one state per device, and the bookings
measured against them. The one place that knows them: the SQL is here.

Writes run in the writer's transaction (:meth:`SqliteStore.save_occupancy`); the report reads
them on a read-only connection beside a running agent (:func:`read_occupancy`), like
:func:`~edge_agent.store.deadletter.read_dead_letters`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent import jsoncodec
from edge_agent.store.base import StoreError

PUT_INTERVAL = (
    "INSERT OR REPLACE INTO occupancy_interval (device_id, start, end, state, people_max) "
    "VALUES (?,?,?,?,?)"
)
# One open interval per device: a new one closes nothing by itself (the closed row comes first).
DELETE_OPEN = "DELETE FROM occupancy_interval WHERE device_id=? AND end IS NULL"
SELECT_OPEN = (
    "SELECT start, end, state, people_max FROM occupancy_interval "
    "WHERE device_id=? AND end IS NULL ORDER BY start DESC LIMIT 1"
)
PUT_BOOKING = (
    "INSERT OR REPLACE INTO occupancy_booking (device_id, booking_id, started_at, ended_at, row) "
    "VALUES (?,?,?,?,?)"
)
SELECT_UNFINISHED = "SELECT row FROM occupancy_booking WHERE device_id=? AND ended_at IS NULL"
SELECT_INTERVALS_SINCE = (
    "SELECT device_id, start, end, state, people_max FROM occupancy_interval "
    "WHERE coalesce(end, 1e18) >= ? ORDER BY device_id, start"
)
SELECT_BOOKINGS_SINCE = (
    "SELECT device_id, row FROM occupancy_booking WHERE coalesce(ended_at, 1e18) >= ? "
    "ORDER BY device_id, started_at"
)


@dataclass(frozen=True, slots=True)
class OccupancyWrite:
    """One device's occupancy rows: closed intervals, the open one (replacing the stored open
    row), booking tracks (``booking_id``, ``started_at``, ``ended_at`` and the rest)."""

    device_id: str
    closed: Sequence[Mapping[str, Any]] = ()
    open: Mapping[str, Any] | None = None
    bookings: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


def interval_rows(w: OccupancyWrite) -> list[tuple[Any, ...]]:
    """``(device_id, start, end, state, people_max)`` of ``w``'s intervals, closed ones first.

    Both stores write these (the PostgreSQL one in :mod:`edge_agent.store.postgres`)."""
    rows = [*w.closed, *([w.open] if w.open is not None else [])]
    return [(w.device_id, r["start"], r["end"], r["state"], int(r["people_max"])) for r in rows]


def booking_rows(w: OccupancyWrite) -> list[tuple[Any, ...]]:
    """``(device_id, booking_id, started_at, ended_at, row JSON)`` of ``w``'s booking tracks."""
    return [
        (w.device_id, str(b["booking_id"]), b["started_at"], b["ended_at"], jsoncodec.dumpb(b))
        for b in w.bookings
    ]


def replaces_open(w: OccupancyWrite) -> bool:
    """Whether ``w`` replaces the stored open interval (it brings intervals)."""
    return bool(w.closed) or w.open is not None


def write(conn: sqlite3.Connection, w: OccupancyWrite) -> None:
    """Apply ``w`` (inside the caller's transaction, on the writer's connection)."""
    write_all(conn, (w,))


def write_all(conn: sqlite3.Connection, writes: Iterable[OccupancyWrite]) -> None:
    """Apply ``writes`` in order (inside the caller's transaction): what applying each in turn
    does, in three statements per run of writes for distinct devices instead of three per
    write (a group's booking starts and ends; the statements, not the rows, were the cost).
    A device's second write in a group starts a new run: its open interval replaces the one
    the first put."""
    run: list[OccupancyWrite] = []
    devices: set[str] = set()
    for w in writes:
        if w.device_id in devices:
            _write_run(conn, run)
            run, devices = [], set()
        run.append(w)
        devices.add(w.device_id)
    if run:
        _write_run(conn, run)


def _write_run(conn: sqlite3.Connection, run: list[OccupancyWrite]) -> None:
    """Writes for distinct devices: each one's DELETE_OPEN touches its own rows only, so all
    of them can go before all the puts."""
    opened = [(w.device_id,) for w in run if replaces_open(w)]
    if opened:
        conn.executemany(DELETE_OPEN, opened)
    intervals = [r for w in run for r in interval_rows(w)]
    if intervals:
        conn.executemany(PUT_INTERVAL, intervals)
    bookings = [r for w in run for r in booking_rows(w)]
    if bookings:
        conn.executemany(PUT_BOOKING, bookings)


async def load(
    conn: aiosqlite.Connection, device_id: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The open interval (or None) and the unfinished booking tracks of ``device_id``."""
    rows = list(await conn.execute_fetchall(SELECT_OPEN, (device_id,)))
    open_row = None
    if rows:
        start, end, state, people_max = rows[0]
        open_row = {"start": start, "end": end, "state": state, "people_max": people_max}
    found = await conn.execute_fetchall(SELECT_UNFINISHED, (device_id,))
    tracks = [jsoncodec.loads(r[0]) for r in found]
    return open_row, tracks


@dataclass(frozen=True, slots=True)
class OccupancyHistory:
    """What :func:`read_occupancy` returns, per device id."""

    intervals: dict[str, list[dict[str, Any]]]
    bookings: dict[str, list[dict[str, Any]]]


def read_occupancy(path: str | Path, since: float) -> OccupancyHistory:
    """Intervals and booking tracks reaching past ``since`` (unix s), read-only.

    Raises:
        StoreError: no database at ``path``, or it cannot be read (or predates schema 3).
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no store at {p}")
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            intervals: dict[str, list[dict[str, Any]]] = {}
            for dev, start, end, state, people in conn.execute(SELECT_INTERVALS_SINCE, (since,)):
                intervals.setdefault(dev, []).append(
                    {"start": start, "end": end, "state": state, "people_max": people}
                )
            bookings: dict[str, list[dict[str, Any]]] = {}
            for dev, row in conn.execute(SELECT_BOOKINGS_SINCE, (since,)):
                bookings.setdefault(dev, []).append(jsoncodec.loads(row))
            return OccupancyHistory(intervals, bookings)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the occupancy history in {p}: {exc}") from exc
