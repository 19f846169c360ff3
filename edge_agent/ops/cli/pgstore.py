"""The CLI's reads of a fleet's PostgreSQL store (``[store] url``): one read-only connection.

What ``outbox dead-letter list`` and ``report`` read on SQLite from the file, beside the
agent, they read here from the database, beside every member: no migration, no lease, no lock
a member waits for (``edge_agent.store.postgres.read_only``). The password comes from the same
``[store] password_env`` / ``password_file`` as the agent's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.store import StoreError


def store_password(cfg: AgentConfig) -> str | None:
    """``[store] password_env`` / ``password_file``, read as the agent reads it.

    Raises:
        StoreError: the variable is unset, or the file cannot be read (named, never echoed).
    """
    import os

    from edge_agent.config.secrets import read_secret  # the one reader of secret sources

    problems: list[tuple[str, str]] = []
    secret = read_secret(
        "store.password",
        env_name=cfg.store.password_env,
        file_name=cfg.store.password_file,
        env=os.environ,
        problems=problems,
    )
    if problems:
        raise StoreError("; ".join(f"{key}: {msg}" for key, msg in problems))
    return None if secret is None else secret.get_secret_value()


async def dead_letters(cfg: AgentConfig, *, limit: int, sink: str | None) -> list[dict[str, Any]]:
    """The fleet's oldest dead letters (every member's)."""
    from edge_agent.store.postgres import read_dead_letters, read_only

    assert cfg.store.url is not None
    async with read_only(
        cfg.store.url,
        password=store_password(cfg),
        sslmode=cfg.store.sslmode,
        ca_file=cfg.store.ca_file,
    ) as conn:
        with _as_store_error(cfg.store.url):
            return await read_dead_letters(conn, limit=limit, sink=sink)


async def occupancy(cfg: AgentConfig, since: float) -> Any:
    """The fleet's occupancy history (``store.occupancy.OccupancyHistory``) since ``since``."""
    from edge_agent.store.postgres import read_occupancy, read_only

    assert cfg.store.url is not None
    async with read_only(
        cfg.store.url,
        password=store_password(cfg),
        sslmode=cfg.store.sslmode,
        ca_file=cfg.store.ca_file,
    ) as conn:
        with _as_store_error(cfg.store.url):
            return await read_occupancy(conn, since)


async def probe(cfg: AgentConfig, *, timeout: float) -> tuple[bool, str]:
    """``check-config --connect``'s look at the fleet's database, read-only: reachable with
    the configured password and TLS, and its schema one this agent can use. Returns whether
    it is fine and what was found.

    Raises:
        StoreError: the database cannot be reached or refuses the login.
    """
    import psycopg

    from edge_agent.config.models import postgres_url_secret
    from edge_agent.store import pgschema as q
    from edge_agent.store.postgres import describe

    assert cfg.store.url is not None
    where = describe(cfg.store.url)
    if (why := postgres_url_secret(cfg.store.url)) is not None:
        raise StoreError(why)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(timeout)),
        "application_name": "edge-agent check-config",
        "options": "-c default_transaction_read_only=on",
    }
    if (password := store_password(cfg)) is not None:
        kwargs["password"] = password
    if cfg.store.sslmode is not None:
        kwargs["sslmode"] = cfg.store.sslmode
    if cfg.store.ca_file is not None:
        kwargs["sslrootcert"] = str(cfg.store.ca_file)
    try:
        conn = await psycopg.AsyncConnection.connect(cfg.store.url, **kwargs)
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach {where}: {exc}") from exc
    try:
        with _as_store_error(cfg.store.url):
            server = conn.info.parameter_status("server_version") or "?"
            row = await (await conn.execute("SELECT to_regclass('edge_schema')")).fetchone()
            if row is None or row[0] is None:
                return True, (
                    f"PostgreSQL {server} at {where}: no edge-agent schema yet (the first "
                    "member creates it; its user needs CREATE on the database)"
                )
            found = await (await conn.execute(q.SELECT_VERSION)).fetchone()
            version = int(found[0]) if found is not None else 0
    finally:
        await conn.close()
    if version > q.SCHEMA_VERSION:
        return False, (
            f"PostgreSQL {server} at {where}: schema step {version} is newer than this agent's "
            f"({q.SCHEMA_VERSION}); upgrade this member (docs/upgrading.md)"
        )
    later = ""
    if version < q.SCHEMA_VERSION:
        later = f" (this agent migrates it to {q.SCHEMA_VERSION})"
    return True, f"PostgreSQL {server} at {where}: schema step {version}{later}"


@contextlib.contextmanager
def _as_store_error(url: str) -> Iterator[None]:
    import psycopg

    from edge_agent.store.pgwriter import pg_message
    from edge_agent.store.postgres import describe

    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(pg_message(describe(url), exc)) from exc


__all__ = ["dead_letters", "occupancy", "probe", "store_password"]
