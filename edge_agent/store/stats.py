"""Store statistics for the local API and the metrics sampler (sets the outbox gauges)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite

from edge_agent.metrics import DEAD_LETTERS, OUTBOX_DEPTH, OUTBOX_OLDEST_AGE, PENDING_REQUESTS
from edge_agent.store import schema


async def one(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, args))
    return rows[0]


async def store_stats(
    conn: aiosqlite.Connection, sinks: Sequence[str], now: float
) -> dict[str, Any]:
    """``{"outbox_total", "pending", "dead_letters", "sinks": {name: {"depth",
    "oldest_age_s"}}}``; also sets the gauges.

    It scans the undelivered part of the outbox (tens of ms at a million rows): call it from a
    sampler, not per event.
    """
    total = (await one(conn, schema.OUTBOX_COUNT))[0]
    pending = (await one(conn, schema.PENDING_COUNT))[0]
    dead = (await one(conn, schema.DEAD_LETTER_COUNT))[0]
    per_sink: dict[str, dict[str, Any]] = {}
    for sink in sinks:
        depth, oldest = await one(conn, schema.SINK_DEPTH, (sink, sink))
        age = None if oldest is None else max(0.0, now - oldest)
        per_sink[sink] = {"depth": depth, "oldest_age_s": age}
        OUTBOX_DEPTH.labels(sink=sink).set(depth)
        OUTBOX_OLDEST_AGE.labels(sink=sink).set(age or 0.0)
    DEAD_LETTERS.set(dead)
    PENDING_REQUESTS.set(pending)
    return {"outbox_total": total, "pending": pending, "dead_letters": dead, "sinks": per_sink}
