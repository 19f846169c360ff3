"""The store fixture for tests/store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await Store.open(tmp_path / "agent.db")
    yield s
    await s.close()


from tests.store.backends import backend  # noqa: F401 - SQLite and PostgreSQL, per test
