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


def _read_only(cfg: AgentConfig, **kw: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    """``store.postgres.read_only`` on ``cfg``'s database, with its password and TLS."""
    from edge_agent.store.postgres import read_only

    assert cfg.store.url is not None
    return read_only(
        cfg.store.url,
        password=store_password(cfg),
        sslmode=cfg.store.sslmode,
        ca_file=cfg.store.ca_file,
        **kw,
    )


async def dead_letters(cfg: AgentConfig, *, limit: int, sink: str | None) -> list[dict[str, Any]]:
    """The fleet's oldest dead letters (every member's)."""
    from edge_agent.store.postgres import read_dead_letters

    async with _read_only(cfg) as conn:
        with _as_store_error(cfg.store.url or ""):
            return await read_dead_letters(conn, limit=limit, sink=sink)


async def occupancy(cfg: AgentConfig, since: float) -> Any:
    """The fleet's occupancy history (``store.occupancy.OccupancyHistory``) since ``since``."""
    from edge_agent.store.postgres import read_occupancy

    async with _read_only(cfg) as conn:
        with _as_store_error(cfg.store.url or ""):
            return await read_occupancy(conn, since)


async def probe(cfg: AgentConfig, *, timeout: float) -> tuple[bool, str]:
    """``check-config --connect``'s look at the fleet's database, read-only: reachable with
    the configured password and TLS, and its schema one this agent can use. Returns whether
    it is fine and what was found.

    Raises:
        StoreError: the database cannot be reached or refuses the login.
    """
    from edge_agent.store import pgschema as q
    from edge_agent.store.postgres import describe

    assert cfg.store.url is not None
    where = describe(cfg.store.url)
    async with _read_only(cfg, connect_timeout_s=timeout, require_schema=False) as conn:
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
