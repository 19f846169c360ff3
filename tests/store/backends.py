"""Both store implementations behind one fixture: ``open_store(**kwargs)``, ``reopen``.

A test that takes ``backend`` runs against SQLite and against PostgreSQL (a throwaway cluster,
:mod:`tests.pg`; one database per test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import SqliteStore, StoreBackend
from tests import pg


class Backend:
    """Opens stores of one kind on one database (the same one every time: restarts)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._path = tmp_path / "agent.db"
        self.url = pg.cluster().new_database() if kind == "postgres" else ""
        self._open: list[StoreBackend] = []

    async def open(self, **kwargs: Any) -> StoreBackend:
        s: StoreBackend
        if self.kind == "sqlite":
            s = await SqliteStore.open(self._path, **kwargs)
        else:
            from edge_agent.store.postgres import PostgresStore

            s = await PostgresStore.open(self.url, password=pg.PASSWORD, **kwargs)
        self._open.append(s)
        return s

    async def close_all(self) -> None:
        for s in self._open:
            await s.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(request.param, tmp_path)
    try:
        yield b
    finally:
        await b.close_all()


Opener = Callable[..., Awaitable[StoreBackend]]
