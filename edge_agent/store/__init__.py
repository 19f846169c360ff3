"""The agent's durable state: window, pending requests, device state, the outbox, dead letters.

One module per concern:

- :mod:`~edge_agent.store.base`: the public types and :class:`StoreBackend`, the interface the
  session, the drainer, the local API and the CLI use (a PostgreSQL backend can sit beside);
- :mod:`~edge_agent.store.schema`: the tables, their migrations and every SQL statement;
- :mod:`~edge_agent.store.plan`: pure write planning (serialize, coalesce a group);
- :mod:`~edge_agent.store.writer`: the group-commit writer, the outbox and dead-letter caps;
- :mod:`~edge_agent.store.deadletter`: list / replay / purge, :func:`read_dead_letters`;
- :mod:`~edge_agent.store.lock`: one process per database (``flock``);
- :mod:`~edge_agent.store.stats`: counts and gauges;
- :mod:`~edge_agent.store.sqlite`: :class:`Store`, the SQLite implementation tying them up.

Which outbox events a sink sends next is not the store's business: the drainer's schedule
(:mod:`edge_agent.forward.schedule`) decides; the store reads the rows and writes the progress.
"""

from __future__ import annotations

from edge_agent.store.base import (
    Change,
    PendingRow,
    StoreBackend,
    StoreCorrupt,
    StoreError,
    StoreHealth,
    StoreLocked,
    StoreTooNew,
    StoreUnusable,
    Synchronous,
)
from edge_agent.store.deadletter import read_dead_letters
from edge_agent.store.schema import MIGRATIONS, SCHEMA_VERSION
from edge_agent.store.sqlite import SqliteStore

Store = SqliteStore
"""The store the agent runs on (SQLite)."""

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Change",
    "PendingRow",
    "SqliteStore",
    "Store",
    "StoreBackend",
    "StoreCorrupt",
    "StoreError",
    "StoreHealth",
    "StoreLocked",
    "StoreTooNew",
    "StoreUnusable",
    "Synchronous",
    "read_dead_letters",
]
