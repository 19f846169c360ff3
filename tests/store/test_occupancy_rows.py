"""``occupancy.write_all``: a group's occupancy writes in few statements, with the same rows as
writing each in turn (the writer's transaction calls it for every group)."""

from __future__ import annotations

import random
import sqlite3

from edge_agent.store import occupancy, schema
from edge_agent.store.occupancy import (
    DELETE_OPEN,
    PUT_BOOKING,
    PUT_INTERVAL,
    OccupancyWrite,
    booking_rows,
    interval_rows,
    replaces_open,
)


def fresh() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for step in schema.MIGRATIONS:
        db.executescript(step)
    return db


def write_one(db: sqlite3.Connection, w: OccupancyWrite) -> None:
    """The statements of one write, as the writer ran them before ``write_all``: the reference
    the batched writes are held to (not ``occupancy.write``, which goes through ``write_all``)."""
    if replaces_open(w):
        db.execute(DELETE_OPEN, (w.device_id,))
    db.executemany(PUT_INTERVAL, interval_rows(w))
    db.executemany(PUT_BOOKING, booking_rows(w))


def contents(db: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return (
        db.execute("SELECT * FROM occupancy_interval ORDER BY device_id, start").fetchall(),
        db.execute("SELECT * FROM occupancy_booking ORDER BY device_id, booking_id").fetchall(),
    )


def random_writes(rng: random.Random, n: int) -> list[OccupancyWrite]:
    writes = []
    t = 0.0
    for _ in range(n):
        t += rng.choice((1.0, 5.0, 30.0))
        device = rng.choice(("room-1", "room-2", "room-3"))
        kind = rng.randrange(3)
        state = rng.choice(("empty", "occupied"))
        if kind == 0:  # a booking track alone
            bid = f"b{rng.randrange(4)}"
            ended = rng.choice((None, t))
            track = {"booking_id": bid, "started_at": 1.0, "ended_at": ended, "n": t}
            writes.append(OccupancyWrite(device, bookings=[track]))
        elif kind == 1:  # a new open interval
            writes.append(
                OccupancyWrite(
                    device, open={"start": t, "end": None, "state": state, "people_max": 1}
                )
            )
        else:  # the open one closes and another opens
            closed = {"start": t - 1.0, "end": t, "state": state, "people_max": 2}
            opened = {"start": t, "end": None, "state": state, "people_max": 0}
            writes.append(OccupancyWrite(device, closed=[closed], open=opened))
    return writes


def test_writing_a_group_at_once_leaves_the_rows_writing_each_in_turn_leaves() -> None:
    rng = random.Random(17)
    for _ in range(200):
        writes = random_writes(rng, rng.randrange(1, 12))
        one_by_one, at_once = fresh(), fresh()
        for w in writes:
            write_one(one_by_one, w)
        occupancy.write_all(at_once, writes)
        assert contents(at_once) == contents(one_by_one), writes
