"""PostgreSQL store health on a real server's errors: a database turned read-only under the
agent makes its commits fail, counted with their kind, until writes get in again."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from edge_agent.metrics import STORE_ERRORS, STORE_HEALTHY
from edge_agent.store import Change, StoreError, StoreHealth
from edge_agent.store.base import UNREADY_AFTER_FAILURES
from edge_agent.store.pgwriter import pg_error_kind
from edge_agent.store.postgres import PostgresStore
from tests import pg
from tests.store.outbox import drain_all, env


def errors(kind: str) -> float:
    return STORE_ERRORS.labels(kind=kind)._value.get()


async def read_only(cluster: pg.PgCluster, db: str, on: bool) -> None:
    """Make every new session of ``db`` read-only (or not), and end the current ones."""
    setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
    await asyncio.to_thread(cluster.psql, f"ALTER DATABASE {db} {setting}")
    await asyncio.to_thread(
        cluster.psql,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'",
    )


async def test_a_read_only_database_makes_the_store_unhealthy_until_writes_get_in() -> None:
    cluster = pg.cluster()
    url = cluster.new_database()
    db = urlsplit(url).path.lstrip("/")
    store = await PostgresStore.open(url, password=pg.PASSWORD)
    try:
        await store.commit(Change("d", events=[env("d", 0)]))
        assert store.health() == StoreHealth()
        before = errors("readonly")
        await read_only(cluster, db, True)
        for i in range(UNREADY_AFTER_FAILURES):
            assert store.unhealthy is None
            with pytest.raises(StoreError, match="read-only"):
                await store.commit(Change("d", events=[env("d", i + 1)]))
        problem = store.unhealthy
        assert problem is not None and "read-only transaction" in problem
        assert store.health().kind == "readonly"
        assert errors("readonly") - before == UNREADY_AFTER_FAILURES
        assert STORE_HEALTHY._value.get() == 0
        await read_only(cluster, db, False)
        await store.commit(Change("d", events=[env("d", 9)]))
        assert store.health() == StoreHealth() and STORE_HEALTHY._value.get() == 1
        events = await drain_all(store)  # type: ignore[arg-type]
        assert [e.event_id for e in events] == ["d-0", "d-9"]
    finally:
        await store.close()


def test_error_kinds() -> None:
    import psycopg

    assert pg_error_kind(psycopg.errors.DiskFull()) == "full"
    assert pg_error_kind(psycopg.errors.ReadOnlySqlTransaction()) == "readonly"
    assert pg_error_kind(psycopg.errors.DataCorrupted()) == "corrupt"
    assert pg_error_kind(psycopg.errors.UniqueViolation()) == "conflict"
    assert pg_error_kind(psycopg.OperationalError("connection refused")) == "io"
    assert pg_error_kind(ValueError("x")) == "other"
