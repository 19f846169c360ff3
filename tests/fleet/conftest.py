"""Fleet tests run on a throwaway PostgreSQL cluster (tests/pg.py): one database per test."""

from __future__ import annotations

import pytest

from tests import pg


@pytest.fixture
def pg_url() -> str:
    return pg.cluster().new_database()
