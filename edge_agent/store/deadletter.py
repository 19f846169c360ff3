"""Dead-letter admin: list, replay, purge; and :func:`read_dead_letters` beside a running agent.

Replay and purge run inside the writer's transaction (the store calls them through its
writer); listing reads on any connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import jsoncodec
from edge_agent.store import schema
from edge_agent.store.base import StoreError


def query(limit: int, sink: str | None) -> tuple[str, tuple[Any, ...]]:
    """The listing statement: the oldest ``limit`` dead letters, of one sink or all."""
    if sink is None:
        return schema.SELECT_DEAD_LETTERS, (limit,)
    return schema.SELECT_DEAD_LETTERS_OF, (sink, limit)


def rows_to_dicts(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``id, seq, event_id, sink, device_id, type, reason, attempts, created_at, dead_at,
    envelope`` per row."""
    return [
        dict(zip(schema.DEAD_LETTER_KEYS, row[:-1], strict=True))
        | {"envelope": jsoncodec.loads(row[-1])}
        for row in rows
    ]


def read_dead_letters(
    path: str | Path, *, limit: int = 100, sink: str | None = None
) -> list[dict[str, Any]]:
    """``Store.dead_letters`` from a read-only connection: safe beside a running agent.

    Raises:
        StoreError: there is no database at ``path`` or it cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no store at {p}")
    sql, args = query(limit, sink)
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return rows_to_dicts(conn.execute(sql, args).fetchall())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the dead letters in {p}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Replayed:
    """Dead letters put back: the outbox rows to insert, and the dead-letter ids they were."""

    ids: list[int]
    rows: list[tuple[str, str, str, str, bytes, float | None]]  # event_id, sink, device, ...


def replayable(
    conn: sqlite3.Connection, sinks: Sequence[str], ids: Sequence[int] | None
) -> Replayed:
    """The dead letters of ``sinks`` (all, or ``ids``), oldest first."""
    if not sinks:
        return Replayed([], [])
    sql = schema.SELECT_REPLAYABLE.format(marks=",".join("?" * len(sinks)))
    rows = conn.execute(sql, list(sinks)).fetchall()
    if ids is not None:
        wanted = set(ids)
        rows = [row for row in rows if row[0] in wanted]
    return Replayed([r[0] for r in rows], [tuple(r[1:]) for r in rows])


def purge(conn: sqlite3.Connection, ids: Sequence[int] | None, sink: str | None) -> int:
    """Delete dead letters (all, or ``ids``, of every sink or ``sink``); returns how many."""
    where, args = "1", []
    if sink is not None:
        where, args = "sink=?", [sink]
    if ids is None:
        cur = conn.execute(schema.PURGE_DEAD_LETTERS.format(where=where), args)
    else:
        cur = conn.executemany(
            schema.PURGE_DEAD_LETTER.format(where=where), [(i, *args) for i in ids]
        )
    return cur.rowcount
