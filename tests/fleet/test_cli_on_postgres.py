"""`edge-agent outbox dead-letter list` and `edge-agent report` on a fleet's PostgreSQL store
(``[store] url``): the real CLI in a subprocess, reading the database read-only beside the
members; the same answers as on SQLite for the same rows."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.store import Change, Store, StoreBackend
from edge_agent.store.occupancy import OccupancyWrite
from edge_agent.store.postgres import PostgresStore
from tests import pg
from tests.ops.test_cli import ENV, acli, envelope

HOUR = 3600.0
T0 = 1_790_000_000.0  # a fixed instant (2026-09-21): --until pins the report's range
UNTIL = "2026-09-22T00:00:00Z"


def fleet_config(tmp_path: Path, url: str, *, api: str = "127.0.0.1:9") -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(
        f"""site = "hq"
[store]
url = "{url}"
password_env = "PG_PASSWORD"
[fleet]
member_id = "cli-test"
[webhook]
url = "https://example.invalid/hook"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
[api]
listen = "{api}"
token_env = "API_TOKEN"
"""
    )
    return p


def sqlite_config(tmp_path: Path) -> Path:
    p = tmp_path / "alone.toml"
    p.write_text(
        f"""site = "hq"
[store]
path = "{tmp_path / "agent.db"}"
[webhook]
url = "https://example.invalid/hook"
secret_env = "EDGE_AGENT_WEBHOOK_SECRET"
"""
    )
    return p


PG_ENV = {**ENV, "PG_PASSWORD": pg.PASSWORD, "API_TOKEN": "fleet-cli-test-token-0123456789"}


async def dead_letters(store: StoreBackend, n: int) -> None:
    await store.commit(Change("room-4a", events=[envelope("room-4a") for _ in range(n)]))
    batch = await store.read_outbox("webhook", [("room-4a", 0, n)])
    await store.dead_letter("webhook", batch, reason="HTTP 400 Bad Request", attempts=3)
    await store.flush()


async def test_dead_letter_list_reads_the_fleets_database(tmp_path: Path, pg_url: str) -> None:
    store = await PostgresStore.open(pg_url, password=pg.PASSWORD)
    try:
        await dead_letters(store, 3)
    finally:
        await store.close()
    c = ["-c", str(fleet_config(tmp_path, pg_url))]

    code, out, err = await acli("outbox", "dead-letter", "list", *c, env=PG_ENV)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "HTTP 400" in line]
    assert len(rows) == 3 and "3 dead letter(s)" in out and "room-4a" in rows[0]

    code, out, err = await acli(
        "outbox", "dead-letter", "list", *c, "--json", "--limit", "1", env=PG_ENV
    )
    assert code == 0 and out.count("\n") == 1, err
    row = json.loads(out)
    assert row["reason"] == "HTTP 400 Bad Request" and row["envelope"]["data"]["site"] == "hq"

    # replay writes the shared outbox: only through a member (none answers here)
    code, out, err = await acli("outbox", "dead-letter", "replay", *c, env=PG_ENV)
    assert code == 69 and "written by its members only" in err and "127.0.0.1:9" in err

    # the password is named when it is missing, never guessed
    code, out, err = await acli("outbox", "dead-letter", "list", *c, env=ENV)
    assert code == 1 and "PG_PASSWORD" in err
    code, out, err = await acli(
        "outbox", "dead-letter", "list", *c, env={**ENV, "PG_PASSWORD": "wrong-password"}
    )
    assert code == 1 and "cannot reach the PostgreSQL store" in err
    assert "wrong-password" not in err


async def test_dead_letter_list_on_a_database_no_agent_used(tmp_path: Path, pg_url: str) -> None:
    c = ["-c", str(fleet_config(tmp_path, pg_url))]
    code, out, err = await acli("outbox", "dead-letter", "list", *c, env=PG_ENV)
    assert code == 1 and "no edge-agent store" in err


OCCUPANCY = [
    OccupancyWrite(
        "room-1",
        closed=[
            {"start": T0, "end": T0 + HOUR, "state": "occupied", "people_max": 4},
            {"start": T0 + HOUR, "end": T0 + 3 * HOUR, "state": "empty", "people_max": 0},
        ],
        open={"start": T0 + 3 * HOUR, "end": None, "state": "occupied", "people_max": 2},
        bookings=[
            {"booking_id": "b1", "started_at": T0, "ended_at": T0 + HOUR, "title": "Standup"},
            {"booking_id": "b2", "started_at": T0 + 2 * HOUR, "ended_at": T0 + 2.5 * HOUR},
        ],
    ),
    OccupancyWrite(
        "room-2",
        closed=[{"start": T0, "end": T0 + 2 * HOUR, "state": "empty", "people_max": 0}],
        bookings=[{"booking_id": "c1", "started_at": T0, "ended_at": T0 + HOUR}],
    ),
]


async def test_report_on_postgres_matches_the_same_rows_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    stores: list[StoreBackend] = [
        await PostgresStore.open(pg_url, password=pg.PASSWORD),
        await Store.open(tmp_path / "agent.db"),
    ]
    try:
        for s in stores:
            for w in OCCUPANCY:
                await s.save_occupancy(w)
    finally:
        for s in stores:
            await s.close()
    args = ["report", "--since", "2d", "--until", UNTIL, "--format", "json"]
    code, on_pg, err = await acli(*args, "-c", str(fleet_config(tmp_path, pg_url)), env=PG_ENV)
    assert code == 0, err
    code, on_sqlite, err = await acli(*args, "-c", str(sqlite_config(tmp_path)), env=ENV)
    assert code == 0, err
    assert json.loads(on_pg) == json.loads(on_sqlite)
    rooms = {r["room"]: r for r in json.loads(on_pg)["rooms"]}
    assert set(rooms) == {"room-1", "room-2"} and rooms["room-1"]["peak_people"] == 4
    assert rooms["room-2"]["no_shows"] == 1

    code, out, err = await acli(
        "report", "--room", "room-2", "--until", UNTIL, "-c", str(fleet_config(tmp_path, pg_url)),
        env=PG_ENV,
    )
    assert code == 0 and "room-2" in out and "room-1" not in out, err


async def test_check_config_names_the_database_and_connect_reaches_it(
    tmp_path: Path, pg_url: str
) -> None:
    """`check-config` names the fleet's database (not a SQLite file the agent never opens);
    `--connect` logs in read-only and reads the schema step: none yet, current, or newer than
    this agent (a member to upgrade); a wrong password is a FAIL row, never echoed."""
    from edge_agent.store import pgschema

    c = ["-c", str(fleet_config(tmp_path, pg_url))]
    where = pg_url.removeprefix("postgresql://").split("@", 1)[1]
    code, out, err = await acli("check-config", *c, env=PG_ENV)
    assert code == 0, err
    assert f"store postgresql {where})" in out and "edge-agent.db" not in out

    def store_row(out: str) -> str:
        (row,) = [line for line in out.splitlines() if line.startswith("store ")]
        return row

    # The webhook (127.0.0.1:9, nobody there) fails its row; the store row is what is tested.
    code, out, err = await acli("check-config", *c, "--connect", env=PG_ENV)
    assert "ok" in store_row(out) and "no edge-agent schema yet" in store_row(out), out
    store = await PostgresStore.open(pg_url, password=pg.PASSWORD)
    await store.close()
    code, out, err = await acli("check-config", *c, "--connect", env=PG_ENV)
    assert f"schema step {pgschema.SCHEMA_VERSION}" in store_row(out), out
    pg.cluster().psql(
        f"UPDATE edge_schema SET version = {pgschema.SCHEMA_VERSION + 1}", db=where.split("/")[1]
    )
    code, out, err = await acli("check-config", *c, "--connect", env=PG_ENV)
    assert "FAIL" in store_row(out) and "newer than this agent" in store_row(out), out
    assert code == 1
    bad = {**PG_ENV, "PG_PASSWORD": "wrong-password"}
    code, out, err = await acli("check-config", *c, "--connect", env=bad)
    assert "FAIL" in store_row(out) and "cannot reach" in store_row(out), out
    assert "wrong-password" not in out + err
